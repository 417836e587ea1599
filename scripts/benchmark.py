"""One command that measures pigment's serving against the design and against its own offline predictor.

    .venv/bin/python scripts/benchmark.py            # ~5-8 min on 2 quiet cores; writes docs/performance.{md,json,png}

In one invocation, on loopback only:

1. requests: a handful of synthetic lesions (training.synth) as a phone would send them: a 12 MP clinical JPEG
   (4000x3000), a 2.4 MP dermoscopy JPEG and a multispectral JPEG of the same size (three modalities);
2. a checkpoint of the real-size architecture (training/configs/default.yaml's model, random weights: speed does not
   depend on them), unless ``--checkpoint`` names a trained one;
3. decode+preprocess time of the 12 MP JPEG (drafted and full-size) against the model time of one request;
4. accuracy of every fast backend against eager fp32 on a held-out synthetic set (mixed modality subsets);
5. (a) the design-style baseline (benchmarks/baseline_app.py: one request at a time, eager fp32, full decode) at
   concurrency 8; (b) the offline predictor, no HTTP, with the served settings (same workers x threads, batch
   size, backend); (c) TorchServe with our model-config for each ``--variants`` entry at concurrency 1 and 8:
   throughput, p50/p90/p99, errors, time from ``torchserve --start`` to the first answer, worker RSS.

Every load run stops after ``--requests`` requests or ``--duration`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import requests
import torch
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handler.predictor import Predictor, PredictorOptions  # noqa: E402
from model.accelerate import available_backends  # noqa: E402
from model.checkpoint import build_checkpoint, load_for_inference, save_checkpoint  # noqa: E402
from model.config import DataConfig, ModelConfig, SeverityConfig, from_dict  # noqa: E402
from model.fusion_model import FusionModel  # noqa: E402
from model.preprocessing import decode_for_model, decode_image, image_to_tensor  # noqa: E402
from model.severity import severity_label  # noqa: E402
from scripts.local_torchserve import LocalTorchServe, Ports  # noqa: E402
from training.synth import generate  # noqa: E402

BF16_LIMIT_GFLOPS = 410.0  # measured arithmetic limit of this machine's 2 cores in bf16 (issue 5)
GFLOP_PER_REQUEST = 26.9  # three Swin-T forwards at 224 px, 8.98 GFLOP each
CLINICAL_SIZE = (4000, 3000)  # 12 MP phone photo
DERMOSCOPY_SIZE = 1536  # 2.4 MP dermatoscope image; the multispectral view has the same size
MODEL_CONFIG = ROOT / "serve_config" / "model-config.yaml"
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Variant:
    """One TorchServe setting: ``workers`` x ``threads`` torch/OpenVINO threads, TorchServe batching, backend."""

    workers: int
    threads: int
    batch_size: int
    max_batch_delay: int
    backend: str

    @property
    def name(self) -> str:
        return f"{self.workers}x{self.threads} b{self.batch_size} d{self.max_batch_delay} {self.backend}"

    @classmethod
    def parse(cls, text: str, defaults: Variant) -> Variant:
        """``"2x1:b8:d50"`` (any part may be left out; the served model-config fills the rest)."""
        variant = defaults
        for part in filter(None, text.split(":")):
            if "x" in part and part[0].isdigit():
                workers, threads = part.split("x")
                variant = replace(variant, workers=int(workers), threads=int(threads))
            elif part[0] == "b":
                variant = replace(variant, batch_size=int(part[1:]))
            elif part[0] == "d":
                variant = replace(variant, max_batch_delay=int(part[1:]))
            else:
                variant = replace(variant, backend=part)
        return variant


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: random weights, real size)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "benchmark", help="data, archives, logs")
    p.add_argument("--out", type=Path, default=DOCS, help="where performance.{md,json,png} go")
    p.add_argument("--lesions", type=int, default=4, help="distinct synthetic lesions the requests cycle through")
    p.add_argument("--requests", type=int, default=96, help="requests per concurrency-8 run")
    p.add_argument("--requests-c1", type=int, default=24, help="requests per concurrency-1 run")
    p.add_argument("--baseline-requests", type=int, default=24, help="requests sent to the baseline")
    p.add_argument("--duration", type=float, default=45.0, help="cap in seconds on each load run")
    p.add_argument("--variants", default="2x1:b8:d50,1x2:b8:d50",
                   help="TorchServe settings to run, comma-separated WORKERSxTHREADS:bBATCH:dDELAY[:BACKEND]; "
                        "the first is the served one the ratios use (default: serve_config/model-config.yaml)")
    p.add_argument("--accuracy-lesions", type=int, default=24, help="held-out synthetic lesions for accuracy")
    p.add_argument("--accuracy-backends", default="eager_bf16,openvino_bf16",
                   help="fast backends checked against eager_fp32 (compile_bf16 adds minutes of compiling)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    served = served_variant()
    variants = [Variant.parse(v, served) for v in args.variants.split(",")]
    phases = tqdm(total=6, desc="benchmark", unit="phase", position=0)

    def step(text: str) -> None:
        phases.set_postfix_str(text)
        phases.update()

    bodies = make_requests(args.work_dir / "requests", args.lesions)
    checkpoint = args.checkpoint or make_checkpoint(args.work_dir / "random_real_size.pth")
    step("requests + checkpoint")
    results: dict[str, Any] = {"machine": machine(), "settings": {**vars(args), "variants": [asdict(v) for v in
                                                                                              variants]}}
    results["request"] = request_sizes(bodies[0])
    results["preprocess"] = measure_preprocess(bodies[0], checkpoint)
    step("preprocess")
    results["accuracy"] = measure_accuracy(checkpoint, args.work_dir / "heldout", args.accuracy_lesions,
                                           [b for b in args.accuracy_backends.split(",") if b])
    step("accuracy")
    results["baseline"] = run_baseline(checkpoint, bodies, args)
    step("baseline")
    results["offline"] = run_offline(checkpoint, bodies, variants[0], args.requests)
    step("offline")
    results["served"] = [run_torchserve(checkpoint, bodies, v, args) for v in variants]
    step("torchserve")
    phases.close()
    results["summary"] = summarize(results)
    write_outputs(results, args.out)
    print(markdown_tables(results))
    print(f"wrote {args.out / 'performance.md'}, performance.json and performance.png")
    return 0


# --------------------------------------------------------------------------------------------- inputs


def served_variant() -> Variant:
    """The settings in serve_config/model-config.yaml (threads 0 resolved the way the handler resolves it)."""
    cfg = yaml.safe_load(MODEL_CONFIG.read_text())
    handler = cfg.get("handler", {})
    workers = int(cfg.get("maxWorkers", 1))
    threads = int(handler.get("threads", 0)) or max(1, len(os.sched_getaffinity(0)) // workers)
    return Variant(workers, threads, int(cfg.get("batchSize", 1)), int(cfg.get("maxBatchDelay", 0)),
                   handler.get("backend", "eager_fp32"))


def make_requests(out_dir: Path, lesions: int) -> list[dict[str, bytes]]:
    """Three-modality phone-size requests: the synthetic clinical JPEG (12 MP) and the close views as JPEGs."""
    if not (out_dir / "labels.csv").is_file():
        generate(out_dir, lesions, seed=7, clinical_size=CLINICAL_SIZE, dermoscopy_size=DERMOSCOPY_SIZE,
                 dermoscopy_fraction=1.0, multispectral_fraction=1.0, overwrite=True)
    bodies = []
    for path in sorted((out_dir / "clinical" / "images").glob("*.jpg"))[:lesions]:
        body = {"clinical_image": path.read_bytes()}
        for view in ("dermoscopy", "multispectral"):  # devices deliver JPEGs; synth writes PNGs
            image = cv2.imread(str(out_dir / view / "images" / f"{path.stem}.png"))
            body[f"{view}_image"] = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        bodies.append(body)
    return bodies


def make_checkpoint(path: Path) -> Path:
    """The default config's architecture (Swin-T x3 at 224 px) with seeded random weights; no download."""
    if path.is_file():
        return path
    cfg = yaml.safe_load((ROOT / "training" / "configs" / "default.yaml").read_text())
    model_cfg = from_dict(ModelConfig, {**cfg["model"], "pretrained": False, "pretrained_file": None}, "model")
    data_cfg = DataConfig(image_size=int(cfg["data"]["image_size"]))
    torch.manual_seed(0)
    model = FusionModel(model_cfg, data_cfg.image_size, pretrained=False).eval()
    provenance = {"model_version": "benchmark-random", "data_hash": "none"}
    return save_checkpoint(build_checkpoint(model, model_cfg, data_cfg, SeverityConfig(), provenance), path)


