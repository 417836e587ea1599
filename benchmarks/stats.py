"""Served against offline: paired rounds in rotating order, and rounds combined into one run."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from benchmarks.loadgen import Result, percentile
from benchmarks.offline import OfflinePool


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
