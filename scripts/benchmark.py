"""One command that measures pigment's serving against the design and against its own offline predictor.

    make benchmark                                   # trains the demo model if missing, then the benchmark
    .venv/bin/python scripts/benchmark.py            # ~21 min on 2 cores; writes docs/performance.{md,json,png}

In one invocation, on loopback only:

1. requests: a handful of synthetic lesions (training.synth) as a phone would send them: a 12 MP clinical JPEG
   (4000x3000), a 2.4 MP dermoscopy JPEG and a multispectral JPEG of the same size (three modalities), each
   multipart-encoded once so the load generator spends little of the shared CPU;
2. a checkpoint of the real-size architecture (training/configs/default.yaml's model): seeded random Swin-T
   encoders (speed does not depend on the weights) and a readout refitted by ridge regression on synthetic
   labels, so that its scores cover all three severity bands and the accuracy check meets band edges; or
   ``--checkpoint`` a trained one;
3. this machine's arithmetic limits: fp32 and bf16 matrix-multiply throughput on all cores;
4. decode+preprocess time of the 12 MP JPEG (drafted and full-size) against the model time of one request;
5. accuracy of every fast backend against eager fp32 on a held-out synthetic set (mixed modality subsets);
6. (a) the design-style baseline (benchmarks/baseline_app.py: one request at a time, eager fp32, full decode) at
   concurrency 8; (b) the offline predictor, no HTTP, with the served settings (same workers x threads, batch
   size, backend); (c) TorchServe with our model-config for each ``--variants`` entry: time from
   ``torchserve --start`` to the first answer, a warm-up (the JVM compiles its HTTP hot paths over the first few
   hundred requests), then concurrency 1 and 8 with throughput, p50/p90/p99, errors, worker RSS, TorchServe's own
   metrics and the CPU time per answered request of every process (scripts/cpu_meter.py).

The served/offline ratios come from ``--rounds`` rounds of the offline predictor and the first variant at
concurrency 8, over REST (multipart) and over TorchServe's gRPC inference API (the same requests; ``--no-grpc``
leaves it out), in an order that rotates every round: this machine's speed drifts by tens of percent within
minutes, so each round compares runs seconds apart and the median round is reported (every round is in the JSON).

Every load run stops after its request count or ``--duration`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
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
from scripts.benchmark_report import TARGETS, markdown_tables, summarize, write_outputs  # noqa: E402
from scripts.cpu_meter import CpuMeter  # noqa: E402
from scripts.loadgen import Body, Result, percentile, run_load  # noqa: E402
from scripts.local_torchserve import LocalTorchServe, Ports  # noqa: E402
from training.synth import generate  # noqa: E402

CLINICAL_SIZE = (4000, 3000)  # 12 MP phone photo
DERMOSCOPY_SIZE = 1536  # 2.4 MP dermatoscope image; the multispectral view has the same size
MODEL_CONFIG = ROOT / "serve_config" / "model-config.yaml"
DOCS = ROOT / "docs"
FIT_SEED, HELDOUT_SEED = 4321, 1234  # two synthetic cohorts: the readout is fitted on one, checked on the other


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
        """``"2x1:b8:d50"`` (any part may be left out; ``defaults`` fills the rest); ``"shipped"`` is ``defaults``."""
        variant = defaults
        for part in filter(None, text.split(":")):
            if part == "shipped":
                continue
            if "x" in part and part[0].isdigit():
                workers, threads = part.split("x")
                variant = replace(variant, workers=int(workers), threads=int(threads))
            elif part[0] == "b" and part[1:].isdigit():
                variant = replace(variant, batch_size=int(part[1:]))
            elif part[0] == "d" and part[1:].isdigit():
                variant = replace(variant, max_batch_delay=int(part[1:]))
            else:
                variant = replace(variant, backend=part)
        return variant


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: real-size, fitted readout)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "benchmark", help="data, archives, logs")
    p.add_argument("--out", type=Path, default=DOCS, help="where performance.{md,json,png} go")
    p.add_argument("--lesions", type=int, default=4, help="distinct synthetic lesions the requests cycle through")
    p.add_argument("--requests", type=int, default=96, help="requests per concurrency-8 run")
    p.add_argument("--requests-c1", type=int, default=24, help="requests per concurrency-1 run")
    p.add_argument("--baseline-requests", type=int, default=24, help="requests sent to the baseline")
    p.add_argument("--duration", type=float, default=60.0, help="cap in seconds on each load run")
    p.add_argument("--rounds", type=int, default=15, help="offline/REST/gRPC rounds for the ratios")
    p.add_argument("--round-requests", type=int, default=48, help="requests per offline and per served round")
    p.add_argument("--warmup-requests", type=int, default=900, help="requests that warm each server up ...")
    p.add_argument("--warmup-seconds", type=float, default=60.0, help="... or this long, whichever ends first")
    p.add_argument("--variants", default="shipped,2x1:b8:d50,1x2:b8:d50,2x1:b1:d0",
                   help="TorchServe settings to run, comma-separated WORKERSxTHREADS:bBATCH:dDELAY[:BACKEND]; "
                        "'shipped' (and any part left out) is serve_config/model-config.yaml. The first is the one "
                        "the ratios use")
    p.add_argument("--no-grpc", dest="grpc", action="store_false",
                   help="leave out the gRPC arm of the paired rounds (TorchServe's gRPC inference API, same requests)")
    p.add_argument("--fit-lesions", type=int, default=64, help="synthetic lesions the readout is fitted on")
    p.add_argument("--accuracy-checkpoint", type=Path, default=ROOT / "runs" / "demo" / "best_model.pth",
                   help="a trained checkpoint whose fast paths are held to the tolerance (make benchmark trains the "
                        "demo model first); the benchmark's own checkpoint is checked too, as a stress case")
    p.add_argument("--accuracy-lesions", type=int, default=96, help="held-out synthetic lesions for accuracy")
    p.add_argument("--accuracy-backends", default="eager_bf16,openvino_bf16",
                   help="fast backends checked against eager_fp32 (compile_bf16 adds minutes of compiling)")
    args = p.parse_args(argv)
    if min(args.requests, args.requests_c1, args.baseline_requests, args.rounds, args.round_requests, args.lesions) < 1:
        p.error("--requests, --requests-c1, --baseline-requests, --rounds, --round-requests and --lesions must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    variants = [Variant.parse(v, served_variant()) for v in args.variants.split(",")]
    phases = tqdm(total=6, desc="benchmark", unit="phase", position=0)

    def step(text: str) -> None:
        phases.set_postfix_str(text)
        phases.update()

    bodies = make_requests(args.work_dir / "requests", args.lesions)
    checkpoint = args.checkpoint or make_checkpoint(args.work_dir / "real_size_fitted_readout.pth",
                                                    args.work_dir / f"fit_n{args.fit_lesions}", args.fit_lesions)
    results: dict[str, Any] = {"machine": machine(), "settings": {**vars(args), "variants": [asdict(v) for v in
                                                                                              variants]}}
    results["request"] = request_sizes(bodies[0])
    step("requests + checkpoint")
    results["limits"] = measure_limits()
    results["preprocess"] = measure_preprocess(bodies[0], checkpoint)
    step("limits + preprocess")
    heldout = args.work_dir / f"heldout_n{args.accuracy_lesions}"
    backends = [b for b in args.accuracy_backends.split(",") if b]
    results["accuracy"] = {
        "trained": measure_accuracy(args.accuracy_checkpoint, heldout, args.accuracy_lesions, backends)
        if args.accuracy_checkpoint.is_file() else
        {"skipped": f"{args.accuracy_checkpoint} does not exist; `make benchmark` trains it, or pass "
                    f"--accuracy-checkpoint"},
        "benchmark_checkpoint": measure_accuracy(checkpoint, heldout, args.accuracy_lesions, backends),
    }
    step("accuracy")
    results["baseline"] = run_baseline(checkpoint, bodies, args)
    step("baseline")
    with OfflinePool(checkpoint, variants[0], bodies) as offline:
        results["served"] = [run_torchserve(checkpoint, bodies, variants[0], args, offline)]
        results["offline"] = offline.report()
    step("offline + served")
    results["served"] += [run_torchserve(checkpoint, bodies, v, args) for v in variants[1:]]
    step("other variants")
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


def synthetic_lesions(out_dir: Path, lesions: int, seed: int) -> tuple[list[dict[str, bytes]], list[float]]:
    """A synthetic cohort at training.synth's default sizes as request bodies (its natural mix of modality
    subsets) and their labels, in lesion order."""
    if not (out_dir / "labels.csv").is_file():
        generate(out_dir, lesions, seed=seed, overwrite=True)
    with open(out_dir / "labels.csv", newline="") as f:
        labels = {row["lesion_id"]: float(row["score"]) for row in csv.DictReader(f)}
    bodies, scores = [], []
    for path in sorted((out_dir / "clinical" / "images").glob("*.jpg")):
        body = {"clinical_image": path.read_bytes()}
        for view in ("dermoscopy", "multispectral"):
            close = out_dir / view / "images" / f"{path.stem}.png"
            if close.is_file():
                body[f"{view}_image"] = close.read_bytes()
        bodies.append(body)
        scores.append(labels[path.stem])
    return bodies, scores


def make_checkpoint(path: Path, fit_dir: Path, fit_lesions: int) -> Path:
    """The default config's architecture (Swin-T x3 at 224 px) with seeded random weights and a fitted readout.

    Random encoders are all a speed measurement needs, but a random head puts every score in a narrow range
    inside one band, where "same severity" cannot fail. Refitting the last linear layer (:func:`fit_readout`)
    spreads the scores over the three bands; the encoders stay random, so the model is no use beyond this
    benchmark. No download.
    """
    if path.is_file():
        return path
    cfg = yaml.safe_load((ROOT / "training" / "configs" / "default.yaml").read_text())
    model_cfg = from_dict(ModelConfig, {**cfg["model"], "pretrained": False, "pretrained_file": None}, "model")
    data_cfg = DataConfig(image_size=int(cfg["data"]["image_size"]))
    torch.manual_seed(0)
    model = FusionModel(model_cfg, data_cfg.image_size, pretrained=False).eval()
    provenance = {"model_version": "benchmark-random", "data_hash": "none"}
    # The random model goes to a side file: ``path`` only ever holds the fitted one, so a run interrupted while
    # fitting is never mistaken for a finished checkpoint by the next run.
    random_path = save_checkpoint(build_checkpoint(model, model_cfg, data_cfg, SeverityConfig(), provenance),
                                  path.with_name(f"{path.stem}.random{path.suffix}"))
    predictor = Predictor(random_path, PredictorOptions())
    bodies, labels = synthetic_lesions(fit_dir, fit_lesions, FIT_SEED)
    fit = fit_readout(predictor, bodies, labels)
    provenance = {"model_version": "benchmark-random-fitted-readout", "data_hash": "none",
                  "readout_fit": {"lesions": len(bodies), "seed": FIT_SEED, **fit}}
    return save_checkpoint(build_checkpoint(predictor.loaded.model, model_cfg, data_cfg, SeverityConfig(),
                                            provenance), path)


def fit_readout(predictor: Predictor, bodies: list[dict[str, bytes]], labels: list[float],
                ridge: float = 1.0) -> dict[str, float]:
    """Refit the head's last linear layer, in place, by ridge regression of logit(label) on its input features.

    Features are standardized for the fit (``ridge`` acts on standardized weights) and the scaling is folded back
    into the layer. Returns the fit's Pearson correlation between scores and labels on the fitted lesions.
    """
    last = predictor.loaded.model.head.mlp[-1]  # Linear(64 -> 1)
    captured: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    try:
        scores_before = _scores(predictor, bodies)
    finally:
        hook.remove()
    features = torch.cat(captured).double()  # [N, 64]
    target = torch.logit(torch.tensor(labels, dtype=torch.float64).clamp(0.02, 0.98))
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    weight = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ (target - target.mean()))
    with torch.no_grad():
        last.weight.copy_((weight / std).unsqueeze(0).to(last.weight.dtype))
        last.bias.copy_((target.mean() - (weight * mean / std).sum()).reshape(1).to(last.bias.dtype))
    scores_after = torch.tensor(_scores(predictor, bodies), dtype=torch.float64)
    corr = torch.corrcoef(torch.stack([scores_after, target.sigmoid()]))[0, 1]
    return {"ridge": ridge, "fit_corr": round(float(corr), 3),
            "score_range_before": [round(min(scores_before), 4), round(max(scores_before), 4)],
            "score_range_after": [round(float(scores_after.min()), 4), round(float(scores_after.max()), 4)]}


def request_sizes(body: dict[str, bytes]) -> dict[str, Any]:
    sizes = {}
    for field, data in body.items():
        image = decode_image(data, field, draft_size=None)
        sizes[field] = {"width": image.width, "height": image.height, "megapixels": round(image.width *
                        image.height / 1e6, 1), "kilobytes": round(len(data) / 1024)}
    return sizes


def machine() -> dict[str, Any]:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    return {"measured_at": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": model or platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
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


def measure_limits(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This machine's fp32 and bf16 matrix-multiply throughput on all cores (GFLOP/s, best of three runs).

    A large square GEMM is the most a CPU's matrix units deliver; a Swin-T forward, with its small per-window
    matrices, LayerNorms and softmaxes, reaches only part of it.
    """
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # oneDNN/MKL pick and warm their kernels
        best = min(_gemm_seconds(a, b, repeats) for _ in range(3))
        out[f"{name}_gemm_gflops"] = round(2 * n**3 * repeats / best / 1e9, 1)
    return out


