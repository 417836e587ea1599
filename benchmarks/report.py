"""The benchmark's results (benchmarks/run.py) -> the checks, performance.md's tables, performance.json and the plot."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_BF16_GFLOPS = 410.0
"""The reference bf16 limit the model-compute target is a share of (docs/performance.md: where it was measured)."""
GFLOP_PER_REQUEST = 26.9  # three Swin-T forwards at 224 px, 8.98 GFLOP each
TARGETS = {"served_over_baseline": 3.0, "model_pct_of_reference_limit": 70.0, "served_over_offline": 0.85,
           "max_abs_score_diff": 0.01, "severity_agreement": 0.99}
CPU_COLUMNS = (("workers", "workers"), ("frontend_netty", "frontend: Netty"), ("frontend_grpc", "frontend: gRPC"),
               ("frontend_jit", "frontend: JIT"),
               ("frontend_gc", "frontend: GC"), ("frontend_other", "frontend: other"),
               ("metrics_collector", "metrics collector"), ("client", "load generator"), ("idle", "idle"))


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers and the pass/fail of each target in ``TARGETS``."""
    served, baseline = r["served"][0], r["baseline"]
    rounds = served["rounds"]
    offline_rps = statistics.median(x["offline"]["throughput_rps"] for x in rounds)
    compute_rps = statistics.median(x["offline"]["model_compute_rps"] for x in rounds)
    gflops = compute_rps * GFLOP_PER_REQUEST
    ratio = statistics.median(x["rest_ratio"] for x in rounds)
    grpc = served.get("grpc", {}).get("c8")
    backends = _backends(r["accuracy"]["trained"])
    served_rps, baseline_rps = _rate(served["c8"]), _rate(baseline)
    summary = {
        "served_variant": served["variant"],
        "served_c8_rps": served_rps,
        "baseline_c8_rps": baseline_rps,
        "offline_rps": round(offline_rps, 2),
        "served_over_baseline": round(served_rps / baseline_rps, 2),
        "served_over_offline": round(ratio, 3),
        "served_over_offline_rounds": [x["rest_ratio"] for x in rounds],
        "model_compute_rps": round(compute_rps, 2),
        "model_gflops": round(gflops, 1),
        "model_pct_of_reference_limit": round(100 * gflops / REFERENCE_BF16_GFLOPS, 1),
        "model_pct_of_measured_bf16_gemm": round(100 * gflops / r["limits"]["bf16_gemm_gflops"], 1),
        "model_ms_per_request_all_cores": round(1000 / compute_rps, 1),
    }
    if grpc:
        summary.update(served_grpc_c8_rps=_rate(grpc),
                       served_grpc_over_offline=round(statistics.median(x["grpc_ratio"] for x in rounds), 3),
                       served_grpc_over_offline_rounds=[x["grpc_ratio"] for x in rounds])
    model_target = TARGETS["model_pct_of_reference_limit"]
    summary["checks"] = {
        "served >= 3x baseline": summary["served_over_baseline"] >= TARGETS["served_over_baseline"],
        "model >= 70% of bf16 limit": summary["model_pct_of_reference_limit"] >= model_target,
        "served >= 85% of offline": ratio >= TARGETS["served_over_offline"],
        **({"served over gRPC >= 85% of offline": summary["served_grpc_over_offline"] >= TARGETS[
            "served_over_offline"]} if grpc else {}),
        "accuracy": bool(backends) and all(v["max_abs_score_diff"] <= TARGETS["max_abs_score_diff"] and
                                           v["severity_agreement"] >= TARGETS["severity_agreement"]
                                           for v in backends.values()),
    }
    return summary


def _rate(run: dict[str, Any]) -> float:
    """A load run's steady rate (benchmark.steady_rate), or its overall rate when it was too short for one."""
    return run.get("steady_rps") or run["throughput_rps"]


