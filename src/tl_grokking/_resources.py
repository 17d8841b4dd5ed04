"""What this machine gives a computation: CPU cores, how many threads torch should use for a
problem (and a scope that sets them), and the memory available to new allocations.

The trap (docs/training.md, "Threads"): torch defaults to one thread per core. For the small
matrices of a small p, the threads spend their time meeting at barriers; when another process
holds one of the cores, every barrier waits for a descheduled thread, and training p = 23 is
ten times slower with two threads than with one. Large problems do gain from more threads.

The choice depends only on the problem size and the cores this process may use, never on the
current load, so the same command on the same machine always uses the same thread count (and
so computes the same bits: a matmul's rounding can depend on how it is split across threads).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = [
    "available_cores",
    "available_memory",
    "auto_threads",
    "using_threads",
    "MIN_WORK_PER_THREAD",
]

#: Multiply-adds per step a thread must have before another one is worth starting (measured
#: with ``benchmarks/train_speed.py --threads-sweep``: p = 53 with d_mlp 256 stays at one
#: thread, the paper's p = 113 model uses two).
MIN_WORK_PER_THREAD = 150_000_000


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``; None where unknown):
    what the trainer's memory estimate and the checkpoint loader's inflate bound check against."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None  # pragma: no cover - not Linux


def auto_threads(work: float, cores: int | None = None) -> int:
    """Threads for a computation of ``work`` multiply-adds per call: one per
    :data:`MIN_WORK_PER_THREAD`, at least 1, at most the available cores."""
    cores = available_cores() if cores is None else cores
    return int(max(1, min(cores, work // MIN_WORK_PER_THREAD)))


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: leave it), then restore."""
    import torch

    saved = torch.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)
