"""Long reliability runs against a real TorchServe on loopback (`make soak`; minutes, not part of `make test`).

One server for the module, serving the tiny random-weight checkpoint so that the run measures the server, not the
model; handler threads=1 so that up to 4 workers share the 2 cores without oversubscribing them. In order:

1. soak: 10,000 requests at concurrency 16 over 64 distinguishable requests (all four modality subsets), each
   answer checked against the Predictor's offline answer for that request; 0 5xx; no worker restart; worker RSS
   growth < 10%; latency percentiles and throughput;
2. kill: SIGKILL the worker mid-load; TorchServe starts a new one, only requests in flight at the kill fail, and
   throughput is back within 30 s;
3. scale 1 -> 4 -> 1 workers through the management API under load with 0 failed requests;
4. stop and start the server on the same model store: the same answers.

Every load is bounded by a request count and a time limit. The numbers go to stdout and docs/reliability.json.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from benchmarks.loadgen import Body, Result, load_summary, run_load
from handler.predictor import Predictor
from tests.images import SUBSETS, request_for
from tests.torchserve_harness import java_available, served_checkpoint, shipped_handler_options

ROOT = Path(__file__).resolve().parents[2]
REPORT_PATH = ROOT / "docs" / "reliability.json"
TOTAL = int(os.environ.get("PIGMENT_SOAK_REQUESTS", "10000"))
CONCURRENCY = 16
POOL = 64  # distinct requests, 16 per modality subset
BATCH_DELAY_MS = 20  # at concurrency 16 batches fill (batchSize 8) long before this

pytestmark = [pytest.mark.soak,
              pytest.mark.timeout(1800),  # each run is minutes by design; pytest.ini's default is for make test
              pytest.mark.skipif(not java_available(), reason="TorchServe needs Java 17 (scripts/ensure_java.sh)")]


@pytest.fixture(scope="module")
def report():
    """Sections filled by the tests, written to docs/reliability.json when the module ends."""
    data: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                              "python": platform.python_version()},
                  "config": {"requests": TOTAL, "concurrency": CONCURRENCY, "distinct_requests": POOL,
                             "batchSize": 8, "maxBatchDelay_ms": BATCH_DELAY_MS, "handler_threads": 1,
                             "backend": "eager_fp32", "workers": "1 (4 during the scale test)",
                             "model": "tiny random-weight Swin (tests/conftest.py), 64 px"}}
    yield data
    REPORT_PATH.parent.mkdir(exist_ok=True)
    REPORT_PATH.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nreliability report -> {REPORT_PATH}\n{json.dumps(data, indent=2)}")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    # eager_fp32: answers are checked against the offline fp32 Predictor to 1e-4 (bf16 backends differ by ~1e-3).
    handler = shipped_handler_options(threads=1, backend="eager_fp32")
    with served_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("soak"), maxBatchDelay=BATCH_DELAY_MS,
                           minWorkers=1, maxWorkers=4, handler=handler) as ts:
        yield ts


@pytest.fixture(scope="module")
def pool(tiny_checkpoint) -> tuple[list[Body], list[dict]]:
    """64 distinguishable multipart bodies and the Predictor's offline answer for each."""
    requests_ = [request_for(SUBSETS[i % len(SUBSETS)], seed=1000 + i) for i in range(POOL)]
    offline = Predictor(tiny_checkpoint)
    expected = [offline.predict([r])[0] for r in requests_]
    assert len({e["score"] for e in expected}) > POOL // 2, "the pool's answers should be distinguishable"
    return [Body.multipart(list(r.items())) for r in requests_], expected


def url(server) -> str:
    return f"{server.inference_url}/predictions/pigment"


def describe(server) -> list[dict]:
    return requests.get(f"{server.management_url}/models/pigment", headers=server.auth("management"),
                        timeout=30).json()[0]["workers"]


def ready_pids(server) -> list[int]:
    return sorted(w["pid"] for w in describe(server) if w["status"] == "READY")


def rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def mismatches(results: list[Result], expected: list[dict]) -> list[str]:
    """Answers that are not the offline answer of the request that was sent (score within 1e-4)."""
    bad = []
    for r in results:
        want, got = expected[r.body], r.answer or {}
        if r.status != 200 or abs(got.get("score", -1) - want["score"]) > 1e-4 or got.get("modalities") != want[
                "modalities"] or got.get("severity") != want["severity"]:
            bad.append(f"#{r.seq} body {r.body}: HTTP {r.status} {got or r.error}")
    return bad


