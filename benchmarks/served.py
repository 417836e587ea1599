"""TorchServe runs and the one-at-a-time baseline under load: archive, start, first answer, warm-up, concurrency 1
and 8 over REST (and gRPC), the CPU every process spends per answered request, and TorchServe's own metrics."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import requests
from tqdm import tqdm

from benchmarks.cpu_meter import CpuMeter
from benchmarks.loadgen import Body, Result, load_summary, run_load
from benchmarks.offline import OfflinePool
from benchmarks.stats import _combine_rounds, paired_rounds
from benchmarks.workload import Variant, multipart_bodies
from model.cpu import available_cores
from serving.archive import build_mar, model_config
from serving.torchserve import LocalTorchServe, Ports

ROOT = Path(__file__).resolve().parents[1]


class FirstAnswer(NamedTuple):
    headers: dict[str, str]  # the inference key's Authorization header, for every later request
    answer: dict[str, Any]
    seconds: float  # from ``started`` to the first answer
    workers: list[psutil.Process]  # the server's model workers


def first_answer(server: LocalTorchServe, url: str, body: Body, started: float, who: str = "") -> FirstAnswer:
    """Ask a just-started server its first request (raising with its log tail unless it answers 200), and find
    its model workers, whose CPU and memory the benchmarks measure."""
    headers = server.auth()
    first = requests.post(url, data=body.data, timeout=300, headers={**headers, "Content-Type": body.content_type})
    seconds = time.perf_counter() - started
    if first.status_code != 200:
        raise RuntimeError(f"{who}first request answered {first.status_code}: {first.text}\n{server.log_tail()}")
    workers = [p for p in psutil.Process(server.server_pid()).children(recursive=True)
               if "model_service_worker" in " ".join(p.cmdline())]
    return FirstAnswer(headers, first.json(), seconds, workers)


def load(url: str, bodies: list[Body], count: int, concurrency: int, duration: float,
         headers: dict[str, str] | None = None, desc: str = "") -> list[Result]:
    """:func:`benchmarks.loadgen.run_load` with a progress bar."""
    with tqdm(total=count, desc=desc, unit="req", leave=False, position=1) as bar:
        return run_load(url, bodies, count, concurrency, duration, headers=headers, timeout=300,
                        on_result=lambda result: bar.update())


def measured_load(url: str, bodies: list[Body], count: int, concurrency: int, duration: float,
                  headers: dict[str, str], meter: CpuMeter, desc: str) -> tuple[dict[str, Any], list[Result]]:
    """A load run with the CPU time every process spent on it, per answered request, and the idle remainder."""
    before, start = meter.sample(), time.perf_counter()
    results = load(url, bodies, count, concurrency, duration, headers, desc)
    wall = time.perf_counter() - start
    spent = meter.since(before)
    summary = load_summary(results, wall, concurrency)
    answered = max(1, summary["ok"])
    cores = available_cores()
    summary["cpu_ms_per_request"] = {k: round(1000 * s / answered, 1) for k, s in spent.items()}
    summary["cpu_ms_per_request"]["idle"] = round(1000 * max(0.0, cores * wall - sum(spent.values())) / answered, 1)
    return summary, results


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode}) before answering")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def run_baseline(checkpoint: Path, bodies: list[dict[str, bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """The baseline app (benchmarks/baseline_app.py) at concurrency 8; it serves one request at a time, the rest
    queue."""
    port = Ports.free().inference
    cmd = [sys.executable, "-m", "benchmarks.baseline_app", "--checkpoint", str(checkpoint), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", proc)
        url = f"http://127.0.0.1:{port}/predictions/pigment"
        start = time.perf_counter()
        results = load(url, multipart_bodies(bodies), args.baseline_requests, 8, args.duration, desc="baseline c8")
        result = load_summary(results, time.perf_counter() - start, 8)
        result["rss_mib"] = round(psutil.Process(proc.pid).memory_info().rss / 2**20)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"serving": "one request at a time, eager fp32, full-size decode", **result}


def variant_model_config(variant: Variant) -> dict:
    """serve_config/model-config.yaml with the variant's workers, batching, threads and backend."""
    handler = {**model_config().get("handler", {}), "threads": variant.threads, "backend": variant.backend}
    return model_config(minWorkers=variant.workers, maxWorkers=variant.workers, batchSize=variant.batch_size,
                        maxBatchDelay=variant.max_batch_delay, handler=handler)


