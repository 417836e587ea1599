"""DistributedDataParallel training: ``torchrun --standalone --nproc_per_node=2 -m training.train`` on the CPU (gloo)
writes one run that loads, evaluates and validates like a single-process run and resumes under torchrun, and DDP's
gradients with an encoder unused on one rank equal the single-process gradients. Two torchrun launches of ~10 s each
on 2 idle cores (the whole file: ~30 s idle, ~70 s on heavily shared cores).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch.nn.parallel import DistributedDataParallel

from model.checkpoint import load_for_inference
from tests.conftest import TINY_BACKBONE, make_tiny_model
from training import evaluate, synth, train
from training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"best_model.pth", "last.pth", "history.csv", "config.yaml"}
TORCHRUN_TIMEOUT_S = 240  # under pytest.ini's 300 s per test: a stuck launch fails with its stderr, not pytest's
RANK_TIMEOUT_S = 120  # the gradient test's two ranks: a rank waiting for a dead peer errors out after this

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no torch.distributed with gloo")

TINY_CONFIG = {
    "model": {"backbone_kwargs": {**TINY_BACKBONE, "depths": [1, 1], "num_heads": [1, 2]}, "head_hidden": [32, 16],
              "pretrained": False, "attention_heads": 8},
    "data": {"image_size": 64, "cache_images": True, "simulate_multispectral": True},
    # batch 2 with modality dropout 0.5: some steps have no dermoscopy image on a rank (an unused encoder)
    "training": {"batch_size": 2, "epochs": 2, "learning_rate": 3.0e-3, "num_workers": 0, "modality_dropout": 0.5},
    "device": {"use_gpu": False},
}


def torchrun_command() -> list[str]:
    """The venv's ``torchrun`` script, or the module it runs when the script is not installed."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def torchrun_train(config: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [*torchrun_command(), "--standalone", "--nproc_per_node=2", "-m", "training.train",
               "--config", str(config), "--data", str(data), "--out", str(out), "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TORCHRUN_TIMEOUT_S)
    assert done.returncode == 0, f"torchrun exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def read_history(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth"), n=24, seed=4, clinical_size=(96, 72),
                          dermoscopy_size=64)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    return path


