"""KServe's TorchServe runtime, locally: kserve/layout.py's storage folder served the way the runtime starts it.

The runtime (kserve config/runtimes/kserve-torchserve.yaml) runs ``torchserve --start --model-store=<mount>/model-store
--ts-config=<mount>/config/config.properties`` with TS_SERVICE_ENVELOPE=kservev2 for protocolVersion v2. Here the
same command runs on free loopback ports: the copy of the layout's config.properties differs only in the addresses,
ports and the metrics_config path. Answers are compared with the Predictor in-process, with the same options
(backend eager_fp32, the reference, so that 1e-4 tests the protocol path; the bf16 backends have their own budget).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from handler.kserve_v2 import answer_from_tensors
from handler.predictor import Predictor, PredictorOptions
from model.config import from_dict
from serving.kserve_layout import KSERVE_OVERRIDES
from serving.properties import write_properties
from serving.torchserve import LocalTorchServe, Ports, torchserve_executable
from tests.answers import assert_close_answer
from tests.images import SUBSETS, request_for
from tests.torchserve_harness import java_available

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "kserve" / "layout.py"

pytestmark = pytest.mark.skipif(not java_available(), reason="TorchServe needs Java 17 (scripts/ensure_java.sh)")


def reference_model_config(path: Path) -> Path:
    """serve_config/model-config.yaml with the eager fp32 backend: the configuration offline answers are held to."""
    config = yaml.safe_load((ROOT / "serve_config" / "model-config.yaml").read_text())
    config.setdefault("handler", {})["backend"] = "eager_fp32"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def reference_predictor(checkpoint: Path, model_config: Path) -> Predictor:
    section = yaml.safe_load(model_config.read_text()).get("handler")
    return Predictor(checkpoint, from_dict(PredictorOptions, section, "handler"))


def v2_body(request: dict[str, bytes], request_id: str | None = None) -> dict:
    """A /predictions-style request (``clinical_image`` -> bytes) as an open inference protocol v2 body."""
    inputs = [{"name": name.removesuffix("_image"), "datatype": "BYTES", "shape": [1],
               "data": [base64.b64encode(data).decode("ascii")]} for name, data in request.items()]
    return {"inputs": inputs, **({"id": request_id} if request_id else {})}


def assert_same_answer(served: dict, expected: dict) -> None:
    """Equal up to the 4-decimal rounding of answers and FP32 transport."""
    assert_close_answer(served, expected)


def read_properties(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@contextlib.contextmanager
def kserve_torchserve(storage: Path, run_dir: Path, timeout: float = 180.0) -> Iterator[LocalTorchServe]:
    """TorchServe started with the KServe runtime's command line on ``storage``, on free loopback ports."""
    ports = Ports.free()
    server = LocalTorchServe(storage / "model-store", run_dir, ports)  # for its URLs, stop() and logs
    server.tmp_dir.mkdir(parents=True, exist_ok=True)
    local = {**ports.properties(), "metrics_config": str(storage / "config" / "metrics.yaml")}
    write_properties(server.config_path, storage / "config" / "config.properties", local, "free loopback ports")
    env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
    env.update(TMPDIR=str(server.tmp_dir), TEMP=str(server.tmp_dir), LOG_LOCATION=str(server.log_dir),
               METRICS_LOCATION=str(server.log_dir), TS_SERVICE_ENVELOPE="kservev2")
    command = [torchserve_executable(), "--start", f"--model-store={storage / 'model-store'}",
               f"--ts-config={server.config_path}"]
    with open(run_dir / "torchserve.out", "ab") as out:
        subprocess.run(command, cwd=run_dir, env=env, stdout=out, stderr=out, check=True)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(server):
            if time.monotonic() > deadline or server.server_pid() is None:
                raise RuntimeError(f"KServe-style TorchServe did not get ready\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        server.stop()


def _ready(server: LocalTorchServe) -> bool:
    """Every worker READY, asked without a key: token authorization is off in the KServe layout."""
    try:
        model = requests.get(f"{server.management_url}/models/pigment", timeout=5)
    except requests.RequestException:
        return False
    workers = model.json()[0].get("workers", []) if model.ok else []
    return bool(workers) and all(w["status"] == "READY" for w in workers)


@pytest.fixture(scope="module")
def model_config(tmp_path_factory) -> Path:
    return reference_model_config(tmp_path_factory.mktemp("kserve-config") / "model-config.yaml")


@pytest.fixture(scope="module")
def storage(tiny_checkpoint, model_config, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("kserve-storage")
    subprocess.run([sys.executable, str(LAYOUT), str(tiny_checkpoint), str(storage), "--model-config",
                    str(model_config)], check=True, capture_output=True, text=True)
    return storage


@pytest.fixture(scope="module")
def server(storage, tmp_path_factory):
    with kserve_torchserve(storage, tmp_path_factory.mktemp("kserve-run")) as ts:
        yield ts


@pytest.fixture(scope="module")
def offline(tiny_checkpoint, model_config) -> Predictor:
    return reference_predictor(tiny_checkpoint, model_config)


def infer(server, body: dict) -> requests.Response:
    return requests.post(f"{server.inference_url}/v2/models/pigment/infer", json=body, timeout=60)


def test_layout_config_differs_from_serve_config_only_in_the_kserve_keys_and_registers_batch_size_one(storage):
    kserve_props = read_properties(storage / "config" / "config.properties")
    base = read_properties(ROOT / "serve_config" / "config.properties")
    changed = {k for k in kserve_props.keys() | base.keys() if kserve_props.get(k) != base.get(k)}
    assert changed == set(KSERVE_OVERRIDES) | {"model_snapshot"}
    assert kserve_props["service_envelope"] == "kservev2" and kserve_props["enable_envvars_config"] == "true"
    assert kserve_props["enable_model_api"] == "false"
    snapshot = json.loads(kserve_props["model_snapshot"])
    [(version, entry)] = snapshot["models"]["pigment"].items()
    with zipfile.ZipFile(storage / "model-store" / "pigment.mar") as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        archived = yaml.safe_load(mar.read(manifest["model"]["configFile"]))
    assert version == manifest["model"]["modelVersion"] == "tiny-test"
    assert entry["batchSize"] == archived["batchSize"] == 1 and entry["marName"] == "pigment.mar"
    assert (storage / "config" / "metrics.yaml").read_text() == (ROOT / "serve_config" / "metrics.yaml").read_text()


def test_layout_refuses_an_archive_built_with_batch_size_above_one(storage, tmp_path):
    src, mar = storage / "model-store" / "pigment.mar", tmp_path / "pigment.mar"
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(mar, "w") as new:
        config_name = json.loads(old.read("MAR-INF/MANIFEST.json"))["model"]["configFile"]
        for item in old.infolist():
            data = old.read(item)
            if item.filename == config_name:
                data = yaml.safe_dump({**yaml.safe_load(data), "batchSize": 8}).encode()
            new.writestr(item, data)
    result = subprocess.run([sys.executable, str(LAYOUT), str(mar), str(tmp_path / "storage")], check=False,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "batchSize 8" in result.stderr and "pytorch/serve#2158" in result.stderr


def test_the_server_registered_pigment_from_the_snapshot_with_batch_size_one(server):
    described = requests.get(f"{server.management_url}/models/pigment", timeout=10).json()[0]
    assert described["batchSize"] == 1 and described["modelVersion"] == "tiny-test"


@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_v2_infer_equals_the_offline_predictor_for_every_modality_subset(server, offline, subset):
    request = request_for(subset, seed=40 + len(subset), fmt="JPEG", size=128)
    response = infer(server, v2_body(request, request_id=f"req-{len(subset)}"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["model_name"], body["model_version"]) == (f"req-{len(subset)}", "pigment", "tiny-test")
    types = {o["name"]: (o["datatype"], o["shape"]) for o in body["outputs"]}
    assert types["score"] == ("FP32", [1]) and types["severity"] == ("BYTES", [1])
    assert types["attention"] == ("FP32", [3]) and types["modalities"] == ("BYTES", [len(subset)])
    assert_same_answer(answer_from_tensors(body["outputs"]), offline.predict([request])[0])


def test_concurrent_v2_requests_each_get_their_own_answer(server, offline):
    # With batchSize > 1 TorchServe's envelope would answer only the first request of a batch (pytorch/serve#2158).
    batch = [request_for(SUBSETS[i % len(SUBSETS)], seed=500 + i) for i in range(6)]
    with ThreadPoolExecutor(len(batch)) as pool:
        responses = list(pool.map(lambda r: infer(server, v2_body(r)), batch))
    assert [r.status_code for r in responses] == [200] * len(batch)
    for response, request in zip(responses, batch, strict=True):
        assert_same_answer(answer_from_tensors(response.json()["outputs"]), offline.predict([request])[0])


@pytest.mark.parametrize("inputs, field", [
    ([{"name": "dermoscopy", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}], "clinical"),
    ([{"name": "xray", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}], "xray"),
    ([{"name": "clinical", "datatype": "FP32", "shape": [1], "data": [0.5]}], "clinical"),
    ([{"name": "clinical", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}], "clinical"),
], ids=["no-clinical", "unknown-input", "not-bytes", "bad-base64"])
def test_a_bad_v2_request_is_a_400_whose_outputs_name_the_input(server, inputs, field):
    response = infer(server, {"inputs": inputs})
    assert response.status_code == 400, response.text
    error = answer_from_tensors(response.json()["outputs"])
    assert error["status"] == 400 and error["field"] == field and field in error["error"]
