"""Where the CPU goes while a TorchServe serves: seconds per process, and per kind of thread inside the JVM.

On a 2-core machine every millisecond the Java frontend, the JIT compiler or the load generator spends is a
millisecond the model does not get, so the benchmark reports CPU time per answered request for each of them.

    meter = CpuMeter(server_pid, worker_pids)
    before = meter.sample()
    ...                                  # the load
    spent = meter.since(before)          # {"frontend_netty": s, "frontend_jit": s, ..., "worker_0": s, "client": s}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
JVM_THREAD_KINDS: tuple[tuple[str, str], ...] = (
    ("epollEventLoopG", "netty"),  # Netty event loops: HTTP parsing, multipart decoding, the workers' sockets
    ("nioEventLoopGro", "netty"),
    ("grpc-default-", "grpc"),  # the gRPC server's event loop (-wo), boss (-bo) and executor (-ex): protobuf parsing
    ("C1 CompilerThre", "jit"),  # HotSpot's compilers: busy until the hot paths are compiled (a warm-up cost)
    ("C2 CompilerThre", "jit"),
    ("GC Thread", "gc"),
    ("G1 ", "gc"),
)
"""Thread-name prefixes (Linux keeps the first 15 characters) -> kind; any other thread counts as ``other``."""


def jvm_thread_kind(name: str) -> str:
    return next((kind for prefix, kind in JVM_THREAD_KINDS if name.startswith(prefix)), "other")


KINDS = ("netty", "grpc", "jit", "gc", "other")


def jvm_threads(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (:func:`jvm_thread_kind`, CPU seconds (user + system) so far) of the live threads of ``pid``."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended between listing and reading
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, utime 14, stime 15
        threads[int(task.name)] = (jvm_thread_kind(name), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return threads


def jvm_thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds the live threads of process ``pid`` have used, summed by :func:`jvm_thread_kind`."""
    totals = dict.fromkeys(KINDS, 0.0)
    for kind, seconds in jvm_threads(pid).values():
        totals[kind] += seconds
    return totals


@dataclass(frozen=True)
class Sample:
    """Cumulative CPU seconds at one moment: per key, plus the frontend's threads and its process total."""

    seconds: dict[str, float]
    frontend_threads: dict[int, tuple[str, float]]
    frontend_total: float


class CpuMeter:
    """CPU seconds of a TorchServe frontend (by thread kind), its workers, its reaped children and this process."""

    def __init__(self, frontend_pid: int, worker_pids: Sequence[int]):
        self.frontend = psutil.Process(frontend_pid)
        self.workers = [psutil.Process(pid) for pid in worker_pids]
        self.client = psutil.Process()

    def sample(self) -> Sample:
        """Cumulative seconds, keyed ``metrics_collector``, ``worker_<i>``, ``client``; the frontend by thread."""
        threads = jvm_threads(self.frontend.pid)
        times = self.frontend.cpu_times()
        # TorchServe runs its system-metrics collector as a short Python process every minute; once reaped,
        # its time shows up as the frontend's children time.
        out = {"metrics_collector": times.children_user + times.children_system}
        for i, worker in enumerate(self.workers):
            out[f"worker_{i}"] = _own_cpu(worker)
        out["client"] = _own_cpu(self.client)
        return Sample(out, threads, times.user + times.system)

    def since(self, before: Sample) -> dict[str, float]:
        """Seconds spent since ``before``, keyed ``frontend_<kind>`` and as :meth:`sample`.

        Thread by thread, so that a thread that ends during the interval (gRPC's executor threads end after a
        minute idle) does not take its earlier CPU out of its kind's sum. The CPU of ended threads since
        ``before`` is what the process total has beyond the live threads' deltas; it goes to their kind when
        they were all of one kind, else to ``other``.
        """
        now = self.sample()
        spent = {f"frontend_{kind}": 0.0 for kind in KINDS}
        for tid, (kind, seconds) in now.frontend_threads.items():
            spent[f"frontend_{kind}"] += seconds - before.frontend_threads.get(tid, (kind, 0.0))[1]
        ended = {kind for tid, (kind, _) in before.frontend_threads.items() if tid not in now.frontend_threads}
        residual = max(0.0, now.frontend_total - before.frontend_total - sum(spent.values()))
        if ended:
            spent[f"frontend_{ended.pop() if len(ended) == 1 else 'other'}"] += residual
        spent.update({key: now.seconds[key] - before.seconds[key] for key in now.seconds})
        return spent


def _own_cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system