def _gemm_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return time.perf_counter() - start


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
    bodies, _ = synthetic_lesions(out_dir, lesions, HELDOUT_SEED)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    reference_predictor = Predictor(checkpoint, PredictorOptions())
    reference = _scores(reference_predictor, bodies)
    severity, version = reference_predictor.loaded.severity, reference_predictor.loaded.version
    edges = (severity.mild_max, severity.moderate_max)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "model_version": version,
        "lesions": len(bodies), "subsets": _subset_counts(bodies),
        "reference_score_range": [round(min(reference), 4), round(max(reference), 4)],
        "reference_bands": dict(Counter(severity_label(s, severity) for s in reference)),
        "reference_near_band_edge": sum(min(abs(s - e) for e in edges) <= TARGETS["max_abs_score_diff"]
                                        for s in reference),
    }
    for backend in backends:
        if backend not in available_backends():
            result[backend] = {"skipped": "not available on this machine"}
            continue
        scores = _scores(_predictor(checkpoint, backend, 8), bodies)
        diff = [abs(a - b) for a, b in zip(scores, reference, strict=True)]
        flips = [[round(b, 5), round(a, 5)] for a, b in zip(scores, reference, strict=True)
                 if severity_label(a, severity) != severity_label(b, severity)]
        result[backend] = {"max_abs_score_diff": round(max(diff), 5), "mean_abs_score_diff": round(
            statistics.mean(diff), 5), "severity_agreement": round(1 - len(flips) / len(bodies), 4),
            "severity_flips_fp32_vs_fast": flips}
    return result


