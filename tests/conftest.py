"""Shared fixtures: a tiny real Swin (milliseconds per forward), a checkpoint built from it, all offline, and one
real TorchServe serving that checkpoint for every end-to-end test file of the session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import build_checkpoint, save_checkpoint
from model.config import DataConfig, ModelConfig, SeverityConfig
from model.fusion_model import FusionModel

TINY_BACKBONE = {"window_size": 4, "embed_dim": 32, "depths": (1, 1), "num_heads": (1, 2)}
TINY_MODEL_CFG = ModelConfig(backbone_kwargs=TINY_BACKBONE, head_hidden=(32, 16))
TINY_DATA_CFG = DataConfig(image_size=64)


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return TINY_MODEL_CFG


@pytest.fixture
def tiny_data_cfg() -> DataConfig:
    return TINY_DATA_CFG


def make_tiny_model(seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(TINY_MODEL_CFG, TINY_DATA_CFG.image_size).eval()


@pytest.fixture
def tiny_model() -> FusionModel:
    return make_tiny_model()


@pytest.fixture(scope="session")
def trust_data(tmp_path_factory) -> Path:
    """A small synthetic benchmark (``training.synth``, small images) for fitting and checking ``model.trust``."""
    from training.synth import generate

    return generate(tmp_path_factory.mktemp("trust_data"), n=60, seed=11, clinical_size=(96, 72),
                    dermoscopy_size=64)


@pytest.fixture(scope="session")
def uncalibrated_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised (seeded) tiny model saved as a checkpoint of before calibration existed."""
    model = make_tiny_model(seed=0)
    ckpt = build_checkpoint(model, TINY_MODEL_CFG, TINY_DATA_CFG, SeverityConfig(),
                            provenance={"model_version": "tiny-test", "data_hash": "none"})
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "tiny-uncalibrated.pth")


@pytest.fixture(scope="session")
def tiny_checkpoint(uncalibrated_checkpoint, trust_data, tmp_path_factory) -> Path:
    """The same tiny model with a ``trust`` section fitted by ``training.calibrate`` on :func:`trust_data`, so
    every answer carries an interval, band probabilities and an OOD flag."""
    from model.checkpoint import load_checkpoint
    from training.calibrate import calibrate_checkpoint

    ckpt = calibrate_checkpoint(load_checkpoint(uncalibrated_checkpoint), trust_data)
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "tiny.pth")


SERVED_BATCH_SIZE = 8
"""batchSize of the shared server, pinned so that tests can send 4 bad + 4 good requests into one batch whatever
the shipped (throughput-tuned) batchSize is."""
SERVED_BATCH_DELAY_MS = 300
"""maxBatchDelay of the shared server: long enough that requests sent together (a barrier) share a batch, short
enough that a lone request is answered in well under a second."""


@pytest.fixture(scope="session")
def served(tiny_checkpoint, tmp_path_factory):
    """A real TorchServe on free loopback ports serving the tiny checkpoint; started once per session (~15 s).

    Shared by tests/test_serving.py and tests/test_serving_reliability.py. Tests that change the worker count
    put it back to 1 before they return. The shipped model-config.yaml is used except for what these tests need:
    one worker with batches of ``SERVED_BATCH_SIZE`` (so that requests sent together share its batches) and the
    exact ``eager_fp32`` backend (answers are
    compared with offline answers to 1e-4; the accelerated backends are held to their tolerance in
    tests/test_accelerate.py).
    """
    from tests.torchserve_harness import java_available, served_checkpoint, shipped_handler_options

    if not java_available():
        pytest.skip("TorchServe needs Java 17 (scripts/ensure_java.sh)")
    with served_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("torchserve"),
                           batchSize=SERVED_BATCH_SIZE, maxBatchDelay=SERVED_BATCH_DELAY_MS, minWorkers=1,
                           handler=shipped_handler_options(backend="eager_fp32")) as server:
        yield server
