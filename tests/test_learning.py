"""CI guard that training learns: a tiny fusion model trained for about a minute on a small synthetic benchmark must
beat the mean predictor clearly on lesions it never trained on, and rank them.

The check (``learned``) is applied to the trained model and, in the same test, to the mean predictor, which must
fail it: a model that collapsed to the training mean, or a pipeline that stopped learning, cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import load_for_inference
from tests.conftest import TINY_BACKBONE
from training import synth, train
from training.data import LesionDataset, index_dataset, select

MAX_MAE_RATIO = 0.7  # validation MAE / MAE of always predicting the training-label mean
MIN_SPEARMAN = 0.6

LEARNING_RUN = [
    f"model.backbone_kwargs={TINY_BACKBONE!r}".replace("(", "[").replace(")", "]"),
    "model.head_hidden=[32, 16]", "model.dropout=0.0", "data.image_size=64",
    "training.batch_size=16", "training.epochs=40", "training.learning_rate=2e-3", "training.warmup_epochs=1",
    "training.early_stopping_patience=0", "training.modality_dropout=0.0", "training.color_jitter={}",
    "device.use_gpu=false",
]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation by numpy alone (continuous scores: no ties); NaN for a constant side."""
    ranks = [np.argsort(np.argsort(v)).astype(float) if np.ptp(v) > 0 else np.zeros(len(v)) for v in (a, b)]
    if not all(r.std() > 0 for r in ranks):
        return float("nan")
    return float(np.corrcoef(*ranks)[0, 1])


def learned(pred: np.ndarray, true: np.ndarray, train_mean: float) -> tuple[bool, float, float]:
    """(passes, MAE ratio to the mean predictor, Spearman) for predictions on held-out lesions."""
    ratio = float(np.abs(pred - true).mean() / np.abs(train_mean - true).mean())
    rho = spearman(pred, true)
    return bool(ratio <= MAX_MAE_RATIO and rho >= MIN_SPEARMAN), ratio, rho  # NaN >= 0.6 is False


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # Every lesion with a dermoscopy view: the view that shows all three factors of the score, so a minute suffices.
    data = synth.generate(tmp_path_factory.mktemp("learn") / "data", n=300, seed=21, clinical_size=(128, 96),
                          dermoscopy_size=64, dermoscopy_fraction=1.0)
    out = tmp_path_factory.mktemp("learn_run")
    argv = ["--config", str(train.Path(train.__file__).parent / "configs" / "demo.yaml"), "--data", str(data),
            "--out", str(out), "--quiet"]
    for item in LEARNING_RUN:
        argv += ["--set", item]
    return data, train.main(argv)


@torch.no_grad()
def held_out_predictions(data, checkpoint) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores of the checkpoint's validation lesions (patients it never trained on), their labels, the train mean."""
    loaded = load_for_inference(checkpoint)
    lesions = select(index_dataset(data).lesions, loaded.provenance["split"]["val"])
    assert not set(loaded.provenance["split"]["train"]) & {x.lesion_id for x in lesions}
    batch = torch.utils.data.default_collate(list(LesionDataset(lesions, loaded.data_cfg, train=False)))
    pred = loaded.model(batch["clinical"], batch["dermoscopy"], batch["multispectral"], batch["aux_mask"]).score
    return pred.numpy().astype(np.float64), batch["score"].numpy().astype(np.float64), \
        float(loaded.provenance["train_label_mean"])


def test_training_beats_the_mean_predictor_on_unseen_lesions_and_ranks_them(trained):
    pred, true, train_mean = held_out_predictions(*trained)
    assert len(true) >= 30
    passes, ratio, rho = learned(pred, true, train_mean)
    print(f"held-out lesions {len(true)}: MAE ratio to the mean predictor {ratio:.3f}, Spearman {rho:.3f}")  # -s
    assert passes, f"MAE ratio to the mean predictor {ratio:.3f} (need <= {MAX_MAE_RATIO}), Spearman {rho:.3f} " \
                   f"(need >= {MIN_SPEARMAN})"
    # The same check on the mean predictor, which is what a model that stopped learning converges to, fails.
    mean_passes, mean_ratio, mean_rho = learned(np.full_like(true, train_mean), true, train_mean)
    assert not mean_passes and mean_ratio == pytest.approx(1.0) and np.isnan(mean_rho)
    # And so does a predictor that spreads its answers but is unrelated to the lesion (a shuffled model).
    shuffled = np.random.default_rng(0).permutation(pred)
    assert not learned(shuffled, true, train_mean)[0]
