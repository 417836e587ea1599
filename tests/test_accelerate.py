"""Every fast inference path agrees with eager fp32 within the product's tolerance, on a model whose scores span the
three severity bands.

The bar (issues 5 and 15): max |d score| <= 0.01 against eager fp32, the same severity for >= 99 % of lesions, a
Spearman correlation >= 0.99 and no systematic offset, on a cohort that includes lesions within a hair of each band
edge. A tiny random model puts every score within ~0.02 of 0.56 (one band), where "same severity" cannot fail and a
small systematic error passes; so, as benchmarks/readout.py does at real size, the head's last layer is refitted
here so that the scores spread over all three bands. Attention is compared on lesions with one or two auxiliary
modalities, the only ones whose weights are not fixed by the mask. The compiled path compiles 3 encoders x 2 graphs
even for the tiny model (~50 s on 2 cores), so it runs only with PIGMENT_SLOW_TESTS=1.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import scipy.stats as scipy_stats  # test-only dependency: requirements-dev.txt (make test installs it)
import torch

from model.accelerate import BACKENDS, accelerate, available_backends
from model.config import AUX_MODALITIES, SeverityConfig
from model.fusion_model import FusionModel
from tests.conftest import TINY_DATA_CFG, make_tiny_model

SCORE_TOLERANCE = 0.01
SAME_SEVERITY = 0.99
MIN_SPEARMAN = 0.99
MAX_OFFSET = 0.002  # |mean signed difference|: rounding noise averages out, a systematic error does not
# The cohort's edge lesions sit this far (fp32) from 0.25 and 0.60: 2 to 5 thousandths is a few standard deviations of
# bf16 rounding noise (a lesion on the edge itself is a coin toss for any inexact path), and well within reach of a
# systematic error of a few thousandths.
EDGE_OFFSETS = (-0.005, -0.002, 0.002, 0.005)
NEAR_EDGE = 0.006
MAX_BATCH = 4
ATTENTION_SHARPENING = 8.0
SIZE = TINY_DATA_CFG.image_size
BANDS = SeverityConfig()
EDGES = (BANDS.mild_max, BANDS.moderate_max)
SLOW = pytest.mark.skipif(not os.environ.get("PIGMENT_SLOW_TESTS"),
                          reason="torch.compile of the tiny model takes ~50 s; set PIGMENT_SLOW_TESTS=1 to run it")
FAST_PATHS = [pytest.param(b, marks=SLOW) if b == "compile_bf16" else b for b in BACKENDS if b != "eager_fp32"]

# Every auxiliary subset as an aux_mask row: none, dermoscopy, multispectral, both.
SUBSETS = [list(row) for row in itertools.product([False, True], repeat=len(AUX_MODALITIES))]

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _inputs(aux_mask: list[list[bool]], seed: int = 0) -> Inputs:
    """A batch of varied images (per-sample colour and contrast over noise); absent rows are zeros, as the predictor
    sends them. Plain noise would give features that differ too little to spread the scores."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor(aux_mask, dtype=torch.bool)
    n = len(aux_mask)

    def images() -> torch.Tensor:
        colour = torch.rand(n, 3, 1, 1, generator=gen) * 4 - 2  # normalised units
        contrast = torch.rand(n, 1, 1, 1, generator=gen) * 1.3 + 0.2
        return colour + contrast * torch.randn(n, 3, SIZE, SIZE, generator=gen)

    clinical = images()
    aux = [images() * mask[:, i, None, None, None] for i in range(len(AUX_MODALITIES))]
    return clinical, aux[0], aux[1], mask


def _cat(*batches: Inputs) -> Inputs:
    return tuple(torch.cat(parts) for parts in zip(*batches))  # type: ignore[return-value]


