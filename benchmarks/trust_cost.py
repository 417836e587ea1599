"""What the trust fields cost a served request: this code against the code from before them, paired.

    git -C MAIN worktree add /tmp/pre-trust 75a6a62        # the code before issue 14 (read only)
    python -m benchmarks.trust_cost --old-tree /tmp/pre-trust --out docs/trust_cost.json

Both arms serve the same checkpoint (the old arm's copy without its ``trust`` section, which that code never had)
and the same phone-size requests (``benchmarks.workload.make_requests``), each from an archive built by its own
tree's ``serving.archive.build_mar`` with that tree's shipped model-config.yaml (2 workers x 1 thread). One
TorchServe runs at a time. A round of an arm: start, first answer (worker RSS after load), warm-up, a
concurrency-8 load (steady throughput, the workers' CPU per answered request, worker RSS sampled every 0.2 s:
peak under load), stop. Rounds alternate the order (old, new, new, old, ...), so each new/old ratio compares runs
a minute apart and a drift in the machine's speed favours neither arm; the median and range of the per-round
ratios are reported. The first answer of each arm is checked to come from its own code (the new one carries
``quality_warnings``, the old one does not).

Without ``--checkpoint``: the benchmark's real-size checkpoint (``benchmarks.readout``) with a ``trust`` section
fitted by ``training.calibrate`` on a small synthetic cohort, so the new arm runs every trust computation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from benchmarks.cpu_meter import CpuMeter
from benchmarks.loadgen import load_summary, run_load
from benchmarks.readout import make_checkpoint
from benchmarks.served import first_answer
from benchmarks.workload import machine, make_requests, multipart_bodies, request_sizes, served_variant
from model.checkpoint import load_checkpoint, save_checkpoint
from serving.archive import build_mar
from serving.torchserve import LocalTorchServe, Ports

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("old", "new")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trust_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-tree", type=Path, required=True, help="a checkout of the code before the trust work")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint with a trust section (default: see above)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "trust_cost", help="archives, logs, data")
    p.add_argument("--out", type=Path, required=True, help="the JSON report")
    p.add_argument("--rounds", type=int, default=7, help="rounds of each arm")
    p.add_argument("--lesions", type=int, default=4, help="distinct phone-size requests the load cycles through")
    p.add_argument("--warmup-requests", type=int, default=32)
    p.add_argument("--requests", type=int, default=96, help="requests of each measured load")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=180.0, help="cap in seconds on each load")
    p.add_argument("--calibration-lesions", type=int, default=48, help="synthetic lesions the trust is fitted on")
    args = p.parse_args(argv)
    if not (args.old_tree / "serving" / "archive.py").is_file():
        p.error(f"--old-tree {args.old_tree}: no serving/archive.py there; give a checkout of pigment")
    if min(args.rounds, args.lesions, args.requests, args.concurrency) < 1:
        p.error("--rounds, --lesions, --requests and --concurrency must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------- checkpoints


def trusted_checkpoint(work_dir: Path, calibration_lesions: int) -> Path:
    """The benchmark's real-size checkpoint with a trust section fitted on a synthetic cohort (cached)."""
    from training.calibrate import calibrate_checkpoint  # the benchmark's own setup, not the measured code
    from training.synth import generate

    path = work_dir / "real_size_calibrated.pth"
    if path.is_file():
        return path
    base = make_checkpoint(work_dir / "real_size_fitted_readout.pth", work_dir / "fit_n64", 64)
    data = work_dir / f"calibration_n{calibration_lesions}"
    if not (data / "labels.csv").is_file():
        generate(data, calibration_lesions, seed=99, overwrite=True)
    return save_checkpoint(calibrate_checkpoint(load_checkpoint(base), data), path)


def without_trust(checkpoint: Path, out: Path) -> Path:
    """``checkpoint`` as the old code's training wrote it: no ``trust`` section, no calibration provenance."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt.pop("trust", None)
    ckpt["provenance"] = {k: v for k, v in ckpt.get("provenance", {}).items() if k != "calibration"}
    torch.save(ckpt, out)
    return out


def build_archives(checkpoint: Path, old_tree: Path, work_dir: Path) -> dict[str, Path]:
    """``{arm: model store}``: each arm's pigment.mar built by its own tree's ``build_mar`` (shipped config)."""
    stores = {arm: work_dir / arm / "model_store" for arm in ARMS}
    build_mar(checkpoint, stores["new"])
    old_ckpt = without_trust(checkpoint, work_dir / "checkpoint_without_trust.pth")
    code = ("import sys; from pathlib import Path; from serving.archive import build_mar; "
            "build_mar(Path(sys.argv[1]), Path(sys.argv[2]))")
    env = {**os.environ, "PYTHONPATH": str(old_tree.resolve())}
    subprocess.run([sys.executable, "-c", code, str(old_ckpt.resolve()), str(stores["old"].resolve())],
                   cwd=old_tree, env=env, check=True)
    return stores


# ---------------------------------------------------------------------------------------------------- one run


class RssSampler:
    """The workers' resident memory, sampled every ``period`` s in a thread: the peak of each worker."""

    def __init__(self, procs: list[psutil.Process], period: float = 0.2):
        self.procs, self.period = procs, period
        self.peak = [p.memory_info().rss for p in procs]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for i, p in enumerate(self.procs):
                try:
                    self.peak[i] = max(self.peak[i], p.memory_info().rss)
                except psutil.Error:
                    pass