def _backends(subject: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An accuracy subject's measured backends (none when the subject was skipped)."""
    return {k: v for k, v in subject.items() if isinstance(v, dict) and "max_abs_score_diff" in v}


def markdown_tables(r: dict[str, Any]) -> str:
    s, m, lim, pre, acc = r["summary"], r["machine"], r["limits"], r["preprocess"], r["accuracy"]
    served = r["served"][0]
    checks = s["checks"]
    cpu_flags = "AMX bf16" if m["amx_bf16"] else "AVX-512 bf16" if m["avx512_bf16"] else "no bf16 units"
    started = m.get("measured_at") or time.strftime("%Y-%m-%d %H:%M")  # results older than the field: now
    lines = [
        f"Measured {started} (start) on {m['cores']} cores of {m['cpu']} ({cpu_flags}), "
        f"{m['memory_gib']} GiB, torch {m['torch']}; load average at start {m['load_average_at_start']}. "
        f"This machine's matrix-multiply limits, measured in the run: fp32 {lim['fp32_gemm_gflops']} GFLOP/s, bf16 "
        f"{lim['bf16_gemm_gflops']} GFLOP/s. Requests: three modalities, "
        + ", ".join(f"{k} {v['width']}x{v['height']} ({v['megapixels']} MP, {v['kilobytes']} KB)"
                    for k, v in r["request"].items()) + ".",
        "",
        "| check | target | measured | |",
        "|---|---|---|---|",
        f"| served throughput at concurrency 8 / one-at-a-time baseline | >= 3x | {s['served_c8_rps']} / "
        f"{s['baseline_c8_rps']} req/s = **{s['served_over_baseline']}x** | {_ok(checks['served >= 3x baseline'])} |",
        f"| model compute vs the bf16 limit (reference: {REFERENCE_BF16_GFLOPS:.0f} GFLOP/s; "
        f"{GFLOP_PER_REQUEST} GFLOP/request) | >= 70 % | {s['model_compute_rps']} req/s = {s['model_gflops']} "
        f"GFLOP/s = **{s['model_pct_of_reference_limit']} %** ({s['model_pct_of_measured_bf16_gemm']} % of this "
        f"machine's bf16 GEMM) | {_ok(checks['model >= 70% of bf16 limit'])} |",
        f"| served, REST multipart (steady rate) / offline predictor (same settings, median of "
        f"{len(served['rounds'])} paired rounds) | >= 85 % | {s['served_c8_rps']} / {s['offline_rps']} req/s; rounds "
        + ", ".join(f"{100 * x:.0f} %" for x in s["served_over_offline_rounds"])
        + f" = **{100 * s['served_over_offline']:.0f} %** | {_ok(checks['served >= 85% of offline'])} |",
        *([f"| served, gRPC (same requests, same rounds) / offline predictor | >= 85 % | {s['served_grpc_c8_rps']} / "
           f"{s['offline_rps']} req/s; rounds " + ", ".join(f"{100 * x:.0f} %" for x in
                                                          s["served_grpc_over_offline_rounds"])
           + f" = **{100 * s['served_grpc_over_offline']:.0f} %** | "
           f"{_ok(checks['served over gRPC >= 85% of offline'])} |"] if "served_grpc_over_offline" in s else []),
        f"| fast paths vs eager fp32 on the trained model ({acc['trained'].get('model_version', 'missing')}; max abs "
        "d score, severity agreement) | <= 0.01, >= 99 % | "
        + ("; ".join(f"{k}: {v['max_abs_score_diff']}, {100 * v['severity_agreement']:.1f} %"
                     for k, v in _backends(acc["trained"]).items()) or acc["trained"].get("skipped", ""))
        + f" | {_ok(checks['accuracy'])} |",
        "",
        *rounds_table(served),
        "",
        *cpu_table(r),
        "",
        "| 12 MP clinical JPEG | ms (1 thread) |",
        "|---|---|",
        f"| decode + preprocess, JPEG draft (served) | {pre['clinical_12mp_drafted_ms']} |",
        f"| decode + preprocess, full size (baseline) | {pre['clinical_12mp_full_ms']} |",
        f"| all three images of a request, drafted | {pre['request_3_images_drafted_ms']} |",
        f"| model, one request, both cores (from the offline compute rate) | {s['model_ms_per_request_all_cores']} |",
        f"| model, one request, per worker at batch {served['batch_size']} | "
        f"{statistics.median(x['offline']['model_ms_per_request_per_worker'] for x in served['rounds'])} |",
        "",
        *settings_table(r),
        "",
        *accuracy_table(acc["trained"], "the trained demo model (the archive `make serve` ships)"),
        "",
        *accuracy_table(acc["benchmark_checkpoint"], "stress case, the benchmark's real-size checkpoint: random "
                        "Swin-T encoders and a readout fitted to stretch their small between-lesion differences over "
                        "the whole score range, which stretches bf16 rounding by the same factor"),
    ]
    return "\n".join(lines)


def rounds_table(served: dict[str, Any]) -> list[str]:
    arms = [arm for arm in ("rest", "grpc") if f"{arm}_ratio" in served["rounds"][0]]
    titles = {"rest": "REST", "grpc": "gRPC"}
    lines = [f"Paired rounds ({served['variant']}, {served['rounds'][0]['rest']['requests']} requests each; the "
             f"order of offline, {' and '.join(titles[a] for a in arms)} rotates by one every round):", "",
             "| round | offline req/s | model compute req/s | "
             + " | ".join(f"served c8 {titles[a]} req/s (steady) | {titles[a]} / offline" for a in arms) + " |",
             "|---|---|---|" + "---|---|" * len(arms)]
    for i, x in enumerate(served["rounds"], 1):
        lines.append(f"| {i} | {x['offline']['throughput_rps']} | {x['offline']['model_compute_rps']} | "
                     + " | ".join(f"{_rate(x[a])} | {100 * x[f'{a}_ratio']:.0f} %" for a in arms) + " |")
    return lines


def cpu_table(r: dict[str, Any]) -> list[str]:
    """CPU ms per answered request at concurrency 8, by process (and JVM thread kind), for every variant."""
    cores = r["machine"]["cores"]
    lines = [f"Where a served request's CPU goes at concurrency 8 (ms of CPU per answered request; {cores} cores "
             f"x wall time / requests = the total, so idle is CPU nobody used):", "",
             "| setting | " + " | ".join(title for _, title in CPU_COLUMNS) + " | total |",
             "|---|" + "---|" * (len(CPU_COLUMNS) + 1)]
    for name, _, run in _served_runs(r, "c8"):
        cpu = dict(run["cpu_ms_per_request"])
        cpu["workers"] = round(sum(ms for k, ms in cpu.items() if k.startswith("worker_")), 1)
        lines.append(f"| {name} | " + " | ".join(str(cpu.get(k, "")) for k, _ in CPU_COLUMNS)
                     + f" | {round(sum(cpu.get(k, 0.0) for k, _ in CPU_COLUMNS), 1)} |")
    offline = [x["offline"] for x in r["served"][0]["rounds"]]
    per_request = statistics.median(cores * 1000 / o["throughput_rps"] for o in offline)
    lines.append(f"| offline predictor, {r['offline']['variant']} | {per_request:.1f} (all of it) |"
                 + " |" * (len(CPU_COLUMNS) - 1) + f" {per_request:.1f} |")
    lines.append("")
    first = r["served"][0]
    for name, run in ((f"{first['variant']} over REST", first["c8"]),
                      (f"{first['variant']} over gRPC", first.get("grpc", {}).get("c8"))):
        if not run:
            continue
        cpu = run["cpu_ms_per_request"]
        workers = sum(ms for k, ms in cpu.items() if k.startswith("worker_"))
        overhead = sum(ms for k, ms in cpu.items() if not k.startswith("worker_"))
        lines.append(f"In CPU terms the served path of {name} spends {overhead:.1f} ms per request outside the "
                     f"workers (frontend, load generator, metrics collector and idle) next to {workers:.1f} ms in "
                     f"them: {100 * workers / (workers + overhead):.0f} % of the machine goes to the workers' share "
                     "(a share that depends much less on the machine's speed at the moment than a rate does).")
    return lines


def _served_runs(r: dict[str, Any], concurrency: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(row name, "c1"/"c8", load run) of every served setting, REST then gRPC, optionally one concurrency only."""
    runs = []
    for v in r["served"]:
        for transport, c in (("", "c1"), ("", "c8"), (", gRPC", "c1"), (", gRPC", "c8")):
            run = v.get("grpc", {}).get(c) if transport else v[c]
            if run and concurrency in (None, c):
                runs.append((f"TorchServe {v['variant']}{transport}", c, run))
    return runs


def settings_table(r: dict[str, Any]) -> list[str]:
    base, off = r["baseline"], r["offline"]
    lines = ["| setting | conc. | req/s (steady) | req/s (whole run) | p50 ms | p90 ms | p99 ms | errors | "
             "start -> first answer s | warm-up requests | worker RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| one-at-a-time baseline ({base['serving']}) | 8 | {base['steady_rps']} | {base['throughput_rps']} | "
             f"{base['p50_ms']} | {base['p90_ms']} | {base['p99_ms']} | {_errors(base)} | | | {base['rss_mib']} |",
             f"| offline predictor, {off['variant']} (no HTTP; median round) | | | {r['summary']['offline_rps']} "
             f"| | | | | | | {', '.join(map(str, off['worker_rss_mib']))} |"]
    variants = {f"TorchServe {v['variant']}": v for v in r["served"]}
    for name, c, run in _served_runs(r):
        v = variants.get(name)  # the REST row at concurrency 1 carries the server's own numbers
        first = v is not None and c == "c1"
        lines.append(f"| {name} | {c[1:]} | {run['steady_rps']} | {run['throughput_rps']} | {run['p50_ms']} | "
                     f"{run['p90_ms']} | {run['p99_ms']} | {_errors(run)} | "
                     f"{v['start_to_first_answer_s'] if first else ''} | {v['warmup']['requests'] if first else ''} | "
                     f"{', '.join(map(str, v['worker_rss_mib'])) if first else ''} |")
    return lines


def accuracy_table(acc: dict[str, Any], subject: str) -> list[str]:
    if "skipped" in acc:
        return [f"Accuracy, {subject}: skipped ({acc['skipped']})."]
    bands = ", ".join(f"{k} {n}" for k, n in sorted(acc["reference_bands"].items()))
    subsets = ", ".join(f"{k} {n}" for k, n in acc["subsets"].items())
    lines = [f"Accuracy, {subject} (`{acc['model_version']}`), on {acc['lesions']} held-out synthetic lesions "
             f"({subsets}); eager fp32 scores {acc['reference_score_range'][0]}..{acc['reference_score_range'][1]} "
             f"({bands}; {acc['reference_near_band_edge']} within 0.01 of a band edge):", "",
             "| backend | max abs d score | mean abs d score | severity agreement | flipped (fp32 -> fast) |",
             "|---|---|---|---|---|"]
    for name, v in acc.items():
        if isinstance(v, dict) and "max_abs_score_diff" in v:
            flips = "; ".join(f"{a} -> {b}" for a, b in v["severity_flips_fp32_vs_fast"]) or "none"
            lines.append(f"| {name} | {v['max_abs_score_diff']} | {v['mean_abs_score_diff']} | "
                         f"{100 * v['severity_agreement']:.1f} % | {flips} |")
        elif isinstance(v, dict) and "skipped" in v:
            lines.append(f"| {name} | skipped: {v['skipped']} | | | |")
    return lines


def _errors(run: dict[str, Any]) -> str:
    return ", ".join(f"{n} x {k}" for k, n in run["errors"].items()) or "0"


def _ok(flag: bool) -> str:
    return "pass" if flag else "**FAIL**"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["baseline c8", f"offline\n{r['offline']['variant']}"]
    rps = [_rate(r["baseline"]), r["summary"]["offline_rps"]]
    p50 = [r["baseline"]["p50_ms"], np.nan]
    p99 = [r["baseline"]["p99_ms"], np.nan]
    for name, c, run in _served_runs(r):
        names.append(f"{name.replace('TorchServe', 'TS')}\n{c}")
        rps.append(_rate(run))
        p50.append(run["p50_ms"])
        p99.append(run["p99_ms"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8))
    x = np.arange(len(names))
    ax1.bar(x, rps, color=["grey", "tab:green"] + ["tab:blue"] * (len(names) - 2))
    ax1.axhline(r["summary"]["model_compute_rps"], ls="--", c="k", lw=1, label="model compute alone (offline)")
    ax1.axhline(0.7 * REFERENCE_BF16_GFLOPS / GFLOP_PER_REQUEST, ls=":", c="r", lw=1,
                label="70 % of the reference bf16 limit")
    ax1.set_ylabel("requests / s (3 modalities)")
    ax1.legend(fontsize=8)
    ax2.bar(x - 0.2, p50, 0.4, label="p50")
    ax2.bar(x + 0.2, p99, 0.4, label="p99")
    ax2.set_ylabel("latency, ms")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
    fig.suptitle("pigment serving on this machine (docs/performance.md); variants ran minutes apart on a machine "
                 "whose speed drifts, so compare them by CPU per request (the table)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "performance.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot(results, out / "performance.png")
    notes = ROOT / "docs" / "performance_notes.md"
    text = ("# Performance\n\nWritten by `python -m benchmarks --update-docs` (benchmarks/run.py); rerun it to "
            "refresh (numbers, table and plot).\n\n")
    text += markdown_tables(results) + "\n\n![throughput and latency](performance.png)\n"
    if notes.is_file():
        text += "\n" + notes.read_text()
    (out / "performance.md").write_text(text)