def request_sizes(body: dict[str, bytes]) -> dict[str, Any]:
    sizes = {}
    for field, data in body.items():
        image = decode_image(data, field, draft_size=None)
        sizes[field] = {"width": image.width, "height": image.height, "megapixels": round(image.width *
                        image.height / 1e6, 1), "kilobytes": round(len(data) / 1024)}
    return sizes


def machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "backends_available": list(available_backends())}


# ------------------------------------------------------------------------------------- in-process parts


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def measure_preprocess(body: dict[str, bytes], checkpoint: Path) -> dict[str, Any]:
    """One thread: decode+preprocess of the 12 MP clinical JPEG drafted and full-size, and a whole request's."""
    torch.set_num_threads(1)
    cfg = load_for_inference(checkpoint).data_cfg
    clinical = body["clinical_image"]
    drafted = _median_ms(lambda: image_to_tensor(decode_for_model(clinical, "c", cfg), "clinical", cfg), 7)
    full = _median_ms(lambda: image_to_tensor(decode_image(clinical, "c"), "clinical", cfg), 3)
    request = _median_ms(lambda: [image_to_tensor(decode_for_model(data, f, cfg), f.split("_")[0], cfg)
                                  for f, data in body.items()], 5)
    return {"clinical_12mp_drafted_ms": drafted, "clinical_12mp_full_ms": full, "request_3_images_drafted_ms": request}