@pytest.fixture(scope="module")
def ddp_run(data, config, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, torchrun_train(config, data, out)


@pytest.fixture(scope="module")
def single_run(data, config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    train.main(["--config", str(config), "--data", str(data), "--out", str(out), "--quiet",
                "--set", "training.epochs=1"])
    return out


def test_two_cpu_processes_write_one_run_with_the_full_history(ddp_run):
    out, done = ddp_run
    assert {p.name for p in out.iterdir()} == RUN_FILES  # one of each, no per-rank copies, no temporary files
    assert [int(row["epoch"]) for row in read_history(out / "history.csv")] == [1, 2]
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert load_config(out / "config.yaml").training.batch_size == 2
    assert done.stderr.count("epoch 2/2:") == 1  # rank 0 alone logs progress


def test_the_ddp_checkpoint_has_the_single_process_format_and_keys(ddp_run, single_run):
    ddp = torch.load(ddp_run[0] / "best_model.pth", weights_only=True)
    single = torch.load(single_run / "best_model.pth", weights_only=True)
    assert set(ddp) == set(single) and set(ddp["provenance"]) == set(single["provenance"])
    assert list(ddp["state_dict"]) == list(single["state_dict"])  # no DDP "module." prefix
    assert ddp["model_config"] == single["model_config"] and ddp["data_config"] == single["data_config"]


def test_the_ddp_checkpoint_evaluates_like_a_single_process_one(ddp_run, single_run, data, tmp_path):
    loaded = load_for_inference(ddp_run[0] / "best_model.pth")
    assert loaded.version.startswith("run-e")
    for name, run in (("ddp", ddp_run[0]), ("single", single_run)):
        evaluate.main(["--checkpoint", str(run / "best_model.pth"), "--data", str(data), "--split", "val",
                       "--out", str(tmp_path / name)])
    ddp, single = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("ddp", "single"))
    assert key_tree(ddp) == key_tree(single)
    assert ddp["n_lesions"] == single["n_lesions"] == len(loaded.provenance["split"]["val"])
    assert all(math.isfinite(ddp["overall"][k]) for k in ("mse", "mae", "rmse", "severity_accuracy"))


def test_validation_metrics_reduced_over_ranks_equal_one_process_over_the_same_weights(ddp_run, data, config):
    out = ddp_run[0]
    checkpoint = torch.load(out / "best_model.pth", weights_only=True)
    cfg = load_config(config)
    loaders = train.build_loaders(data, cfg)  # single-process loaders: the whole validation split
    model = load_for_inference(out / "best_model.pth").model
    val_loss, val_mae = train.validate(model, loaders.val, torch.device("cpu"), progress=False)
    recorded = checkpoint["provenance"]["metrics"]
    assert recorded["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert recorded["val_mae"] == pytest.approx(val_mae, rel=1e-5)
    assert checkpoint["provenance"]["split"]["val"] == loaders.split["val"]


def test_resume_under_ddp_extends_the_run(ddp_run, data, config, tmp_path):
    run = shutil.copytree(ddp_run[0], tmp_path / "run")
    torchrun_train(config, data, run, "--resume", "--set", "training.epochs=3")
    before, after = read_history(ddp_run[0] / "history.csv"), read_history(run / "history.csv")
    assert [row["epoch"] for row in after] == ["1", "2", "3"] and after[:2] == before
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 3


# ---------------------------------------------------------------------------------------------------------------
# Gradients with an encoder that one rank does not use
# ---------------------------------------------------------------------------------------------------------------


def grad_batch() -> dict[str, torch.Tensor]:
    """Four samples: rows 0-1 (rank 0) have dermoscopy, rows 2-3 (rank 1) have none; nobody has multispectral."""
    g = torch.Generator().manual_seed(0)
    images = {m: torch.randn(4, 3, 64, 64, generator=g) for m in ("clinical", "dermoscopy", "multispectral")}
    mask = torch.tensor([[True, False], [True, False], [False, False], [False, False]])
    return {**images, "aux_mask": mask, "score": torch.rand(4, generator=g)}


def gradients(model: torch.nn.Module, forward: torch.nn.Module, rows: slice) -> dict[str, torch.Tensor | None]:
    b = grad_batch()
    out = forward(b["clinical"][rows], b["dermoscopy"][rows], b["multispectral"][rows], b["aux_mask"][rows])
    torch.nn.functional.mse_loss(out.score, b["score"][rows]).backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def ddp_gradients_worker(rank: int, world_size: int, store: str, result: str) -> None:
    torch.set_num_threads(1)
    # A collective waiting for a peer that died would otherwise wait gloo's default 30 minutes.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=RANK_TIMEOUT_S))
    try:
        model = make_tiny_model(seed=0)  # eval mode: no dropout, so both runs compute the same function
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        grads = gradients(model, ddp, slice(2 * rank, 2 * rank + 2))
        if rank == 0:
            torch.save(grads, result)
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_equal_one_process_gradients_when_an_encoder_is_unused_on_a_rank(tmp_path):
    result = tmp_path / "grads.pt"
    # fork: the ranks inherit the imported modules (a spawn re-imports torch and timm, ~10 s on shared cores)
    ranks = mp.start_processes(ddp_gradients_worker, args=(2, str(tmp_path / "store"), str(result)), nprocs=2,
                               start_method="fork", join=False)
    join_or_kill(ranks, RANK_TIMEOUT_S)
    ddp = torch.load(result, weights_only=True)
    model = make_tiny_model(seed=0)
    single = gradients(model, model, slice(0, 4))  # mean loss over the global batch of 4
    assert set(ddp) == set(single)
    for name, grad in single.items():
        if name.startswith("encoders.multispectral."):  # unused on every rank: no gradient, as in one process
            assert grad is None and ddp[name] is None, name
            continue
        assert grad is not None and ddp[name] is not None, name
        torch.testing.assert_close(ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert any(single[n].abs().sum() > 0 for n in single if n.startswith("encoders.dermoscopy."))


def join_or_kill(ranks: mp.ProcessContext, seconds: float) -> None:
    """Wait for every rank to exit (a rank's exception is re-raised here); kill them all and fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not ranks.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the DDP ranks did not finish within {seconds} s; killed them")


def key_tree(value):
    """The nested key structure of a JSON value (the values themselves may differ, or be null)."""
    return {k: key_tree(v) for k, v in value.items()} if isinstance(value, dict) else None


def launch_train(config: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "training.train", "--config", str(config), "--data", str(data), "--out", str(out),
               "--quiet", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)


def test_processes_2_trains_exactly_as_torchrun_does(ddp_run, data, config, tmp_path):
    """``--processes 2`` starts the workers itself; torchrun's run of the same command is the reference."""
    done = launch_train(config, data, tmp_path / "run", "--processes", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    ours, reference = read_history(tmp_path / "run" / "history.csv"), read_history(ddp_run[0] / "history.csv")
    assert len(ours) == len(reference) == 2
    for mine, theirs in zip(ours, reference):
        for key in ("train_loss", "val_loss", "val_mae"):
            assert float(mine[key]) == pytest.approx(float(theirs[key]), rel=1e-6, abs=1e-7), key
    assert {p.name for p in (tmp_path / "run").iterdir()} == RUN_FILES
    assert done.stderr.count("epoch 2/2:") == 1


def test_processes_user_errors_are_one_line_before_any_worker_starts(data, config, tmp_path):
    bad_value = launch_train(config, data, tmp_path / "a", "--processes", "2", "--set", "training.epochs=abc")
    no_data = launch_train(config, tmp_path / "missing", tmp_path / "b", "--processes", "2")
    for done, named in ((bad_value, "training.epochs"), (no_data, "missing")):
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr, done.stderr
    bad_count = launch_train(config, data, tmp_path / "c", "--processes", "two")
    assert bad_count.returncode == 2 and "--processes" in bad_count.stderr and "Traceback" not in bad_count.stderr


def test_a_failing_worker_stops_the_others_and_its_status_is_returned(tmp_path, monkeypatch):
    from training import distributed

    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    script = tmp_path / "worker.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['RANK'] == '1':\n    sys.exit(3)\n"
                      "time.sleep(60)\n")
    started = time.monotonic()
    status = distributed.launch_local("worker", [], 2)
    assert status == 3 and time.monotonic() - started < 30  # rank 0 was stopped, not waited for


def test_processes_auto_is_one_per_core_at_most_two_on_a_cpu(monkeypatch):
    from training import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cores, expected in ((1, 1), (2, 2), (16, 2)):
        monkeypatch.setattr(distributed, "available_cores", lambda cores=cores: cores)
        args = train.parse_args(["--config", "c.yaml", "--data", "d", "--out", "o", "--processes", "auto"])
        assert train.local_processes(args, load_config(None, [])) == expected
    assert train.worker_argv(["--data", "d", "--processes", "2", "--out", "o", "--processes=auto"]) == \
        ["--data", "d", "--out", "o"]
