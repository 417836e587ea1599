"""What one image-quality check costs, and whether two versions of the code warn alike, view by view.

    PYTHONPATH=. python benchmarks/quality_cost.py run --data DIR [--n 200] --out AFTER.json
    PYTHONPATH=OTHER_CHECKOUT python benchmarks/quality_cost.py run --data DIR [--n 200] --out BEFORE.json
    python benchmarks/quality_cost.py compare BEFORE.json AFTER.json

Run as a file, not ``-m``, so that ``model.quality`` comes from the checkout ``PYTHONPATH`` names (this file uses
nothing of ours beyond that checkout's ``model.quality`` and ``benchmarks.trust.degradations``). ``run`` checks
every view of the first ``--n`` lesions of each modality of a ``training.synth`` folder, as rendered and degraded
(``benchmarks.trust``), on one thread (OpenCV and BLAS), and records each view's warnings and check time, wall
and CPU (the median of ``--repeats``); ``compare`` counts the views whose warnings differ and the median times.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads its BLAS
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
from PIL import Image  # noqa: E402

EXTS = {"clinical": "jpg", "dermoscopy": "png", "multispectral": "png"}


def run(data: Path, n: int, repeats: int) -> dict:
    from benchmarks.trust import degradations
    from model import quality

    cv2.setNumThreads(1)
    views = {}
    for modality, ext in EXTS.items():
        for path in sorted((data / modality / "images").glob(f"*.{ext}"))[:n]:
            original = Image.open(path).convert("RGB")
            for name, degrade in degradations().items():
                image = quality.reduced(degrade(original))  # what scoring.prepare keeps for the check
                wall, cpu = [], []
                for _ in range(repeats):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    report = quality.check(image, modality)
                    wall.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
                views[f"{modality}/{path.name}/{name}"] = {"warnings": list(report.warnings),
                                                          "ms": round(1000 * statistics.median(wall), 3),
                                                          "cpu_ms": round(1000 * statistics.median(cpu), 3)}
    return {"code": str(Path(quality.__file__).resolve().parents[1]), "data": str(data), "n": n,
            "repeats": repeats, "load_average": [round(x, 2) for x in os.getloadavg()], "views": views}


def compare(before: dict, after: dict) -> dict:
    common = sorted(set(before["views"]) & set(after["views"]))
    differ = [k for k in common if before["views"][k]["warnings"] != after["views"][k]["warnings"]]
    out = {"views": len(common), "warnings_differ": len(differ), "differing": differ[:20]}
    for key in ("ms", "cpu_ms"):
        if all(key in run["views"][k] for run in (before, after) for k in common):
            for side, run in (("before", before), ("after", after)):
                out[f"median_{key}_{side}"] = round(statistics.median(run["views"][k][key] for k in common), 2)
            out[f"median_{key}_speedup_per_view"] = round(statistics.median(
                before["views"][k][key] / max(after["views"][k][key], 1e-6) for k in common), 2)
    return {**out, "load_average": {"before": before["load_average"], "after": after["load_average"]},
            "code": {"before": before["code"], "after": after["code"]}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--n", type=int, default=200)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = p.parse_args(argv)
    if args.what == "run":
        result = run(args.data, args.n, args.repeats)
        args.out.write_text(json.dumps(result) + "\n")
        result = {k: v for k, v in result.items() if k != "views"}
    else:
        result = compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