def measure_accuracy(checkpoint: Path, out_dir: Path, lesions: int, backends: list[str]) -> dict[str, Any]:
    """Each fast backend vs eager fp32 on a held-out synthetic set with its natural mix of modality subsets."""
    if not (out_dir / "labels.csv").is_file():
        generate(out_dir, lesions, seed=1234, overwrite=True)
    bodies = []
    for path in sorted((out_dir / "clinical" / "images").glob("*.jpg")):
        body = {"clinical_image": path.read_bytes()}
        for view in ("dermoscopy", "multispectral"):
            close = out_dir / view / "images" / f"{path.stem}.png"
            if close.is_file():
                body[f"{view}_image"] = close.read_bytes()
        bodies.append(body)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    reference = _scores(Predictor(checkpoint, PredictorOptions()), bodies)
    severity = load_for_inference(checkpoint).severity
    result: dict[str, Any] = {"lesions": len(bodies), "subsets": _subset_counts(bodies),
                              "reference_score_range": [round(min(reference), 4), round(max(reference), 4)]}
    for backend in backends:
        if backend not in available_backends():
            result[backend] = {"skipped": "not available on this machine"}
            continue
        scores = _scores(_predictor(checkpoint, backend, 8), bodies)
        diff = [abs(a - b) for a, b in zip(scores, reference)]
        agree = [severity_label(a, severity) == severity_label(b, severity) for a, b in zip(scores, reference)]
        result[backend] = {"max_abs_score_diff": round(max(diff), 5), "mean_abs_score_diff": round(
            statistics.mean(diff), 5), "severity_agreement": round(sum(agree) / len(agree), 4)}
    return result


def _scores(predictor: Predictor, bodies: list[dict[str, bytes]]) -> list[float]:
    """Exact (unrounded) scores, in batches of 8 so that mixed subsets share a forward as in serving."""
    scores = []
    for i in range(0, len(bodies), 8):
        samples = predictor.prepare(bodies[i:i + 8])
        scores += predictor.forward(samples)[0].tolist()
    return scores


