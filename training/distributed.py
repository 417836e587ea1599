"""Multi-process training under ``torchrun``: where this process sits, and the few collectives training needs.

``torchrun`` starts one process per device and tells each its place through the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``). Without those variables
(``python -m training.train``) :func:`setup` returns the single-process :class:`Dist` and starts nothing, so a plain
run is exactly what it was before DDP existed. Every helper here is the identity for a single process.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from model.cpu import available_cores

log = logging.getLogger(__name__)

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """This process's place in the launch; the default is a plain single-process run."""

    rank: int = 0  # global rank, 0 .. world_size - 1
    world_size: int = 1
    local_rank: int = 0  # rank on this node: picks the GPU
    local_world_size: int = 1  # processes on this node: share its CPU cores
    launched: bool = False  # started by torchrun, with a process group

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs progress."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def setup(use_gpu: bool) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (NCCL on CUDA, else gloo); pick this process's device.

    Single process: no process group, and the device of a plain run (``cuda`` or ``cpu``).
    """
    cuda = use_gpu and torch.cuda.is_available()
    if use_gpu and not cuda:
        log.warning("device.use_gpu is true but CUDA is not available; training on the CPU")
    if not launched_by_torchrun():
        return Dist(), torch.device("cuda" if cuda else "cpu")
    env = Dist(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
               local_rank=int(os.environ["LOCAL_RANK"]),
               local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), launched=True)
    if cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {env.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                             f"start torchrun with --nproc_per_node at most {torch.cuda.device_count()}")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return env, device


def cleanup(env: Dist, ok: bool) -> None:
    """Wait for every rank (rank 0 may still be writing) and leave the process group. After an error there is no
    barrier: the other ranks may never arrive, and torchrun stops them."""
    if not env.launched or not dist.is_initialized():
        return
    if ok:
        dist.barrier()
    dist.destroy_process_group()


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64); the values themselves for a single process."""
    if not dist.is_initialized():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.tolist()


def shard_batches(n: int, batch_size: int, env: Dist) -> list[list[int]]:
    """This rank's share of the single-process batches ``[0..B), [B..2B), ...`` of ``n`` samples: batches
    ``rank, rank + world_size, ...``. Whole batches, not samples, so each batch (and each batch's sums) is the
    one a single process computes, and nothing is padded or repeated."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[env.rank::env.world_size]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of ``rank`` in ``epoch``: distinct per rank (different augmentation and dropout draws),
    and a function of the epoch so ``--resume`` needs no per-rank RNG state."""
    return ((seed * 1_000_003 + epoch) * 65_537 + rank) % 2**63


def local_processes(use_gpu: bool, max_cpu_processes: int = 0) -> int:
    """How many training processes to start on this node: one per GPU; on a CPU, one per available core (each then
    runs one torch thread, ``model.cpu.threads_per_worker``), at most ``max_cpu_processes`` when > 0.

    On a CPU, data parallelism across processes is what uses the cores for a small model: its matrices are too small
    for a second intra-op thread to pay (docs/training.md measures both)."""
    if use_gpu and torch.cuda.is_available():
        return torch.cuda.device_count()
    cores = available_cores()
    return min(cores, max_cpu_processes) if max_cpu_processes > 0 else cores


def launch_local(module: str, argv: Sequence[str], processes: int) -> int:
    """Run ``python -m MODULE ARGV`` in ``processes`` processes on this machine, with the environment torchrun gives
    its workers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, a loopback ``MASTER_ADDR`` and a free
    ``MASTER_PORT``), so :func:`setup` joins them into one gloo/NCCL group. Returns 0, or the exit status of the
    first process that failed, after stopping the others.

    Unlike torchrun's elastic agent this adds nothing to a worker's output: a user's mistake stays the one line the
    worker prints. It starts one node only; several machines need torchrun (docs/training.md)."""
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_loopback_port()),
            "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes)}
    workers = [subprocess.Popen([sys.executable, "-m", module, *argv],
                                env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(processes)]
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            w.wait()
    return failed[0] if failed else 0


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_rank() -> int:
    """The global rank torchrun gave this process (0 without torchrun), readable before :func:`setup`."""
    return int(os.environ.get("RANK", "0"))