def serve_once(arm: str, store: Path, run_dir: Path, bodies: list, args: argparse.Namespace) -> dict[str, Any]:
    """One round of one arm (see the module doc)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    server = LocalTorchServe(store, run_dir, Ports.free())
    url = f"{server.inference_url}/predictions/{server.model_name}"
    load_before = os.getloadavg()
    start = time.perf_counter()
    server.start(timeout=600)
    try:
        headers, answer, first_s, workers = first_answer(server, url, bodies[0], start, f"{arm}: ")
        if ("quality_warnings" in answer) != (arm == "new"):
            raise RuntimeError(f"{arm}: the answer {sorted(answer)} is not from this arm's code")
        rss_loaded = [p.memory_info().rss for p in workers]
        meter = CpuMeter(server.server_pid(), [w.pid for w in workers])
        with RssSampler(workers) as rss:
            run_load(url, bodies, args.warmup_requests, args.concurrency, args.duration, headers=headers, timeout=300)
            before, t0 = meter.sample(), time.perf_counter()
            results = run_load(url, bodies, args.requests, args.concurrency, args.duration, headers=headers,
                               timeout=300)
            wall = time.perf_counter() - t0
            spent = meter.since(before)
    finally:
        server.stop()
    summary = load_summary(results, wall, args.concurrency)
    answered = max(1, summary["ok"])
    worker_cpu = sum(v for k, v in spent.items() if k.startswith("worker_"))
    mib = 2 ** 20
    return {"arm": arm, "start_to_first_answer_s": round(first_s, 1), "ok": summary["ok"],
            "errors": summary["errors"], "throughput_rps": summary["throughput_rps"],
            "steady_rps": summary.get("steady_rps"), "p50_ms": summary["p50_ms"], "p90_ms": summary["p90_ms"],
            "worker_cpu_ms_per_request": round(1000 * worker_cpu / answered, 1),
            "all_cpu_ms_per_request": round(1000 * sum(spent.values()) / answered, 1),
            "worker_rss_after_load_mib": [round(r / mib) for r in rss_loaded],
            "worker_rss_peak_mib": [round(r / mib) for r in rss.peak],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


# ---------------------------------------------------------------------------------------------------- summary


def ratios(rounds: list[dict[str, dict[str, Any]]], key: Any) -> dict[str, Any]:
    """new/old of ``key(run)`` in each round: every value, the median and the range."""
    values = [round(key(r["new"]) / key(r["old"]), 4) for r in rounds]
    return {"per_round": values, "median": round(statistics.median(values), 4),
            "min": min(values), "max": max(values)}


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    rate = lambda run: run["steady_rps"] or run["throughput_rps"]  # noqa: E731
    medians = {arm: {"steady_rps": statistics.median(rate(r[arm]) for r in rounds),
                     "worker_cpu_ms_per_request": statistics.median(r[arm]["worker_cpu_ms_per_request"]
                                                                    for r in rounds),
                     "worker_rss_after_load_mib": statistics.median(max(r[arm]["worker_rss_after_load_mib"])
                                                                   for r in rounds),
                     "worker_rss_peak_mib": max(max(r[arm]["worker_rss_peak_mib"]) for r in rounds)}
               for arm in ARMS}
    return {
        "throughput_new_over_old": ratios(rounds, rate),
        "worker_cpu_per_request_new_over_old": ratios(rounds, lambda run: run["worker_cpu_ms_per_request"]),
        "worker_rss_after_load_new_over_old": ratios(rounds, lambda run: max(run["worker_rss_after_load_mib"])),
        "worker_rss_peak_new_over_old": ratios(rounds, lambda run: max(run["worker_rss_peak_mib"])),
        "medians": medians,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or trusted_checkpoint(args.work_dir, args.calibration_lesions)
    raw = make_requests(args.work_dir / "requests", args.lesions)
    bodies = multipart_bodies(raw)
    stores = build_archives(checkpoint, args.old_tree, args.work_dir)
    old_commit = subprocess.run(["git", "-C", str(args.old_tree), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    new_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    report: dict[str, Any] = {
        "machine": machine(), "variant": served_variant().name, "request": request_sizes(raw[0]),
        "checkpoint": str(checkpoint), "old_commit": old_commit, "new_commit": new_commit,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rounds": []}
    for r in range(args.rounds):
        order = ARMS if r % 2 == 0 else ARMS[::-1]
        row = {}
        for arm in order:
            row[arm] = serve_once(arm, stores[arm], args.work_dir / arm / f"round{r + 1}", bodies, args)
            print(f"round {r + 1} {arm}: {json.dumps(row[arm])}", flush=True)
        report["rounds"].append(row)
    report["summary"] = summarize(report["rounds"])
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    return report


if __name__ == "__main__":
    main()