def _subset_counts(bodies: list[dict[str, bytes]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for body in bodies:
        key = "+".join(f.removesuffix("_image") for f in body)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _predictor(checkpoint: Path, backend: str, max_batch: int) -> Predictor:
    """The handler's predictor with ``backend`` warmed up for batches 1..max_batch."""
    return Predictor(checkpoint, PredictorOptions(backend=backend), max_batch=max_batch)


def _offline_worker(checkpoint: Path, variant: Variant, batches: list[list[dict[str, bytes]]], go: Any,
                    queue: Any) -> None:
    torch.set_num_threads(variant.threads)
    predictor = _predictor(checkpoint, variant.backend, variant.batch_size)
    queue.put("ready")
    go.wait()
    prepare_s = answer_s = 0.0
    start = time.perf_counter()
    for batch in batches:
        t0 = time.perf_counter()
        prepared = predictor.prepare(batch)
        t1 = time.perf_counter()
        predictor.answer(prepared)
        prepare_s += t1 - t0
        answer_s += time.perf_counter() - t1
    queue.put({"requests": sum(map(len, batches)), "wall_s": time.perf_counter() - start, "prepare_s": prepare_s,
               "model_s": answer_s, "rss_mib": psutil.Process().memory_info().rss / 2**20})


def run_offline(checkpoint: Path, bodies: list[dict[str, bytes]], variant: Variant, count: int) -> dict[str, Any]:
    """The predictor without HTTP: ``workers`` processes x ``threads``, full batches, from raw request bytes."""
    requests_ = [bodies[i % len(bodies)] for i in range(count)]
    batches = [requests_[i:i + variant.batch_size] for i in range(0, count, variant.batch_size)]
    ctx = mp.get_context("spawn")
    go, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_offline_worker, args=(checkpoint, variant, batches[w::variant.workers], go, queue))
             for w in range(variant.workers)]
    for proc in procs:
        proc.start()
    _collect(queue, procs, len(procs))  # every worker warmed up
    go.set()
    start = time.perf_counter()
    parts = _collect(queue, procs, len(procs))
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join()
    n = sum(p["requests"] for p in parts)
    compute_rps = sum(p["requests"] / p["model_s"] for p in parts)  # every worker computing all the time
    return {"variant": variant.name, "requests": n, "throughput_rps": round(n / wall, 2),
            "model_compute_rps": round(compute_rps, 2),
            "model_gflops": round(compute_rps * GFLOP_PER_REQUEST, 1),
            "model_pct_of_bf16_limit": round(100 * compute_rps * GFLOP_PER_REQUEST / BF16_LIMIT_GFLOPS, 1),
            "prepare_ms_per_request": round(1000 * sum(p["prepare_s"] for p in parts) / n, 1),
            "model_ms_per_request_per_worker": round(1000 * sum(p["model_s"] for p in parts) / n, 1),
            "worker_rss_mib": [round(p["rss_mib"]) for p in parts]}


def _collect(queue: Any, procs: list[Any], count: int, timeout: float = 900) -> list[Any]:
    """``count`` messages from the workers; a worker that dies instead is an error, not a hang."""
    items, deadline = [], time.monotonic() + timeout
    while len(items) < count:
        try:
            items.append(queue.get(timeout=2))
        except Exception:  # queue.Empty
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"offline predictor workers failed (exit codes {dead}) or timed out")
    return items


# ----------------------------------------------------------------------------------------------- HTTP


def load(url: str, bodies: list[dict[str, bytes]], count: int, concurrency: int, duration: float,
         headers: dict[str, str] | None = None, desc: str = "") -> dict[str, Any]:
    """Send ``count`` multipart requests (cycling through ``bodies``) from ``concurrency`` clients."""
    counter, lock = itertools.count(), threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    bar = tqdm(total=count, desc=desc, unit="req", leave=False, position=1)
    deadline = time.monotonic() + duration

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(counter)
            if i >= count or time.monotonic() > deadline:
                return
            files = {k: (f"{k}.jpg", v, "image/jpeg") for k, v in bodies[i % len(bodies)].items()}
            start = time.perf_counter()
            try:
                status = session.post(url, files=files, headers=headers, timeout=300).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                bar.update()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    wall = time.perf_counter() - start
    bar.close()
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return {"concurrency": concurrency, "ok": len(latencies), "errors": errors, "wall_s": round(wall, 1),
            "throughput_rps": round(len(latencies) / wall, 2),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 0) for q in (50, 90, 99)}}


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
    """The design-style app at concurrency 8 (it serves one request at a time; the rest queue)."""
    port = Ports.free().inference
    cmd = [sys.executable, "-m", "benchmarks.baseline_app", "--checkpoint", str(checkpoint), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", proc)
        url = f"http://127.0.0.1:{port}/predictions/pigment"
        result = load(url, bodies, args.baseline_requests, 8, args.duration, desc="baseline c8")
        result["rss_mib"] = round(psutil.Process(proc.pid).memory_info().rss / 2**20)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"design": "one request at a time, eager fp32, full-size decode", **result}


