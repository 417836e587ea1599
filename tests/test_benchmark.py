"""The benchmark's own machinery (the benchmarks package): what it measures must be right.

The benchmark itself runs for minutes on real-size models (`make benchmark`); these tests check its parts on the
tiny model and on this test process: CPU accounting, the paired offline/served rounds, the readout fit that makes
severity agreement a real test, variant parsing and the summary's checks.
"""

from __future__ import annotations

import time

import pytest

from benchmarks.cpu_meter import CpuMeter, jvm_thread_cpu, jvm_thread_kind
from benchmarks.loadgen import Result, load_summary, steady_rate
from benchmarks.readout import fit_readout, scores
from benchmarks.report import summarize
from benchmarks.stats import paired_rounds
from benchmarks.workload import Variant
from handler.predictor import Predictor
from model.severity import severity_label
from tests.images import SUBSETS, request_for


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_jvm_threads_are_classified_by_their_name_prefix():
    assert jvm_thread_kind("epollEventLoopG") == "netty"
    assert jvm_thread_kind("grpc-default-wo") == jvm_thread_kind("grpc-default-ex") == "grpc"
    assert jvm_thread_kind("C2 CompilerThre") == jvm_thread_kind("C1 CompilerThre") == "jit"
    assert jvm_thread_kind("GC Thread#0") == jvm_thread_kind("G1 Conc#0") == "gc"
    assert jvm_thread_kind("W-9000-pigment_") == jvm_thread_kind("python") == "other"


def test_thread_cpu_counts_the_time_this_process_burns():
    import os

    before = jvm_thread_cpu(os.getpid())
    _burn(0.3)
    after = jvm_thread_cpu(os.getpid())
    assert after["other"] - before["other"] >= 0.2  # this Python process's threads are "other"
    assert all(after[k] >= before[k] for k in before)


def test_cpu_meter_reports_seconds_spent_per_process_since_a_sample():
    import os

    meter = CpuMeter(os.getpid(), [os.getpid()])
    before = meter.sample()
    _burn(0.3)
    spent = meter.since(before)
    assert set(spent) == {"frontend_netty", "frontend_grpc", "frontend_jit", "frontend_gc", "frontend_other",
                          "metrics_collector", "worker_0", "client"}
    assert spent["client"] >= 0.2 and spent["worker_0"] >= 0.2 and spent["frontend_other"] >= 0.2


def test_a_thread_that_ends_between_samples_keeps_its_earlier_cpu_out_and_its_later_cpu_in():
    import os
    import threading

    started, go = threading.Event(), threading.Event()

    def work():
        _burn_thread(0.3)  # before the first sample: not part of the interval
        started.set()
        go.wait()
        _burn_thread(0.2)  # inside the interval, then the thread ends

    meter = CpuMeter(os.getpid(), [])
    thread = threading.Thread(target=work)
    thread.start()
    started.wait()
    before = meter.sample()
    go.set()
    thread.join()
    spent = meter.since(before)
    assert 0.15 <= spent["frontend_other"] <= 0.3, spent  # a live-thread sum would give about -0.1