def _scores(predictor: Predictor, bodies: list[dict[str, bytes]]) -> list[float]:
    """Exact (unrounded) scores, in batches of 8 so that mixed subsets share a forward as in serving."""
    scores = []
    for i in range(0, len(bodies), 8):
        samples = predictor.prepare(bodies[i:i + 8])
        scores += predictor.forward(samples)[0].tolist()
    return scores


def _subset_counts(bodies: list[dict[str, bytes]]) -> dict[str, int]:
    return dict(Counter("+".join(f.removesuffix("_image") for f in body) for body in bodies))


def _predictor(checkpoint: Path, backend: str, max_batch: int) -> Predictor:
    """The handler's predictor with ``backend`` warmed up for batches 1..max_batch."""
    return Predictor(checkpoint, PredictorOptions(backend=backend), max_batch=max_batch)


class OfflinePool:
    """The handler's predictor without HTTP: ``workers`` processes x ``threads``, warmed up once, run on demand.

    Each :meth:`run` deals ``count`` requests, in full batches of ``batch_size``, round-robin to the processes,
    which decode (``Predictor.prepare``) and answer (``Predictor.answer``) every batch as a TorchServe worker does,
    from the same request bytes.
    """

    def __init__(self, checkpoint: Path, variant: Variant, bodies: list[dict[str, bytes]]):
        ctx = mp.get_context("spawn")
        self.variant, self.n_bodies, self.runs = variant, len(bodies), []
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(variant.workers)]
        self.procs = [ctx.Process(target=_offline_worker, args=(checkpoint, variant, bodies, q, self.results))
                      for q in self.commands]
        for proc in self.procs:
            proc.start()
        self.rss_mib = [round(m["rss_mib"]) for m in self._collect()]  # every process warmed up

    def __enter__(self) -> OfflinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, count: int) -> dict[str, Any]:
        size = self.variant.batch_size
        batches = [[i % self.n_bodies for i in range(s, min(s + size, count))] for s in range(0, count, size)]
        start = time.perf_counter()
        for w, queue in enumerate(self.commands):
            queue.put(batches[w::len(self.commands)])
        parts = self._collect()
        wall = time.perf_counter() - start
        n = sum(p["requests"] for p in parts)
        run = {"requests": n, "wall_s": round(wall, 2), "throughput_rps": round(n / wall, 2),
               # every process computing all the time: the model's throughput at these settings
               "model_compute_rps": round(sum(p["requests"] / p["model_s"] for p in parts if p["requests"]), 2),
               "prepare_ms_per_request": round(1000 * sum(p["prepare_s"] for p in parts) / n, 1),
               "model_ms_per_request_per_worker": round(1000 * sum(p["model_s"] for p in parts) / n, 1)}
        self.runs.append(run)
        return run

    def report(self) -> dict[str, Any]:
        return {"variant": self.variant.name, "worker_rss_mib": self.rss_mib, "runs": self.runs}

    def close(self) -> None:
        for queue in self.commands:
            queue.put(None)
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()

    def _collect(self, timeout: float = 900) -> list[dict[str, Any]]:
        """One message per process; a process that dies instead is an error, not a hang."""
        items, deadline = [], time.monotonic() + timeout
        while len(items) < len(self.procs):
            try:
                items.append(self.results.get(timeout=2))
            except Exception:  # queue.Empty
                dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    for p in self.procs:
                        p.kill()
                    raise RuntimeError(f"offline predictor processes failed (exit codes {dead}) or timed out")
        return items