def write_model_config(variant: Variant, path: Path) -> Path:
    """serve_config/model-config.yaml with the variant's workers, batching, threads and backend."""
    cfg = yaml.safe_load(MODEL_CONFIG.read_text())
    cfg.update(minWorkers=variant.workers, maxWorkers=variant.workers, batchSize=variant.batch_size,
               maxBatchDelay=variant.max_batch_delay)
    cfg.setdefault("handler", {}).update(threads=variant.threads, backend=variant.backend)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_torchserve(checkpoint: Path, bodies: list[dict[str, bytes]], variant: Variant,
                   args: argparse.Namespace) -> dict[str, Any]:
    """Build the archive for ``variant``, start TorchServe, time the first answer, load at concurrency 1 and 8."""
    slug = variant.name.replace(" ", "_")
    run_dir, store = args.work_dir / "ts" / slug, args.work_dir / "ts" / slug / "model_store"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PIGMENT_MODEL_CONFIG": str(write_model_config(variant, run_dir / "model-config.yaml"))}
    subprocess.run(["bash", str(ROOT / "scripts" / "build_mar.sh"), str(checkpoint), str(store)], env=env,
                   check=True, capture_output=True)
    server = LocalTorchServe(store, run_dir, Ports.free())
    url = f"{server.inference_url}/predictions/{server.model_name}"
    start = time.perf_counter()
    server.start(timeout=600)
    try:
        first = requests.post(url, files={k: (k, v) for k, v in bodies[0].items()}, headers=server.auth(),
                              timeout=300)
        first_answer_s = time.perf_counter() - start
        if first.status_code != 200:
            raise RuntimeError(f"first request answered {first.status_code}: {first.text}\n{server.log_tail()}")
        runs = [load(url, bodies, n, c, args.duration, server.auth(), desc=f"{variant.name} c{c}")
                for c, n in ((1, args.requests_c1), (8, args.requests))]
        workers = [p for p in psutil.Process(server.server_pid()).children(recursive=True)
                   if "model_service_worker" in " ".join(p.cmdline())]
        rss = [round(p.memory_info().rss / 2**20) for p in workers]
        metrics = server_metrics(server)
    finally:
        server.stop()
    return {"variant": variant.name, **asdict(variant), "start_to_first_answer_s": round(first_answer_s, 1),
            "c1": runs[0], "c8": runs[1], "worker_rss_mib": rss, "server_metrics": metrics}


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


# -------------------------------------------------------------------------------------------- reports


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    served, baseline, offline = results["served"][0], results["baseline"], results["offline"]
    pre = results["preprocess"]
    model_ms = 1000 / offline["model_compute_rps"]  # all cores computing, per request
    return {
        "served_variant": served["variant"],
        "served_c8_rps": served["c8"]["throughput_rps"],
        "baseline_c8_rps": baseline["throughput_rps"],
        "offline_rps": offline["throughput_rps"],
        "served_over_baseline": round(served["c8"]["throughput_rps"] / baseline["throughput_rps"], 2),
        "served_over_offline": round(served["c8"]["throughput_rps"] / offline["throughput_rps"], 3),
        "model_pct_of_bf16_limit": offline["model_pct_of_bf16_limit"],
        "clinical_decode_preprocess_ms": pre["clinical_12mp_drafted_ms"],
        "model_ms_per_request_all_cores": round(model_ms, 1),
        "checks": {
            "served >= 3x baseline": served["c8"]["throughput_rps"] >= 3 * baseline["throughput_rps"],
            "model >= 70% of bf16 limit": offline["model_pct_of_bf16_limit"] >= 70,
            "served >= 85% of offline": served["c8"]["throughput_rps"] >= 0.85 * offline["throughput_rps"],
            "accuracy": all(v.get("max_abs_score_diff", 0) <= 0.01 and v.get("severity_agreement", 1) >= 0.99
                            for v in results["accuracy"].values() if isinstance(v, dict) and "skipped" not in v
                            and "max_abs_score_diff" in v),
        },
    }


