"""model.trust: conformal intervals, band probabilities, the OOD detector, and how they reach the checkpoint."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from model import colorimetry
from model.checkpoint import build_checkpoint, load_checkpoint, load_for_inference, save_checkpoint
from model.config import MODALITIES, SeverityConfig
from model.quality import APPEARANCE
from model.severity import LABELS, severity_label
from model.trust import (
    CONTRAST,
    NULL_FIELDS,
    POOLED,
    Calibration,
    OODDetector,
    Trust,
    band_probabilities,
    conformal_quantile,
    fit_calibration,
    fit_detector,
    fit_distributions,
    fit_view_statistics,
    fit_views,
    ledoit_wolf,
    quantile_threshold,
    subset_name,
    thresholds_from,
)

SEVERITY = SeverityConfig()


def test_conformal_quantile_is_the_ceil_n_plus_one_coverage_th_smallest_residual():
    residuals = np.arange(1, 20, dtype=float)[::-1]  # 19 values, 1..19, unsorted
    assert conformal_quantile(residuals, 0.9) == 18.0  # ceil(20 * 0.9) = 18
    assert conformal_quantile(residuals, 0.5) == 10.0  # ceil(20 * 0.5) = 10
    assert conformal_quantile(np.arange(1.0, 11.0), 0.9) == 10.0  # ceil(11 * 0.9) = 10, not ceil(10 * 0.9) = 9
    assert conformal_quantile(residuals[:5], 0.9) == math.inf  # ceil(6 * 0.9) = 6 > 5: no finite interval


def test_conformal_interval_covers_ninety_percent_of_new_draws():
    rng = np.random.default_rng(0)
    calibration = rng.standard_t(3, size=300) * 0.05  # heavy tails: a Gaussian assumption would under-cover
    q = conformal_quantile(np.abs(calibration), 0.9)
    new = rng.standard_t(3, size=200_000) * 0.05
    covered = float((np.abs(new) <= q).mean())
    # Conformal guarantee: coverage in [0.9, 0.9 + 1/(n+1)] in expectation; allow sampling noise of the 300 draws.
    assert 0.87 <= covered <= 0.93


def test_band_probabilities_count_the_shifted_residuals_in_each_band():
    rng = np.random.default_rng(1)
    residuals = rng.normal(0, 0.15, size=101)
    for score in (0.05, 0.25, 0.4, 0.6, 0.95):
        got = band_probabilities(score, residuals, SEVERITY)
        labels = [severity_label(min(1.0, max(0.0, score + r)), SEVERITY) for r in residuals]
        assert got == {name: labels.count(name) / len(labels) for name in LABELS}


def test_a_boundary_value_belongs_to_the_milder_band_as_in_model_severity():
    got = band_probabilities(SEVERITY.mild_max, np.zeros(4), SEVERITY)
    assert got == {"Mild": 1.0, "Moderate": 0.0, "Severe": 0.0}


def test_ledoit_wolf_matches_scikit_learn():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))  # fewer samples than would make S well conditioned
    mean, covariance, shrinkage = ledoit_wolf(x)
    reference = LedoitWolf().fit(x)
    np.testing.assert_allclose(mean, reference.location_, rtol=1e-10)
    np.testing.assert_allclose(covariance, reference.covariance_, rtol=1e-8, atol=1e-10)
    assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-8)


def test_feature_distance_is_mahalanobis_over_root_dimension():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(200, 6)) * np.array([1, 2, 3, 0.5, 1, 1])
    dist = fit_distributions({m: train for m in MODALITIES})["clinical"]
    _, covariance, _ = ledoit_wolf(train)
    probe = rng.normal(size=(5, 6)) * 3
    expected = [mahalanobis(p, train.mean(0), np.linalg.inv(covariance)) / math.sqrt(6) for p in probe]
    np.testing.assert_allclose(dist.distance(torch.tensor(probe)).numpy(), expected, rtol=1e-5)


def test_feature_distance_at_the_served_width_equals_a_float64_reference():
    """At the served encoders' width (768), through a checkpoint round trip: the distance equals a float64
    reference computed in numpy from the stored float32 mean and precision, on every call."""
    rng = np.random.default_rng(5)
    d = 768
    train = rng.normal(size=(1000, d)) @ rng.normal(size=(d, d)) / math.sqrt(d)  # correlated: a dense precision
    fitted = thresholds_from(fit_distributions({m: train for m in MODALITIES}), np.ones((4, 3)), np.ones((4, 3), bool))
    dist = OODDetector.from_dict(fitted.to_dict()).distributions["clinical"]
    probe = (rng.normal(size=(6, d)) * 1.5).astype(np.float32)
    centred = probe.astype(np.float64) - dist.mean.numpy().astype(np.float64)
    squared = np.einsum("nd,de,ne->n", centred, dist.precision.numpy().astype(np.float64), centred)
    expected = np.sqrt(squared / d)
    for _ in range(2):  # a second call gives the same (nothing cached goes stale)
        np.testing.assert_allclose(dist.distance(torch.from_numpy(probe)).numpy(), expected, rtol=2e-7, atol=0)


def detector(seed: int = 4, dim: int = 8) -> OODDetector:
    rng = np.random.default_rng(seed)
    distributions = fit_distributions({m: rng.normal(size=(300, dim)) for m in MODALITIES})
    # 100 validation lesions: all have clinical, 60 dermoscopy, 10 multispectral; distance = 1 + modality index
    available = np.zeros((100, 3), dtype=bool)
    available[:, 0], available[:60, 1], available[:10, 2] = True, True, True
    distances = np.tile([1.0, 2.0, 3.0], (100, 1)) + np.arange(100)[:, None] / 1000
    return thresholds_from(distributions, distances, available, quantile=0.99)


def test_ood_score_is_the_largest_distance_over_present_modalities_and_thresholds_are_per_subset():
    ood = detector()
    features = torch.zeros(2, len(MODALITIES), 8)
    features[0, 1] = 10.0  # far dermoscopy feature
    features[1, 2] = 10.0  # far multispectral feature, but multispectral absent in that row
    present = torch.tensor([[True, True, False], [True, True, False]])
    scores = ood.scores(features, present)
    distances = ood.distances(features)
    assert scores[0] == distances[0, :2].max() and scores[0] > 5
    assert scores[1] == distances[1, :2].max() and scores[1] < scores[0]
    # ceil(101 * 0.99) = 100th smallest of 100 values: the largest
    assert ood.threshold("clinical") == pytest.approx(1.099)
    assert ood.threshold("clinical+dermoscopy") == pytest.approx(2.059)  # 60 lesions have both: the 60th
    # 10 lesions with multispectral (< 30): every lesion counts with what it has of {clinical, multispectral},
    # so the largest such value is lesion 9's multispectral distance 3.009
    assert ood.threshold("clinical+multispectral") == pytest.approx(3.009)
    assert quantile_threshold(np.arange(1.0, 101.0), 0.99) == 100.0


def calibration() -> Calibration:
    rng = np.random.default_rng(5)
    return fit_calibration({"clinical": rng.normal(0, 0.2, 200), "clinical+dermoscopy": rng.normal(0, 0.05, 200),
                            "clinical+multispectral": rng.normal(0, 0.05, 10)}, coverage=0.9)


def test_an_answer_of_a_subset_with_few_lesions_uses_the_pooled_residuals_and_says_so():
    trust = Trust(calibration(), detector(), SEVERITY)
    present = torch.tensor([[True, True, False], [True, False, True], [True, False, False]])
    fields = trust.assess([0.5, 0.5, 0.5], torch.zeros(3, len(MODALITIES), 8), present)
    derm, ms, clinical = (f["interval"] for f in fields)
    assert derm["calibrated_on"] == "clinical+dermoscopy" and ms["calibrated_on"] == POOLED
    assert clinical["calibrated_on"] == "clinical"
    cal = calibration()
    pooled = np.concatenate(list(cal.residuals.values()))
    q = conformal_quantile(np.abs(pooled), 0.9)
    assert ms["low"] == pytest.approx(0.5 - q) and ms["high"] == pytest.approx(0.5 + q)
    assert derm["high"] - derm["low"] < clinical["high"] - clinical["low"]  # a better subset, a narrower interval
    assert all(f["in_distribution"] for f in fields)


def test_interval_is_clipped_to_the_score_range():
    fields = Trust(calibration(), None, SEVERITY).assess([0.02], torch.zeros(1, 3, 8), torch.tensor([[1, 0, 0]]).bool())
    assert fields[0]["interval"]["low"] == 0.0 and fields[0]["interval"]["high"] < 1.0
    assert fields[0]["in_distribution"] is None and fields[0]["ood_score"] is None


def test_trust_survives_a_weights_only_checkpoint_round_trip(tiny_model, tiny_model_cfg, tiny_data_cfg, tmp_path):
    trust = {"format": 1, "calibration": calibration().to_dict(), "ood": detector().to_dict()}
    path = save_checkpoint(build_checkpoint(tiny_model, tiny_model_cfg, tiny_data_cfg, SEVERITY, {}, trust=trust),
                           tmp_path / "c.pth")
    loaded = load_for_inference(path)
    assert "trust" in torch.load(path, weights_only=True)
    features = torch.randn(2, len(MODALITIES), 8)
    present = torch.tensor([[True, True, True], [True, False, False]])
    expected = Trust(calibration(), detector(), SEVERITY).assess([0.3, 0.7], features, present)
    assert loaded.trust.assess([0.3, 0.7], features, present) == expected


def test_a_checkpoint_without_trust_gives_null_fields_and_says_why(tiny_checkpoint, caplog):
    checkpoint = load_checkpoint(tiny_checkpoint)
    checkpoint.pop("trust", None)
    with caplog.at_level(logging.WARNING, logger="model.trust"):
        trust = Trust.from_checkpoint(checkpoint, SEVERITY)
    assert "training.calibrate" in caplog.text and "null" in caplog.text
    (fields,) = trust.assess([0.4], torch.zeros(1, 3, 8), torch.tensor([[True, False, False]]))
    assert fields == NULL_FIELDS


def test_subset_names_follow_the_modality_order():
    assert subset_name(["multispectral", "clinical"]) == "clinical+multispectral"


def test_fusion_model_returns_each_encoders_feature_with_zeros_for_absent_rows(tiny_model):
    torch.manual_seed(0)
    images = torch.randn(3, 2, 3, 64, 64)
    mask = torch.tensor([[True, False], [False, True]])
    with torch.no_grad():
        out = tiny_model(*images, mask)
        assert out.features.shape == (2, len(MODALITIES), tiny_model.dim)
        torch.testing.assert_close(out.features[:, 0], tiny_model.encoders["clinical"](images[0]))
        torch.testing.assert_close(out.features[0, 1], tiny_model.encoders["dermoscopy"](images[1][:1])[0])
        assert not out.features[1, 1].any() and not out.features[0, 2].any()
        alone = tiny_model(*images[:, 1:], mask[1:])
    torch.testing.assert_close(out.features[1:], alone.features, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ per predicted band


def heteroscedastic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true - predicted): the error's spread depends on the predicted band (0.02 Mild, 0.12 Moderate,
    0.06 Severe), as a model's does when low scores cannot be far off."""
    rng = np.random.default_rng(seed)
    predicted = rng.uniform(0.0, 1.0, n)
    spread = np.select([predicted <= 0.25, predicted <= 0.60], [0.02, 0.12], 0.06)
    true = np.clip(predicted + rng.normal(0.0, 1.0, n) * spread, 0.0, 1.0)  # scores live in [0, 1]
    return predicted, true - predicted