def _burn_thread(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_paired_rounds_rotate_which_side_runs_first_and_divide_served_by_offline():
    order = []

    class FakeOffline:
        def run(self, count):
            order.append("offline")
            return {"throughput_rps": 10.0, "requests": count}

    def served(name, rate):
        def run(desc):
            order.append(name)
            return {"throughput_rps": rate, "requests": 4}, [Result(0, 0, 0.0, 1.0, 200)]
        return run

    rounds, pooled = paired_rounds(FakeOffline(), {"rest": served("rest", 9.0)}, rounds=3, count=4)
    assert order == ["offline", "rest", "rest", "offline", "offline", "rest"]
    assert [r["rest_ratio"] for r in rounds] == [0.9, 0.9, 0.9] and len(pooled["rest"]) == 3

    order.clear()
    rounds, pooled = paired_rounds(FakeOffline(), {"rest": served("rest", 8.0), "grpc": served("grpc", 9.5)},
                                   rounds=3, count=4)
    assert order == ["offline", "rest", "grpc", "rest", "grpc", "offline", "grpc", "offline", "rest"]
    assert [(r["rest_ratio"], r["grpc_ratio"]) for r in rounds] == [(0.8, 0.95)] * 3


def test_load_summary_counts_only_answered_requests_and_names_errors():
    results = [Result(i, 0, 0.0, 0.1 * (i + 1), 200) for i in range(9)] + [Result(9, 0, 0.0, 5.0, 503)]
    summary = load_summary(results, wall=2.0, concurrency=1)
    assert summary["ok"] == 9 and summary["errors"] == {"503": 1} and summary["throughput_rps"] == 4.5
    assert (summary["p50_ms"], summary["p99_ms"]) == (500, 900)  # the 5 s failure is not a latency


def test_steady_rate_leaves_out_the_ramp_up_and_the_drain():
    # 8 clients: answers come in fours every 0.5 s from t=1 s, except a slow start and a long drain at the end
    ends = [0.9] * 4 + [1.0 + 0.5 * k for k in range(1, 11) for _ in range(4)] + [9.0] * 4
    results = [Result(i, 0, 0.0, end, 200) for i, end in enumerate(ends)]
    assert steady_rate(results, 8) == 8.0  # 4 answers per 0.5 s, from the 8th answer (1.5 s) to the 8th-last (6 s)
    assert steady_rate(results[:20], 8) is None  # too few answers to have a steady part


def test_variants_parse_from_the_shipped_settings():
    shipped = Variant(2, 1, 4, 50, "openvino_bf16")
    assert Variant.parse("shipped", shipped) == shipped
    assert Variant.parse("1x2:b8", shipped) == Variant(1, 2, 8, 50, "openvino_bf16")
    assert Variant.parse("2x1:b1:d0:eager_bf16", shipped) == Variant(2, 1, 1, 0, "eager_bf16")


def test_fitting_the_readout_spreads_scores_over_all_three_severity_bands(tiny_checkpoint):
    predictor = Predictor(tiny_checkpoint)
    bodies = [request_for(SUBSETS[i % len(SUBSETS)], seed=700 + i) for i in range(32)]
    labels = [0.05 + 0.9 * i / 31 for i in range(32)]
    before = scores(predictor, bodies)
    fit = fit_readout(predictor, bodies, labels)
    after = scores(predictor, bodies)
    assert max(before) - min(before) < 0.1  # a random head: every score in one narrow range
    assert {severity_label(s) for s in after} == {"Mild", "Moderate", "Severe"}
    assert fit["fit_corr"] > 0.5 and fit["score_range_after"] == [round(min(after), 4), round(max(after), 4)]


def _results(ratios: list[float], flips: int = 0, max_diff: float = 0.002) -> dict:
    rounds = [{"offline": {"throughput_rps": 10.0, "model_compute_rps": 12.0, "model_ms_per_request_per_worker": 160},
               "rest": {}, "rest_ratio": r} for r in ratios]
    return {"served": [{"variant": "2x1 b4 d50 openvino_bf16", "rounds": rounds, "c8": {"throughput_rps": 8.8}}],
            "baseline": {"throughput_rps": 2.0}, "limits": {"bf16_gemm_gflops": 1600.0},
            "accuracy": {"trained": {"lesions": 100, "openvino_bf16": {"max_abs_score_diff": max_diff,
                                                                       "severity_agreement": 1 - flips / 100}},
                         "benchmark_checkpoint": {"lesions": 100, "openvino_bf16": {"max_abs_score_diff": 0.02,
                                                                                    "severity_agreement": 0.9}}}}


def test_summary_fails_accuracy_without_a_trained_checkpoint():
    results = _results([0.9, 0.9, 0.9])
    results["accuracy"]["trained"] = {"skipped": "runs/demo/best_model.pth does not exist"}
    assert not summarize(results)["checks"]["accuracy"]


def test_summary_takes_the_median_round_and_checks_every_target():
    summary = summarize(_results([0.80, 0.88, 0.90]))
    assert summary["served_over_offline"] == 0.88 and summary["checks"]["served >= 85% of offline"]
    assert summary["served_over_baseline"] == 4.4 and summary["checks"]["served >= 3x baseline"]
    assert summary["model_pct_of_reference_limit"] == pytest.approx(100 * 12 * 26.9 / 410, abs=0.1)
    assert summary["checks"]["accuracy"]


def test_summary_checks_the_grpc_arm_on_its_own_rounds():
    results = _results([0.80, 0.82, 0.84])
    for row, ratio in zip(results["served"][0]["rounds"], [0.86, 0.90, 0.84]):
        row["grpc_ratio"] = ratio
    results["served"][0]["grpc"] = {"c8": {"throughput_rps": 8.0, "steady_rps": 8.6}}
    summary = summarize(results)
    assert summary["served_grpc_over_offline"] == 0.86 and summary["served_grpc_c8_rps"] == 8.6
    assert summary["checks"]["served over gRPC >= 85% of offline"]
    assert not summary["checks"]["served >= 85% of offline"]


@pytest.mark.parametrize("ratios, flips, max_diff, failed", [
    ([0.80, 0.84, 0.90], 0, 0.002, "served >= 85% of offline"),
    ([0.90, 0.90, 0.90], 2, 0.002, "accuracy"),
    ([0.90, 0.90, 0.90], 0, 0.011, "accuracy"),
])
def test_summary_fails_a_target_that_is_missed(ratios, flips, max_diff, failed):
    checks = summarize(_results(ratios, flips, max_diff))["checks"]
    assert not checks[failed] and all(ok for name, ok in checks.items() if name != failed)


def test_the_accuracy_check_holds_every_backend_that_ran_to_the_tolerance():
    from benchmarks.accuracy import within_tolerance

    ok = {"max_abs_score_diff": 0.004, "severity_agreement": 1.0}
    assert within_tolerance({"lesions": 96, "eager_bf16": ok, "openvino_bf16": {"skipped": "not installed"}})
    assert not within_tolerance({"lesions": 96, "eager_bf16": ok,
                                 "openvino_bf16": {"max_abs_score_diff": 0.012, "severity_agreement": 1.0}})
    assert not within_tolerance({"lesions": 96, "eager_bf16": {**ok, "severity_agreement": 0.98}})
    assert not within_tolerance({"lesions": 96, "eager_bf16": {"skipped": "no bf16 units"}})  # nothing checked


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "no/such.pth"], "no/such.pth does not exist"),
    (["--checkpoint", "README.md", "--backends", "eager_bf16,fast_magic"], "unknown fast_magic"),
])
def test_the_accuracy_command_refuses_bad_arguments_in_one_line(args, message):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "benchmarks.accuracy", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
