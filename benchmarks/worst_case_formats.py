"""The worst request each format allows, 16 at once, against a real TorchServe: no 5xx, no worker restart, bounded
worker memory.

    nice -n 10 python -m benchmarks.worst_case_formats --checkpoint runs/demo/best_model.pth [--out result.json]

For every decodable format, the largest image the limits accept (``ImageLimits``: 64 MP for JPEG/MPO, which are
draft-decoded; ``max_full_decode_pixels`` for the rest) and the most compressible one (all black), so that the
bytes sent are tiny and the decoded pixels are the whole cost. Each request carries it three times (clinical,
dermoscopy, multispectral); 16 such requests are sent at once. BMP is left out: uncompressed, it cannot reach the
pixel limit inside the 32 MiB body limit (TorchServe's frontend answers 413 before a worker sees it).

The server is serving/torchserve.py on free loopback ports with the shipped serve_config/model-config.yaml
(workers, batch size, backend). Per format it records the statuses, the slowest answer, each worker's peak
resident memory over its resident memory before the burst (sampled every 50 ms) and after it, and whether a
worker was restarted (its pid or start time changed). Prints one line per format and writes the JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from PIL import Image

from model.cli import run
from model.preprocessing import DEFAULT_LIMITS, DRAFT_FORMATS
from serving.archive import build_mar
from serving.torchserve import LocalTorchServe, Ports

ROOT = Path(__file__).resolve().parents[1]
FORMATS: dict[str, dict] = {  # Pillow format -> encoder options for the smallest file
    "JPEG": {"quality": 50},
    "MPO": {"quality": 50},
    "PNG": {"compress_level": 9},
    "TIFF": {"compression": "tiff_deflate"},
    "WEBP": {"lossless": True},
    "HEIF": {"quality": 50, "enc_params": {"preset": "ultrafast"}},
    "AVIF": {"quality": 50, "speed": 10},
}
CONCURRENCY = 16
FIELDS = ("clinical_image", "dermoscopy_image", "multispectral_image")


def largest_accepted(fmt: str) -> bytes:
    """An all-black image with as many pixels as ``fmt`` may have (a square, or the closest below)."""
    limit = DEFAULT_LIMITS.max_pixels if fmt in DRAFT_FORMATS else DEFAULT_LIMITS.max_full_decode_pixels
    side = int(limit**0.5)
    img = Image.new("RGB", (side, limit // side))
    options = dict(FORMATS[fmt])
    if fmt == "MPO":
        options.update(save_all=True, append_images=[img.resize((side // 4, limit // side // 4))])
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def workers(server: LocalTorchServe) -> list[dict]:
    answer = requests.get(f"{server.management_url}/models/pigment", headers=server.auth("management"), timeout=30)
    answer.raise_for_status()
    return answer.json()[0]["workers"]


class PeakRss:
    """Samples the resident memory of some processes every ``period`` seconds until stopped; keeps each one's max."""

    def __init__(self, pids: list[int], period: float = 0.05):
        self.processes = {pid: psutil.Process(pid) for pid in pids}
        self.peak = {pid: 0 for pid in pids}
        self.period, self._stop = period, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, process in self.processes.items():
                try:
                    self.peak[pid] = max(self.peak[pid], process.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(self.period)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def burst(server: LocalTorchServe, data: bytes) -> list[tuple[int, float]]:
    """``CONCURRENCY`` requests at once, each with ``data`` in all three fields: (status, seconds) per request."""
    barrier = threading.Barrier(CONCURRENCY)
    headers = server.auth()

    def send(_: int) -> tuple[int, float]:
        barrier.wait()
        start = time.perf_counter()
        answer = requests.post(f"{server.inference_url}/predictions/pigment", headers=headers, timeout=600,
                               files={name: (f"{name}.img", data) for name in FIELDS})
        return answer.status_code, time.perf_counter() - start

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(send, range(CONCURRENCY)))


def measure(server: LocalTorchServe, fmt: str) -> dict:
    data = largest_accepted(fmt)
    before = {w["pid"]: w for w in workers(server)}
    rss_before = {pid: psutil.Process(pid).memory_info().rss for pid in before}
    with PeakRss(list(before)) as peak:
        answers = burst(server, data)
    time.sleep(1.0)
    after = {w["pid"]: w for w in workers(server)}
    restarted = set(before) != set(after) or any(after[p]["startTime"] != before[p]["startTime"] for p in before)
    rss_after = {pid: psutil.Process(pid).memory_info().rss for pid in after if pid in rss_before}
    mib = 2**20
    return {
        "format": fmt, "bytes_per_image": len(data), "statuses": sorted({s for s, _ in answers}),
        "n_5xx": sum(s >= 500 for s, _ in answers), "slowest_s": round(max(t for _, t in answers), 2),
        "worker_restarted": restarted,
        "worker_rss_before_mib": [round(rss_before[p] / mib) for p in before],
        "worker_peak_growth_mib": [round((peak.peak[p] - rss_before[p]) / mib) for p in before],
        "worker_retained_growth_mib": [round((rss_after[p] - rss_before[p]) / mib) for p in rss_after],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worst_case_formats", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="what to serve, e.g. runs/demo/best_model.pth")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint; train one with `python -m training.train`")
    with tempfile.TemporaryDirectory(prefix="pigment-worst-") as tmp:
        store = Path(tmp) / "model_store"
        build_mar(args.checkpoint, store)
        server = LocalTorchServe(store, Path(tmp) / "run", Ports.free())
        results = []
        try:
            server.start(timeout=600)
            for fmt in args.formats:
                results.append(measure(server, fmt))
                print(json.dumps(results[-1]), flush=True)
        finally:
            server.stop()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
