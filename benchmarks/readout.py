"""A real-size checkpoint for speed measurements whose scores still cover all three severity bands.

The default config's architecture with seeded random Swin encoders (speed does not depend on the weights) and the
head's last linear layer refitted by ridge regression on synthetic labels, so that an accuracy check meets band
edges. No download.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from benchmarks.workload import synthetic_lesions
from handler.predictor import Predictor, PredictorOptions
from model.checkpoint import build_checkpoint, save_checkpoint
from model.config import DataConfig, ModelConfig, SeverityConfig, from_dict
from model.fusion_model import FusionModel

ROOT = Path(__file__).resolve().parents[1]
FIT_SEED = 4321  # the readout's cohort; benchmarks.accuracy checks on another seed


def make_checkpoint(path: Path, fit_dir: Path, fit_lesions: int) -> Path:
    """The default config's architecture (Swin-T x3 at 224 px) with seeded random weights and a fitted readout.

    Random encoders are all a speed measurement needs, but a random head puts every score in a narrow range
    inside one band, where "same severity" cannot fail. Refitting the last linear layer (:func:`fit_readout`)
    spreads the scores over the three bands; the encoders stay random, so the model is no use beyond this
    benchmark. No download.
    """
    if path.is_file():
        return path
    cfg = yaml.safe_load((ROOT / "training" / "configs" / "default.yaml").read_text())
    model_cfg = from_dict(ModelConfig, {**cfg["model"], "pretrained": False, "pretrained_file": None}, "model")
    data_cfg = DataConfig(image_size=int(cfg["data"]["image_size"]))
    torch.manual_seed(0)
    model = FusionModel(model_cfg, data_cfg.image_size, pretrained=False).eval()
    provenance = {"model_version": "benchmark-random", "data_hash": "none"}
    # The random model goes to a side file: ``path`` only ever holds the fitted one, so a run interrupted while
    # fitting is never mistaken for a finished checkpoint by the next run.
    random_path = save_checkpoint(build_checkpoint(model, model_cfg, data_cfg, SeverityConfig(), provenance),
                                  path.with_name(f"{path.stem}.random{path.suffix}"))
    predictor = Predictor(random_path, PredictorOptions())
    bodies, labels = synthetic_lesions(fit_dir, fit_lesions, FIT_SEED)
    fit = fit_readout(predictor, bodies, labels)
    provenance = {"model_version": "benchmark-random-fitted-readout", "data_hash": "none",
                  "readout_fit": {"lesions": len(bodies), "seed": FIT_SEED, **fit}}
    return save_checkpoint(build_checkpoint(predictor.loaded.model, model_cfg, data_cfg, SeverityConfig(),
                                            provenance), path)


def fit_readout(predictor: Predictor, bodies: list[dict[str, bytes]], labels: list[float],
                ridge: float = 1.0) -> dict[str, float]:
    """Refit the head's last linear layer, in place, by ridge regression of logit(label) on its input features.

    Features are standardized for the fit (``ridge`` acts on standardized weights) and the scaling is folded back
    into the layer. Returns the fit's Pearson correlation between scores and labels on the fitted lesions.
    """
    last = predictor.loaded.model.head.mlp[-1]  # Linear(64 -> 1)
    captured: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    try:
        scores_before = scores(predictor, bodies)
    finally:
        hook.remove()
    features = torch.cat(captured).double()  # [N, 64]
    target = torch.logit(torch.tensor(labels, dtype=torch.float64).clamp(0.02, 0.98))
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    weight = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ (target - target.mean()))
    with torch.no_grad():
        last.weight.copy_((weight / std).unsqueeze(0).to(last.weight.dtype))
        last.bias.copy_((target.mean() - (weight * mean / std).sum()).reshape(1).to(last.bias.dtype))
    scores_after = torch.tensor(scores(predictor, bodies), dtype=torch.float64)
    corr = torch.corrcoef(torch.stack([scores_after, target.sigmoid()]))[0, 1]
    return {"ridge": ridge, "fit_corr": round(float(corr), 3),
            "score_range_before": [round(min(scores_before), 4), round(max(scores_before), 4)],
            "score_range_after": [round(float(scores_after.min()), 4), round(float(scores_after.max()), 4)]}


def scores(predictor: Predictor, bodies: list[dict[str, bytes]]) -> list[float]:
    """Exact (unrounded) scores, in batches of 8 so that mixed subsets share a forward as in serving."""
    scores = []
    for i in range(0, len(bodies), 8):
        samples = predictor.prepare(bodies[i:i + 8])
        scores += predictor.forward(samples)[0].tolist()
    return scores


def predictor_for(checkpoint: Path, backend: str, max_batch: int) -> Predictor:
    """The handler's predictor with ``backend`` warmed up for batches 1..max_batch."""
    return Predictor(checkpoint, PredictorOptions(backend=backend), max_batch=max_batch)
