#!/usr/bin/env bash
# Stop the TorchServe that scripts/start_server.sh started with the same RUN_DIR (default logs/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
exec "$PY" "$ROOT/scripts/local_torchserve.py" stop --run-dir "${RUN_DIR:-$ROOT/logs}"
