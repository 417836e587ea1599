#!/usr/bin/env bash
# Scale pigment's workers through the management API (needs the management key), then show them.
#
#   scripts/scale_workers.sh 2      # two workers (maxWorkers in model-config.yaml is 2 for 2 cores)
#   scripts/scale_workers.sh 1      # back to one
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORKERS=${1:?usage: $0 NUMBER_OF_WORKERS}
KEY_FILE=${KEY_FILE:-${RUN_DIR:-$ROOT/logs}/key_file.json}
MANAGEMENT=${MANAGEMENT_URL:-http://127.0.0.1:8081}
KEY=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["management"]["key"])' "$KEY_FILE")

# synchronous=true: the call returns once the workers are started (or stopped).
curl -sS -X PUT "$MANAGEMENT/models/pigment?min_worker=$WORKERS&synchronous=true" -H "Authorization: Bearer $KEY"
curl -sS "$MANAGEMENT/models/pigment" -H "Authorization: Bearer $KEY" \
    | "$PY" -c 'import json, sys; m = json.load(sys.stdin)[0]; print("workers:", [(w["id"], w["status"]) for w in m["workers"]])'
