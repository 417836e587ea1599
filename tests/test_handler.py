"""PigmentHandler through a TorchServe context built in-process (no Java): statuses, answers, metrics, options."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handler.pigment_handler import PigmentHandler
from handler.predictor import Predictor, PredictorOptions
from model.config import from_dict
from tests.answers import assert_close_answer
from tests.images import image_bytes, request_for

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = yaml.safe_load((ROOT / "serve_config" / "model-config.yaml").read_text())


def make_context(checkpoint: Path, batch: int, model_yaml: dict | None = None) -> Context:
    """What TorchServe's worker builds: manifest, model dir, yaml config, metrics cache, per-request processors."""
    metrics = MetricsCacheYamlImpl(str(ROOT / "serve_config" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "pigment"
    manifest = {"model": {"modelName": "pigment", "serializedFile": checkpoint.name, "handler": "pigment_handler.py"}}
    context = Context("pigment", str(checkpoint.parent), manifest, 8, None, "0.12.0", metrics=metrics,
                      model_yaml_config=MODEL_CONFIG if model_yaml is None else model_yaml)
    set_batch(context, batch)
    return context


def set_batch(context: Context, batch: int) -> None:
    context.request_processor = [RequestProcessor({}) for _ in range(batch)]
    context.request_ids = {i: f"req-{i}" for i in range(batch)}
    context.metrics.set_request_ids(context.request_ids)


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """initialize() sets the process-wide torch thread count; give the other test files theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def handler(tiny_checkpoint) -> PigmentHandler:
    h = PigmentHandler()
    h.initialize(make_context(tiny_checkpoint, 1))
    return h


def test_every_request_of_a_batch_gets_one_answer_and_bad_ones_their_own_status(handler, tiny_checkpoint):
    good = request_for(("clinical", "dermoscopy"), seed=1)
    batch = [good, {"dermoscopy_image": image_bytes(2)}, {"clinical_image": b"%PDF-1.7"}, {"photo": b"x"},
             request_for(("clinical",), seed=3)]
    context = make_context(tiny_checkpoint, len(batch))
    answers = handler.handle(batch, context)
    assert len(answers) == len(batch)
    statuses = [context.get_response_status(i)[0] for i in range(len(batch))]
    assert statuses == [200, 400, 415, 400, 200]
    assert context.get_response_status(1) == (400, "Bad Request")
    assert [a.get("field") for a in answers] == [None, "clinical_image", "clinical_image", "photo", None]
    assert all(context.get_response_content_type(i) == "application/json" for i in range(len(batch)))
    expected = Predictor(tiny_checkpoint).predict([batch[0], batch[4]])
    for answer, offline in zip([answers[0], answers[4]], expected, strict=True):
        # The handler serves the shipped accelerated backend: its features move the OOD score by ~0.2 %.
        assert answer.pop("ood_score") == pytest.approx(offline.pop("ood_score"), rel=0.01)
        assert_close_answer(answer, offline)


def test_custom_metrics_are_emitted_with_the_dimensions_metrics_yaml_declares(handler, tiny_checkpoint, caplog):
    batch = [request_for(("clinical", "multispectral"), seed=4), {"clinical_image": b"plain text"}]
    with caplog.at_level(logging.INFO):
        handler.handle(batch, make_context(tiny_checkpoint, len(batch)))
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "Failed to update metric" in line]
    emitted = " ".join(line for line in lines if line.startswith("[METRICS]"))
    assert "PigmentRequests.Count:1|#Modalities:clinical+multispectral,ModelName:pigment,Level:Model" in emitted
    assert "PigmentRejectedRequests.Count:1|#Status:415,ModelName:pigment,Level:Model" in emitted
    assert "PigmentPreprocessTime.Milliseconds:" in emitted and "PigmentInferenceTime.Milliseconds:" in emitted


def test_handler_options_come_from_the_model_config_handler_section(tiny_checkpoint):
    h = PigmentHandler()
    h.initialize(make_context(tiny_checkpoint, 1, {"maxWorkers": 2, "handler": {"simulate_multispectral": True}}))
    assert h.predictor.options.simulate_multispectral is True
    assert h.device == torch.device("cpu")
    (answer,) = h.handle([request_for(("clinical",), seed=5)], make_context(tiny_checkpoint, 1))
    assert answer["simulated"] == ["multispectral"]


def test_a_misspelled_handler_option_stops_the_worker_with_the_valid_keys(tiny_checkpoint):
    with pytest.raises(ValueError, match="handler.simulate_ms.*valid keys are"):
        PigmentHandler().initialize(make_context(tiny_checkpoint, 1, {"handler": {"simulate_ms": True}}))


def test_shipped_model_config_is_valid_and_sized_for_the_design():
    assert from_dict(PredictorOptions, MODEL_CONFIG["handler"], "handler") == PredictorOptions(backend="openvino_bf16")
    # 2 workers x 1 thread on 2 cores; batches of 4 = 8 concurrent clients over 2 workers (docs/performance.md)
    assert MODEL_CONFIG["batchSize"] == 4 and MODEL_CONFIG["minWorkers"] == MODEL_CONFIG["maxWorkers"] == 2
    assert MODEL_CONFIG["deviceType"] == "cpu" and MODEL_CONFIG["responseTimeout"] == 120

