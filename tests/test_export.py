"""training.export: the TorchScript program equals the eager model for every modality subset; state_dict export."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import FORMAT_VERSION, load_checkpoint, load_for_inference
from model.config import AUX_MODALITIES
from tests.images import SUBSETS
from training.export import load_torchscript, main


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "pigment.pt"
    main(["--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--out", str(out)])
    return load_torchscript(out)


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    return load_for_inference(tiny_checkpoint).model


def full_inputs(subsets: list[tuple[str, ...]], size: int = 64, seed: int = 0):
    """Images for every modality ([B, 3, S, S]; absent rows zero) and the aux_mask [B, 2] of ``subsets``."""
    gen = torch.Generator().manual_seed(seed)
    images = {m: torch.randn(len(subsets), 3, size, size, generator=gen) for m in ("clinical", *AUX_MODALITIES)}
    mask = torch.tensor([[m in s for m in AUX_MODALITIES] for s in subsets])
    for i, m in enumerate(AUX_MODALITIES):
        images[m][~mask[:, i]] = 0
    return images, mask


def eager_alone(model, images, subset, row):
    """The eager model on one sample with only its modalities (absent ones None, no mask)."""
    with torch.no_grad():
        return model(*(images[m][row:row + 1] if m in subset else None
                       for m in ("clinical", *AUX_MODALITIES)))


@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_torchscript_scores_equal_eager_for_every_modality_subset(exported, eager, subset):
    program, _ = exported
    images, mask = full_inputs([subset], seed=len(subset))
    with torch.no_grad():
        score, attention = program(images["clinical"], images["dermoscopy"], images["multispectral"], mask)
    expected = eager_alone(eager, images, subset, 0)
    torch.testing.assert_close(score, expected.score, rtol=0, atol=1e-5)
    torch.testing.assert_close(attention, expected.attention, rtol=0, atol=1e-5)


def test_torchscript_scores_a_batch_mixing_subsets_like_each_sample_alone(exported, eager):
    program, _ = exported
    subsets = list(SUBSETS) * 2 + [SUBSETS[0]]  # 9 rows: another batch size than the traced one
    images, mask = full_inputs(subsets, seed=7)
    with torch.no_grad():
        score, _ = program(images["clinical"], images["dermoscopy"], images["multispectral"], mask)
    expected = torch.cat([eager_alone(eager, images, s, i).score for i, s in enumerate(subsets)])
    torch.testing.assert_close(score, expected, rtol=0, atol=1e-5)


def test_torchscript_program_carries_its_configs(exported, tiny_checkpoint):
    _, meta = exported
    checkpoint = load_checkpoint(tiny_checkpoint)
    for key in ("format_version", "model_config", "data_config", "severity", "provenance"):
        assert meta[key] == checkpoint[key]
    assert meta["aux_mask_columns"] == list(AUX_MODALITIES)


def test_state_dict_export_is_a_slim_checkpoint_of_the_same_format(tiny_checkpoint, tmp_path, eager):
    source = torch.load(tiny_checkpoint, weights_only=True)
    fat = tmp_path / "fat.pth"
    torch.save({**source, "optimizer": {"lr": 0.1}, "epoch": 3}, fat)
    out = tmp_path / "slim.pth"
    main(["--checkpoint", str(fat), "--format", "state_dict", "--out", str(out)])
    slim = load_checkpoint(out)  # weights_only=True inside
    assert slim["format_version"] == FORMAT_VERSION and "optimizer" not in slim and "epoch" not in slim
    assert slim["provenance"] == source["provenance"]
    images, _ = full_inputs([SUBSETS[-1]])
    reloaded = load_for_inference(out).model
    torch.testing.assert_close(eager_alone(reloaded, images, SUBSETS[-1], 0).score,
                               eager_alone(eager, images, SUBSETS[-1], 0).score, rtol=0, atol=0)