def _offline_worker(checkpoint: Path, variant: Variant, bodies: list[dict[str, bytes]], commands: Any,
                    results: Any) -> None:
    torch.set_num_threads(variant.threads)
    predictor = _predictor(checkpoint, variant.backend, variant.batch_size)
    results.put({"rss_mib": psutil.Process().memory_info().rss / 2**20})
    while (batches := commands.get()) is not None:
        prepare_s = model_s = 0.0
        for batch in batches:
            t0 = time.perf_counter()
            prepared = predictor.prepare([bodies[i] for i in batch])
            t1 = time.perf_counter()
            predictor.answer(prepared)
            prepare_s += t1 - t0
            model_s += time.perf_counter() - t1
        results.put({"requests": sum(map(len, batches)), "prepare_s": prepare_s, "model_s": model_s})


# ----------------------------------------------------------------------------------------------- HTTP


def load(url: str, bodies: list[Body], count: int, concurrency: int, duration: float,
         headers: dict[str, str] | None = None, desc: str = "") -> list[Result]:
    """:func:`scripts.loadgen.run_load` with a progress bar."""
    with tqdm(total=count, desc=desc, unit="req", leave=False, position=1) as bar:
        return run_load(url, bodies, count, concurrency, duration, headers=headers, timeout=300,
                        on_result=lambda result: bar.update())


