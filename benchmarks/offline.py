"""The handler's predictor without HTTP, with the served settings: what TorchServe's answers are compared to."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.readout import predictor_for
from benchmarks.workload import Variant
from model.cpu import use_threads


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
    use_threads(variant.threads)
    predictor = predictor_for(checkpoint, variant.backend, variant.batch_size)
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
