#!/usr/bin/env bash
# Build EXPORT_DIR/pigment.mar (default model_store/) from a trained pigment checkpoint:
#
#   scripts/build_mar.sh runs/demo/best_model.pth [EXPORT_DIR]
#
# The command line of serving/archive.py's build_mar (what the archive holds is described there).
# PIGMENT_MODEL_CONFIG=path overrides the archive's model-config.yaml (default serve_config/model-config.yaml).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/python.sh"
if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 CHECKPOINT [EXPORT_DIR]   (e.g. $0 runs/demo/best_model.pth model_store)" >&2
    exit 2
fi
if [[ ! -f $1 ]]; then
    echo "build_mar: $1: no such checkpoint; train one with \`python -m training.train\` first" >&2
    exit 2
fi
# The package runs from the repository root wherever this is called from; paths are resolved here first.
CKPT=$(realpath -m "$1")
EXPORT_DIR=$(realpath -m "${2:-$ROOT/model_store}")
MODEL_CONFIG=$(realpath -m "${PIGMENT_MODEL_CONFIG:-$ROOT/serve_config/model-config.yaml}")
cd "$ROOT"
exec "$PY" -m serving.archive "$CKPT" "$EXPORT_DIR" --model-config "$MODEL_CONFIG"