def test_the_interval_uses_the_residuals_of_lesions_predicted_in_the_same_band():
    predicted, residuals = heteroscedastic(400, seed=1)
    cal = fit_calibration({"clinical": residuals}, 0.9, predictions={"clinical": predicted})
    trust = Trust(cal, None, SEVERITY)
    moderate = (predicted > 0.25) & (predicted <= 0.60)
    for score, band, in_band in ((0.1, "Mild", predicted <= 0.25), (0.4, "Moderate", moderate),
                                 (0.8, "Severe", predicted > 0.6)):
        own = np.sort(np.abs(residuals[in_band]))
        q = own[math.ceil((len(own) + 1) * 0.9) - 1]  # the textbook split-conformal rank
        (fields,) = trust.assess([score], torch.zeros(1, 3, 8), torch.tensor([[True, False, False]]))
        assert fields["interval"]["calibrated_on"] == f"clinical, predicted {band}"
        assert fields["interval"]["low"] == pytest.approx(max(0.0, score - q))
        assert fields["interval"]["high"] == pytest.approx(min(1.0, score + q))
        shares = np.bincount(np.searchsorted([0.25, 0.6], np.clip(score + residuals[in_band], 0, 1), side="left"),
                             minlength=3) / in_band.sum()
        assert [fields["severity_probabilities"][k] for k in LABELS] == pytest.approx(shares.tolist())


