"""Reliability and security against the session's real TorchServe (fast; part of `make test`).

The whole bad-input corpus (tests/bad_inputs.py) goes through HTTP, each bad case in the same batch as good
requests: every case gets its documented status and names its field, nothing is a 5xx, the good batch-mates get
exactly their lone answers, and the worker is the same process before and after (pid and start time from the
management API). Also: a body over max_request_size, a field sent twice, token refusals, and repository checks
(key file untracked, weights-only loading, loopback config). The long runs (soak, kill, scale) are tests/soak.
"""

from __future__ import annotations

import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from benchmarks.loadgen import Body
from handler.predictor import MULTIPART_SLACK_PER_PART, Failure, Predictor, repeated_part_failure
from tests.bad_inputs import CASES, GOOD, Case
from tests.conftest import SERVED_BATCH_SIZE
from tests.images import SUBSETS, image_bytes, request_for

ROOT = Path(__file__).resolve().parents[1]
BATCH = SERVED_BATCH_SIZE  # the shared server's batchSize: 4 corpus cases + 4 good requests fill one batch


@pytest.fixture(scope="module")
def offline(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint)


def send(server, parts=(), json_body: bytes | None = None, headers: dict | None = None) -> requests.Response:
    """One request: multipart ``parts`` [(field, bytes), ...] (a field may repeat) or a raw JSON body."""
    auth = server.auth() if headers is None else headers
    if json_body is not None:
        body = Body(json_body, "application/json")
    else:
        body = Body.multipart(parts)
    return requests.post(f"{server.inference_url}/predictions/pigment", data=body.data, timeout=60,
                         headers={**auth, "Content-Type": body.content_type})


def send_together(server, calls: list[dict]) -> list[requests.Response]:
    """All requests released at once (a barrier) so TorchServe puts them in one batch."""
    barrier = threading.Barrier(len(calls))

    def go(kwargs):
        barrier.wait()
        return send(server, **kwargs)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(go, calls))


def workers(server) -> list[tuple[str, int, str]]:
    """(id, pid, startTime) of every worker: a restarted worker has a new pid and start time."""
    described = requests.get(f"{server.management_url}/models/pigment", headers=server.auth("management"),
                             timeout=10).json()[0]
    return sorted((w["id"], w["pid"], w["startTime"]) for w in described["workers"])


def batch_log_lines(server) -> list[tuple[int, int, int]]:
    text = (server.log_dir / "model_log.log").read_text(errors="replace")
    return [tuple(map(int, m)) for m in re.findall(r"batch of (\d+): (\d+) answered, (\d+) rejected", text)]


def close(served: dict, expected: dict) -> bool:
    """Equal up to the documented 4-decimal rounding (float noise across batch compositions)."""
    return (served.keys() == expected.keys() and abs(served["score"] - expected["score"]) <= 1e-4
            and all(abs(served["attention"][t] - w) <= 1e-4 for t, w in expected["attention"].items())
            and all(served[k] == expected[k] for k in expected if k not in ("score", "attention")))


def problems_with(case: Case, response: requests.Response) -> str:
    """"" when the response is the case's documented answer, else what is wrong."""
    if response.status_code != case.status:
        return f"{case.name}: HTTP {response.status_code} (expected {case.status}): {response.text[:200]}"
    body = response.json()
    if case.status == 200:
        return "" if 0.0 <= body.get("score", -1) <= 1.0 else f"{case.name}: no score in {body}"
    if body.get("status") != case.status or case.field not in body.get("field", "") or case.field not in body["error"]:
        return f"{case.name}: the error does not name {case.field!r}: {body}"
    return ""