def load_summary(results: list[Result], wall: float, concurrency: int) -> dict[str, Any]:
    """Throughput of answered (2xx) requests over ``wall`` seconds and their :func:`steady_rate`, latency
    percentiles, errors by status."""
    ok = [r for r in results if 200 <= r.status < 300]
    latencies = [1000 * r.latency for r in ok] or [math.nan]
    errors = Counter(str(r.status or r.error.split(":")[0]) for r in results if not 200 <= r.status < 300)
    return {"concurrency": concurrency, "requests": len(results), "ok": len(ok), "errors": dict(errors),
            "wall_s": round(wall, 1), "throughput_rps": round(len(ok) / wall, 2),
            "steady_rps": steady_rate(results, concurrency),
            **{f"p{q}_ms": round(percentile(latencies, q)) if ok else None for q in (50, 90, 99)}}


def steady_rate(results: list[Result], concurrency: int) -> float | None:
    """Answers per second between the ``concurrency``-th answer and the ``concurrency``-th from last.

    A closed-loop load starts with every client waiting on the first batches and ends with workers idling while
    the last requests drain; a server that keeps serving has neither. Between those two points every client has a
    request in flight. None when there are fewer than ``3 * concurrency`` answers.
    """
    ends = sorted(r.end for r in results if 200 <= r.status < 300)
    if len(ends) < 3 * concurrency:
        return None
    first, last = ends[concurrency - 1], ends[-concurrency]
    if last <= first:
        return None
    return round(sum(first < end <= last for end in ends) / (last - first), 2)  # answers come in batches


