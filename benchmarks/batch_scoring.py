"""Batch scoring (``training.predict``) against the offline predictor, on the same lesions and settings.

    python -m training.synth --out /tmp/archive --n 2000 --seed 5
    python -m benchmarks.batch_scoring --data /tmp/archive --out runs/batch_scoring.json [--checkpoint CKPT]

Both arms use one process with ``--threads`` torch threads, batches of ``--batch-size`` lesions and the eager fp32
backend, and are timed after the model is loaded:

* offline: ``handler.predictor.Predictor.prepare`` + ``answer`` on request bytes already in memory (what
  scripts/benchmark.py's offline pool runs per TorchServe worker), answers discarded;
* batch scoring: ``training.predict``'s local engine from the files on disk (read, prepare, forward, answer) and
  every row written to a fresh predictions CSV.

Each arm scores every lesion once. The lesions are cut into ``--chunks`` consecutive chunks, and the arms take turns
chunk by chunk, the first arm swapping every chunk, so that a drift in this machine's speed (other users share it)
hits both arms alike; the report gives each arm's overall rate, every chunk's rates and the median of the per-chunk
ratios. Without ``--checkpoint``
the model is ``training/configs/demo.yaml``'s architecture with seeded random weights (the speed does not depend on
the weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from handler.predictor import Predictor, PredictorOptions
from model.checkpoint import build_checkpoint, save_checkpoint
from model.fusion_model import FusionModel
from training.config import load_config
from training.data import ScoringItem, index_for_scoring
from training.predict import (
    ResultsFile,
    Scorer,
    ScoringOptions,
    batches,
    run,
    score_local,
)

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "demo.yaml"


def demo_checkpoint(path: Path) -> Path:
    cfg = load_config(DEMO_CONFIG)
    torch.manual_seed(0)
    model = FusionModel(cfg.model, cfg.data.image_size).eval()
    return save_checkpoint(build_checkpoint(model, cfg.model, cfg.data, cfg.severity,
                                            {"model_version": "demo-architecture-random", "data_hash": "none"}), path)


def offline_seconds(predictor: Predictor, items: list[ScoringItem], batch_size: int) -> float:
    bodies = [{f"{m}_image": p.read_bytes() for m, p in item.files.items()} for item in items]
    start = time.perf_counter()
    for i in range(0, len(bodies), batch_size):
        predictor.answer(predictor.prepare(bodies[i:i + batch_size]))
    return time.perf_counter() - start


def batch_scoring_seconds(scorer: Scorer, items: list[ScoringItem], options: ScoringOptions,
                          results: ResultsFile) -> float:
    start = time.perf_counter()
    written = run(items, results, score_local(items, options, scorer), progress=False)
    seconds = time.perf_counter() - start
    assert written == len(items)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch_scoring", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON report")
    p.add_argument("--checkpoint", type=Path, help="default: the demo architecture with random weights")
    p.add_argument("--chunks", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="batch_scoring_"))
    checkpoint = args.checkpoint or demo_checkpoint(work / "demo_random.pth")
    items = [i for i in index_for_scoring(args.data) if i.error is None]
    options = ScoringOptions(str(checkpoint), threads=args.threads, batch_size=args.batch_size)
    predictor = Predictor(checkpoint, PredictorOptions(), max_batch=args.batch_size)
    scorer = Scorer(options)
    for batch in list(batches(items, args.batch_size))[:2]:  # warm both up
        predictor.predict([{f"{m}_image": p.read_bytes() for m, p in i.files.items()} for i in batch])
        scorer.score(batch)
    results = ResultsFile(work / "predictions.csv")
    size = -(-len(items) // args.chunks)
    chunks, totals = [], {"offline": 0.0, "batch_scoring": 0.0}
    for c, start in enumerate(range(0, len(items), size)):
        chunk = items[start:start + size]
        row = {"lesions": len(chunk)}
        for arm in (["offline", "batch_scoring"] if c % 2 == 0 else ["batch_scoring", "offline"]):
            seconds = offline_seconds(predictor, chunk, args.batch_size) if arm == "offline" else \
                batch_scoring_seconds(scorer, chunk, options, results)
            totals[arm] += seconds
            row[arm] = round(len(chunk) / seconds, 3)
        row["ratio"] = round(row["batch_scoring"] / row["offline"], 3)
        chunks.append(row)
        print(f"chunk {c + 1}: {row}", flush=True)
    results.close()
    assert len(ResultsFile(work / "predictions.csv").done) == len(items)  # every lesion once
    rates = {arm: round(len(items) / seconds, 3) for arm, seconds in totals.items()}
    report = {"lesions": len(items), "threads": args.threads, "batch_size": args.batch_size,
              "checkpoint": str(args.checkpoint or "demo architecture, random weights"),
              "rate_lesions_per_s": rates, "ratio": round(rates["batch_scoring"] / rates["offline"], 3),
              "median_chunk_ratio": round(statistics.median(r["ratio"] for r in chunks), 3), "chunks": chunks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
