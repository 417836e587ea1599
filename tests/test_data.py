"""Dataset indexing, the patient split, and LesionDataset's tensors, augmentation and modality dropout."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from model.config import DataConfig
from model.preprocessing import InputError
from tests.lesion_data import make_layout, write_image, write_labels
from training.data import (
    Augmentation,
    Lesion,
    LesionDataset,
    affine_paired,
    augment_paired,
    augment_sample,
    color_jitter,
    drop_modalities,
    index_dataset,
    split_by_patient,
)

CFG = DataConfig(image_size=32)
IDS = ["a", "b", "c", "d"]


def test_lesions_are_matched_by_stem_whatever_the_extension_case(tmp_path):
    make_layout(tmp_path, ["a", "b"], dermoscopy=[], labelled=["a", "b"])
    (tmp_path / "clinical/images/b.jpg").rename(tmp_path / "clinical/images/b.JPEG")
    write_image(tmp_path / "dermoscopy/images/a.PNG", seed=9)
    write_image(tmp_path / "multispectral/images/b.bmp", seed=8)
    (tmp_path / "clinical/images/notes.txt").write_text("ignored")
    lesions = {x.lesion_id: x for x in index_dataset(tmp_path).lesions}
    assert lesions["a"].dermoscopy.name == "a.PNG" and lesions["a"].multispectral is None
    assert lesions["b"].clinical.name == "b.JPEG" and lesions["b"].multispectral.name == "b.bmp"


def test_missing_labels_csv_is_an_error_naming_the_file(tmp_path):
    make_layout(tmp_path, IDS)
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels\.csv.*lesion_id,score"):
        index_dataset(tmp_path)


def test_missing_clinical_folder_is_an_error_naming_the_folder(tmp_path):
    write_labels(tmp_path, [{"lesion_id": "a", "score": 0.5}])
    with pytest.raises(FileNotFoundError, match=r"clinical/images"):
        index_dataset(tmp_path)


def test_two_images_with_one_stem_is_an_error_naming_both_files(tmp_path):
    make_layout(tmp_path, IDS)
    write_image(tmp_path / "dermoscopy/images/a.jpg", seed=5)
    with pytest.raises(ValueError, match=r"a\.jpg.*a\.png|a\.png.*a\.jpg") as info:
        index_dataset(tmp_path)
    assert "dermoscopy" in str(info.value)


@pytest.mark.parametrize("bad", ["1.7", "-0.1", "high", "nan"])
def test_a_bad_score_is_an_error_naming_the_file_and_line(tmp_path, bad):
    make_layout(tmp_path, IDS)
    write_labels(tmp_path, [{"lesion_id": i, "score": 0.5} for i in IDS[:2]] + [{"lesion_id": "c", "score": bad}])
    with pytest.raises(ValueError, match=rf"labels\.csv, line 4: score '?{bad}'?"):
        index_dataset(tmp_path)


def test_a_repeated_lesion_id_in_labels_is_an_error(tmp_path):
    make_layout(tmp_path, IDS)
    write_labels(tmp_path, [{"lesion_id": "a", "score": 0.1}, {"lesion_id": "a", "score": 0.2}])
    with pytest.raises(ValueError, match="line 3: lesion_id 'a' appears twice"):
        index_dataset(tmp_path)


def test_lesions_without_clinical_image_or_label_are_counted_and_logged(tmp_path, caplog):
    make_layout(tmp_path, ["a", "b", "c"], dermoscopy=["a", "x"], labelled=["a", "b", "y"])
    write_labels(tmp_path, [{"lesion_id": "a", "score": 0.1}, {"lesion_id": "b", "score": ""},
                            {"lesion_id": "y", "score": 0.3}])
    with caplog.at_level(logging.WARNING):
        index = index_dataset(tmp_path)
    assert [x.lesion_id for x in index.lesions] == ["a"]
    assert index.skipped["no_label"] == ["b", "c"]  # b: empty score cell; c: no row
    assert index.skipped["no_clinical_image"] == ["x", "y"]  # x: dermoscopy only; y: label only
    assert "no clinical image" in caplog.text and "no label" in caplog.text


def test_without_patient_id_each_lesion_is_its_own_patient_and_extra_columns_are_ignored(tmp_path):
    make_layout(tmp_path, IDS)
    write_labels(tmp_path, [{"lesion_id": i, "score": 0.5, "site": "arm"} for i in IDS])
    assert [x.patient_id for x in index_dataset(tmp_path).lesions] == IDS


def test_manifest_csv_takes_relative_and_absolute_paths_and_empty_cells(tmp_path):
    images = make_layout(tmp_path / "imgs", ["a", "b"], multispectral=["b"])
    write_labels(tmp_path, [
        {"lesion_id": "a", "clinical": "imgs/clinical/images/a.jpg", "dermoscopy": "", "multispectral": "",
         "score": 0.2, "patient_id": "p1"},
        {"lesion_id": "b", "clinical": str(images / "clinical/images/b.jpg"),
         "dermoscopy": "imgs/dermoscopy/images/b.png", "multispectral": "imgs/multispectral/images/b.png",
         "score": 0.9, "patient_id": "p2"},
        {"lesion_id": "c", "clinical": "", "dermoscopy": "", "multispectral": "", "score": 0.5, "patient_id": "p3"},
    ], name="manifest.csv")
    index = index_dataset(tmp_path / "manifest.csv")
    a, b = index.lesions
    assert a.dermoscopy is None and a.patient_id == "p1" and a.score == 0.2
    assert b.clinical.is_absolute() and b.multispectral.name == "b.png"
    assert index.skipped["no_clinical_image"] == ["c"]


def test_manifest_path_to_a_missing_file_is_an_error_naming_line_and_path(tmp_path):
    write_labels(tmp_path, [{"lesion_id": "a", "clinical": "nowhere/a.jpg", "score": 0.2}], name="m.csv")
    with pytest.raises(FileNotFoundError, match=r"m\.csv, line 2: clinical image .*nowhere/a\.jpg"):
        index_dataset(tmp_path / "m.csv")


def _lesions(n: int, patients: int) -> list[Lesion]:
    return [Lesion(f"L{i:03d}", Path(f"L{i}.jpg"), i / n, f"P{i % patients}") for i in range(n)]


def test_patient_split_never_puts_a_patient_on_both_sides():
    train, val = split_by_patient(_lesions(200, 37), val_fraction=0.2, seed=3)
    assert not {x.patient_id for x in train} & {x.patient_id for x in val}
    assert len(train) + len(val) == 200 and 30 <= len(val) <= 50


def test_patient_split_is_reproducible_with_its_seed_and_ignores_file_order():
    lesions = _lesions(100, 30)
    first = split_by_patient(lesions, 0.2, seed=7)[1]
    again = split_by_patient(list(reversed(lesions)), 0.2, seed=7)[1]
    other = split_by_patient(lesions, 0.2, seed=8)[1]
    assert {x.lesion_id for x in first} == {x.lesion_id for x in again}
    assert {x.lesion_id for x in first} != {x.lesion_id for x in other}


def test_a_single_patient_cannot_be_split():
    with pytest.raises(ValueError, match="one patient"):
        split_by_patient(_lesions(10, 1))


@pytest.mark.parametrize("simulate", [True, False])
def test_dataset_sample_has_every_modality_shape_and_the_aux_mask(tmp_path, simulate):
    make_layout(tmp_path, ["a", "b", "c"], dermoscopy=["a", "b"], multispectral=["a"])
    cfg = DataConfig(image_size=32, simulate_multispectral=simulate)
    dataset = LesionDataset(index_dataset(tmp_path).lesions, cfg, train=False)
    a, b, c = dataset[0], dataset[1], dataset[2]
    for sample in (a, b, c):
        assert all(sample[m].shape == (3, 32, 32) and sample[m].dtype == torch.float32
                   for m in ("clinical", "dermoscopy", "multispectral"))
        assert sample["score"].dtype == torch.float32 and sample["score"].shape == ()
    assert a["aux_mask"].tolist() == [True, True]
    assert b["aux_mask"].tolist() == [True, simulate]
    assert c["aux_mask"].tolist() == [False, simulate]
    assert not c["dermoscopy"].any()
    assert b["multispectral"].any() == simulate


def test_augmentation_uses_one_draw_for_every_modality():
    torch.manual_seed(0)
    image = torch.randn(3, 16, 16)
    seen = set()
    for _ in range(40):
        out = augment_paired({"clinical": image, "dermoscopy": image.clone(), "multispectral": image.clone()})
        assert torch.equal(out["clinical"], out["dermoscopy"]) and torch.equal(out["clinical"], out["multispectral"])
        seen.add(out["clinical"].flatten()[:4].tolist().__repr__())
    assert len(seen) == 8  # all rotations and flips occur


def test_training_samples_are_exact_symmetries_of_the_eval_tensors(tmp_path):
    make_layout(tmp_path, ["a"])
    lesions = index_dataset(tmp_path).lesions
    evaluation = LesionDataset(lesions, CFG, train=False)[0]["dermoscopy"]
    augmented = LesionDataset(lesions, CFG, train=True)[0]["dermoscopy"]
    symmetries = [torch.rot90(evaluation, k, (1, 2)).flip(2) if f else torch.rot90(evaluation, k, (1, 2))
                  for k in range(4) for f in (0, 1)]
    assert any(torch.equal(augmented, s) for s in symmetries)


def blob_image(size: int = 32, at: tuple[int, int] = (8, 20)) -> torch.Tensor:
    """``[3, S, S]``: zeros with a bright 2x2 blob whose top-left pixel is ``at`` (row, column)."""
    image = torch.zeros(3, size, size)
    image[:, at[0]:at[0] + 2, at[1]:at[1] + 2] = 1.0
    return image


def centroid(image: torch.Tensor) -> torch.Tensor:
    """(row, column) of the intensity centroid of channel 0, in pixel-centre coordinates."""
    weights = image[0].clamp(min=0)
    rows, cols = torch.meshgrid(torch.arange(image.shape[1]), torch.arange(image.shape[2]), indexing="ij")
    return torch.stack([(weights * rows).sum(), (weights * cols).sum()]) / weights.sum()


def test_small_rotations_and_crops_use_one_draw_for_every_modality():
    image = blob_image()
    generator = torch.Generator().manual_seed(3)
    moved = 0
    for _ in range(20):
        out = affine_paired({"clinical": image, "dermoscopy": image.clone(), "multispectral": image.clone()},
                            rotation_degrees=30, crop_scale=0.7, generator=generator)
        assert torch.equal(out["clinical"], out["dermoscopy"]) and torch.equal(out["clinical"], out["multispectral"])
        moved += not torch.allclose(out["clinical"], image)
    assert moved == 20


def test_a_rotation_turns_the_image_about_its_centre():
    """Without crops, every draw keeps the blob's distance from the image centre and turns it by at most the
    configured angle (the reference is plain geometry on the blob's centroid)."""
    image = blob_image()
    centre = torch.tensor([15.5, 15.5])
    before = centroid(image) - centre
    generator = torch.Generator().manual_seed(0)
    angles = []
    for _ in range(30):
        after = centroid(affine_paired({"clinical": image}, 20, 1.0, generator)["clinical"]) - centre
        assert after.norm() == pytest.approx(float(before.norm()), abs=0.6)
        turn = torch.atan2(after[0], after[1]) - torch.atan2(before[0], before[1])
        angles.append(float(torch.rad2deg(torch.remainder(turn + torch.pi, 2 * torch.pi) - torch.pi)))
    assert max(abs(a) for a in angles) <= 20 + 2 and max(angles) - min(angles) > 20  # spread over +-20


def test_a_crop_zooms_in_by_at_most_one_over_crop_scale():
    image = blob_image(at=(20, 20))  # off-centre, so a zoom moves it outward
    generator = torch.Generator().manual_seed(1)
    zooms = []
    for _ in range(30):
        out = affine_paired({"clinical": image}, 0, 0.8, generator)["clinical"]
        zooms.append(float(out[0].clamp(min=0).sum() / image[0].sum()))  # area grows with the zoom squared
        assert out[0].max() > 0.2  # the blob is still in view (0.8 of the side keeps the central region)
    assert 1.0 <= min(zooms) and max(zooms) <= (1 / 0.8) ** 2 + 0.15 and max(zooms) > 1.2


def test_color_jitter_draws_per_modality_and_leaves_absent_modalities_zero():
    cfg = DataConfig(image_size=16)
    flat = (torch.full((3, 16, 16), 0.5) - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(cfg.std).view(3, 1, 1)
    sample = {"clinical": flat, "dermoscopy": flat.clone(), "multispectral": torch.zeros(3, 16, 16),
              "aux_mask": torch.tensor([True, False])}
    aug = Augmentation(symmetries=False, color_jitter={"clinical": 0.3, "dermoscopy": 0.3, "multispectral": 0.3})
    out = augment_sample(sample, aug, cfg, torch.Generator().manual_seed(0))
    assert not torch.equal(out["clinical"], out["dermoscopy"])  # two captures, two draws
    assert not out["multispectral"].any()  # absent: still the zeros the model masks out
    raw = out["clinical"] * torch.tensor(cfg.std).view(3, 1, 1) + torch.tensor(cfg.mean).view(3, 1, 1)
    low, high = 0.5 * 0.7 * 0.9 * 0.85, 0.5 * 1.3 * 1.1 * 1.15  # gain, cast and gradient at their extremes
    assert low - 1e-5 <= raw.min() and raw.max() <= high + 1e-5


def test_color_jitter_keeps_the_ratio_of_neighbouring_pixels():
    """Gains multiply lesion and skin alike: the darkness of a lesion relative to the skin next to it survives."""
    cfg = DataConfig(image_size=16)
    raw = torch.full((3, 16, 16), 0.6)
    raw[:, 6:10, 6:10] = 0.3  # a lesion at half the skin's value
    image = (raw - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(cfg.std).view(3, 1, 1)
    out = color_jitter(image, "clinical", 0.3, cfg, torch.Generator().manual_seed(5))
    out_raw = out * torch.tensor(cfg.std).view(3, 1, 1) + torch.tensor(cfg.mean).view(3, 1, 1)
    ratio = out_raw[:, 7, 7] / out_raw[:, 7, 4]  # inside vs. three pixels away
    torch.testing.assert_close(ratio, torch.full((3,), 0.5), atol=0.04, rtol=0)  # the gradient moves it a little


def test_clinical_crops_zoom_the_clinical_photo_alone():
    """clinical_crop_scale: the clinical view zooms in (its blob grows by up to 1/scale squared); the close views,
    whose framing is part of the score, are untouched."""
    cfg = DataConfig(image_size=32)
    image = blob_image(at=(20, 20))
    aug = Augmentation(symmetries=False, clinical_crop_scale=0.8)
    generator = torch.Generator().manual_seed(2)
    zooms = []
    for _ in range(20):
        sample = {"clinical": image, "dermoscopy": image.clone(), "multispectral": image.clone(),
                  "aux_mask": torch.tensor([True, True])}
        out = augment_sample(sample, aug, cfg, generator)
        assert torch.equal(out["dermoscopy"], image) and torch.equal(out["multispectral"], image)
        zooms.append(float(out["clinical"][0].clamp(min=0).sum() / image[0].sum()))
    assert 1.0 <= min(zooms) and max(zooms) <= (1 / 0.8) ** 2 + 0.15 and max(zooms) > 1.2


def test_sensor_noise_has_the_configured_spread_and_leaves_absent_views_zero():
    """noise=8: per view, Gaussian noise whose std (in 8-bit levels of the view's own [0, 1] space) is uniform in
    [0, 8], so over many draws the measured std spans most of that range and never exceeds it."""
    cfg = DataConfig(image_size=64)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    flat = (torch.full((3, 64, 64), 0.5) - mean) / std
    generator = torch.Generator().manual_seed(4)
    measured = []
    for _ in range(40):
        sample = {"clinical": flat, "dermoscopy": flat.clone(), "multispectral": torch.zeros(3, 64, 64),
                  "aux_mask": torch.tensor([True, False])}
        out = augment_sample(sample, Augmentation(symmetries=False, noise=8.0), cfg, generator)
        assert not out["multispectral"].any()
        raw = out["clinical"] * std + mean
        measured.append(float((raw - 0.5).std()) * 255)
        assert abs(float(raw.mean()) - 0.5) < 0.01  # zero-mean noise
    assert max(measured) <= 8.0 * 1.05 and min(measured) < 2.0 and max(measured) > 6.0
    with pytest.raises(ValueError, match="training.noise"):
        Augmentation(noise=-1.0)
    with pytest.raises(ValueError, match="training.clinical_crop_scale"):
        Augmentation(clinical_crop_scale=1.5)


def test_unknown_jitter_modality_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'thermal'"):
        Augmentation(color_jitter={"thermal": 0.2})


def test_modality_dropout_clears_aux_bits_but_never_the_clinical_image():
    sample = {"clinical": torch.ones(3, 4, 4), "dermoscopy": torch.ones(3, 4, 4),
              "multispectral": torch.ones(3, 4, 4), "aux_mask": torch.tensor([True, True])}
    dropped = drop_modalities(sample, p=1.0)
    assert dropped["aux_mask"].tolist() == [False, False] and "clinical" not in dropped
    assert not dropped["dermoscopy"].any() and not dropped["multispectral"].any()
    assert drop_modalities(sample, p=0.0)["aux_mask"].tolist() == [True, True]


def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path):
    make_layout(tmp_path, IDS)
    (tmp_path / "dermoscopy/images/b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = LesionDataset(index_dataset(tmp_path).lesions, CFG, train=False)
    with pytest.raises(InputError, match=r"dermoscopy/images/b\.png.*skip_bad_images"):
        dataset.preload()


def test_skip_bad_images_skips_and_returns_the_lesion(tmp_path):
    make_layout(tmp_path, IDS)
    (tmp_path / "clinical/images/c.jpg").write_bytes(b"not an image")
    dataset = LesionDataset(index_dataset(tmp_path).lesions, CFG, train=False, cache=True)
    assert dataset.preload(skip_bad_images=True) == ["c"]
    assert [dataset[i]["lesion_id"] for i in range(len(dataset))] == ["a", "b", "d"]
