"""This machine's arithmetic limits (fp32 and bf16 GEMM throughput) and the cost of decoding a phone photo."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_for_inference
from model.cpu import available_cores
from model.preprocessing import decode_for_model, decode_image, image_to_tensor


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def measure_limits(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This machine's fp32 and bf16 matrix-multiply throughput on all cores (GFLOP/s, best of three runs).

    A large square GEMM is the most a CPU's matrix units deliver; a Swin-T forward, with its small per-window
    matrices, LayerNorms and softmaxes, reaches only part of it.
    """
    torch.set_num_threads(available_cores())
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # oneDNN/MKL pick and warm their kernels
        best = min(_gemm_seconds(a, b, repeats) for _ in range(3))
        out[f"{name}_gemm_gflops"] = round(2 * n**3 * repeats / best / 1e9, 1)
    return out


def _gemm_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return time.perf_counter() - start


def measure_preprocess(body: dict[str, bytes], checkpoint: Path) -> dict[str, Any]:
    """One thread: decode+preprocess of the 12 MP clinical JPEG drafted and full-size, and a whole request's."""
    torch.set_num_threads(1)
    cfg = load_for_inference(checkpoint).data_cfg
    clinical = body["clinical_image"]
    drafted = _median_ms(lambda: image_to_tensor(decode_for_model(clinical, "c", cfg), "clinical", cfg), 7)
    full = _median_ms(lambda: image_to_tensor(decode_image(clinical, "c"), "clinical", cfg), 3)
    request = _median_ms(lambda: [image_to_tensor(decode_for_model(data, f, cfg), f.split("_")[0], cfg)
                                  for f, data in body.items()], 5)
    return {"clinical_12mp_drafted_ms": drafted, "clinical_12mp_full_ms": full, "request_3_images_drafted_ms": request}
