"""Grad-CAM saliency: map shape and range, determinism, overlays at the photo's size, the offline CLI."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import MODALITIES
from model.saliency import aux_mask_for, explain, overlay_base64, overlay_png
from tests.conftest import make_tiny_model
from training import explain as explain_cli
from training import synth

SIZE = 64  # TINY_DATA_CFG.image_size


def lesion_tensors(modalities, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.randn(1, 3, SIZE, SIZE, generator=generator) for m in modalities}


@pytest.mark.parametrize("modalities", [MODALITIES[:1], MODALITIES[:2], MODALITIES])
def test_each_given_modality_gets_a_map_of_the_input_size_in_unit_range(tiny_model, modalities):
    tensors = lesion_tensors(modalities)
    result = explain(tiny_model, tensors, aux_mask_for(tensors))
    assert list(result.heatmaps) == list(modalities)
    with torch.no_grad():
        assert result.score == pytest.approx(float(tiny_model(**tensors).score))
    for heat in result.heatmaps.values():
        assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)


def test_the_same_input_gives_exactly_the_same_maps_even_from_train_mode(tiny_model):
    tensors = lesion_tensors(MODALITIES)
    first = explain(tiny_model, tensors)
    tiny_model.train()  # dropout must not leak in: explain runs in eval mode and restores the mode
    second = explain(tiny_model, tensors)
    assert tiny_model.training
    assert first.score == second.score
    for m in MODALITIES:
        np.testing.assert_array_equal(first.heatmaps[m], second.heatmaps[m])


def test_maps_respond_to_the_input(tiny_model):
    one = explain(tiny_model, lesion_tensors(["clinical"], seed=0)).heatmaps["clinical"]
    other = explain(tiny_model, lesion_tensors(["clinical"], seed=1)).heatmaps["clinical"]
    assert np.abs(one - other).mean() > 0.01


def test_a_masked_out_modality_gets_no_map(tiny_model):
    tensors = lesion_tensors(MODALITIES)
    result = explain(tiny_model, tensors, torch.tensor([[True, False]]))
    assert list(result.heatmaps) == ["clinical", "dermoscopy"]


def test_zero_gradients_give_an_all_zero_map_not_stretched_noise():
    model = make_tiny_model()
    with torch.no_grad():
        model.head.mlp[-1].weight.zero_()  # the score no longer depends on the image
    heat = explain(model, lesion_tensors(["clinical"])).heatmaps["clinical"]
    assert not heat.any()


def test_explain_works_under_inference_mode_and_with_frozen_weights():
    model = make_tiny_model()
    tensors = lesion_tensors(["clinical"])
    expected = explain(model, tensors).heatmaps["clinical"]
    model.requires_grad_(False)
    with torch.inference_mode():
        heat = explain(model, tensors).heatmaps["clinical"]
    np.testing.assert_array_equal(heat, expected)


def test_explain_needs_one_lesion_with_a_clinical_image(tiny_model):
    with pytest.raises(ValueError, match="clinical"):
        explain(tiny_model, lesion_tensors(["dermoscopy"]))
    with pytest.raises(ValueError, match="one lesion"):
        explain(tiny_model, {"clinical": torch.zeros(2, 3, SIZE, SIZE)})


def test_overlay_png_has_the_original_non_square_size():
    photo = Image.new("RGB", (200, 120), (210, 160, 130))
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[:, SIZE // 2:] = 1.0
    png = Image.open(io.BytesIO(overlay_png(photo, heat)))
    assert png.format == "PNG" and png.size == (200, 120)
    pixels = np.asarray(png.convert("RGB"), np.int16)
    assert np.abs(pixels[:, 150] - pixels[:, 50]).sum(axis=-1).min() > 30  # the hot half is coloured differently
    small = Image.open(io.BytesIO(base64.b64decode(overlay_base64(photo, heat, max_side=100))))
    assert small.size == (100, 60)


def test_model_package_saliency_imports_neither_training_nor_torchserve():
    code = ("import sys, model.saliency; "
            "sys.exit(any(m.split('.')[0] in ('training', 'ts', 'handler') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_explain_cli_writes_one_overlay_per_image_at_its_size(tiny_checkpoint, tmp_path, capsys):
    clinical, dermoscopy = tmp_path / "c.jpg", tmp_path / "d.png"
    Image.new("RGB", (200, 120), (200, 150, 120)).save(clinical)
    Image.new("RGB", (90, 90), (120, 80, 60)).save(dermoscopy)
    explain_cli.main(["--checkpoint", str(tiny_checkpoint), "--clinical", str(clinical),
                      "--dermoscopy", str(dermoscopy), "--out", str(tmp_path / "out"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"score", "severity", "heatmaps"} and set(result["heatmaps"]) == {"clinical", "dermoscopy"}
    assert Image.open(tmp_path / "out" / "clinical_gradcam.png").size == (200, 120)
    decoded = Image.open(io.BytesIO(base64.b64decode(result["heatmaps"]["dermoscopy"]["png_base64"])))
    assert decoded.size == (90, 90)


def test_lesion_heat_report_counts_lesions_per_masked_modality(tiny_checkpoint, tmp_path, capsys):
    data = synth.generate(tmp_path / "synth", n=4, seed=0, clinical_size=(96, 72), dermoscopy_size=64)
    explain_cli.main(["--checkpoint", str(tiny_checkpoint), "--data", str(data), "--lesion-heat-report",
                      "--out", str(tmp_path / "report")])
    report = json.loads((tmp_path / "report" / explain_cli.REPORT_FILE).read_text())
    assert json.loads(capsys.readouterr().out) == report
    clinical = report["modalities"]["clinical"]
    assert clinical["lesions"] == 4 and 0.0 <= clinical["fraction"] <= 1.0
    assert report["modalities"]["dermoscopy"]["lesions"] <= 4
