"""FusionModel per STYLE.md's checklist: shapes, gradients, checkpoint round trip, batch independence, golden output,
strict config errors and the offline pretrained-weights messages. Tiny real Swins from conftest, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from model.checkpoint import build_checkpoint, load_for_inference, save_checkpoint
from model.config import ModelConfig, SeverityConfig, from_dict
from model.fusion_model import ATTENTION_TOKENS, FusionModel
from model.swin_encoder import SwinEncoder
from tests.conftest import TINY_BACKBONE, TINY_DATA_CFG, TINY_MODEL_CFG, make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "tiny_fusion_model.json"
SIZE = TINY_DATA_CFG.image_size
SUBSETS = [(False, False), (True, False), (False, True), (True, True)]  # (dermoscopy, multispectral) present


def _images(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 3, SIZE, SIZE, generator=g) for _ in range(3))


@pytest.mark.parametrize("present", SUBSETS)
def test_forward_gives_a_finite_score_in_unit_range_and_attention_over_tokens(tiny_model, present):
    clinical, derm, ms = _images(2)
    mask = torch.tensor([present] * 2)
    with torch.no_grad():
        out = tiny_model(clinical, derm, ms, mask)
    assert out.score.shape == (2,) and torch.isfinite(out.score).all()
    assert ((out.score > 0) & (out.score < 1)).all()
    assert out.attention.shape == (2, len(ATTENTION_TOKENS))
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2))


def test_every_parameter_gets_a_gradient(tiny_model):
    tiny_model.train()
    out = tiny_model(*_images(2), torch.ones(2, 2, dtype=torch.bool))
    out.score.sum().backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_checkpoint_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    path = save_checkpoint(build_checkpoint(tiny_model, TINY_MODEL_CFG, TINY_DATA_CFG, SeverityConfig()),
                           tmp_path / "m.pth")
    loaded = load_for_inference(path)
    images, mask = _images(3), torch.tensor([[True, False], [False, True], [True, True]])
    with torch.no_grad():
        before, after = tiny_model(*images, mask), loaded.model(*images, mask)
    torch.testing.assert_close(after.score, before.score, rtol=0, atol=0)
    assert torch.load(path, weights_only=True)["model_config"]["attention_heads"] == TINY_MODEL_CFG.attention_heads


def test_each_sample_of_a_mixed_batch_scores_as_it_does_alone(tiny_model):
    clinical, derm, ms = _images(len(SUBSETS), seed=1)
    mask = torch.tensor(SUBSETS)
    derm, ms = derm * mask[:, :1, None, None], ms * mask[:, 1:, None, None]  # absent rows are zeros, as in serving
    with torch.no_grad():
        batched = tiny_model(clinical, derm, ms, mask)
        for i, (has_derm, has_ms) in enumerate(SUBSETS):
            alone = tiny_model(clinical[i:i + 1], derm[i:i + 1] if has_derm else None,
                               ms[i:i + 1] if has_ms else None)
            torch.testing.assert_close(batched.score[i:i + 1], alone.score, rtol=0, atol=1e-5)
            torch.testing.assert_close(batched.attention[i:i + 1], alone.attention, rtol=0, atol=1e-5)


def test_golden_output_is_unchanged():
    """Scores of a seeded tiny model on seeded inputs. After a deliberate model change: UPDATE_GOLDEN=1 pytest."""
    model = make_tiny_model(seed=0)
    mask = torch.tensor(SUBSETS)
    with torch.no_grad():
        out = model(*_images(len(SUBSETS), seed=2), mask)
    got = {"score": out.score.tolist(), "attention": out.attention.tolist()}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    want = json.loads(GOLDEN.read_text())
    torch.testing.assert_close(torch.tensor(got["score"]), torch.tensor(want["score"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["attention"]), torch.tensor(want["attention"]), rtol=0, atol=1e-5)


def test_unknown_model_key_is_an_error_listing_the_valid_keys():
    with pytest.raises(ValueError, match=r"model\.atention_heads.*valid keys are: backbone, .*attention_heads"):
        from_dict(ModelConfig, {"atention_heads": 8}, "model")


def test_attention_heads_that_do_not_divide_the_feature_size_is_an_error():
    with pytest.raises(ValueError, match="attention_heads=5"):
        FusionModel(ModelConfig(backbone_kwargs=TINY_BACKBONE, attention_heads=5), SIZE)


def test_clinical_image_is_required(tiny_model):
    with pytest.raises(ValueError, match="clinical image is required"):
        tiny_model(None, *_images(1)[1:])


def test_pretrained_without_network_or_file_says_how_to_pass_a_file_or_turn_it_off(tmp_path):
    code = (
        "from model.config import ModelConfig\n"
        "from model.swin_encoder import SwinEncoder\n"
        f"SwinEncoder(ModelConfig(backbone_kwargs={TINY_BACKBONE!r}, pretrained=True), {SIZE}, pretrained=True)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "TORCH_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "pretrained_file" in result.stderr and "pretrained=false" in result.stderr


def test_pretrained_file_that_does_not_exist_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere.pth"
    cfg = ModelConfig(backbone_kwargs=TINY_BACKBONE, pretrained=True, pretrained_file=str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        SwinEncoder(cfg, SIZE, pretrained=True)


def test_pretrained_file_is_loaded_into_the_encoder(tmp_path):
    torch.manual_seed(5)
    source = timm.create_model(TINY_MODEL_CFG.backbone, img_size=SIZE, **TINY_BACKBONE)
    path = tmp_path / "swin.pth"
    torch.save(source.state_dict(), path)
    cfg = ModelConfig(backbone_kwargs=TINY_BACKBONE, pretrained=True, pretrained_file=str(path))
    encoder = SwinEncoder(cfg, SIZE, pretrained=True)
    name = "patch_embed.proj.weight"
    torch.testing.assert_close(encoder.backbone.state_dict()[name], source.state_dict()[name], rtol=0, atol=0)