def measured_load(url: str, bodies: list[Body], count: int, concurrency: int, duration: float,
                  headers: dict[str, str], meter: CpuMeter, desc: str) -> tuple[dict[str, Any], list[Result]]:
    """A load run with the CPU time every process spent on it, per answered request, and the idle remainder."""
    before, start = meter.sample(), time.perf_counter()
    results = load(url, bodies, count, concurrency, duration, headers, desc)
    wall = time.perf_counter() - start
    spent = meter.since(before)
    summary = load_summary(results, wall, concurrency)
    answered = max(1, summary["ok"])
    cores = len(os.sched_getaffinity(0))
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


def multipart_bodies(bodies: list[dict[str, bytes]]) -> list[Body]:
    return [Body.multipart(list(body.items())) for body in bodies]


def run_baseline(checkpoint: Path, bodies: list[dict[str, bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """The design-style app at concurrency 8 (it serves one request at a time; the rest queue)."""
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
    return {"design": "one request at a time, eager fp32, full-size decode", **result}


def write_model_config(variant: Variant, path: Path) -> Path:
    """serve_config/model-config.yaml with the variant's workers, batching, threads and backend."""
    cfg = yaml.safe_load(MODEL_CONFIG.read_text())
    cfg.update(minWorkers=variant.workers, maxWorkers=variant.workers, batchSize=variant.batch_size,
               maxBatchDelay=variant.max_batch_delay)
    cfg.setdefault("handler", {}).update(threads=variant.threads, backend=variant.backend)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_torchserve(checkpoint: Path, bodies: list[dict[str, bytes]], variant: Variant, args: argparse.Namespace,
                   offline: OfflinePool | None = None) -> dict[str, Any]:
    """Build the archive for ``variant``, start TorchServe, time the first answer, warm up, load at concurrency 1
    and 8. With ``offline``, the concurrency-8 load is ``args.rounds`` rounds next to offline runs
    (:func:`paired_rounds`), and with ``args.grpc`` the same requests also go over TorchServe's gRPC inference API
    (its own warm-up, concurrency 1, and a load in every round)."""
    slug = variant.name.replace(" ", "_")
    run_dir, store = args.work_dir / "ts" / slug, args.work_dir / "ts" / slug / "model_store"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PIGMENT_MODEL_CONFIG": str(write_model_config(variant, run_dir / "model-config.yaml"))}
    subprocess.run(["bash", str(ROOT / "scripts" / "build_mar.sh"), str(checkpoint), str(store)], env=env,
                   check=True, capture_output=True)
    server = LocalTorchServe(store, run_dir, Ports.free())
    url = f"{server.inference_url}/predictions/{server.model_name}"
    multipart = multipart_bodies(bodies)
    start = time.perf_counter()
    server.start(timeout=600)
    try:
        headers = server.auth()
        first = requests.post(url, data=multipart[0].data, timeout=300,
                              headers={**headers, "Content-Type": multipart[0].content_type})
        first_answer_s = time.perf_counter() - start
        if first.status_code != 200:
            raise RuntimeError(f"first request answered {first.status_code}: {first.text}\n{server.log_tail()}")
        workers = [p for p in psutil.Process(server.server_pid()).children(recursive=True)
                   if "model_service_worker" in " ".join(p.cmdline())]
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


def paired_rounds(offline: OfflinePool, served_loads: dict[str, Any], rounds: int,
                  count: int) -> tuple[list[dict[str, Any]], dict[str, list[Result]]]:
    """``rounds`` rounds of an offline run and one served load of ``count`` requests per entry of ``served_loads``
    (``"rest"``, ``"grpc"``: a function of a description -> (summary, results)), seconds apart. The order rotates
    by one place every round (with one served load: offline first in odd rounds), so that a drift in the
    machine's speed favours no side. A served load counts its steady rate (:func:`steady_rate`), the offline run
    all its requests over its wall. Each round holds ``offline``, every load's summary under its name and
    ``<name>_ratio``, served / offline."""
    arms = ["offline", *served_loads]
    out, pooled = [], {name: [] for name in served_loads}
    for r in range(rounds):
        row: dict[str, Any] = {}
        for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
            if arm == "offline":
                row["offline"] = offline.run(count)
                continue
            row[arm], results = served_loads[arm](f"{arm} round {r + 1}")
            pooled[arm] += results
        for arm in served_loads:
            rate = row[arm].get("steady_rps") or row[arm]["throughput_rps"]
            row[f"{arm}_ratio"] = round(rate / row["offline"]["throughput_rps"], 3)
        out.append(row)
    return out, pooled


def _combine_rounds(runs: list[dict[str, Any]], results: list[Result]) -> dict[str, Any]:
    """Rounds -> one run: median throughput, latency percentiles over every request, mean CPU per request."""
    latencies = [1000 * r.latency for r in results if 200 <= r.status < 300] or [math.nan]
    errors: Counter[str] = Counter()
    for run in runs:
        errors.update(run["errors"])
    return {"concurrency": runs[0]["concurrency"], "requests": sum(r["requests"] for r in runs),
            "ok": sum(r["ok"] for r in runs), "errors": dict(errors),
            "wall_s": round(sum(r["wall_s"] for r in runs), 1),
            "throughput_rps": round(statistics.median(r["throughput_rps"] for r in runs), 2),
            "steady_rps": round(statistics.median(r.get("steady_rps") or r["throughput_rps"] for r in runs), 2),
            **{f"p{q}_ms": round(percentile(latencies, q)) for q in (50, 90, 99)},
            "cpu_ms_per_request": {k: round(statistics.mean(r["cpu_ms_per_request"][k] for r in runs), 1)
                                   for k in runs[0]["cpu_ms_per_request"]},
            "rounds": len(runs)}


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


if __name__ == "__main__":
    sys.exit(main())
