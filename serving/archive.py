"""The one function that builds pigment.mar: :func:`build_mar` (scripts/build_mar.sh is its command line).

The archive holds the checkpoint (serializedFile), the handler entry file, the model/ and handler/ packages
(staged in one folder, because torch-model-archiver's extra files are flattened into the archive root),
serve_config/model-config.yaml (with any keys the caller overrides) and serve_config/metrics.yaml. No
requirements file: the server's Python environment already has torch and timm (install_py_dep_per_model=false).

    python -m serving.archive runs/demo/best_model.pth [EXPORT_DIR] [--model-config PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from model.cli import one_line

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config"
MODEL_CONFIG = SERVE_CONFIG / "model-config.yaml"
MODEL_NAME = "pigment"
MAR = f"{MODEL_NAME}.mar"
PACKAGES = ("model", "handler")
"""Our packages the archive carries; the handler entry file imports them from the archive root."""
ENTRY_FILE = ROOT / "handler" / "pigment_handler.py"

# Run in a fresh interpreter whose cwd is the extracted archive: `-c` puts the cwd first on the module path, the
# way TorchServe puts the model dir first, so every module must come from the archive, not from this checkout.
_IMPORT_CHECK = """
import os, pigment_handler, handler.predictor, model.fusion_model
here = os.path.realpath(os.getcwd())
for module in (pigment_handler, handler.predictor, model.fusion_model):
    assert os.path.realpath(module.__file__).startswith(here), f"{module.__name__} imported from {module.__file__}"
"""


def model_config(base: Path = MODEL_CONFIG, **overrides: object) -> dict:
    """``base`` (a model-config.yaml) with top-level keys replaced by ``overrides``."""
    return {**yaml.safe_load(base.read_text()), **overrides}


def build_mar(checkpoint: Path, export_dir: Path, config: dict | None = None) -> Path:
    """Archive ``checkpoint`` as ``export_dir/pigment.mar`` with ``config`` as its model-config.yaml (default: the
    shipped one), then check that the archive's code imports on its own. Returns the archive's path.

    Raises:
        FileNotFoundError, ValueError: a checkpoint this code cannot serve (nothing is written).
        RuntimeError: the archive's code does not import from the archive alone.
    """
    from model_archiver import ModelArchiver, ModelArchiverConfig  # the build-time dependency, only here

    version = checkpoint_version(checkpoint)
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        extra = stage / "extra"
        for package in PACKAGES:
            shutil.copytree(ROOT / package, extra / package, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(SERVE_CONFIG / "metrics.yaml", extra / "metrics.yaml")
        config_path = stage / "model-config.yaml"
        config_path.write_text(yaml.safe_dump(config if config is not None else model_config(), sort_keys=False))
        ModelArchiver.generate_model_archive(ModelArchiverConfig(
            model_name=MODEL_NAME, version=version, serialized_file=str(checkpoint.resolve()),
            handler=str(ENTRY_FILE), extra_files=str(extra), config_file=str(config_path),
            export_path=str(export_dir.resolve()), force=True))
        check_imports(export_dir / MAR, stage / "unpacked")
    return export_dir / MAR


def checkpoint_version(checkpoint: Path) -> str:
    """The checkpoint's model version as an archive version; refuses a checkpoint this code cannot serve."""
    from model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)  # format version and required keys
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(ckpt.get("provenance", {}).get("model_version", "1.0")))


def check_imports(mar: Path, unpack_dir: Path) -> None:
    """Extract ``mar`` and import the handler the way a TorchServe worker does, with nothing of ours outside it."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(unpack_dir)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], cwd=unpack_dir, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{mar}: the archive's code does not import on its own:\n{result.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("export_dir", type=Path, nargs="?", default=ROOT / "model_store")
    parser.add_argument("--model-config", type=Path, default=MODEL_CONFIG,
                        help="the archive's model-config.yaml (default serve_config/model-config.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.model_config.is_file():
        print(f"build_mar: {args.model_config}: no such model-config.yaml", file=sys.stderr)
        return 2
    try:
        mar = build_mar(args.checkpoint, args.export_dir, model_config(args.model_config))
    except (FileNotFoundError, ValueError) as exc:
        print(f"build_mar: refusing to archive: {one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"build_mar: {one_line(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {mar} (model version {checkpoint_version(args.checkpoint)}, checkpoint {args.checkpoint.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
