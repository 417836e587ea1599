#!/usr/bin/env bash
# Build EXPORT_DIR/pigment.mar (default model_store/) from a trained pigment checkpoint.
#
#   scripts/build_mar.sh runs/demo/best_model.pth [EXPORT_DIR]
#
# The archive holds the checkpoint (serializedFile), the handler entry file, the model/ and handler/ packages
# (staged in one folder, because torch-model-archiver --extra-files flattens what it is given),
# serve_config/model-config.yaml and serve_config/metrics.yaml. No requirements file: the server's Python
# environment already has torch and timm (install_py_dep_per_model=false).
# PIGMENT_MODEL_CONFIG=path overrides the model-config.yaml (the serving tests use a longer maxBatchDelay).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/python.sh"
ARCHIVER=$(dirname "$PY")/torch-model-archiver
[[ -x $ARCHIVER ]] || ARCHIVER=torch-model-archiver

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 CHECKPOINT [EXPORT_DIR]   (e.g. $0 runs/demo/best_model.pth model_store)" >&2
    exit 2
fi
if [[ ! -f $1 ]]; then
    echo "build_mar: $1: no such checkpoint; train one with \`python -m training.train\` first" >&2
    exit 2
fi
CKPT=$(realpath "$1")
EXPORT_DIR=$(realpath -m "${2:-$ROOT/model_store}")
MODEL_CONFIG=$(realpath "${PIGMENT_MODEL_CONFIG:-$ROOT/serve_config/model-config.yaml}")

# 1. Refuse a checkpoint this code cannot serve, before packing anything (format version, required keys).
VERSION=$(cd "$ROOT" && "$PY" -c '
import re, sys
from model.checkpoint import load_checkpoint
from model.cli import one_line
try:
    ckpt = load_checkpoint(sys.argv[1])
except (FileNotFoundError, ValueError) as exc:
    print(f"build_mar: refusing to archive: {one_line(exc)}", file=sys.stderr)
    sys.exit(2)
version = str(ckpt.get("provenance", {}).get("model_version", "1.0"))
print(re.sub(r"[^A-Za-z0-9._-]", "_", version))
' "$CKPT")

# 2. Stage the packages in one folder; its contents become the archive root (model/, handler/, metrics.yaml).
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/extra" "$EXPORT_DIR"
cp -r "$ROOT/model" "$ROOT/handler" "$STAGE/extra/"
cp "$ROOT/serve_config/metrics.yaml" "$STAGE/extra/"
find "$STAGE/extra" -name __pycache__ -type d -prune -exec rm -rf {} +

"$ARCHIVER" --model-name pigment --version "$VERSION" \
    --serialized-file "$CKPT" \
    --handler "$ROOT/handler/pigment_handler.py" \
    --extra-files "$STAGE/extra" \
    --config-file "$MODEL_CONFIG" \
    --export-path "$EXPORT_DIR" -f

# 3. Check the archive the way TorchServe uses it: extracted into a fresh dir that is first on sys.path.
mkdir "$STAGE/unpacked"
(cd "$STAGE/unpacked" && "$PY" -m zipfile -e "$EXPORT_DIR/pigment.mar" .)
(cd "$STAGE/unpacked" && env -u PYTHONPATH "$PY" -c '
import os, sys
sys.path.insert(0, os.getcwd())
import pigment_handler, handler.predictor, model.fusion_model
here = os.path.realpath(os.getcwd())
for module in (pigment_handler, handler.predictor, model.fusion_model):
    assert os.path.realpath(module.__file__).startswith(here), f"{module.__name__} imported from {module.__file__}"
' >"$STAGE/import.log" 2>&1) || {
    cat "$STAGE/import.log" >&2
    echo "build_mar: the archive's code does not import on its own (see above)" >&2
    exit 1
}

echo "wrote $EXPORT_DIR/pigment.mar (model version $VERSION, checkpoint $(basename "$CKPT"))"
