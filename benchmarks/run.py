"""The full performance benchmark: pigment served by TorchServe against a one-request-at-a-time baseline and
against its own offline predictor, on loopback only.

    make benchmark                           # trains the demo model if missing, then this (docs/ untouched)
    python -m benchmarks                     # the same as python -m benchmarks.run; results in runs/benchmark/report
    python -m benchmarks --update-docs       # refresh the published docs/performance.{md,json,png}

docs/performance.md says how long a run takes and what each number means. In one invocation:

1. requests (benchmarks/workload.py): phone-size synthetic lesions, three modalities, each encoded once;
2. a checkpoint of the real-size architecture with a refitted readout (benchmarks/readout.py), or ``--checkpoint``;
3. this machine's fp32 and bf16 GEMM throughput and the decode cost of a 12 MP JPEG (benchmarks/limits.py);
4. accuracy of every fast backend against eager fp32 (benchmarks/accuracy.py, also a command of its own) for the
   trained ``--accuracy-checkpoint`` and, as a stress case, the benchmark's own checkpoint;
5. (a) the baseline (benchmarks/baseline_app.py: one request at a time, eager fp32, full decode) at concurrency 8;
   (b) the offline predictor with the served settings (benchmarks/offline.py); (c) TorchServe for each
   ``--variants`` entry (benchmarks/served.py): start to first answer, warm-up, concurrency 1 and 8, latency
   percentiles, errors, worker RSS, TorchServe's metrics and the CPU time per request of every process.

The served/offline ratios come from ``--rounds`` rounds of the offline predictor and the first variant at
concurrency 8, over REST and over TorchServe's gRPC inference API (``--no-grpc`` leaves it out), in an order that
rotates every round (benchmarks/stats.py): the machine's speed drifts within minutes, so each round compares runs
seconds apart and the median round is reported (every round is in the JSON). Every load run stops after its request
count or ``--duration`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.accuracy import FAST_BACKENDS, measure_accuracy
from benchmarks.limits import measure_limits, measure_preprocess
from benchmarks.offline import OfflinePool
from benchmarks.readout import make_checkpoint
from benchmarks.report import markdown_tables, summarize, write_outputs
from benchmarks.served import run_baseline, run_torchserve
from benchmarks.workload import Variant, machine, make_requests, request_sizes, served_variant

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: real-size, fitted readout)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "benchmark", help="data, archives, logs")
    p.add_argument("--out", type=Path, help="where performance.{md,json,png} go (default: WORK_DIR/report)")
    p.add_argument("--update-docs", action="store_true",
                   help="write performance.{md,json,png} into docs/ (the published results) instead")
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
    p.add_argument("--accuracy-backends", default=",".join(FAST_BACKENDS),
                   help="fast backends checked against eager_fp32 (compile_bf16 adds minutes of compiling)")
    args = p.parse_args(argv)
    if min(args.requests, args.requests_c1, args.baseline_requests, args.rounds, args.round_requests, args.lesions) < 1:
        p.error("--requests, --requests-c1, --baseline-requests, --rounds, --round-requests and --lesions must be >= 1")
    if args.update_docs and args.out:
        p.error("--update-docs writes into docs/; leave out --out")
    args.out = DOCS if args.update_docs else args.out or args.work_dir / "report"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
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
                    "--accuracy-checkpoint"},
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


if __name__ == "__main__":
    sys.exit(main())
