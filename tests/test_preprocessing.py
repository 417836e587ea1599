"""Train/serve parity: the served tensor equals the validation dataset's tensor bit for bit, for every modality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import DataConfig
from model.preprocessing import image_to_tensor, preprocess_bytes, pseudo_multispectral, shades_of_grey
from tests.lesion_data import make_layout, write_image
from training.data import LesionDataset, index_dataset

# 64 px with JPEG draft decoding on: the clinical JPEG is big enough that draft scaling actually applies.
DATA_CFG = DataConfig(image_size=64, jpeg_draft=True)


@pytest.fixture
def lesion_dir(tmp_path):
    """Lesion "a" has all three files; lesion "b" has no multispectral file (simulated from its dermoscopy)."""
    make_layout(tmp_path, ["a", "b"], multispectral=["a"])
    write_image(tmp_path / "clinical/images/a.jpg", seed=11, size=(400, 300))
    return tmp_path


def _val_sample(root, lesion_id: str, cfg: DataConfig = DATA_CFG) -> dict:
    dataset = LesionDataset(index_dataset(root).lesions, cfg, train=False)
    return next(dataset[i] for i in range(len(dataset)) if dataset[i]["lesion_id"] == lesion_id)


@pytest.mark.parametrize("modality, folder, suffix", [
    ("clinical", "clinical", ".jpg"),
    ("dermoscopy", "dermoscopy", ".png"),
    ("multispectral", "multispectral", ".png"),
])
def test_served_tensor_is_identical_to_validation_tensor(lesion_dir, modality, folder, suffix):
    served = preprocess_bytes((lesion_dir / folder / "images" / f"a{suffix}").read_bytes(), modality, DATA_CFG)
    val = _val_sample(lesion_dir, "a")[modality]
    torch.testing.assert_close(served, val, rtol=0, atol=0)


def test_simulated_multispectral_is_the_served_multispectral_view_of_the_dermoscopy_bytes(lesion_dir):
    served = preprocess_bytes((lesion_dir / "dermoscopy/images/b.png").read_bytes(), "multispectral", DATA_CFG)
    val = _val_sample(lesion_dir, "b")
    assert val["aux_mask"].tolist() == [True, True]
    torch.testing.assert_close(served, val["multispectral"], rtol=0, atol=0)


def test_without_dermoscopy_the_multispectral_view_is_simulated_from_the_clinical_photo(tmp_path):
    make_layout(tmp_path, ["a"], dermoscopy=[])
    served = preprocess_bytes((tmp_path / "clinical/images/a.jpg").read_bytes(), "multispectral", DATA_CFG)
    torch.testing.assert_close(served, _val_sample(tmp_path, "a")["multispectral"], rtol=0, atol=0)


def test_parity_holds_without_jpeg_draft_too(lesion_dir):
    cfg = DataConfig(image_size=64, jpeg_draft=False)
    served = preprocess_bytes((lesion_dir / "clinical/images/a.jpg").read_bytes(), "clinical", cfg)
    torch.testing.assert_close(served, _val_sample(lesion_dir, "a", cfg)["clinical"], rtol=0, atol=0)


def test_cached_tensors_equal_freshly_decoded_ones(lesion_dir):
    lesions = index_dataset(lesion_dir).lesions
    cached = LesionDataset(lesions, DATA_CFG, train=False, cache=True)
    cached.preload()
    fresh = LesionDataset(lesions, DATA_CFG, train=False)
    for m in ("clinical", "dermoscopy", "multispectral"):
        torch.testing.assert_close(cached[1][m], fresh[1][m], rtol=0, atol=0)


@pytest.mark.parametrize("modality, path", [("clinical", "clinical/images/a.jpg"),
                                            ("multispectral", "multispectral/images/a.png")])
def test_parity_holds_with_colour_constancy_on(lesion_dir, modality, path):
    cfg = DataConfig(image_size=64, color_constancy=6)
    served = preprocess_bytes((lesion_dir / path).read_bytes(), modality, cfg)
    torch.testing.assert_close(served, _val_sample(lesion_dir, "a", cfg)[modality], rtol=0, atol=0)
    assert not torch.equal(served, preprocess_bytes((lesion_dir / path).read_bytes(), modality, DATA_CFG))


@pytest.mark.parametrize("color_constancy", [0.0, 6.0])
@pytest.mark.parametrize("modality", ["clinical", "dermoscopy", "multispectral"])
def test_tensor_is_bit_identical_to_normalising_the_whole_image_then_transposing(modality, color_constancy):
    """image_to_tensor normalises plane by plane for speed; the values must be exactly those of the plain formula
    (broadcast over [S, S, 3], then channels first) that trained the checkpoints, not merely close."""
    cfg = DataConfig(image_size=48, color_constancy=color_constancy)
    pixels = np.random.default_rng(11).integers(0, 256, size=(61, 83, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).resize((48, 48), Image.BILINEAR)
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    if color_constancy:
        rgb = shades_of_grey(rgb, color_constancy)
    if modality == "multispectral":
        channels, mean, std = pseudo_multispectral(rgb), cfg.ms_mean, cfg.ms_std
    else:
        channels, mean, std = rgb, cfg.mean, cfg.std
    expected = ((channels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)
    tensor = image_to_tensor(Image.fromarray(pixels), modality, cfg)
    assert tensor.dtype == torch.float32 and tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.numpy(), expected)
