"""What this machine's CPU offers pigment: the cores we may run on, how many torch threads each worker process
gets, and whether bf16 matmuls run natively. One rule for the handler, training, the benchmarks and KServe."""

from __future__ import annotations

import os

BF16_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of native bf16 matmul units (AMX tiles, AVX-512 BF16); without one bf16 is emulated."""


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, e.g. a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, threads: int = 0) -> int:
    """Torch threads for each of ``workers`` processes sharing this machine: ``threads`` when set (> 0), else an
    equal share of :func:`available_cores`, at least one, so that the workers together never oversubscribe."""
    if threads > 0:
        return int(threads)
    return max(1, available_cores() // max(1, int(workers)))


def use_threads(threads: int) -> None:
    """Run this process's torch ops and OpenCV's (image decoding aside, the quality checks' and colorimetry's) on
    ``threads`` threads: OpenCV otherwise starts one per core in every worker, and workers x threads would exceed
    the cores that :func:`threads_per_worker` shares out."""
    import cv2  # here, not at the top: this module stays import-light for whoever only counts cores
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def bf16_units() -> tuple[str, ...]:
    """The :data:`BF16_FLAGS` this CPU has (empty: bf16 would be slow emulation, or not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return ()
    return tuple(flag for flag in BF16_FLAGS if flag in flags)
