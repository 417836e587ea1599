"""The archive exactly as shipped (serve_config/model-config.yaml, fast backend, its workers) answers within the
fast backend's documented tolerance of the offline fp32 answer. The other serving tests pin ``eager_fp32`` to
compare to 1e-4; this one proves the configuration users actually run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from model.checkpoint import load_for_inference
from model.severity import severity_label
from serving.archive import model_config
from tests.images import SUBSETS, request_for, write_request
from tests.torchserve_harness import java_available, served_checkpoint
from training.infer_single import predict_files

FAST_PATH_TOLERANCE = 0.01  # docs/performance.md: every fast backend within 0.01 of fp32, same severity

pytestmark = pytest.mark.skipif(not java_available(), reason="TorchServe needs Java 17 (scripts/ensure_java.sh)")


def test_the_shipped_archive_answers_every_subset_within_the_fast_path_tolerance(tiny_checkpoint, tmp_path):
    shipped = model_config()
    loaded = load_for_inference(tiny_checkpoint)
    batch = [request_for(subset, seed=40 + i, fmt="JPEG", size=120) for i, subset in enumerate(SUBSETS)]
    offline = [predict_files(loaded, write_request(r, tmp_path / f"r{i}")) for i, r in enumerate(batch)]

    with served_checkpoint(tiny_checkpoint, tmp_path / "ts") as server:  # no overrides: the shipped config
        described = requests.get(f"{server.management_url}/models/pigment", headers=server.auth("management"),
                                 timeout=10).json()[0]

        def post(request):
            files = {name: (f"{name}.jpg", data) for name, data in request.items()}
            return requests.post(f"{server.inference_url}/predictions/pigment", files=files,
                                 headers=server.auth(), timeout=120)

        with ThreadPoolExecutor(len(batch)) as pool:
            responses = list(pool.map(post, batch))

    assert len(described["workers"]) == shipped["minWorkers"]
    assert described["batchSize"] == shipped["batchSize"]
    for response, reference in zip(responses, offline):
        assert response.status_code == 200, response.text
        served = response.json()
        assert served["modalities"] == reference["modalities"]
        assert abs(served["score"] - reference["score"]) <= FAST_PATH_TOLERANCE
        bands = loaded.severity
        near_a_threshold = min(abs(reference["score"] - t) for t in (bands.mild_max, bands.moderate_max))
        if near_a_threshold > FAST_PATH_TOLERANCE:  # otherwise either band is within the documented tolerance
            assert served["severity"] == severity_label(reference["score"], bands)
