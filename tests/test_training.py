"""A short real training run on the synthetic benchmark (tiny Swin, 64 px): outputs, falling loss, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_for_inference
from tests.conftest import TINY_BACKBONE
from training import synth, train
from training.config import load_config

TINY_RUN = [
    f"model.backbone_kwargs={TINY_BACKBONE!r}".replace("(", "[").replace(")", "]"),
    "model.head_hidden=[32, 16]", "model.pretrained=false", "model.attention_heads=8",
    "data.image_size=64", "data.cache_images=true",
    "training.batch_size=8", "training.learning_rate=3e-3", "training.num_workers=0",
    "training.modality_dropout=0.2", "training.epochs=3", "device.use_gpu=false",
]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth"), n=32, seed=4, clinical_size=(96, 72),
                          dermoscopy_size=64)


def run(data: Path, out: Path, *extra: str, resume: bool = False) -> list[dict]:
    argv = ["--data", str(data), "--out", str(out), "--quiet"]
    argv += [] if resume else ["--config", str(Path(train.__file__).parent / "configs" / "demo.yaml")]
    for item in [*TINY_RUN, *extra]:
        argv += ["--set", item]
    train.main(argv + (["--resume"] if resume else []))
    with (out / "history.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("run")
    return out, run(synth_data, out, "training.augment=false")


def test_a_short_run_writes_checkpoints_history_and_resolved_config(trained):
    out, history = trained
    for name in ("best_model.pth", "last.pth", "history.csv", "config.yaml"):
        assert (out / name).is_file(), name
    assert [int(row["epoch"]) for row in history] == [1, 2, 3]
    assert set(history[0]) == set(train.HISTORY_FIELDS)
    assert load_config(out / "config.yaml").training.epochs == 3


def test_training_loss_falls(trained):
    _, history = trained
    losses = [float(row["train_loss"]) for row in history]
    assert losses[-1] < losses[0]


def test_checkpoints_load_with_weights_only_and_carry_provenance(trained):
    out, _ = trained
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["epoch"] == 3 and len(last["history"]) == 3 and "optimizer" in last
    loaded = load_for_inference(out / "best_model.pth")
    p = loaded.provenance
    assert {"model_version", "data_hash", "git_commit", "metrics", "split", "train_label_mean", "config"} <= set(p)
    assert not set(p["split"]["train"]) & set(p["split"]["val"])
    assert len(p["split"]["train"]) + len(p["split"]["val"]) == 32
    assert 0 < p["train_label_mean"] < 1 and p["metrics"]["val_loss"] >= 0
    assert loaded.data_cfg.image_size == 64


def test_resume_after_an_interruption_completes_the_same_history(synth_data, tmp_path, monkeypatch):
    real_epoch = train.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the middle of epoch 2
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(synth_data, tmp_path / "cut")
    assert torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    resumed = run(synth_data, tmp_path / "cut", resume=True)
    straight = run(synth_data, tmp_path / "straight")
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    for a, b in zip(resumed, straight):  # restored RNG and optimizer state: the same numbers
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=1e-4)


def test_resume_without_a_last_checkpoint_says_to_start_fresh(synth_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="without --resume"):
        run(synth_data, tmp_path / "new", resume=True)


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0 and "--resume" in capsys.readouterr().out


def test_training_ends_by_calibrating_the_best_checkpoint_on_its_own_held_out_lesions(trained):
    out, _ = trained
    checkpoint = torch.load(out / "best_model.pth", weights_only=True)
    summary = checkpoint["provenance"]["calibration"]
    assert summary["method"] == "the run's validation split"
    assert summary["calibration_lesions"] == len(checkpoint["provenance"]["split"]["val"])
    assert load_for_inference(out / "best_model.pth").trust.calibration is not None


def test_a_calibration_split_is_kept_out_of_training_and_validation(synth_data, tmp_path):
    run(synth_data, tmp_path, "training.epochs=1", "data.calibration_fraction=0.25")
    checkpoint = torch.load(tmp_path / "best_model.pth", weights_only=True)
    split = checkpoint["provenance"]["split"]
    calibration = set(split["calibration"])
    assert calibration and not calibration & set(split["train"]) and not calibration & set(split["val"])
    assert len(calibration) + len(split["train"]) + len(split["val"]) == 32
    summary = checkpoint["provenance"]["calibration"]
    assert summary["method"] == "the run's calibration split" and summary["calibration_lesions"] == len(calibration)
