"""Every fast path (model/accelerate.py's backends) against eager fp32 on a held-out synthetic cohort.

    python -m benchmarks.accuracy --checkpoint runs/demo/best_model.pth       # a few minutes; writes under runs/

For each backend available here: the largest and mean absolute score difference to eager fp32, the share of
lesions whose severity band is the same, and every lesion whose band changed. The cohort has training.synth's
natural mix of modality subsets and is scored in batches of 8, so that mixed subsets share a forward as in
serving. The tolerance (``TARGETS`` in benchmarks/report.py) is checked; the exit status says whether it held.
Nothing under docs/ is written: the full benchmark (``python -m benchmarks --update-docs``) does that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from benchmarks.readout import predictor_for, scores
from benchmarks.report import TARGETS
from benchmarks.workload import subset_counts, synthetic_lesions
from handler.predictor import Predictor, PredictorOptions
from model.accelerate import BACKENDS, available_backends
from model.cpu import available_cores
from model.severity import severity_label

ROOT = Path(__file__).resolve().parents[1]
HELDOUT_SEED = 1234  # not the readout's FIT_SEED: its checkpoint is checked on lesions it was not fitted on
FAST_BACKENDS = ("eager_bf16", "openvino_bf16")
"""Checked by default; compile_bf16 adds minutes of compiling (ask for it with --backends)."""


def measure_accuracy(checkpoint: Path, out_dir: Path, lesions: int, backends: list[str]) -> dict[str, Any]:
    """Each fast backend vs eager fp32 on a held-out synthetic set with its natural mix of modality subsets."""
    bodies, _ = synthetic_lesions(out_dir, lesions, HELDOUT_SEED)
    torch.set_num_threads(available_cores())
    reference_predictor = Predictor(checkpoint, PredictorOptions())
    reference = scores(reference_predictor, bodies)
    severity, version = reference_predictor.loaded.severity, reference_predictor.loaded.version
    edges = (severity.mild_max, severity.moderate_max)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "model_version": version,
        "lesions": len(bodies), "subsets": subset_counts(bodies),
        "reference_score_range": [round(min(reference), 4), round(max(reference), 4)],
        "reference_bands": dict(Counter(severity_label(s, severity) for s in reference)),
        "reference_near_band_edge": sum(min(abs(s - e) for e in edges) <= TARGETS["max_abs_score_diff"]
                                        for s in reference),
    }
    for backend in backends:
        if backend not in available_backends():
            result[backend] = {"skipped": "not available on this machine"}
            continue
        fast = scores(predictor_for(checkpoint, backend, 8), bodies)
        diff = [abs(a - b) for a, b in zip(fast, reference, strict=True)]
        flips = [[round(b, 5), round(a, 5)] for a, b in zip(fast, reference, strict=True)
                 if severity_label(a, severity) != severity_label(b, severity)]
        result[backend] = {"max_abs_score_diff": round(max(diff), 5), "mean_abs_score_diff": round(
            statistics.mean(diff), 5), "severity_agreement": round(1 - len(flips) / len(bodies), 4),
            "severity_flips_fp32_vs_fast": flips}
    return result


def within_tolerance(result: dict[str, Any]) -> bool:
    """Every backend that ran is within the score tolerance and keeps the severity band often enough."""
    ran = [v for v in result.values() if isinstance(v, dict) and "max_abs_score_diff" in v]
    return bool(ran) and all(v["max_abs_score_diff"] <= TARGETS["max_abs_score_diff"]
                             and v["severity_agreement"] >= TARGETS["severity_agreement"] for v in ran)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained pigment checkpoint")
    parser.add_argument("--lesions", type=int, default=96, help="held-out synthetic lesions")
    parser.add_argument("--backends", default=",".join(FAST_BACKENDS),
                        help=f"comma-separated, checked against eager_fp32; any of {', '.join(BACKENDS[1:])}")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "benchmark",
                        help="where the held-out cohort is generated (once) and accuracy.json is written")
    args = parser.parse_args(argv)
    unknown = [b for b in args.backends.split(",") if b and b not in BACKENDS]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(unknown)}; expected some of {', '.join(BACKENDS)}")
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint: {args.checkpoint} does not exist; train one with `make serve` "
                     f"(runs/demo/best_model.pth) or `python -m training.train`")
    if args.lesions < 8:
        parser.error("--lesions must be >= 8")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    result = measure_accuracy(args.checkpoint, args.work_dir / f"heldout_n{args.lesions}", args.lesions, backends)
    out = args.work_dir / "accuracy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for backend in backends:
        row = result[backend]
        print(f"{backend:14s} " + (row["skipped"] if "skipped" in row else
                                   f"max |diff| {row['max_abs_score_diff']:.5f}  mean |diff| "
                                   f"{row['mean_abs_score_diff']:.5f}  same severity {row['severity_agreement']:.2%}"))
    ok = within_tolerance(result)
    print(f"{'within' if ok else 'OUTSIDE'} tolerance (|diff| <= {TARGETS['max_abs_score_diff']}, same severity >= "
          f"{TARGETS['severity_agreement']:.0%}) on {result['lesions']} lesions; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
