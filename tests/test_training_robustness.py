"""Training loses nothing: a bad image is skipped and counted on request, a run SIGKILLed mid-run resumes to the
full history, and a checkpoint write that fails (or is killed) leaves the previous file intact.

A corrupt image naming its file, and skip_bad_images at the dataset level, are in tests/test_data.py; an
in-process interruption (KeyboardInterrupt) resuming to identical numbers is in tests/test_training.py. These run
the real CLI in a subprocess, the way a crash or an OOM kill meets it.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_for_inference, save_checkpoint
from tests.conftest import TINY_BACKBONE
from training import synth

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = [
    f"model.backbone_kwargs={TINY_BACKBONE!r}".replace("(", "[").replace(")", "]"),
    "model.head_hidden=[32, 16]", "model.pretrained=false", "model.attention_heads=8",
    "data.image_size=64", "data.cache_images=true", "training.batch_size=4", "training.num_workers=0",
    "training.threads=1", "device.use_gpu=false",
]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth"), n=40, seed=5, clinical_size=(96, 72),
                          dermoscopy_size=64)


def train_cmd(data: Path, out: Path, *extra: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "training.train", "--data", str(data), "--out", str(out), "--quiet"]
    cmd += ["--resume"] if resume else ["--config", str(ROOT / "training" / "configs" / "demo.yaml")]
    for item in [*TINY_RUN, *extra]:
        cmd += ["--set", item]
    return cmd


def history(out: Path) -> list[dict]:
    with (out / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_run_with_skip_bad_images_skips_warns_and_counts_the_bad_lesion(synth_data, tmp_path):
    data = tmp_path / "data"
    subprocess.run(["cp", "-r", str(synth_data), str(data)], check=True)
    broken = sorted((data / "clinical" / "images").iterdir())[0]
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = tmp_path / "run"
    result = subprocess.run(train_cmd(data, out, "data.skip_bad_images=true", "training.epochs=1"), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping lesion {broken.stem}" in result.stderr and broken.name in result.stderr
    provenance = load_for_inference(out / "best_model.pth").provenance
    assert provenance["skipped"]["bad_image"] == 1
    assert broken.stem not in provenance["split"]["train"] + provenance["split"]["val"]
    assert len(provenance["split"]["train"]) + len(provenance["split"]["val"]) == 39


def test_a_run_sigkilled_mid_run_resumes_to_the_full_history_with_nothing_lost(synth_data, tmp_path):
    epochs = 4
    cut, straight = tmp_path / "cut", tmp_path / "straight"
    process = subprocess.Popen(train_cmd(synth_data, cut, f"training.epochs={epochs}"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (cut / "last.pth").is_file():  # the first epoch's checkpoint
            assert process.poll() is None and time.monotonic() < deadline, "training ended before a checkpoint"
            time.sleep(0.05)
        time.sleep(0.3)  # into the next epoch
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    done = torch.load(cut / "last.pth", weights_only=True)["epoch"]
    assert 1 <= done < epochs, f"the kill should land mid-run, but {done} of {epochs} epochs were done"

    resumed = subprocess.run(train_cmd(synth_data, cut, f"training.epochs={epochs}", resume=True), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {cut} after epoch {done}" in resumed.stderr
    reference = subprocess.run(train_cmd(synth_data, straight, f"training.epochs={epochs}"), cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    got, want = history(cut), history(straight)
    assert [row["epoch"] for row in got] == [str(e) for e in range(1, epochs + 1)]
    for a, b in zip(got, want):  # optimizer and RNG state restored: the same numbers as a run never killed
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=1e-4)
    assert torch.load(cut / "last.pth", weights_only=True)["epoch"] == epochs


def test_a_failure_during_a_checkpoint_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"], "the temporary file should be removed"


KILLED_WRITER = """
import sys, torch
from model.checkpoint import save_checkpoint
path = sys.argv[1]
for i in range(1, 400):  # bounded: ~16 MB per write
    save_checkpoint({"epoch": i, "weights": torch.full((4_000_000,), float(i))}, path)
    print(i, flush=True)
"""


def test_a_process_killed_while_writing_checkpoints_always_leaves_a_whole_one(tmp_path):
    path = tmp_path / "last.pth"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        for _ in range(3):  # a few complete writes, then kill it somewhere in the middle of the next ones
            assert writer.stdout.readline(), "the writer stopped early"
        time.sleep(0.15)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(30)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["epoch"] >= 3
    assert torch.equal(checkpoint["weights"], torch.full((4_000_000,), float(checkpoint["epoch"])))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pth"]
    # A kill between mkstemp and rename can leave a ".last.pth.*.tmp"; it is never mistaken for the checkpoint.
    assert all(name.startswith(".last.pth.") and name.endswith(".tmp") for name in leftovers), leftovers