def test_per_band_intervals_cover_every_band_where_one_width_for_all_does_not():
    predicted, residuals = heteroscedastic(3000, seed=2)
    banded = fit_calibration({"clinical": residuals}, 0.9, predictions={"clinical": predicted})
    single = fit_calibration({"clinical": residuals}, 0.9)
    test_predicted, test_residuals = heteroscedastic(20000, seed=3)
    present = torch.tensor([[True, False, False]]).expand(len(test_predicted), 3)
    features = torch.zeros(len(test_predicted), 3, 8)
    coverage = {}
    for name, cal in (("banded", banded), ("single", single)):
        fields = Trust(cal, None, SEVERITY).assess(test_predicted.tolist(), features, present)
        low = np.array([f["interval"]["low"] for f in fields])
        high = np.array([f["interval"]["high"] for f in fields])
        truth = test_predicted + test_residuals
        hit = (truth >= low) & (truth <= high)
        bands = np.searchsorted([0.25, 0.6], test_predicted, side="left")
        coverage[name] = [hit[bands == b].mean() for b in range(3)]
    assert all(0.87 <= c <= 0.93 for c in coverage["banded"]), coverage
    assert min(coverage["single"]) < 0.85 and max(coverage["single"]) > 0.95, coverage  # Moderate under, Mild over