def load_in_background(server, bodies, seconds: float, stop: threading.Event) -> tuple[threading.Thread, list]:
    out: list[list[Result]] = []
    thread = threading.Thread(target=lambda: out.append(run_load(
        url(server), bodies, 1_000_000, CONCURRENCY, seconds, headers=server.auth(), stop=stop)))
    thread.start()
    return thread, out


def per_second(results: list[Result], t0: float, t1: float) -> float:
    """Successful answers per second completed in [t0, t1)."""
    return sum(r.status == 200 and t0 <= r.end < t1 for r in results) / (t1 - t0)


def test_soak_10000_mixed_requests_all_answered_correctly_without_leaks(server, pool, report):
    bodies, expected = pool
    warm = run_load(url(server), bodies, 400, CONCURRENCY, 120, headers=server.auth())
    assert not mismatches(warm, expected)
    (worker_before,) = describe(server)
    frontend = server.server_pid()
    rss_before, java_before = rss_mib(worker_before["pid"]), rss_mib(frontend)

    results = run_load(url(server), bodies, TOTAL, CONCURRENCY, max_seconds=480, headers=server.auth())

    (worker_after,) = describe(server)
    rss_after, java_after = rss_mib(worker_after["pid"]), rss_mib(frontend)
    summary = load_summary(results)
    wrong = mismatches(results, expected)
    restarted = (worker_after["pid"], worker_after["startTime"]) != (worker_before["pid"], worker_before["startTime"])
    report["soak"] = {**summary, "wrong_answers": len(wrong), "worker_restarts": int(restarted),
                      "worker_rss_mib": {"before": rss_before, "after": rss_after,
                                         "growth_pct": round(100 * (rss_after / rss_before - 1), 2)},
                      "frontend_rss_mib": {"before": java_before, "after": java_after},
                      "warmup_requests": len(warm)}
    print(json.dumps(report["soak"], indent=2))
    assert len(results) == TOTAL, f"only {len(results)} of {TOTAL} requests were sent within the time limit"
    assert summary["5xx"] == 0 and summary["no_answer"] == 0
    assert not wrong, "\n".join(wrong[:20])
    assert report["soak"]["worker_restarts"] == 0
    assert rss_after < 1.10 * rss_before, f"worker RSS grew from {rss_before} to {rss_after} MiB"


def test_a_killed_worker_is_restarted_and_only_in_flight_requests_fail(server, pool, report):
    bodies, expected = pool
    (old_pid,) = ready_pids(server)
    stop = threading.Event()
    thread, out = load_in_background(server, bodies, 60, stop)
    time.sleep(8)  # steady state before the kill
    t_kill = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    new_pid, t_ready = None, None
    while time.monotonic() - t_kill < 45:
        pids = ready_pids(server)
        if pids and old_pid not in pids:
            new_pid, t_ready = pids[0], time.monotonic()
            break
        time.sleep(0.2)
    time.sleep(12)  # long enough after the restart to see full throughput again
    stop.set()
    thread.join(120)
    (results,) = out

    failed = [r for r in results if r.status != 200]
    in_flight = [r for r in results if r.start < t_kill < r.end]
    baseline = per_second(results, t_kill - 6, t_kill - 1)
    recovered = next((t for t in _seconds(t_kill, max(r.end for r in results) - 2)
                      if per_second(results, t, t + 2) >= 0.8 * baseline), None)
    report["kill"] = {
        "requests": len(results), "failed": len(failed), "in_flight_at_kill": len(in_flight),
        "failed_statuses": sorted({r.status for r in failed}),
        "failed_not_in_flight": sum(not (r.start < t_kill < r.end) for r in failed),
        "new_worker_ready_s": None if t_ready is None else round(t_ready - t_kill, 2),
        "baseline_rps": round(baseline, 1),
        "recovery_s": None if recovered is None else round(recovered - t_kill, 2),
        "recovery_rule": "first 2 s window after the kill with >= 80% of the successful answers/s of the 5 s "
                         "before it",
        "wrong_answers": len(mismatches([r for r in results if r.status == 200], expected)),
    }
    print(json.dumps(report["kill"], indent=2))
    assert new_pid is not None and new_pid != old_pid, "TorchServe did not start a new worker"
    assert report["kill"]["failed_not_in_flight"] == 0, [(r.status, r.error) for r in failed][:10]
    assert len(failed) <= CONCURRENCY
    assert report["kill"]["wrong_answers"] == 0
    assert recovered is not None and recovered - t_kill <= 30


