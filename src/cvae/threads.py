"""A thread count that follows the machine's load.

PyTorch's OpenMP threads spin while they wait for each other. When another process holds a core,
a thread that lost its core keeps every other thread waiting at each operation. Measured with
benchmarks/busy.py on 2 cores: an epoch 10x slower with one competing process. One thread per core
that is free avoids it, and on an idle machine every core is used.

:class:`ThreadGovernor` measures, between two calls, how many cores the *other* processes kept
busy: the machine's busy time from ``/proc/stat`` minus this process's own CPU time. It then sets
``torch.set_num_threads`` to the free cores (at least 1, at most the starting count). The trainer
calls it before every epoch; the command-line tool once at start, after a short look at the
machine. A user's ``OMP_NUM_THREADS`` (or ``torch.set_num_threads`` before training) is the
ceiling. Where ``/proc/stat`` is missing it does nothing.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch


def _busy_seconds() -> float | None:
    """Seconds all cores together have spent not idle since boot (None where unknown)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    def __init__(self, ceiling: int | None = None):
        self.ceiling = ceiling or torch.get_num_threads()
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._mark()

    def _mark(self) -> None:
        self.wall, self.busy, self.own = time.monotonic(), _busy_seconds(), time.process_time()

    def others(self) -> float | None:
        """Cores kept busy by other processes since the last mark."""
        wall, busy, own = time.monotonic(), _busy_seconds(), time.process_time()
        if busy is None or self.busy is None or wall - self.wall < 0.05:
            return None
        return max(0.0, ((busy - self.busy) - (own - self.own)) / (wall - self.wall))

    def update(self) -> int:
        """Set and return the thread count for the coming work."""
        others = self.others()
        self._mark()
        if others is None:
            return torch.get_num_threads()
        free = max(1, min(self.ceiling, int(self.cores - others + 0.5)))
        if free != torch.get_num_threads():
            torch.set_num_threads(free)
        return free

    def settle(self, seconds: float = 0.2) -> int:
        """Look at the machine for ``seconds`` (while this process waits), then set the count."""
        self._mark()
        time.sleep(seconds)
        return self.update()


@contextmanager
def kept_thread_count():
    """The caller's thread count comes back afterwards, whatever a governor set inside."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _loaded_openmp_runtimes() -> list:
    """Every GNU OpenMP runtime this process has loaded: PyTorch's CPU wheel ships its own libgomp,
    and scikit-learn, for one, another copy, each with its own workers. (GNU's pause ends only the
    calling thread's workers; LLVM's and Intel's runtimes, which a hard pause shuts down for every
    thread, are left alone.)"""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    runtimes = []
    for path in sorted(p for p in paths if os.path.basename(p).startswith("libgomp")):
        try:
            pause = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        runtimes.append(pause)
    return runtimes


def restart_openmp_workers() -> bool:
    """End OpenMP's worker threads, so that the next parallel operation starts fresh ones.

    A worker copies the floating-point mode (flush-to-zero, denormals-are-zero) of the thread that
    created it, once. ``torch.set_flush_denormal`` sets it for the calling thread only, so workers
    that already ran a parallel operation keep computing denormals on the CPU's slow path: measured
    on a 2-core Xeon, an epoch that slowed from 1.35 s to 1.8 s over four epochs as tiny Adam moments
    and gradients turned denormal, with identical losses. Called from the main thread outside any
    parallel region (``omp_pause_resource_all(omp_pause_hard)``, OpenMP 5.0), for every GNU
    OpenMP runtime loaded. Returns whether at least one runtime ended its workers and none refused; False
    where there is none that knows the call (nothing changes then).
    """
    results = [pause(2) == 0 for pause in _loaded_openmp_runtimes()]  # 2: omp_pause_hard
    return bool(results) and all(results)
