"""The KServe-native predictor (kserve/pigment_kserve.py) on kserve's own model server, on a free loopback port.

Needs the kserve venv; in .venv (no kserve) this file is skipped:

    bash kserve/setup_venv.sh && .venv-kserve/bin/python -m pytest -q tests/test_kserve_native.py

Answers are compared with the Predictor in-process under the same options (eager fp32, as in
tests/test_kserve_torchserve.py, whose TorchServe answers the same v2 requests with the same contract).
"""

from __future__ import annotations

import base64
import importlib.metadata
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import requests

from handler.kserve_v2 import answer_from_tensors
from tests.images import SUBSETS, request_for
from tests.test_kserve_torchserve import assert_same_answer, reference_model_config, reference_predictor, v2_body

ROOT = Path(__file__).resolve().parents[1]


def kserve_version() -> str | None:
    try:  # not `import kserve`: from the repo root that could find the ./kserve folder (a namespace package)
        return importlib.metadata.version("kserve")
    except importlib.metadata.PackageNotFoundError:
        return None


pytestmark = pytest.mark.skipif(kserve_version() is None, reason="kserve is not installed in this venv; run "
                                "`bash kserve/setup_venv.sh && .venv-kserve/bin/python -m pytest -q "
                                "tests/test_kserve_native.py`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_config(tmp_path_factory) -> Path:
    return reference_model_config(tmp_path_factory.mktemp("kserve-native") / "model-config.yaml")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, model_config, tmp_path_factory):
    """``python kserve/pigment_kserve.py`` on 127.0.0.1:<free port>, gRPC off; ``url`` and ``pid`` once ready."""
    port = free_port()
    log = tmp_path_factory.mktemp("kserve-native-log") / "server.log"
    command = [sys.executable, str(ROOT / "kserve" / "pigment_kserve.py"), "--checkpoint", str(tiny_checkpoint),
               "--model_config", str(model_config), "--bind_host", "127.0.0.1", "--http_port", str(port),
               "--enable_grpc", "false", "--max_batch", "4"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/v2/models/pigment/ready", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"kserve model server did not get ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield SimpleNamespace(url=url, pid=proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def offline(tiny_checkpoint, model_config):
    return reference_predictor(tiny_checkpoint, model_config)


def b64_instance(request: dict[str, bytes]) -> dict[str, str]:
    return {name: base64.b64encode(data).decode("ascii") for name, data in request.items()}


def test_the_installed_kserve_is_the_pinned_one():
    pinned = [line.split("==")[1].strip() for line in (ROOT / "requirements-kserve.txt").read_text().splitlines()
              if line.startswith("kserve==")]
    assert pinned == [kserve_version()]


def test_the_server_listens_on_loopback_only_and_reports_ready(server):
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).json()["ready"] is True
    assert requests.get(f"{server.url}/v1/models/pigment", timeout=5).json()["ready"] is True
    proc = psutil.Process(server.pid)
    connections = proc.net_connections("tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    listening = {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, "REST must bind loopback only and gRPC must be off"


@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_v2_infer_equals_the_offline_predictor(server, offline, subset):
    request = request_for(subset, seed=40 + len(subset), fmt="JPEG", size=128)
    response = requests.post(f"{server.url}/v2/models/pigment/infer", json=v2_body(request, "req-1"), timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("req-1", "pigment", "tiny-test")
    types = {o["name"]: (o["datatype"], o["shape"]) for o in body["outputs"]}
    assert types["score"] == ("FP32", [1]) and types["attention_tokens"] == ("BYTES", [3])
    assert_same_answer(answer_from_tensors(body["outputs"]), offline.predict([request])[0])


def test_v1_instances_are_answered_in_order_like_the_predictions_api(server, offline):
    batch = [request_for(SUBSETS[i], seed=70 + i) for i in range(len(SUBSETS))]
    response = requests.post(f"{server.url}/v1/models/pigment:predict",
                             json={"instances": [b64_instance(r) for r in batch]}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(batch)
    for served, request in zip(predictions, batch, strict=True):
        assert_same_answer(served, offline.predict([request])[0])


def test_a_bad_v1_instance_is_a_400_naming_the_instance_and_field(server):
    good = b64_instance(request_for(SUBSETS[0], seed=1))
    response = requests.post(f"{server.url}/v1/models/pigment:predict",
                             json={"instances": [good, {"dermoscopy_image": good["clinical_image"]}]}, timeout=60)
    assert response.status_code == 400
    assert "instance 1" in response.json()["error"] and "clinical_image" in response.json()["error"]


@pytest.mark.parametrize("inputs, field", [
    ([{"name": "dermoscopy", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}], "clinical"),
    ([{"name": "xray", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}], "xray"),
    ([{"name": "clinical", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}], "clinical"),
], ids=["no-clinical", "unknown-input", "bad-base64"])
def test_a_bad_v2_request_is_a_400_naming_the_input(server, inputs, field):
    response = requests.post(f"{server.url}/v2/models/pigment/infer", json={"inputs": inputs}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}:")
