"""End to end against a real TorchServe on loopback: the session's shared server (startup is ~10-20 s).

The archive is built from the tiny checkpoint with maxBatchDelay=300 ms, so requests sent together usually land in
one batch. Whether they did is read from what the server reports (the handler logs "batch of N: A answered, R
rejected" for every batch), never inferred from timing; an attempt whose requests the server split is sent again.
Offline references: ``training.infer_single`` (the offline CLI's function) and the Predictor in-process.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from handler.predictor import Predictor
from model.checkpoint import load_for_inference
from serving.grpc_client import GrpcClient, encode_request
from tests.answers import assert_close_answer
from tests.conftest import SERVED_BATCH_DELAY_MS, SERVED_BATCH_SIZE
from tests.images import SUBSETS, image_bytes, request_for, write_request
from tests.torchserve_harness import (
    java_available,
    served_checkpoint,
    shipped_handler_options,
)
from training.infer_single import predict_files

ROOT = Path(__file__).resolve().parents[1]
BATCH_DELAY_MS = SERVED_BATCH_DELAY_MS

pytestmark = pytest.mark.skipif(not java_available(), reason="TorchServe needs Java 17 (scripts/ensure_java.sh)")


@pytest.fixture
def server(served):
    """The session's shared TorchServe (tests/conftest.py), built with maxBatchDelay=BATCH_DELAY_MS."""
    return served


@pytest.fixture(scope="module")
def offline(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint)


def post(server, request: dict[str, bytes], headers: dict | None = None) -> requests.Response:
    files = {name: (f"{name}.png", data) for name, data in request.items()}
    return requests.post(f"{server.inference_url}/predictions/pigment", files=files,
                         headers=server.auth() if headers is None else headers, timeout=60)


def post_together(server, batch: list[dict[str, bytes]]) -> list[requests.Response]:
    """Send all requests at the same instant (a barrier), so TorchServe batches them."""
    barrier = threading.Barrier(len(batch))

    def send(request):
        barrier.wait()
        return post(server, request)

    with ThreadPoolExecutor(len(batch)) as pool:
        return list(pool.map(send, batch))


def assert_same_answer(served: dict, expected: dict) -> None:
    """Equal up to the documented rounding: 4 decimals, and float noise across batch compositions."""
    assert_close_answer(served, expected)


def batch_log_lines(server) -> list[tuple[int, int, int]]:
    """(size, answered, rejected) of every batch the handler has logged so far."""
    text = (server.log_dir / "model_log.log").read_text(errors="replace")
    return [tuple(map(int, m)) for m in re.findall(r"batch of (\d+): (\d+) answered, (\d+) rejected", text)]


Batches = list[tuple[int, int, int]]


def send_until_batched(server, send: Callable[[], list], requests_sent: int, batched: Callable[[Batches], bool],
                       attempts: int = 3) -> tuple[list, Batches]:
    """Run ``send`` (requests released together) until the batches the server reports for it satisfy ``batched``.

    The worker's log reaches model_log.log through the frontend a moment after the answers, so each attempt waits
    (up to 10 s) until the log accounts for all ``requests_sent``. Returns the answers and batches of the attempt
    that was batched as wanted; fails naming the batch sizes the server reported if no attempt was.
    """
    for _ in range(attempts):
        before = len(batch_log_lines(server))
        answers = send()
        deadline = time.monotonic() + 10
        while sum(n for n, _, _ in batch_log_lines(server)[before:]) < requests_sent and time.monotonic() < deadline:
            time.sleep(0.1)
        batches = batch_log_lines(server)[before:]
        if batched(batches):
            return answers, batches
    pytest.fail(f"in {attempts} attempts the server never batched the requests as wanted; last: {batches}")