def _seconds(start: float, end: float, step: float = 0.5):
    t = start
    while t < end:
        yield t
        t += step


def test_scaling_1_to_4_to_1_workers_under_load_fails_no_request(server, pool, report):
    bodies, expected = pool
    stop = threading.Event()
    thread, out = load_in_background(server, bodies, 240, stop)
    marks = {}

    def scale(n: int) -> float:
        started = time.monotonic()
        response = requests.put(f"{server.management_url}/models/pigment?min_worker={n}&max_worker={n}"
                                f"&synchronous=true", headers=server.auth("management"), timeout=180)
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 120
        while len(ready_pids(server)) != n or len(describe(server)) != n:
            assert time.monotonic() < deadline, describe(server)
            time.sleep(0.5)
        return time.monotonic() - started

    try:
        time.sleep(5)
        marks["up"] = time.monotonic()
        up_s = scale(4)
        marks["at_4"] = time.monotonic()
        time.sleep(10)
        marks["down"] = time.monotonic()
        down_s = scale(1)
        marks["at_1"] = time.monotonic()
        time.sleep(5)
    finally:
        marks["stop"] = time.monotonic()
        stop.set()
        thread.join(300)
    (results,) = out
    failed = [r for r in results if r.status != 200]
    # TorchServe 0.12 can lose a request that a worker being scaled down had already taken from the queue
    # (WorkerThread.shutdown interrupts it; the job is never answered): seen in 1 of 3 runs, docs/reliability.md.
    at_scale_down = [r for r in failed if marks["down"] - 1 <= r.start <= marks["at_1"] + 1]
    t0 = min(r.start for r in results)
    report["scale"] = {
        "requests": len(results), "failed": len(failed), "failed_statuses": sorted({r.status for r in failed}),
        "failed_at_scale_down": len(at_scale_down),
        "failures": [f"HTTP {r.status} {r.error or r.answer}"[:160] for r in failed][:10],
        "scale_up_to_4_s": round(up_s, 2), "scale_down_to_1_s": round(down_s, 2),
        "rps_1_worker_before": round(per_second(results, t0 + 1, marks["up"]), 1),
        "rps_4_workers": round(per_second(results, marks["at_4"], marks["down"]), 1),
        "rps_1_worker_after": round(per_second(results, marks["at_1"], marks["stop"]), 1),
        "latency_ms": {k: v for k, v in load_summary(results).items() if k in ("p50_ms", "p90_ms", "p99_ms")},
        "wrong_answers": len(mismatches([r for r in results if r.status == 200], expected)),
    }
    print(json.dumps(report["scale"], indent=2))
    assert report["scale"]["wrong_answers"] == 0
    assert len(failed) == len(at_scale_down), "requests failed outside the scale-down moment"
    if at_scale_down:
        pytest.xfail(f"{len(at_scale_down)} request(s) lost while scaling down: the known TorchServe 0.12 race")


def test_stop_and_start_on_the_same_model_store_gives_the_same_answers(server, pool, report):
    bodies, expected = pool
    sample = list(range(0, POOL, 4))  # 16 requests, all four subsets

    def answers() -> list[dict]:
        results = run_load(url(server), bodies, len(sample), 4, 60, headers=server.auth(),
                           pick=lambda seq: sample[seq])
        assert [r.status for r in results] == [200] * len(sample)
        return [r.answer for r in results]

    before = answers()
    started = time.monotonic()
    server.stop()
    assert server.server_pid() is None
    server.start()
    restart_s = time.monotonic() - started
    after = answers()
    report["restart"] = {"requests_compared": len(sample), "identical": before == after,
                         "stop_start_s": round(restart_s, 1)}
    print(json.dumps(report["restart"], indent=2))
    assert before == after
    assert not mismatches([Result(i, b, 0, 0, 200, a) for i, (b, a) in enumerate(zip(sample, after))], expected)
