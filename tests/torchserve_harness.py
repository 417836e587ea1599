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
from collections.abc import Iterator
from pathlib import Path

from serving.archive import build_mar, model_config
from serving.torchserve import LocalTorchServe, Ports


def java_available() -> bool:
    return shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))


def shipped_handler_options(**overrides: object) -> dict:
    """serve_config/model-config.yaml's ``handler:`` section with ``overrides`` (e.g. ``backend="eager_fp32"``)."""
    return {**model_config().get("handler", {}), **overrides}


@contextlib.contextmanager
def served_checkpoint(checkpoint: Path, work_dir: Path, timeout: float = 180.0,
                      **overrides: object) -> Iterator[LocalTorchServe]:
    """A ready TorchServe serving ``checkpoint`` as model ``pigment`` (serve_config/model-config.yaml with top-level
    keys replaced by ``overrides``); stopped on exit, even after a failure."""
    store = work_dir / "model_store"
    build_mar(checkpoint, store, model_config(**overrides))
    server = LocalTorchServe(store, work_dir / "run", Ports.free())
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()