def test_a_band_with_few_calibration_lesions_uses_the_whole_subset_and_old_calibrations_still_load():
    predicted, residuals = heteroscedastic(400, seed=4)
    predicted[predicted > 0.6] = 0.5  # no lesion predicted Severe
    cal = fit_calibration({"clinical": residuals}, 0.9, predictions={"clinical": predicted})
    assert cal.residuals_for("clinical", 0.9, SEVERITY)[1] == "clinical"
    assert cal.residuals_for("clinical", 0.1, SEVERITY)[1] == "clinical, predicted Mild"
    old = cal.to_dict()
    del old["predictions"]  # a checkpoint calibrated before the predictions were stored
    restored = Calibration.from_dict(old)
    assert restored.predictions is None and restored.residuals_for("clinical", 0.1, SEVERITY)[1] == "clinical"
    assert Calibration.from_dict(cal.to_dict()).residuals_for("clinical", 0.1, SEVERITY)[1] == \
        "clinical, predicted Mild"
    with pytest.raises(ValueError, match="predictions of subset clinical do not pair"):
        fit_calibration({"clinical": residuals}, 0.9, predictions={"clinical": predicted[:10]})


# ------------------------------------------------------------------------------------------ view statistics


def view_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, len(APPEARANCE)]`` view statistics: correlated colour columns and a lesion contrast around 0.3."""
    colour = rng.normal(size=(n, len(APPEARANCE) - 1)) @ rng.normal(size=(len(APPEARANCE) - 1,) * 2)
    return np.insert(colour, CONTRAST, rng.normal(0.3, 0.1, n).clip(0.05, None), axis=1)


def test_view_distances_are_the_colour_mahalanobis_and_how_many_stds_fainter_the_lesion_is():
    rng = np.random.default_rng(7)
    train = view_values(rng, 300)
    colour = np.delete(train, CONTRAST, axis=1)
    precision = np.linalg.inv(LedoitWolf().fit(colour).covariance_)
    probe = view_values(np.random.default_rng(8), 5) * 1.5
    probe[:, CONTRAST] = [0.0, 0.1, 0.3, 0.6, 0.9]
    colour_d, fainter = fit_view_statistics(train).distances(torch.tensor(probe))
    expected = [mahalanobis(np.delete(p, CONTRAST), colour.mean(0), precision) / math.sqrt(colour.shape[1])
                for p in probe]
    np.testing.assert_allclose(colour_d.numpy(), expected, rtol=1e-5)
    log_train = np.log(train[:, CONTRAST])
    log_probe = np.log(np.maximum(probe[:, CONTRAST], colorimetry.MIN_RELATIVE_CONTRAST / 2))  # no lesion: half
    z = (log_train.mean() - log_probe) / log_train.std()  # the faintest contrast segmentation accepts
    np.testing.assert_allclose(fainter.numpy(), np.maximum(z, 0.0), rtol=1e-5)  # a darker lesion is no farther


def calibration_views(seed: int = 9, n: int = 200, lesionless: int = 10, dim: int = 6):
    """Training fits and ``n`` calibration lesions (features, view statistics, present); the first ``lesionless``
    show no lesion in their clinical view (contrast 0); half have no multispectral view."""
    rng = np.random.default_rng(seed)
    distributions = fit_distributions({m: rng.normal(size=(300, dim)) for m in MODALITIES})
    views = fit_views({m: view_values(rng, 300) for m in MODALITIES})
    features = torch.tensor(rng.normal(size=(n, len(MODALITIES), dim)), dtype=torch.float32)
    appearance = torch.tensor(np.stack([view_values(rng, n) for _ in MODALITIES], axis=1))
    present = torch.ones(n, len(MODALITIES), dtype=torch.bool)
    present[n // 2:, 2] = False
    appearance[n // 2:, 2] = math.nan
    appearance[:lesionless, 0, CONTRAST] = 0.0
    return distributions, views, features, appearance, present


def rank_quantile(values: np.ndarray, q: float) -> float:
    """The ceil((n + 1) q)-th smallest value, the largest when n is too small for that rank."""
    return float(np.sort(values)[min(len(values), math.ceil((len(values) + 1) * q)) - 1])


def test_each_channel_is_scaled_by_its_calibration_quantile_and_lesionless_views_do_not_set_thresholds():
    distributions, views, features, appearance, present = calibration_views()
    ood = fit_detector(distributions, views, features, appearance, present, quantile=0.99)
    channels = ood.channel_distances(features, appearance).numpy()  # [N, M, 3], unscaled
    kept = np.arange(len(features)) >= 10  # the lesions whose every view shows a lesion
    for i, m in enumerate(MODALITIES):
        rows = kept & present[:, i].numpy()
        expected = [rank_quantile(channels[rows, i, c], 0.99) for c in range(3)]
        np.testing.assert_allclose(ood.scales[m], expected, rtol=1e-6)
    scaled = np.nanmax(channels / np.array([ood.scales[m] for m in MODALITIES])[None], axis=2)  # [N, M]
    assert ood.threshold("clinical") == pytest.approx(rank_quantile(scaled[kept, 0], 0.99), rel=1e-6)
    both = kept & present[:, 2].numpy()
    assert ood.threshold("clinical+dermoscopy+multispectral") == pytest.approx(
        rank_quantile(scaled[both].max(axis=1), 0.99), rel=1e-6)
    lesionless = ood.scores(features[:10], present[:10], appearance[:10])
    assert (lesionless > ood.threshold("clinical+dermoscopy+multispectral")).all()


def test_a_view_with_training_like_features_but_another_colour_is_out_of_distribution():
    distributions, views, features, appearance, present = calibration_views(lesionless=0)
    ood = fit_detector(distributions, views, features, appearance, present)
    probe_features, probe_views = features[:1].clone(), appearance[:1].clone()
    assert ood.scores(probe_features, present[:1], probe_views)[0] <= ood.threshold("clinical+dermoscopy+multispectral")
    probe_views[0, 0, :CONTRAST] += 25.0  # the clinical photo's colour statistics far from any training view
    assert ood.scores(probe_features, present[:1], probe_views)[0] > ood.threshold("clinical+dermoscopy+multispectral")
    assert ood.scores(probe_features, present[:1])[0] <= ood.threshold("clinical+dermoscopy+multispectral"), \
        "without the view statistics only the features count"
    restored = OODDetector.from_dict(ood.to_dict())
    torch.testing.assert_close(restored.scores(probe_features, present[:1], probe_views),
                               ood.scores(probe_features, present[:1], probe_views))


def test_a_detector_saved_before_view_statistics_scores_on_features_alone():
    old = detector().to_dict()
    assert "views" not in old and "scales" not in old
    restored = OODDetector.from_dict(old)
    features = torch.randn(3, len(MODALITIES), 8)
    views = torch.randn(3, len(MODALITIES), len(APPEARANCE), dtype=torch.float64)
    torch.testing.assert_close(restored.distances(features, views), detector().distances(features))
