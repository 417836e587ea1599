"""Multi-process training under ``torchrun``: where this process sits, and the few collectives training needs.

``torchrun`` starts one process per device and tells each its place through the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``). Without those variables
(``python -m training.train``) :func:`setup` returns the single-process :class:`Dist` and starts nothing, so a plain
run is exactly what it was before DDP existed. Every helper here is the identity for a single process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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


def launch_rank() -> int:
    """The global rank torchrun gave this process (0 without torchrun), readable before :func:`setup`."""
    return int(os.environ.get("RANK", "0"))