@torch.inference_mode()
def _run(model: FusionModel, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N] and attention [N, 3], fed in server-sized batches of ``MAX_BATCH`` mixed subsets."""
    outs = [model(*(x[i:i + MAX_BATCH] for x in inputs)) for i in range(0, len(inputs[0]), MAX_BATCH)]
    return torch.cat([o.score for o in outs]).numpy(), torch.cat([o.attention for o in outs]).numpy()


def _band(scores: np.ndarray) -> np.ndarray:
    """0/1/2 by the documented rule (an edge belongs to the milder band), written here independently."""
    return (scores > EDGES[0]).astype(int) + (scores > EDGES[1]).astype(int)


def fit_spread_readout(model: FusionModel, inputs: Inputs, logit_sd: float = 1.6, centre: float = 0.4) -> None:
    """Refit the head's last layer, in place, along the main direction of its input features, so that the scores of
    ``inputs`` have logit standard deviation ``logit_sd`` around ``centre``: they then span all three bands."""
    captured: list[torch.Tensor] = []
    last = model.head.mlp[-1]
    hook = last.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    try:
        _run(model, inputs)
    finally:
        hook.remove()
    features = torch.cat(captured).double()  # [N, hidden]
    mean = features.mean(0)
    direction = torch.linalg.svd(features - mean, full_matrices=False).Vh[0]
    gain = logit_sd / ((features - mean) @ direction).std()
    bias = torch.logit(torch.tensor(centre, dtype=torch.float64)) - gain * (mean @ direction)
    with torch.no_grad():
        last.weight.copy_((gain * direction).unsqueeze(0).float())
        last.bias.copy_(bias.reshape(1).float())


@torch.inference_mode()
def edge_lesions(model: FusionModel, inputs: Inputs) -> Inputs:
    """Lesions whose fp32 score is ``EDGE_OFFSETS`` away from each band edge, cycling through the modality subsets.

    For a pair of same-subset lesions on either side of the target, the images are blended, ``(1 - a) x0 + a x1``,
    and ``a`` is narrowed by three rounds of a 17-point grid (the score is continuous in ``a``): each lands within
    ~0.0005 of its target.
    """
    scores = _run(model, inputs)[0]
    subsets = [tuple(row) for row in inputs[3].tolist()]
    targets = [edge + offset for edge in EDGES for offset in EDGE_OFFSETS]
    found = []
    for n, target in enumerate(targets):
        subset = tuple(SUBSETS[n % len(SUBSETS)])
        rows = [i for i, s in enumerate(subsets) if s == subset]
        low = next(i for i in rows if scores[i] < target - 0.05)
        high = next(i for i in rows if scores[i] > target + 0.05)
        lo, hi = 0.0, 1.0
        for _ in range(3):
            a = torch.linspace(lo, hi, 17).view(-1, 1, 1, 1)
            blend = tuple((1 - a) * x[low] + a * x[high] for x in inputs[:3])
            k = int((model(*blend, inputs[3][low].expand(17, -1)).score - target).abs().argmin())
            step = (hi - lo) / 16
            lo, hi = float(a[k]) - step, float(a[k]) + step
        found.append((blend[0][k:k + 1], blend[1][k:k + 1], blend[2][k:k + 1], inputs[3][low:low + 1]))
    return _cat(*found)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Hundreds of tiny forwards: on shared cores two threads spend most of their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spread_state() -> dict[str, torch.Tensor]:
    """The tiny model's weights with the readout refitted to spread the scores over the three bands."""
    model = make_tiny_model()
    with torch.no_grad():  # sharper attention: random projections leave it near uniform over the present tokens
        model.fusion.q_proj.weight.mul_(ATTENTION_SHARPENING)
    fit_spread_readout(model, _inputs([SUBSETS[i % 4] for i in range(128)], seed=100))
    return model.state_dict()


def spread_model(state: dict[str, torch.Tensor]) -> FusionModel:
    model = make_tiny_model()
    model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def reference(spread_state) -> FusionModel:
    return spread_model(spread_state)


@pytest.fixture(scope="module")
def cohort(reference) -> Inputs:
    """256 lesions in mixed subsets plus 8 placed beside the band edges (``EDGE_OFFSETS`` from each)."""
    broad = _inputs([SUBSETS[i % 4] for i in range(256)], seed=1)
    return _cat(broad, edge_lesions(reference, broad))


