#!/usr/bin/env bash
# Start TorchServe with serve_config/config.properties, serving MODEL_STORE/pigment.mar, and wait until the
# model answers. Logs, key_file.json (the API tokens) and the resolved config go to RUN_DIR (default logs/).
#
#   scripts/start_server.sh                         # model_store/pigment.mar on 127.0.0.1:8080-8082
#   MODEL_STORE=/srv/pigment RUN_DIR=/var/log/pigment scripts/start_server.sh
#   scripts/start_server.sh --free-ports            # any free loopback ports (printed)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/python.sh"
exec "$PY" "$ROOT/scripts/local_torchserve.py" start \
    --model-store "${MODEL_STORE:-$ROOT/model_store}" --run-dir "${RUN_DIR:-$ROOT/logs}" "$@"