@pytest.mark.parametrize("subset", [SUBSETS[0], SUBSETS[1], SUBSETS[3]], ids="+".join)
def test_answers_with_one_two_and_three_modalities_equal_training_infer_single(server, tiny_checkpoint, subset,
                                                                               tmp_path):
    # Phone-like JPEGs, larger than the model's input, so decoding (JPEG draft) and resizing are compared too.
    request = request_for(subset, seed=100 + len(subset), fmt="JPEG", size=256)
    response = post(server, request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    served = response.json()
    offline = predict_files(load_for_inference(tiny_checkpoint), write_request(request, tmp_path))
    assert abs(served["score"] - offline["score"]) <= 1e-4
    assert served["severity"] == offline["severity"] and served["modalities"] == offline["modalities"]
    assert all(abs(served["attention"][t] - w) <= 1e-4 for t, w in offline["attention"].items())
    assert served["model_version"] == offline["model_version"] == "tiny-test"


def test_a_json_body_of_base64_images_equals_multipart(server):
    request = request_for(SUBSETS[2], seed=7)
    body = {name: base64.b64encode(data).decode() for name, data in request.items()}
    as_json = requests.post(f"{server.inference_url}/predictions/pigment", json=body, headers=server.auth(),
                            timeout=60)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json() == post(server, request).json()


def grpc_predict(server, request: dict[str, bytes], key: str | None = None,
                 model: str = "pigment") -> tuple[int, dict | None, str]:
    with GrpcClient(f"127.0.0.1:{server.ports.grpc_inference}") as client:
        status, answer, error = client.predict(encode_request(model, request),
                                               server.key("inference") if key is None else key)
    return status, json.loads(answer) if answer else None, error


@pytest.mark.parametrize("subset", [SUBSETS[0], SUBSETS[3]], ids="+".join)
def test_grpc_answers_equal_the_rest_answers(server, subset):
    request = request_for(subset, seed=21)
    status, answer, error = grpc_predict(server, request)
    assert (status, error) == (200, "")
    assert answer == post(server, request).json()


def test_grpc_bad_requests_get_their_status_and_field_while_the_batch_succeeds(server, offline):
    good = [request_for(SUBSETS[i], seed=330 + i) for i in range(2)]
    bad = [({"dermoscopy_image": image_bytes(4)}, 400, "clinical_image"),
           ({"clinical_image": b"this is a text file, not a photo"}, 415, "clinical_image")]
    batch = [good[0], bad[0][0], bad[1][0], good[1]]
    barrier = threading.Barrier(len(batch))

    def send(request):
        barrier.wait()
        return grpc_predict(server, request)

    def send_all():
        with ThreadPoolExecutor(len(batch)) as pool:
            return list(pool.map(send, batch))

    answers, _ = send_until_batched(server, send_all, len(batch), lambda batches: any(
        ok and rejected for _, ok, rejected in batches))  # a good and a bad request in one batch
    for (status, answer, _), request in zip([answers[0], answers[3]], good):
        assert status == 200
        assert_same_answer(answer, offline.predict([request])[0])
    for (status, answer, _), (_, expected, field) in zip(answers[1:3], bad):
        assert status == expected and answer["status"] == expected and answer["field"] == field


def test_the_load_generator_sends_grpc_and_multipart_alike(server):
    from benchmarks.loadgen import Body, run_load

    requests_ = [list(request_for(SUBSETS[i], seed=40 + i).items()) for i in range(3)]
    runs = {}
    for url, encode in ((f"grpc://127.0.0.1:{server.ports.grpc_inference}", lambda p: Body.grpc("pigment", p)),
                        (f"{server.inference_url}/predictions/pigment", Body.multipart)):
        results = run_load(url, [encode(p) for p in requests_], 6, 3, 60, headers=server.auth())
        assert [r.status for r in results] == [200] * 6, [r.error for r in results]
        runs[url.split(":")[0]] = [r.answer for r in results]
    assert runs["grpc"] == runs["http"]


def test_grpc_refuses_a_wrong_key_and_an_unknown_model(server):
    request = request_for(SUBSETS[0], seed=22)
    status, answer, error = grpc_predict(server, request, key="wrong-token")
    assert (status, answer) == (403, None) and error.startswith("PERMISSION_DENIED")
    status, answer, error = grpc_predict(server, request, model="no-such-model")
    assert status >= 400 and answer is None and "no-such-model" in error


def test_sixteen_concurrent_mixed_requests_each_equal_their_single_answer(server):
    batch = [request_for(SUBSETS[i % len(SUBSETS)], seed=200 + i) for i in range(16)]
    singles = [post(server, r).json() for r in batch]
    assert len({s["score"] for s in singles}) > 8, "test images should give distinguishable scores"
    together, batches = send_until_batched(server, lambda: post_together(server, batch), len(batch),
                                           lambda batches: max(n for n, _, _ in batches) > 1)
    assert all(n <= SERVED_BATCH_SIZE for n, _, _ in batches), f"batches over batchSize: {batches}"
    assert [r.status_code for r in together] == [200] * 16
    for response, single in zip(together, singles):
        assert_same_answer(response.json(), single)


def test_bad_requests_get_their_own_4xx_naming_the_field_while_the_batch_succeeds(server, offline):
    good = [request_for(SUBSETS[i], seed=300 + i) for i in range(3)]
    bad = [({"dermoscopy_image": image_bytes(1)}, 400, "clinical_image"),
           ({"clinical_image": b"this is a text file, not a photo"}, 415, "clinical_image"),
           ({"photo": image_bytes(2), "xray": image_bytes(3)}, 400, "photo,xray")]
    sent = [good[0], bad[0][0], good[1], bad[1][0], bad[2][0], good[2]]
    responses, _ = send_until_batched(server, lambda: post_together(server, sent), len(sent), lambda batches: any(
        ok and rejected for _, ok, rejected in batches))  # the good and the bad requests shared a batch
    answers = {0: good[0], 2: good[1], 5: good[2]}
    for i, request in answers.items():
        assert responses[i].status_code == 200, responses[i].text
        assert_same_answer(responses[i].json(), offline.predict([request])[0])
    for response, (_, status, field) in zip([responses[1], responses[3], responses[4]], bad):
        assert response.status_code == status
        assert response.json()["field"] == field and response.json()["status"] == status
        assert field.split(",")[0] in response.json()["error"]


@pytest.mark.parametrize("api", ["inference", "management"])
@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no-token", "wrong-token"])
def test_requests_without_or_with_a_wrong_token_are_refused(server, api, token):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if api == "inference":
        response = post(server, request_for(SUBSETS[0], seed=1), headers=headers)
    else:
        response = requests.get(f"{server.management_url}/models/pigment", headers=headers, timeout=10)
    # TorchServe 0.12 answers a failed token check with 400 InvalidKeyException (not 401/403).
    assert response.status_code in (400, 401, 403)
    assert response.json()["type"] == "InvalidKeyException"


def test_the_model_register_api_is_off(server):
    register = requests.post(f"{server.management_url}/models?url=pigment.mar", headers=server.auth("management"),
                             timeout=10)
    unregister = requests.delete(f"{server.management_url}/models/pigment", headers=server.auth("management"),
                                 timeout=10)
    assert register.status_code == unregister.status_code == 405


def test_the_management_api_scales_to_two_workers_and_back(tiny_checkpoint, tmp_path):
    # Its own server: TorchServe 0.12 can lose a request sent just after a scale-down (docs/reliability.md,
    # "Known problems"), and the shared session server must stay trustworthy for the tests after this one.
    with served_checkpoint(tiny_checkpoint, tmp_path, minWorkers=1,
                           handler=shipped_handler_options(backend="eager_fp32")) as own:
        _scale_to_two_workers_and_back(own)


def _scale_to_two_workers_and_back(server) -> None:
    def scale(n):
        response = requests.put(f"{server.management_url}/models/pigment?min_worker={n}&synchronous=true",
                                headers=server.auth("management"), timeout=120)
        assert response.status_code == 200, response.text
        described = requests.get(f"{server.management_url}/models/pigment", headers=server.auth("management"),
                                 timeout=10).json()[0]
        return [w["status"] for w in described["workers"]]

    assert scale(2) == ["READY", "READY"]
    assert post(server, request_for(SUBSETS[1], seed=5)).status_code == 200
    assert scale(1) == ["READY"]


def test_the_metrics_endpoint_shows_the_custom_metrics(server):
    post(server, request_for(SUBSETS[3], seed=9))
    post(server, {"clinical_image": b"not an image"})
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    assert re.search(r'PigmentRequests\{Modalities="clinical\+dermoscopy\+multispectral",ModelName="pigment"', text)
    assert re.search(r'PigmentRejectedRequests\{Status="415",ModelName="pigment"', text)
    assert "PigmentPreprocessTime{" in text and "PigmentInferenceTime{" in text


def test_the_client_script_prints_the_answer(server, tmp_path, offline):
    request = request_for(SUBSETS[1], seed=11)
    paths = {}
    for name, data in request.items():
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(data)
    for extra in ([], ["--json"], ["--grpc"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "client.py"), "--clinical", str(paths["clinical_image"]),
             "--dermoscopy", str(paths["dermoscopy_image"]), "--run-dir", str(server.run_dir), *extra],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert_same_answer(json.loads(result.stdout), offline.predict([request])[0])


def lesion_request(data: Path, lesion_id: str) -> dict[str, bytes]:
    """A synthetic lesion's clinical and dermoscopy files (images like the calibration data's)."""
    return {"clinical_image": (data / "clinical" / "images" / f"{lesion_id}.jpg").read_bytes(),
            "dermoscopy_image": (data / "dermoscopy" / "images" / f"{lesion_id}.png").read_bytes()}


def lesions_with_dermoscopy(data: Path, n: int) -> list[str]:
    return sorted(p.stem for p in (data / "dermoscopy" / "images").glob("*.png"))[:n]


def test_served_answers_carry_the_trust_fields_of_offline_inference_in_a_mixed_batch(server, offline, trust_data):
    lesions = [lesion_request(trust_data, i) for i in lesions_with_dermoscopy(trust_data, 3)]
    noise = [request_for(SUBSETS[i], seed=400 + i) for i in (0, 3)]
    bad = {"dermoscopy_image": image_bytes(9)}
    batch = [lesions[0], noise[0], bad, lesions[1], noise[1], lesions[2]]
    responses = post_together(server, batch)
    assert responses[2].status_code == 400 and responses[2].json()["field"] == "clinical_image"
    served = {i: r.json() for i, r in enumerate(responses) if i != 2}
    assert all(responses[i].status_code == 200 for i in served)
    for i, answer in served.items():
        assert answer["interval"] is not None and answer["severity_probabilities"] is not None
        assert_same_answer(answer, offline.predict([batch[i]])[0])
    assert not served[1]["in_distribution"] and not served[4]["in_distribution"]
    assert any(served[i]["in_distribution"] for i in (0, 3, 5))


def test_reject_out_of_distribution_serves_a_422_naming_the_field_and_answers_the_rest(tiny_checkpoint, trust_data,
                                                                                       tmp_path):
    offline = Predictor(tiny_checkpoint)
    good = next(r for r in (lesion_request(trust_data, i) for i in lesions_with_dermoscopy(trust_data, 20))
                if offline.predict([r])[0]["in_distribution"])
    odd = dict(good, dermoscopy_image=image_bytes(11))
    with served_checkpoint(tiny_checkpoint, tmp_path, batchSize=SERVED_BATCH_SIZE,
                           maxBatchDelay=SERVED_BATCH_DELAY_MS, minWorkers=1,
                           handler=shipped_handler_options(backend="eager_fp32",
                                                           reject_out_of_distribution=True)) as rejecting:
        responses = post_together(rejecting, [good, odd, good])
    assert responses[1].status_code == 422, responses[1].text
    assert responses[1].json()["field"] == "dermoscopy_image"
    assert [r.status_code for r in (responses[0], responses[2])] == [200, 200]
    assert_same_answer(responses[0].json(), offline.predict([good])[0])
