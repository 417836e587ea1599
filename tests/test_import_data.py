"""Derm7pt and ISIC Archive trees -> manifest -> train -> evaluate, on fixture trees in the real layouts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import load_for_inference
from model.colorimetry import measure
from model.preprocessing import load_image
from tests.dataset_trees import derm7pt_tree, isic_tree
from tests.test_training import TINY_RUN
from training import evaluate, import_data, train
from training.data import index_dataset

ROOT = Path(__file__).resolve().parents[1]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def same_file(a: str | Path, b: str | Path) -> bool:
    return os.path.samefile(a, b)


@pytest.fixture(scope="module")
def derm7pt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("derm7pt")
    release, expected = derm7pt_tree(tmp / "download", tmp / "work")
    labels = tmp / "masi.csv"  # a MASI-like 0..48 score keyed by case_num; the first usable case left unlabelled
    rows = [{"case_num": e["source_id"], "masi": f"{(int(e['source_id']) * 5) % 49}"}
            for e in expected.lesions.values()][1:]
    rows.append({"case_num": "999", "masi": "3"})  # no such case
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case_num", "masi"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp / "manifests" / "derm7pt.csv"
    import_data.main(["derm7pt", str(release.parent), "--out", str(out), "--labels", str(labels),
                      "--label-column", "masi", "--label-range", "0", "48", "--split", "official"])
    return out, expected, rows


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("isic")
    source, expected = isic_tree(tmp / "download", tmp / "work")
    out = tmp / "isic.csv"
    import_data.main(["isic", str(source), "--out", str(out), "--weak-labels", "dermoscopy"])
    return out, expected, source


@pytest.mark.timeout(600)  # the first test builds the fixture tree and imports it
def test_derm7pt_manifest_has_every_usable_case_with_its_files_split_and_site(derm7pt):
    out, expected, _ = derm7pt
    rows = {r["lesion_id"]: r for r in read_csv(out)}
    assert set(rows) == set(expected.lesions)
    for lesion_id, want in expected.lesions.items():
        row = rows[lesion_id]
        assert same_file(out.parent / row["clinical"], want["clinical"])  # odd casing resolved
        if want["dermoscopy"]:
            assert same_file(out.parent / row["dermoscopy"], want["dermoscopy"])
        else:
            assert row["dermoscopy"] == ""
        assert (row["patient_id"], row["source_id"], row["site"]) == (want["patient_id"], want["source_id"],
                                                                      want["site"])
        assert row["split"] == expected.splits[lesion_id]


def test_derm7pt_odd_casing_on_disk_really_differs_from_meta_csv(derm7pt):
    _, expected, _ = derm7pt
    odd = [w for w in expected.lesions.values() if Path(w["clinical"]).name != Path(w["clinical"]).name.lower()]
    assert odd, "the fixture must hold files whose case differs from meta.csv"
    for want in odd:
        assert not Path(str(want["clinical"]).replace(Path(want["clinical"]).name,
                                                      Path(want["clinical"]).name.lower())).exists()


def test_derm7pt_every_unusable_case_is_listed_with_its_reason(derm7pt):
    out, expected, _ = derm7pt
    problems = read_csv(import_data.problems_path(out))
    listed = {(p["source_id"], p["reason"]) for p in problems if p["reason"] not in ("no label",
                                                                                     "label for an unknown lesion")}
    assert listed == expected.problems
    meta_rows = len(read_csv(out.parent.parent / "download" / "release_v0" / "meta" / "meta.csv"))
    dropped = {p["source_id"] for p in problems if p["source_row"].startswith("meta.csv:")}
    kept = {r["source_id"] for r in read_csv(out)}
    assert len(kept) + len(dropped - kept) == meta_rows  # every meta.csv row is in the manifest or listed


def test_derm7pt_labels_are_rescaled_and_unlabelled_or_unknown_rows_are_listed(derm7pt):
    out, expected, label_rows = derm7pt
    rows = {r["source_id"]: r for r in read_csv(out)}
    for given in label_rows[:-1]:
        assert float(rows[given["case_num"]]["score"]) == pytest.approx(int(given["masi"]) / 48, abs=1e-6)
    first = next(iter(expected.lesions.values()))["source_id"]
    assert rows[first]["score"] == ""
    problems = {(p["source_id"], p["reason"]) for p in read_csv(import_data.problems_path(out))}
    assert (first, "no label") in problems and ("999", "label for an unknown lesion") in problems


@pytest.mark.timeout(600)  # the first ISIC test builds the fixture tree and imports it
def test_isic_lesions_group_images_and_patients_and_pick_close_up_and_first_dermoscopic(isic):
    out, expected, _ = isic
    rows = {r["lesion_id"]: r for r in read_csv(out)}
    assert set(rows) == set(expected.lesions)
    for lesion_id, want in expected.lesions.items():
        row = rows[lesion_id]
        assert Path(row["clinical"]).stem.upper() == want["clinical_id"]
        assert Path(row["dermoscopy"]).stem.upper() == want["dermoscopy_id"] if want["dermoscopy_id"] \
            else row["dermoscopy"] == ""
        assert (out.parent / row["clinical"]).is_file()
        assert (row["patient_id"], row["site"]) == (want["patient_id"], want["site"])
        assert row["fitzpatrick"] in ("II", "IV", "VI")
    assert any(Path(r["clinical"]).name.startswith("isic_") for r in rows.values())  # odd casing resolved


def test_isic_every_unused_image_is_listed_with_its_reason(isic):
    out, expected, source = isic
    problems = read_csv(import_data.problems_path(out))
    listed = {(p["source_id"], p["reason"]) for p in problems if p["reason"] not in ("no label", "weak label failed")}
    assert listed == expected.problems
    used = {Path(r[m]).stem.upper() for r in read_csv(out) for m in ("clinical", "dermoscopy") if r[m]}
    metadata_ids = {r["isic_id"] for r in read_csv(source / "metadata.csv")}
    assert used | {s for s, _ in listed} == metadata_ids


def test_isic_weak_labels_are_the_colorimetric_severity_of_the_dermoscopy_image(isic):
    out, _, _ = isic
    problems = {p["lesion_id"]: p for p in read_csv(import_data.problems_path(out))
                if p["reason"] == "weak label failed"}
    for row in read_csv(out):
        if not row["dermoscopy"]:
            assert row["score"] == "" and row["lesion_id"] in problems
            continue
        result = measure(np.asarray(load_image(out.parent / row["dermoscopy"])))
        if row["score"]:
            assert float(row["score"]) == pytest.approx(result.severity, abs=1e-4)
            assert row["label_source"].startswith("weak:")
            assert row["skin_tone_band"] == result.skin_tone_band
        else:
            assert row["lesion_id"] in problems


@pytest.mark.timeout(600)  # fixture tree, import, a tiny training run and evaluate
def test_training_honours_the_official_split_and_evaluate_scores_the_test_cases(derm7pt, tmp_path):
    out, expected, _ = derm7pt
    run = tmp_path / "run"
    argv = ["--data", str(out), "--out", str(run), "--quiet",
            "--config", str(ROOT / "training" / "configs" / "demo.yaml")]
    for item in [*TINY_RUN, "training.epochs=1"]:
        argv += ["--set", item]
    train.main(argv)
    split = load_for_inference(run / "best_model.pth").provenance["split"]
    labelled = {r["lesion_id"] for r in read_csv(out) if r["score"]}
    for name in ("train", "val", "test"):
        assert set(split[name]) == {i for i, s in expected.splits.items() if s == name and i in labelled}, name
    summary = evaluate.main(["--checkpoint", str(run / "best_model.pth"), "--data", str(out),
                             "--out", str(tmp_path / "eval"), "--split", "test"])
    assert summary["n_lesions"] == len(split["test"])
    assert summary["skin_tone_source"] == "manifest"
    sites = {r["site"] for r in read_csv(out) if r["lesion_id"] in set(split["test"])}
    assert set(summary["by_site"]) == sites
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["split"] == "test"


@pytest.mark.timeout(600)  # fixture tree, import with weak labels, a tiny training run
def test_training_on_isic_keeps_each_patient_on_one_side(isic, tmp_path):
    out, expected, _ = isic
    run = tmp_path / "run"
    argv = ["--data", str(out), "--out", str(run), "--quiet",
            "--config", str(ROOT / "training" / "configs" / "demo.yaml")]
    for item in [*TINY_RUN, "training.epochs=1", "data.val_fraction=0.3"]:
        argv += ["--set", item]
    train.main(argv)
    split = load_for_inference(run / "best_model.pth").provenance["split"]
    patient = {i: e["patient_id"] for i, e in expected.lesions.items()}
    assert split["val"] and not {patient[i] for i in split["train"]} & {patient[i] for i in split["val"]}
    assert "test" not in split


def test_a_split_given_for_some_rows_only_is_an_error(derm7pt, tmp_path):
    out, _, _ = derm7pt
    rows = read_csv(out)
    rows[1]["split"] = ""  # rows[0] has no label: it is skipped before the split
    for row in rows:
        for m in ("clinical", "dermoscopy"):
            row[m] = str(out.parent / row[m]) if row[m] else ""
    partial = tmp_path / "partial.csv"
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match="have no split"):
        train.build_loaders(partial, train.load_config(ROOT / "training" / "configs" / "demo.yaml", TINY_RUN))


def test_old_manifests_without_the_new_columns_still_load(tmp_path):
    from tests.lesion_data import write_image
    write_image(tmp_path / "a.jpg", 1)
    (tmp_path / "m.csv").write_text("lesion_id,clinical,score\nA,a.jpg,0.5\n")
    lesion = index_dataset(tmp_path / "m.csv").lesions[0]
    assert (lesion.split, lesion.skin_tone_band, lesion.site) == (None, None, None)


@pytest.mark.parametrize("args, message", [
    (["isic", "{src}", "--split", "official"], "no official split"),
    (["derm7pt", "{src}"], "meta/meta.csv"),
    (["isic", "{src}", "--labels", "{src}/metadata.csv"], "--label-column"),
])
def test_cli_user_errors_are_one_line_and_exit_2(isic, tmp_path, capsys, args, message):
    _, _, source = isic
    argv = [a.replace("{src}", str(source)) for a in args] + ["--out", str(tmp_path / "m.csv")]
    with pytest.raises(SystemExit) as exit_info:
        import_data.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_cli_user_error_prints_no_traceback(isic, tmp_path):
    _, _, source = isic
    proc = subprocess.run([sys.executable, "-m", "training.import_data", "isic", str(source), "--split", "official",
                           "--out", str(tmp_path / "m.csv")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "import_data: --split official: isic has no official split; leave it out " \
                                  "(training then splits by patient)"


def test_a_label_outside_the_given_range_is_an_error_naming_the_row(derm7pt, tmp_path):
    out, _, _ = derm7pt
    release = out.parent.parent / "download"
    labels = tmp_path / "l.csv"
    labels.write_text("case_num,masi\n1,60\n")
    with pytest.raises(SystemExit):
        import_data.main(["derm7pt", str(release), "--out", str(tmp_path / "m.csv"), "--labels", str(labels),
                          "--label-column", "masi", "--label-range", "0", "48"])
    assert not (tmp_path / "m.csv").exists()
