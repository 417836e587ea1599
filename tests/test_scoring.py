"""The one scoring path (model/scoring.py): nothing else turns images into model tensors, and every caller agrees."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from model import scoring
from model.checkpoint import load_for_inference
from model.preprocessing import InputError
from tests.lesion_data import write_image

ROOT = Path(__file__).resolve().parents[1]
TENSOR_MAKERS = {"image_to_tensor", "decode_for_model", "simulation_source", "pseudo_multispectral",
                 "preprocess_bytes", "preprocess_path"}
"""model.preprocessing's functions that make a model input; only model/ may call them to score (benchmarks time
these stages one by one, and the design-style baseline decodes its own way on purpose, so they are not checked)."""


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


@pytest.mark.parametrize("package", ["handler", "training", "kserve", "serving"])
def test_only_model_turns_images_into_model_tensors(package):
    offenders = {str(p.relative_to(ROOT)): sorted(_calls(p) & TENSOR_MAKERS)
                 for p in (ROOT / package).rglob("*.py") if _calls(p) & TENSOR_MAKERS}
    assert not offenders, f"these modules prepare model inputs themselves instead of model.scoring: {offenders}"


@pytest.fixture
def lesion_files(tmp_path):
    return {"clinical": write_image(tmp_path / "c.jpg", 1, (80, 64)),
            "dermoscopy": write_image(tmp_path / "d.png", 2, (64, 64)),
            "multispectral": write_image(tmp_path / "m.png", 3, (70, 70))}


def test_hiding_a_modality_scores_like_not_sending_it(tiny_checkpoint, lesion_files):
    loaded = load_for_inference(tiny_checkpoint)
    full = scoring.prepare_files(lesion_files, loaded.data_cfg)
    without_dermoscopy = scoring.prepare_files({**lesion_files, "dermoscopy": None}, loaded.data_cfg)
    hide = torch.tensor([[False, True]])  # keep multispectral only
    hidden, _ = scoring.forward(loaded.model, [full], aux_mask=hide)
    absent, _ = scoring.forward(loaded.model, [without_dermoscopy])
    assert float(hidden[0]) == pytest.approx(float(absent[0]), abs=1e-6)
    shown, _ = scoring.forward(loaded.model, [full])
    assert float(shown[0]) != pytest.approx(float(absent[0]), abs=1e-6)  # the mask did hide something


def test_a_mixed_batch_scores_each_lesion_as_alone(tiny_checkpoint, lesion_files):
    loaded = load_for_inference(tiny_checkpoint)
    subsets = [("clinical",), ("clinical", "dermoscopy"), ("clinical", "multispectral"), tuple(lesion_files)]
    samples = [scoring.prepare_files({m: lesion_files[m] for m in s}, loaded.data_cfg) for s in subsets]
    together = [a["score"] for a in scoring.score(loaded, samples)]
    alone = [scoring.score(loaded, [s])[0]["score"] for s in samples]
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert len({round(x, 6) for x in alone}) == 4  # the subsets really differ


def test_simulated_multispectral_view_comes_from_dermoscopy_else_clinical(tiny_checkpoint, lesion_files):
    loaded = load_for_inference(tiny_checkpoint)
    cfg = loaded.data_cfg
    with_derm = scoring.prepare_files({**lesion_files, "multispectral": None}, cfg, simulate_multispectral=True)
    as_file = scoring.prepare_files({"clinical": lesion_files["clinical"],
                                     "multispectral": lesion_files["dermoscopy"]}, cfg)
    assert with_derm.simulated == ("multispectral",)
    torch.testing.assert_close(with_derm.images["multispectral"], as_file.images["multispectral"], rtol=0, atol=0)
    clinical_only = scoring.prepare_files({"clinical": lesion_files["clinical"]}, cfg, simulate_multispectral=True)
    from_clinical = scoring.prepare_files({"clinical": lesion_files["clinical"],
                                           "multispectral": lesion_files["clinical"]}, cfg)
    torch.testing.assert_close(clinical_only.images["multispectral"], from_clinical.images["multispectral"],
                               rtol=0, atol=0)


def test_a_missing_file_is_an_input_error_naming_it(tiny_checkpoint, tmp_path, lesion_files):
    loaded = load_for_inference(tiny_checkpoint)
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InputError, match="nope.jpg: no such file"):
        scoring.prepare_files({"clinical": lesion_files["clinical"], "dermoscopy": missing}, loaded.data_cfg)
    with pytest.raises(InputError, match="clinical.*required"):
        scoring.prepare_files({"dermoscopy": lesion_files["dermoscopy"]}, loaded.data_cfg)


def test_a_prepared_lesion_keeps_no_full_size_photo_and_warns_as_on_the_full_photo(tiny_checkpoint, tmp_path):
    from model import quality
    from model.preprocessing import load_image

    loaded = load_for_inference(tiny_checkpoint)
    big = {"clinical": write_image(tmp_path / "c.png", 4, (1600, 1200)),
           "dermoscopy": write_image(tmp_path / "d.png", 5, (1200, 1200))}
    sample = scoring.prepare_files(big, loaded.data_cfg, simulate_multispectral=True)
    assert all(max(img.size) <= 256 for img in sample.decoded.values())
    full = {m: load_image(p) for m, p in big.items()}
    assert scoring.quality_warnings(sample) == quality.warnings_for(full)
