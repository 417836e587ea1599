"""What the benchmark sends and what it serves: phone-size requests, synthetic cohorts with labels, the served
settings (:class:`Variant`) and a description of the machine.

Requests are a handful of synthetic lesions (training.synth) as a phone would send them: a 12 MP clinical JPEG, a
2.4 MP dermoscopy JPEG and a multispectral JPEG of the same size, each encoded once so that the load generator
spends little of the shared CPU.
"""

from __future__ import annotations

import csv
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import psutil
import torch

from benchmarks.loadgen import Body
from model.accelerate import available_backends
from model.config import AUX_MODALITIES
from model.cpu import available_cores, bf16_units, threads_per_worker
from model.preprocessing import decode_image
from serving.archive import model_config
from training.synth import generate

CLINICAL_SIZE = (4000, 3000)  # 12 MP phone photo
DERMOSCOPY_SIZE = 1536  # 2.4 MP dermatoscope image; the multispectral view has the same size


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


def served_variant() -> Variant:
    """The settings in serve_config/model-config.yaml (threads 0 resolved by the handler's rule)."""
    cfg = model_config()
    handler = cfg.get("handler", {})
    workers = int(cfg.get("maxWorkers", 1))
    threads = threads_per_worker(workers, int(handler.get("threads", 0)))
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
        for view in AUX_MODALITIES:  # devices deliver JPEGs; synth writes PNGs
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
        for view in AUX_MODALITIES:
            close = out_dir / view / "images" / f"{path.stem}.png"
            if close.is_file():
                body[f"{view}_image"] = close.read_bytes()
        bodies.append(body)
        scores.append(labels[path.stem])
    return bodies, scores


def multipart_bodies(bodies: list[dict[str, bytes]]) -> list[Body]:
    """Each request as a multipart body, encoded once."""
    return [Body.multipart(list(body.items())) for body in bodies]


def subset_counts(bodies: list[dict[str, bytes]]) -> dict[str, int]:
    """How many requests send each modality subset (``clinical+dermoscopy``: ...)."""
    return dict(Counter("+".join(f.removesuffix("_image") for f in body) for body in bodies))


def request_sizes(body: dict[str, bytes]) -> dict[str, Any]:
    sizes = {}
    for field, data in body.items():
        image = decode_image(data, field, draft_size=None)
        sizes[field] = {"width": image.width, "height": image.height, "megapixels": round(image.width *
                        image.height / 1e6, 1), "kilobytes": round(len(data) / 1024)}
    return sizes


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    units = bf16_units()
    return {"measured_at": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": model or platform.processor() or platform.machine(), "cores": available_cores(),
            "amx_bf16": "amx_bf16" in units, "avx512_bf16": "avx512_bf16" in units,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "backends_available": list(available_backends())}