@pytest.fixture(scope="module", params=FAST_PATHS)
def fast(request, spread_state) -> tuple[str, FusionModel]:
    backend = request.param
    if backend not in available_backends():
        pytest.skip(f"{backend} is not available on this machine ({available_backends()})")
    return backend, accelerate(spread_model(spread_state), backend, max_batch=MAX_BATCH, threads=1)


def test_the_reference_cohort_spans_the_three_bands_and_sits_on_both_edges(reference, cohort):
    scores, attention = _run(reference, cohort)
    share = np.bincount(_band(scores), minlength=3) / len(scores)
    assert share.min() >= 0.15, f"band shares {share}: the fast-path checks need scores in every band"
    for edge in EDGES:
        assert (np.abs(scores - edge) <= NEAR_EDGE).sum() >= 4, f"too few lesions within {NEAR_EDGE} of {edge}"
    both = cohort[3].all(1).numpy()
    assert attention[both].std(0).max() >= 0.02, "attention with all three modalities should vary between lesions"


def test_fast_path_matches_fp32_on_a_cohort_spanning_the_bands(fast, reference, cohort):
    backend, model = fast
    ref_scores, ref_attention = _run(reference, cohort)
    scores, attention = _run(model, cohort)
    diff = scores.astype(np.float64) - ref_scores
    assert np.abs(diff).max() <= SCORE_TOLERANCE, f"{backend}: max |d score| = {np.abs(diff).max():.4f}"
    assert abs(diff.mean()) <= MAX_OFFSET, f"{backend}: systematic offset {diff.mean():+.4f} against fp32"
    same = (_band(scores) == _band(ref_scores)).mean()
    assert same >= SAME_SEVERITY, f"{backend}: same severity for {same:.1%} of lesions"
    rho = scipy_stats.spearmanr(scores, ref_scores).statistic
    assert rho >= MIN_SPEARMAN, f"{backend}: Spearman {rho:.4f} against fp32"
    unfixed = cohort[3].any(1).numpy()  # with an auxiliary modality the weights depend on the features
    np.testing.assert_allclose(attention[unfixed], ref_attention[unfixed], rtol=0, atol=0.02, err_msg=backend)


@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: "+".join(["clinical"] + [m for m, on in
                                                                                  zip(AUX_MODALITIES, s) if on]))
def test_fast_path_matches_fp32_for_every_modality_subset(fast, reference, subset):
    inputs = _inputs([subset] * MAX_BATCH)
    scores, ref_scores = _run(fast[1], inputs)[0], _run(reference, inputs)[0]
    assert np.abs(scores - ref_scores).max() <= SCORE_TOLERANCE


@torch.inference_mode()
def test_fast_path_matches_fp32_on_a_mixed_batch_and_each_sample_alone(fast, reference):
    mixed = SUBSETS  # four samples, four different subsets: each encoder sees batch sizes 4, 2 and 2
    clinical, derm, ms, mask = _inputs(mixed, seed=1)
    batched = fast[1](clinical, derm, ms, mask)
    assert (batched.score - reference(clinical, derm, ms, mask).score).abs().max() <= SCORE_TOLERANCE
    for i in range(len(mixed)):
        alone = fast[1](clinical[i:i + 1], derm[i:i + 1], ms[i:i + 1], mask[i:i + 1])
        assert abs(alone.score.item() - batched.score[i].item()) <= SCORE_TOLERANCE / 2


@torch.inference_mode()
def test_fast_path_answers_without_auxiliary_images(fast, reference):
    clinical = _inputs([[False, False]] * 2)[0]
    assert (fast[1](clinical).score - reference(clinical).score).abs().max() <= SCORE_TOLERANCE


def test_unknown_backend_is_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="eager_fp32"):
        accelerate(make_tiny_model(), "tensorrt")


def test_accelerating_an_accelerated_model_is_refused():
    model = accelerate(make_tiny_model(), "eager_bf16", warmup=False)
    with pytest.raises(ValueError, match="already accelerated"):
        accelerate(model, "eager_bf16")


def test_eager_fp32_is_the_model_itself():
    model = make_tiny_model()
    assert accelerate(model, "eager_fp32") is model
    assert "eager_fp32" in available_backends()