def test_the_whole_corpus_in_mixed_batches_gets_documented_answers_without_a_worker_restart(served, offline):
    good = [request_for(SUBSETS[i % len(SUBSETS)], seed=500 + i) for i in range(BATCH // 2)]
    expected = [offline.predict([g])[0] for g in good]
    before_workers, before_log = workers(served), len(batch_log_lines(served))
    problems, statuses = [], []
    for start in range(0, len(CASES), BATCH // 2):
        cases = CASES[start:start + BATCH // 2]
        calls = []
        for case, g in zip(cases, good):
            calls += [{"parts": case.parts, "json_body": case.json_body}, {"parts": list(g.items())}]
        responses = send_together(served, calls)
        for case, bad, ok, answer in zip(cases, responses[0::2], responses[1::2], expected):
            statuses.append(bad.status_code)
            problems.append(problems_with(case, bad))
            if ok.status_code != 200 or not close(ok.json(), answer):
                problems.append(f"good batch-mate of {case.name!r}: {ok.status_code} {ok.text[:200]}")
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)
    assert len(statuses) == len(CASES) >= 40 and not [s for s in statuses if s >= 500]
    assert workers(served) == before_workers, "a bad input restarted the worker"
    mixed = [b for b in batch_log_lines(served)[before_log:] if b[1] and b[2]]
    assert len(mixed) >= len(CASES) // (BATCH // 2) // 2, "bad and good requests should have shared batches"


def test_a_body_over_max_request_size_is_a_413_and_the_worker_is_unaffected(served, offline):
    limit = int(re.search(r"^max_request_size=(\d+)", (ROOT / "serve_config" / "config.properties").read_text(),
                          re.M).group(1))
    assert limit == 32 * 1024 * 1024
    before = workers(served)
    photo = image_bytes(3)
    too_big = send(served, [("clinical_image", photo), ("dermoscopy_image", b"\0" * (limit + 1024 * 1024))])
    assert too_big.status_code == 413  # TorchServe's frontend answers with an empty body; no worker sees it
    after = send(served, [("clinical_image", photo)])
    assert after.status_code == 200 and close(after.json(), offline.predict([{"clinical_image": photo}])[0])
    assert workers(served) == before


def test_a_field_sent_twice_is_a_400_naming_it(served):
    photo, other = image_bytes(4), image_bytes(5)
    twice = send(served, [("clinical_image", photo), ("clinical_image", other)])
    assert twice.status_code == 400
    assert twice.json()["field"] == "clinical_image" and "more than once" in twice.json()["error"]
    aux_twice = send(served, [("clinical_image", photo), ("dermoscopy_image", other), ("dermoscopy_image", other)])
    assert aux_twice.status_code == 400 and "dermoscopy_image" in aux_twice.json()["field"]


def test_a_repeated_part_smaller_than_the_framing_slack_goes_unnoticed_and_its_last_copy_is_used(served, offline):
    # The documented limit of the Content-Length check: a dropped copy under ~2 KiB cannot be told apart from
    # multipart framing. TorchServe's worker keeps the last copy of a repeated field.
    photo = image_bytes(6)
    response = send(served, [("clinical_image", b"a small text part"), ("clinical_image", photo)])
    assert response.status_code == 200
    assert close(response.json(), offline.predict([{"clinical_image": photo}])[0])


@pytest.mark.parametrize("filename_length", [10, 250])
def test_the_repeated_part_check_leaves_real_multipart_bodies_alone(filename_length):
    # requests' own encoding (what most clients send), with long file names, must never look like a repeat.
    files = {f"{m}_image": ("x" * filename_length + ".jpg", image_bytes(i), "image/jpeg")
             for i, m in enumerate(("clinical", "dermoscopy", "multispectral"))}
    prepared = requests.Request("POST", "http://127.0.0.1/", files=files).prepare()
    parts = {name: data for name, (_, data, _) in files.items()}
    assert repeated_part_failure(parts, prepared.headers["Content-Type"], prepared.headers["Content-Length"]) is None
    twice = requests.Request("POST", "http://127.0.0.1/", files=[*files.items(), ("clinical_image", files[
        "clinical_image"])]).prepare()
    failure = repeated_part_failure(parts, twice.headers["Content-Type"], twice.headers["Content-Length"])
    assert isinstance(failure, Failure) and failure.status == 400 and "clinical_image" in failure.field
    assert len(image_bytes(0)) > MULTIPART_SLACK_PER_PART  # the test photos are big enough to be seen


def test_the_repeated_part_check_ignores_json_bodies_and_missing_lengths():
    assert repeated_part_failure({"body": b"{}"}, "application/json", "999999") is None
    assert repeated_part_failure({"clinical_image": GOOD}, "multipart/form-data; boundary=x", None) is None
    assert repeated_part_failure({"clinical_image": GOOD}, "multipart/form-data; boundary=x", "junk") is None


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no-token", "wrong-token"])
def test_inference_ping_and_management_refuse_a_missing_or_wrong_token_with_400(served, token):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    calls = [send(served, [("clinical_image", GOOD)], headers=headers),
             requests.get(f"{served.inference_url}/ping", headers=headers, timeout=10),
             requests.get(f"{served.management_url}/models/pigment", headers=headers, timeout=10),
             requests.put(f"{served.management_url}/models/pigment?min_worker=2", headers=headers, timeout=10)]
    # TorchServe 0.12 answers a failed token check with 400 InvalidKeyException (not 401/403).
    assert [c.status_code for c in calls] == [400] * 4
    assert all(c.json()["type"] == "InvalidKeyException" for c in calls)
    # The keys are not interchangeable either: the inference key does not open the management API.
    wrong_kind = requests.get(f"{served.management_url}/models/pigment", headers=served.auth("inference"), timeout=10)
    assert wrong_kind.status_code == 400


def test_the_key_file_is_never_tracked_and_is_gitignored():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert not [path for path in tracked.splitlines() if path.endswith("key_file.json")]
    assert "key_file.json" in (ROOT / ".gitignore").read_text().split()


def test_every_torch_load_in_the_repository_is_weights_only():
    call = re.compile(r"torch\.load\(")
    offenders = []
    for path in ROOT.rglob("*.py"):
        if {".venv", ".git", "site-packages"} & set(path.relative_to(ROOT).parts):
            continue
        text = path.read_text(errors="replace")
        for match in call.finditer(text):
            args = text[match.end():_closing_paren(text, match.end())]
            if not re.search(r"weights_only\s*=\s*True", args):
                offenders.append(f"{path.relative_to(ROOT)}:{text[:match.start()].count(chr(10)) + 1}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def _closing_paren(text: str, start: int) -> int:
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text)


def test_the_server_config_listens_on_loopback_only_with_tokens_on_and_the_model_api_off():
    props = dict(line.split("=", 1) for line in (ROOT / "serve_config" / "config.properties").read_text().splitlines()
                 if "=" in line and not line.lstrip().startswith("#"))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
