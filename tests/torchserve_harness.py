"""Serve a checkpoint with a real TorchServe for tests: build pigment.mar, start on free loopback ports, always stop.

    with served_checkpoint(ckpt, tmp_path, maxBatchDelay=300) as server:
        requests.post(f"{server.inference_url}/predictions/pigment", files=..., headers=server.auth())

Everything (model store, config, logs, key file, TorchServe's temp dir) lives under the given directory, so tests
never touch a developer's server on 8080-8082 or its key file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

from scripts.local_torchserve import LocalTorchServe, Ports

ROOT = Path(__file__).resolve().parents[1]


def java_available() -> bool:
    return shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))


def build_mar(checkpoint: Path, model_store: Path, **model_config: object) -> Path:
    """scripts/build_mar.sh with serve_config/model-config.yaml, top-level keys overridden by ``model_config``."""
    config = yaml.safe_load((ROOT / "serve_config" / "model-config.yaml").read_text())
    config.update(model_config)
    config_path = model_store.parent / "model-config.test.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PIGMENT_MODEL_CONFIG": str(config_path)}
    result = subprocess.run([str(ROOT / "scripts" / "build_mar.sh"), str(checkpoint), str(model_store)], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"build_mar.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return model_store / "pigment.mar"


def shipped_handler_options(**overrides: object) -> dict:
    """serve_config/model-config.yaml's ``handler:`` section with ``overrides`` (e.g. ``backend="eager_fp32"``)."""
    config = yaml.safe_load((ROOT / "serve_config" / "model-config.yaml").read_text())
    return {**config.get("handler", {}), **overrides}


@contextlib.contextmanager
def served_checkpoint(checkpoint: Path, work_dir: Path, timeout: float = 180.0,
                      **model_config: object) -> Iterator[LocalTorchServe]:
    """A ready TorchServe serving ``checkpoint`` as model ``pigment``; stopped on exit, even after a failure."""
    store = work_dir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    build_mar(checkpoint, store, **model_config)
    server = LocalTorchServe(store, work_dir / "run", Ports.free())
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()