def run_torchserve(checkpoint: Path, bodies: list[dict[str, bytes]], variant: Variant, args: argparse.Namespace,
                   offline: OfflinePool | None = None) -> dict[str, Any]:
    """Build the archive for ``variant``, start TorchServe, time the first answer, warm up, load at concurrency 1
    and 8. With ``offline``, the concurrency-8 load is ``args.rounds`` rounds next to offline runs
    (:func:`paired_rounds`), and with ``args.grpc`` the same requests also go over TorchServe's gRPC inference API
    (its own warm-up, concurrency 1, and a load in every round)."""
    slug = variant.name.replace(" ", "_")
    run_dir, store = args.work_dir / "ts" / slug, args.work_dir / "ts" / slug / "model_store"
    run_dir.mkdir(parents=True, exist_ok=True)
    build_mar(checkpoint, store, variant_model_config(variant))
    server = LocalTorchServe(store, run_dir, Ports.free())
    url = f"{server.inference_url}/predictions/{server.model_name}"
    multipart = multipart_bodies(bodies)
    start = time.perf_counter()
    server.start(timeout=600)
    try:
        headers, _, first_answer_s, workers = first_answer(server, url, multipart[0], start)
        meter = CpuMeter(server.server_pid(), [w.pid for w in workers])
        warm_start = time.perf_counter()
        warm = load(url, multipart, args.warmup_requests, 8, args.warmup_seconds, headers, f"{variant.name} warm-up")
        warmup = {"requests": len(warm), "seconds": round(time.perf_counter() - warm_start, 1)}
        c1, _ = measured_load(url, multipart, args.requests_c1, 1, args.duration, headers, meter, f"{variant.name} c1")
        grpc: dict[str, Any] = {}
        if offline is None:
            c8, _ = measured_load(url, multipart, args.requests, 8, args.duration, headers, meter, f"{variant.name} c8")
            rounds = []
        else:
            loads = {"rest": lambda desc: measured_load(url, multipart, args.round_requests, 8, args.duration,
                                                        headers, meter, f"{variant.name} c8 {desc}")}
            if args.grpc:
                grpc_url = f"grpc://127.0.0.1:{server.ports.grpc_inference}"
                grpc_bodies = [Body.grpc(server.model_name, list(body.items())) for body in bodies]
                load(grpc_url, grpc_bodies, args.warmup_requests, 8, args.warmup_seconds, headers,
                     f"{variant.name} gRPC warm-up")
                grpc["c1"], _ = measured_load(grpc_url, grpc_bodies, args.requests_c1, 1, args.duration, headers,
                                              meter, f"{variant.name} gRPC c1")
                loads["grpc"] = lambda desc: measured_load(grpc_url, grpc_bodies, args.round_requests, 8,
                                                           args.duration, headers, meter, f"{variant.name} c8 {desc}")
            rounds, pooled = paired_rounds(offline, loads, args.rounds, args.round_requests)
            c8 = _combine_rounds([r["rest"] for r in rounds], pooled["rest"])
            if "grpc" in pooled:
                grpc["c8"] = _combine_rounds([r["grpc"] for r in rounds], pooled["grpc"])
        rss = [round(p.memory_info().rss / 2**20) for p in workers]
        metrics = server_metrics(server)
    finally:
        server.stop()
    return {"variant": variant.name, **asdict(variant), "start_to_first_answer_s": round(first_answer_s, 1),
            "warmup": warmup, "c1": c1, "c8": c8, "grpc": grpc, "rounds": rounds, "worker_rss_mib": rss,
            "server_metrics": metrics}


def server_metrics(server: LocalTorchServe) -> dict[str, float]:
    """TorchServe's own counters: mean queue and inference latency per request over the whole run."""
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("ts_inference_requests_total", "ts_queue_latency_microseconds",
                     "ts_inference_latency_microseconds"):
            if line.startswith(name + "{"):
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    n = totals.get("ts_inference_requests_total", 0) or float("nan")
    return {"requests": n, "mean_queue_ms": round(totals.get("ts_queue_latency_microseconds", 0) / n / 1000, 1),
            "mean_inference_ms": round(totals.get("ts_inference_latency_microseconds", 0) / n / 1000, 1)}
