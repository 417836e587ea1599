"""Batch scoring of an archive: one row per lesion with every answer field, error rows, resuming after a kill,
and the Ray engine giving the local engine's scores."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model import scoring
from model.checkpoint import load_for_inference
from training import predict, synth
from training.infer_single import predict_files

ROOT = Path(__file__).resolve().parents[1]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("archive"), n=24, seed=21, clinical_size=(96, 72),
                          dermoscopy_size=64)


def lesion_files(data: Path, lesion_id: str) -> dict[str, Path | None]:
    files = {}
    for modality in ("clinical", "dermoscopy", "multispectral"):
        found = sorted((data / modality / "images").glob(f"{lesion_id}.*"))
        files[modality] = found[0] if found else None
    return files


def test_every_lesion_gets_one_row_with_the_offline_answer(archive, tiny_checkpoint, tmp_path):
    out = tmp_path / "p.csv"
    predict.main(["--checkpoint", str(tiny_checkpoint), "--data", str(archive), "--out", str(out), "--quiet",
                  "--batch-size", "5"])
    rows = read_rows(out)
    ids = sorted(p.stem for p in (archive / "clinical" / "images").iterdir())
    assert [r["lesion_id"] for r in rows] == ids
    loaded = load_for_inference(tiny_checkpoint)
    for row in rows:
        want = predict_files(loaded, lesion_files(archive, row["lesion_id"]))  # one lesion at a time, no batching
        assert float(row["score"]) == pytest.approx(want["score"], abs=1e-4)
        assert row["severity"] == want["severity"]
        assert row["modalities"] == "+".join(want["modalities"])
        for token, weight in want["attention"].items():
            assert float(row[f"attention_{token}"]) == pytest.approx(weight, abs=1e-4)
        assert row["model_version"] == "tiny-test" and row.get("error", "") == ""


def test_unscorable_lesions_are_error_rows_and_the_rest_are_scored(archive, tiny_checkpoint, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image")
    clinical = sorted((archive / "clinical" / "images").iterdir())
    manifest = tmp_path / "m.csv"
    manifest.write_text("lesion_id,clinical,dermoscopy\n"
                        f"good,{clinical[0]},\n"
                        "unreadable,bad.jpg,\n"
                        f"gone,{clinical[1]},{tmp_path / 'nope.png'}\n"
                        "no_clinical,,\n"
                        f"good2,{clinical[2]},\n")
    out = tmp_path / "p.csv"
    predict.main(["--checkpoint", str(tiny_checkpoint), "--data", str(manifest), "--out", str(out), "--quiet"])
    rows = {r["lesion_id"]: r for r in read_rows(out)}
    assert list(rows) == ["good", "unreadable", "gone", "no_clinical", "good2"]
    assert rows["good"]["score"] and rows["good2"]["score"] and not rows["good"]["error"]
    # 415: what the server answers for a file that is not an image
    assert (rows["unreadable"]["error_field"], rows["unreadable"]["error_status"]) == ("clinical_image", "415")
    assert rows["gone"]["error_field"] == "dermoscopy_image" and "does not exist" in rows["gone"]["error"]
    assert rows["no_clinical"]["error_field"] == "clinical_image" and not rows["no_clinical"]["score"]


def test_new_answer_fields_become_columns_even_when_resuming_an_older_file(archive, uncalibrated_checkpoint,
                                                                           tmp_path, monkeypatch):
    # A checkpoint from before calibration: its answers carry no interval, so the first run writes no interval_low.
    out = tmp_path / "p.csv"
    argv = ["--checkpoint", str(uncalibrated_checkpoint), "--data", str(archive), "--out", str(out), "--quiet"]
    real = scoring.score
    calls = []

    def first_batch_only(*args, **kwargs):  # the first run stops after one batch, like a kill
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "score", first_batch_only)
    with pytest.raises(KeyboardInterrupt):
        predict.main(argv)
    first = read_rows(out)
    assert len(first) == 8 and "interval_low" not in first[0]

    def with_trust_fields(*args, **kwargs):  # the fields issue 14 adds to every answer
        return [{**a, "interval": {"low": 0.1, "high": 0.5, "coverage": 0.9}, "in_distribution": True,
                 "quality_warnings": [{"modality": "dermoscopy", "warning": "blurred"}]} for a in real(*args, **kwargs)]

    monkeypatch.setattr(scoring, "score", with_trust_fields)
    predict.main(argv)
    rows = read_rows(out)
    assert len(rows) == 24 and len({r["lesion_id"] for r in rows}) == 24
    assert [r["score"] for r in rows[:8]] == [r["score"] for r in first]  # old rows kept, new columns empty
    assert rows[0]["interval_low"] == "" and rows[8]["interval_low"] == "0.1"
    assert rows[8]["interval_coverage"] == "0.9" and rows[8]["in_distribution"] == "True"
    assert rows[8]["quality_warnings"] == '[{"modality":"dermoscopy","warning":"blurred"}]'


def test_a_row_cut_off_by_a_kill_is_removed_before_resuming(tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("lesion_id,score\nA,0.5\nB,0.")
    results = predict.ResultsFile(out)
    results.close()
    assert results.done == {"A"} and out.read_text() == "lesion_id,score\nA,0.5\n"


@pytest.mark.timeout(600)  # two CLI runs, each loading torch
def test_killed_halfway_and_rerun_scores_every_lesion_exactly_once(archive, tiny_checkpoint, tmp_path):
    out = tmp_path / "p.csv"
    argv = [sys.executable, "-m", "training.predict", "--checkpoint", str(tiny_checkpoint), "--data", str(archive),
            "--out", str(out), "--quiet", "--batch-size", "2", "--threads", "1"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not out.is_file() or len(out.read_text().splitlines()) < 9):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(read_rows(out))
    assert 8 <= partial < 24, "the kill must land halfway"
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    ids = [r["lesion_id"] for r in read_rows(out)]
    assert sorted(ids) == sorted(p.stem for p in (archive / "clinical" / "images").iterdir())
    assert len(ids) == len(set(ids)) == 24


def test_cli_errors_are_one_line_and_exit_2(tiny_checkpoint, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training.predict", "--checkpoint", str(tiny_checkpoint),
                           "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.csv")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "no such dataset" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(600)  # starts a local Ray instance
def test_ray_engine_gives_the_local_scores(archive, tiny_checkpoint, tmp_path):
    pytest.importorskip("ray")
    local, distributed = tmp_path / "local.csv", tmp_path / "ray.csv"
    common = ["--checkpoint", str(tiny_checkpoint), "--data", str(archive), "--quiet", "--batch-size", "4",
              "--threads", "1"]
    predict.main([*common, "--out", str(local)])
    predict.main([*common, "--out", str(distributed), "--engine", "ray", "--workers", "2", "--ray-num-cpus", "2"])
    want = {r["lesion_id"]: r for r in read_rows(local)}
    got = {r["lesion_id"]: r for r in read_rows(distributed)}
    assert set(got) == set(want) and len(read_rows(distributed)) == 24
    for lesion_id, row in want.items():
        assert float(got[lesion_id]["score"]) == pytest.approx(float(row["score"]), abs=1e-4)
        assert got[lesion_id]["severity"] == row["severity"]
        assert got[lesion_id]["modalities"] == row["modalities"]
