"""model/cpu.py: the one threads-per-worker rule (handler, training, benchmarks and KServe use it)."""

from __future__ import annotations

import os

from model.cpu import available_cores, threads_per_worker, use_threads


def test_available_cores_are_the_affinity_mask():
    assert available_cores() == len(os.sched_getaffinity(0))


def test_workers_share_the_cores_and_never_oversubscribe_them():
    cores = len(os.sched_getaffinity(0))
    assert threads_per_worker(1) == cores
    assert threads_per_worker(2) == max(1, cores // 2)
    assert threads_per_worker(64) == 1
    assert threads_per_worker(0) == cores  # a config that says 0 workers is treated as one


def test_threads_set_in_the_config_win_over_the_share():
    assert threads_per_worker(2, threads=3) == 3
    assert threads_per_worker(64, threads=1) == 1


def test_use_threads_sets_torch_and_opencv_alike():
    """A worker's OpenCV work (quality checks, colorimetry) must not start a thread per core beside torch's share."""
    import cv2
    import torch

    before = (torch.get_num_threads(), cv2.getNumThreads())
    try:
        for n in (1, 2):
            use_threads(n)
            assert (torch.get_num_threads(), cv2.getNumThreads()) == (n, n)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
