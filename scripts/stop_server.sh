#!/usr/bin/env bash
# Stop the TorchServe that scripts/start_server.sh (or make serve) started with the same RUN_DIR (default logs/),
# and the review page that make serve started beside it (RUN_DIR/web).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/python.sh"
RUN_DIR=${RUN_DIR:-$ROOT/logs}
(cd "$ROOT" && "$PY" -m web.server stop --run-dir "$RUN_DIR/web")
exec "$PY" "$ROOT/scripts/local_torchserve.py" stop --run-dir "$RUN_DIR"