def markdown_tables(r: dict[str, Any]) -> str:
    s, m, pre, off, base = r["summary"], r["machine"], r["preprocess"], r["offline"], r["baseline"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"torch {m['torch']}; load average at start {m['load_average_at_start']}. Requests: three modalities, "
        + ", ".join(f"{k} {v['width']}x{v['height']} ({v['megapixels']} MP, {v['kilobytes']} KB)"
                    for k, v in r["request"].items()) + ".",
        "",
        "| check | target | measured | |",
        "|---|---|---|---|",
        f"| served throughput at concurrency 8 / design-style baseline | >= 3x | {s['served_c8_rps']} / "
        f"{s['baseline_c8_rps']} req/s = **{s['served_over_baseline']}x** | {_ok(s['checks']['served >= 3x baseline'])} |",
        f"| model compute vs bf16 limit (410 GFLOP/s, 26.9 GFLOP/request) | >= 70 % | {off['model_compute_rps']} "
        f"req/s = {off['model_gflops']} GFLOP/s = **{off['model_pct_of_bf16_limit']} %** | "
        f"{_ok(s['checks']['model >= 70% of bf16 limit'])} |",
        f"| served / offline predictor (same settings) | >= 85 % | {s['served_c8_rps']} / {s['offline_rps']} "
        f"req/s = **{100 * s['served_over_offline']:.0f} %** | {_ok(s['checks']['served >= 85% of offline'])} |",
        "| fast paths vs eager fp32 (max abs d score, severity agreement) | <= 0.01, >= 99 % | "
        + "; ".join(f"{k}: {v['max_abs_score_diff']}, {100 * v['severity_agreement']:.0f} %"
                    for k, v in r["accuracy"].items() if isinstance(v, dict) and "max_abs_score_diff" in v)
        + f" | {_ok(s['checks']['accuracy'])} |",
        "",
        "| 12 MP clinical JPEG | ms (1 thread) |",
        "|---|---|",
        f"| decode + preprocess, JPEG draft (served) | {pre['clinical_12mp_drafted_ms']} |",
        f"| decode + preprocess, full size (design) | {pre['clinical_12mp_full_ms']} |",
        f"| all three images of a request, drafted | {pre['request_3_images_drafted_ms']} |",
        f"| model, one request, both cores (from the offline compute rate) | {s['model_ms_per_request_all_cores']} |",
        f"| model, one request, per worker at batch {r['served'][0]['batch_size']} | "
        f"{off['model_ms_per_request_per_worker']} |",
        "",
        "| setting | conc. | req/s | p50 ms | p90 ms | p99 ms | errors | start -> first answer s | worker RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| design-style baseline ({base['design']}) | 8 | {base['throughput_rps']} | {base['p50_ms']:.0f} | "
        f"{base['p90_ms']:.0f} | {base['p99_ms']:.0f} | {base['errors'] or 0} | | {base['rss_mib']} |",
        f"| offline predictor, {off['variant']} (no HTTP) | | {off['throughput_rps']} | | | | | | "
        f"{', '.join(map(str, off['worker_rss_mib']))} |",
    ]
    for v in r["served"]:
        for c in ("c1", "c8"):
            run = v[c]
            lines.append(f"| TorchServe {v['variant']} | {run['concurrency']} | {run['throughput_rps']} | "
                         f"{run['p50_ms']:.0f} | {run['p90_ms']:.0f} | {run['p99_ms']:.0f} | {run['errors'] or 0} | "
                         f"{v['start_to_first_answer_s'] if c == 'c1' else ''} | "
                         f"{', '.join(map(str, v['worker_rss_mib'])) if c == 'c1' else ''} |")
    return "\n".join(lines)


def _ok(flag: bool) -> str:
    return "pass" if flag else "**FAIL**"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["baseline c8", f"offline\n{results['offline']['variant']}"]
    rps = [results["baseline"]["throughput_rps"], results["offline"]["throughput_rps"]]
    p50 = [results["baseline"]["p50_ms"], np.nan]
    p99 = [results["baseline"]["p99_ms"], np.nan]
    for v in results["served"]:
        for c in ("c1", "c8"):
            names.append(f"TS {v['variant']}\n{c}")
            rps.append(v[c]["throughput_rps"])
            p50.append(v[c]["p50_ms"])
            p99.append(v[c]["p99_ms"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(names))
    ax1.bar(x, rps, color=["grey", "tab:green"] + ["tab:blue"] * (len(names) - 2))
    ax1.axhline(BF16_LIMIT_GFLOPS / GFLOP_PER_REQUEST, ls="--", c="k", lw=1, label="bf16 compute limit")
    ax1.set_ylabel("requests / s (3 modalities)")
    ax1.legend()
    ax2.bar(x - 0.2, p50, 0.4, label="p50")
    ax2.bar(x + 0.2, p99, 0.4, label="p99")
    ax2.set_ylabel("latency, ms")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
    fig.suptitle("pigment serving on this machine (docs/performance.md)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "performance.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot(results, out / "performance.png")
    notes = (ROOT / "docs" / "performance_notes.md")
    text = "# Performance\n\nWritten by `scripts/benchmark.py`; rerun it to refresh (numbers, table and plot).\n\n"
    text += markdown_tables(results) + "\n\n![throughput and latency](performance.png)\n"
    if notes.is_file():
        text += "\n" + notes.read_text()
    (out / "performance.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
