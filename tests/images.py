"""Distinguishable test images as encoded bytes (seeded noise over a per-seed colour), shared by serving tests."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def image_bytes(seed: int, size: int = 80, fmt: str = "PNG") -> bytes:
    """A ``size`` x ``size`` RGB image, different for every seed, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    noise = rng.integers(-60, 61, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


SUBSETS: tuple[tuple[str, ...], ...] = (
    ("clinical",),
    ("clinical", "dermoscopy"),
    ("clinical", "multispectral"),
    ("clinical", "dermoscopy", "multispectral"),
)
"""Every modality subset a request may carry (clinical is required)."""


def request_for(subset: tuple[str, ...], seed: int, fmt: str = "PNG", size: int = 80) -> dict[str, bytes]:
    """A multipart-style request carrying ``subset``, with images distinct per (seed, modality)."""
    return {f"{m}_image": image_bytes(seed * 10 + i, size, fmt) for i, m in enumerate(subset)}


def write_request(request: dict[str, bytes], folder: Path) -> dict[str, Path]:
    """Save a request's images as files ``folder/<modality>.<ext>``; returns modality -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in request.items():
        modality = name.removesuffix("_image")
        suffix = ".jpg" if data.startswith(b"\xff\xd8\xff") else ".png"
        paths[modality] = folder / f"{modality}{suffix}"
        paths[modality].write_bytes(data)
    return paths


def infer_single_answer(checkpoint: Path, request: dict[str, bytes], folder: Path) -> dict:
    """``python -m training.infer_single --json`` on the request's images saved as files (a fresh process)."""
    paths = write_request(request, folder)
    args = [arg for m, p in paths.items() for arg in (f"--{m}", str(p))]
    result = subprocess.run([sys.executable, "-m", "training.infer_single", "--checkpoint", str(checkpoint), "--json",
                             *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
