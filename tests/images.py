"""Distinguishable test images as encoded bytes (seeded noise over a per-seed colour), shared by serving tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


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


def request_for(subset: tuple[str, ...], seed: int) -> dict[str, bytes]:
    """A multipart-style request carrying ``subset``, with images distinct per (seed, modality)."""
    return {f"{m}_image": image_bytes(seed * 10 + i) for i, m in enumerate(subset)}
