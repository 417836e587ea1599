"""The synthetic benchmark: layout, determinism, spread of the target, and that the target is visible in the images."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.severity import LABELS, severity_index
from training.synth import (
    SHIFTED,
    SynthOptions,
    draw_cohort,
    generate,
    main,
    severity_score,
)

N = 120


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "bench", n=N, seed=3)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def lab_L(path: Path) -> np.ndarray:
    """L* (0..100) of an image file -> float32 [H, W]."""
    rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[..., 0]


def mask(bench: Path, view: str, lesion_id: str) -> np.ndarray:
    return cv2.imread(str(bench / "masks" / view / f"{lesion_id}.png"), cv2.IMREAD_GRAYSCALE) > 127


def spearman(x, y) -> float:
    """Rank correlation; continuous data has no ties."""
    rank_x, rank_y = (np.argsort(np.argsort(np.asarray(v))) for v in (x, y))
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def test_layout_has_one_file_per_view_present_and_labels_in_unit_interval(bench):
    truth = read_csv(bench / "synth_truth.csv")
    with open(bench / "labels.csv", newline="") as f:
        assert next(csv.reader(f)) == ["lesion_id", "score", "patient_id"]
    labels = read_csv(bench / "labels.csv")
    assert [r["lesion_id"] for r in labels] == [f"L{i:05d}" for i in range(1, N + 1)]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in labels)
    assert all(r["patient_id"].startswith("P") and len(r["patient_id"]) == 5 for r in labels)

    def count(sub: str) -> int:
        return len(list((bench / sub).iterdir()))

    n_derm = sum(r["has_dermoscopy"] == "1" for r in truth)
    n_ms = sum(r["has_multispectral"] == "1" for r in truth)
    assert 0.70 * N < n_derm < 0.97 * N and 0.20 * N < n_ms < 0.50 * N
    assert (count("clinical/images"), count("dermoscopy/images"), count("multispectral/images")) == (N, n_derm, n_ms)
    assert count("masks/clinical") == count("masks/dermoscopy") == N
    assert (bench / "README.txt").read_text().count("score  = clip((area_n") == 1

    first = truth[0]["lesion_id"]
    assert cv2.imread(str(bench / f"clinical/images/{first}.jpg")).shape == (288, 384, 3)
    assert mask(bench, "clinical", first).shape == (288, 384)
    assert mask(bench, "dermoscopy", first).shape == (256, 256)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    a, b, c = (generate(tmp_path / name, n=4, seed=seed) for name, seed in (("a", 11), ("b", 11), ("c", 12)))
    for rel in ("labels.csv", "synth_truth.csv", "clinical/images/L00002.jpg", "masks/dermoscopy/L00002.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "labels.csv").read_bytes() != (c / "labels.csv").read_bytes()


def test_a_lesion_does_not_depend_on_how_many_lesions_are_drawn():
    assert draw_cohort(7, seed=4, opts=SynthOptions()) == draw_cohort(20, seed=4, opts=SynthOptions())[:7]


def test_every_severity_band_holds_at_least_15_percent_of_lesions(bench):
    bands = [severity_index(float(r["score"])) for r in read_csv(bench / "labels.csv")]
    shares = {LABELS[i]: bands.count(i) / len(bands) for i in range(len(LABELS))}
    assert min(shares.values()) >= 0.15, shares


def test_skin_tones_span_at_least_four_ita_bands():
    bands = {lesion.skin.band for lesion in draw_cohort(200, seed=1, opts=SynthOptions())}
    assert len(bands) >= 4, bands


def test_lesions_of_one_patient_share_the_skin_tone_in_the_table_and_in_the_images(bench):
    by_patient = defaultdict(list)
    for r in read_csv(bench / "synth_truth.csv"):
        by_patient[r["patient_id"]].append(r)
    assert len(by_patient) < N  # several lesions per patient
    for rows in by_patient.values():
        assert len({(r["skin_L"], r["skin_a"], r["skin_b"], r["skin_tone_band"]) for r in rows}) == 1
        for r in rows:
            if r["has_dermoscopy"] == "1":
                L = lab_L(bench / f"dermoscopy/images/{r['lesion_id']}.png")
                skin = np.median(L[~mask(bench, "dermoscopy", r["lesion_id"])])
                assert abs(skin - float(r["skin_L"])) < 2.0, r["lesion_id"]


def test_lesion_is_darker_than_its_surrounding_skin_in_dermoscopy_and_clinical_views(bench):
    ring = np.ones((15, 15), np.uint8)
    for r in read_csv(bench / "synth_truth.csv"):
        lesion_id = r["lesion_id"]
        if r["has_dermoscopy"] == "1":
            inside = mask(bench, "dermoscopy", lesion_id)
            L = lab_L(bench / f"dermoscopy/images/{lesion_id}.png")
            assert inside.mean() > 0.01 and L[inside].mean() < L[~inside].mean(), lesion_id
        inside = mask(bench, "clinical", lesion_id)
        around = cv2.dilate(inside.astype(np.uint8), ring).astype(bool) & ~inside  # lighting varies over the photo
        L = lab_L(bench / f"clinical/images/{lesion_id}.jpg")
        assert inside.any() and L[inside].mean() < L[around].mean(), lesion_id


def test_dermoscopy_mask_area_matches_area_fraction(bench):
    for r in read_csv(bench / "synth_truth.csv"):
        assert mask(bench, "dermoscopy", r["lesion_id"]).mean() == pytest.approx(float(r["area_fraction"]), abs=2e-3)


def test_heterogeneity_shows_as_lightness_spread_inside_the_dermoscopy_lesion(bench):
    het, spread = [], []
    for r in read_csv(bench / "synth_truth.csv"):
        if r["has_dermoscopy"] == "1":
            inside = cv2.erode(mask(bench, "dermoscopy", r["lesion_id"]).astype(np.uint8), np.ones((5, 5), np.uint8))
            het.append(float(r["heterogeneity"]))
            spread.append(lab_L(bench / f"dermoscopy/images/{r['lesion_id']}.png")[inside > 0].std())
    assert spearman(het, spread) > 0.5


def test_label_is_the_documented_formula_of_the_truth_columns(bench):
    labels = {r["lesion_id"]: float(r["score"]) for r in read_csv(bench / "labels.csv")}
    for r in read_csv(bench / "synth_truth.csv"):
        area, dark, het = (float(r[k]) for k in ("area_fraction", "darkness", "heterogeneity"))
        expected = (min(area / 0.36, 1.0) * (dark + het) / 2) ** 0.6  # as the module docstring states it
        assert labels[r["lesion_id"]] == pytest.approx(expected, abs=1e-4)
        assert float(severity_score(area, dark, het)) == pytest.approx(expected, abs=1e-12)


def test_non_empty_folder_is_refused_by_name_unless_overwrite(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(out)):
        generate(out, n=2, seed=0)
    generate(out, n=2, seed=0, overwrite=True)
    generate(out, n=1, seed=0, overwrite=True)  # replaces its own outputs, leaves the user's file
    assert len(read_csv(out / "labels.csv")) == 1 and len(list((out / "masks/clinical").iterdir())) == 1
    assert (out / "notes.txt").read_text() == "keep me"


def test_unknown_option_is_a_value_error_listing_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="clinical_size"):
        generate(tmp_path / "x", n=1, seed=0, clinical_sise=(64, 48))


def test_cli_writes_requested_sizes_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    sizes = ["--clinical-size", "200x150", "--dermoscopy-size", "96"]
    every_view = ["--dermoscopy-fraction", "1", "--multispectral-fraction", "1"]
    main(["--out", str(out), "--n", "3", "--seed", "2", *sizes, *every_view])
    assert "3 lesions" in capsys.readouterr().out
    assert cv2.imread(str(out / "clinical/images/L00001.jpg")).shape == (150, 200, 3)
    assert mask(out, "clinical", "L00001").shape == (150, 200)
    for view in ("dermoscopy", "multispectral"):
        assert cv2.imread(str(out / f"{view}/images/L00003.png")).shape == (96, 96, 3)


# --------------------------------------------------------------------------------------------------- shifted benchmarks


def shifted_pair(tmp_path: Path, **shift) -> tuple[Path, Path]:
    """The same lesions written by the default generator and with ``shift``: every view of each, small images."""
    common = {"n": 12, "seed": 8, "clinical_size": (128, 96), "dermoscopy_size": 64, "dermoscopy_fraction": 1.0,
              "multispectral_fraction": 1.0}
    return generate(tmp_path / "plain", **common), generate(tmp_path / "shifted", **common, **shift)


def test_shift_options_left_at_their_defaults_change_no_byte(tmp_path):
    defaults = {f: getattr(SynthOptions(), f) for f in SHIFTED}
    plain, same = shifted_pair(tmp_path, **defaults)
    for rel in ("labels.csv", "synth_truth.csv", "clinical/images/L00003.jpg", "dermoscopy/images/L00003.png",
                "multispectral/images/L00003.png", "masks/clinical/L00003.png"):
        assert (plain / rel).read_bytes() == (same / rel).read_bytes(), rel


def test_lighting_shift_changes_the_photos_but_not_the_truth_or_the_relative_darkness(tmp_path):
    plain, lit = shifted_pair(tmp_path, lighting=1.0)
    assert (plain / "synth_truth.csv").read_bytes() == (lit / "synth_truth.csv").read_bytes()
    changes, ratios = [], []
    for r in read_csv(plain / "synth_truth.csv"):
        lesion_id = r["lesion_id"]
        for view in ("dermoscopy", "multispectral"):
            a, b = (cv2.imread(str(d / f"{view}/images/{lesion_id}.png")).astype(np.float32) for d in (plain, lit))
            changes.append(np.abs(a - b).mean())
        inside = mask(plain, "dermoscopy", lesion_id)
        for d in (plain, lit):  # lesion L* / skin L* in the evenly lit close view, before and after the shift
            L = lab_L(d / f"dermoscopy/images/{lesion_id}.png")
            ratios.append(np.median(L[inside]) / np.median(L[~inside]))
    assert np.median(changes) > 3.0  # 8-bit levels: a visible change of exposure or colour
    before, after = np.array(ratios[0::2]), np.array(ratios[1::2])
    assert np.median(np.abs(after - before)) < 0.05  # L* is not linear in the gain, so only close


def test_skin_tone_mix_follows_the_ita_range():
    plain = [x.skin.ita_deg for x in draw_cohort(200, seed=2, opts=SynthOptions())]
    dark = [x.skin.ita_deg for x in draw_cohort(200, seed=2, opts=SynthOptions(ita_range=(-50.0, 10.0)))]
    assert max(dark) <= 10.0 + 1e-9 and min(dark) >= -50.0 - 1e-9
    assert max(plain) > 30.0  # the default mix reaches light skin; the shifted one never does


def test_irregular_shapes_keep_the_exact_area_and_stay_inside_the_field(tmp_path):
    _, irregular = shifted_pair(tmp_path, shape_irregularity=1.8)
    plain_amps = [sum(x.outline.amps) for x in draw_cohort(50, seed=8, opts=SynthOptions())]
    shaped = draw_cohort(50, seed=8, opts=SynthOptions(shape_irregularity=1.8))
    assert np.mean([sum(x.outline.amps) for x in shaped]) > 1.4 * np.mean(plain_amps)
    assert max(x.outline.max_radius for x in shaped) <= 0.48
    for r in read_csv(irregular / "synth_truth.csv"):
        assert mask(irregular, "dermoscopy", r["lesion_id"]).mean() == pytest.approx(float(r["area_fraction"]),
                                                                                    abs=4e-3)


def test_clinical_zoom_frames_the_lesion_larger(tmp_path):
    plain, zoomed = shifted_pair(tmp_path, clinical_scale=(0.7, 0.8))
    for r in read_csv(plain / "synth_truth.csv"):
        small, large = (mask(d, "clinical", r["lesion_id"]).mean() for d in (plain, zoomed))
        assert large > 1.5 * small, r["lesion_id"]  # area grows with the square of the scale: >= (0.7/0.55)^2


def test_camera_noise_and_jpeg_quality_degrade_the_clinical_photo(tmp_path):
    plain, noisy = shifted_pair(tmp_path, camera_noise=8.0, jpeg_quality=40)

    def roughness(path: Path) -> float:  # high-frequency energy: pixel minus its 3x3 blur
        image = cv2.imread(str(path)).astype(np.float32)
        return float(np.abs(image - cv2.blur(image, (3, 3))).mean())

    for view, name in (("dermoscopy", "L00001.png"), ("clinical", "L00001.jpg")):
        assert roughness(noisy / view / "images" / name) > 1.5 * roughness(plain / view / "images" / name), view


def test_cli_shifted_writes_the_documented_shift_and_single_options_override_it(tmp_path, capsys):
    main(["--out", str(tmp_path / "s"), "--n", "2", "--seed", "1", "--clinical-size", "128x96",
          "--dermoscopy-size", "64", "--shifted", "--jpeg-quality", "80"])
    header = (tmp_path / "s" / "README.txt").read_text().splitlines()[0]
    assert "lighting=1.0" in header and "shape_irregularity=1.8" in header and "jpeg_quality=80" in header
    assert "ita_range=(-50.0, 30.0)" in header and "2 lesions" in capsys.readouterr().out
    with pytest.raises(ValueError, match="lighting"):  # the CLI wrapper (model.cli.run) makes it one line, exit 2
        main(["--out", str(tmp_path / "bad"), "--n", "2", "--lighting", "5"])
