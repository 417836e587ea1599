"""Decode + preprocess time of one 12 MP phone photo in each format a phone writes, measured in one run.

    nice -n 10 python -m benchmarks.decode_formats [--repeats 7] [--image-size 224]

The same picture (4032x3024: skin-like gradient, a darker lesion, mild sensor noise) is written by each format's
own encoder at a phone's usual quality, then timed through the serving path (``decode_for_model`` with the
default DataConfig, i.e. JPEG/MPO draft decoding, then ``image_to_tensor``), median of ``--repeats`` runs. Prints
a Markdown table for docs/performance.md. Encoding is not timed.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from model.cli import run
from model.config import DataConfig
from model.preprocessing import decode_for_model, image_to_tensor

HEIGHT, WIDTH = 3024, 4032
ENCODERS: dict[str, dict] = {  # Pillow format name -> encoder options (a phone's usual quality)
    "JPEG": {"quality": 90},
    "MPO": {"quality": 90},
    "HEIF": {"quality": 80, "enc_params": {"preset": "ultrafast"}},  # x265 at its default preset takes minutes here
    "WEBP": {"quality": 85},
    "AVIF": {"quality": 80},
}


def phone_picture(seed: int = 0) -> Image.Image:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    rgb = np.stack([x / WIDTH * 60 + 170, y / HEIGHT * 50 + 120, (x + y) / (WIDTH + HEIGHT) * 40 + 100], axis=-1)
    lesion = (x - WIDTH * 0.55) ** 2 / 700**2 + (y - HEIGHT * 0.6) ** 2 / 450**2 < 1
    rgb[lesion] *= 0.45
    rgb += np.random.default_rng(seed).normal(0.0, 3.0, rgb.shape).astype(np.float32)  # sensor noise
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str) -> bytes:
    options = dict(ENCODERS[fmt])
    if fmt == "MPO":  # the primary picture and a quarter-size second one, as phones write
        options.update(save_all=True, append_images=[img.resize((WIDTH // 4, HEIGHT // 4))])
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def time_ms(data: bytes, cfg: DataConfig, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        image_to_tensor(decode_for_model(data, "clinical_image", cfg), "clinical", cfg)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_formats", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--image-size", type=int, default=DataConfig().image_size)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.image_size < 16:
        raise ValueError(f"--repeats must be >= 1 and --image-size >= 16, got {args.repeats}, {args.image_size}")
    cfg = DataConfig(image_size=args.image_size)
    picture = phone_picture()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
          f"{WIDTH}x{HEIGHT}, image_size {cfg.image_size}, median of {args.repeats}\n")
    print("| format | file size | decode + preprocess (ms) | decoded at |")
    print("|---|---|---|---|")
    for fmt in ENCODERS:
        data = encode(picture, fmt)
        size = decode_for_model(data, "clinical_image", cfg).size
        print(f"| {fmt} | {len(data) / 1e6:.2f} MB | {time_ms(data, cfg, args.repeats):.0f} | {size[0]}x{size[1]} |",
              flush=True)


if __name__ == "__main__":
    run(main)
