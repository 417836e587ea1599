#!/usr/bin/env bash
# Scale pigment's workers through the management API (needs the management key), then show them.
#
#   scripts/scale_workers.sh 2      # two workers (maxWorkers in model-config.yaml is 2 for 2 cores)
#   scripts/scale_workers.sh 1      # back to one
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/python.sh"
WORKERS=${1:?usage: $0 NUMBER_OF_WORKERS}
RUN_DIR=${RUN_DIR:-$ROOT/logs}
KEY_FILE=${KEY_FILE:-$RUN_DIR/key_file.json}
PORT=$("$PY" -c 'import json, sys, pathlib; p = pathlib.Path(sys.argv[1]); print(json.loads(p.read_text())["ports"]["management"] if p.is_file() else 8081)' "$RUN_DIR/server.json")
MANAGEMENT=${MANAGEMENT_URL:-http://127.0.0.1:$PORT}
KEY=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["management"]["key"])' "$KEY_FILE")

# synchronous=true: the call returns once the workers are started (or stopped).
curl -sS -X PUT "$MANAGEMENT/models/pigment?min_worker=$WORKERS&synchronous=true" -H "Authorization: Bearer $KEY"
curl -sS "$MANAGEMENT/models/pigment" -H "Authorization: Bearer $KEY" \
    | "$PY" -c 'import json, sys; m = json.load(sys.stdin)[0]; print("workers:", [(w["id"], w["status"]) for w in m["workers"]])'
