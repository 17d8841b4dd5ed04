"""What this machine gives a computation: CPU cores, how many threads torch should use for a
problem (and a scope that sets them), the memory available to new allocations, and a scope in
which freed memory stays in the process for reuse.

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
import ctypes
import os
import platform
import threading
from collections.abc import Iterator

__all__ = [
    "available_cores",
    "available_memory",
    "auto_threads",
    "using_threads",
    "retained_heap",
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


# glibc's mallopt parameters (malloc.h) and their defaults.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# What glibc's dynamic thresholds reach once a process has freed a large block (its
# DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, and twice that for trimming); any mallopt turns the
# dynamic adjustment off for good, so the scope leaves these behind.
_EXIT_MMAP_THRESHOLD, _EXIT_TRIM_THRESHOLD = 32 << 20, 64 << 20
_RETAIN_BYTES = (1 << 30, 32 << 20)  # tried in order: glibc versions cap the mmap threshold
_heap_lock = threading.Lock()
_heap_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None  # pragma: no cover - macOS, Windows, musl
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = (
            [ctypes.c_int, ctypes.c_int],
            [ctypes.c_size_t],
        )
        return libc
    except (OSError, AttributeError):  # pragma: no cover - an unusual libc
        return None


@contextlib.contextmanager
def retained_heap() -> Iterator[bool]:
    """Run the block with freed memory kept in the process heap for reuse (glibc only).

    A training step allocates and frees the same large temporaries every step (the paper's
    model: ≈ 20 MB of activations and gradients). glibc serves large blocks with ``mmap`` and
    gives them back to the OS on ``free``, or trims the heap once enough of it is free; with
    some allocation histories a step then faults in thousands of fresh, kernel-zeroed pages
    (4 100–5 100 per step for a bare step loop on this project's machine: ≈ 6 ms of a 16 ms
    step, docs/training.md). Inside this scope large blocks come from the heap and the heap is
    not trimmed, so a step reuses the previous step's pages. On exit ``malloc_trim`` returns
    the freed memory to the OS and the thresholds are left where glibc's own dynamic ones go
    in a process that has freed a large block (``mmap`` above 32 MiB, trim above 64 MiB): any
    ``mallopt`` turns glibc's adjustment off for good, and its start-up values (128 KiB)
    would make every later large tensor a fresh ``mmap``. Nested scopes are one scope.
    Yields whether the setting applies (False off glibc, where this does nothing).
    """
    global _heap_depth
    libc = _glibc()
    if libc is None:  # pragma: no cover - not glibc
        yield False
        return
    with _heap_lock:
        _heap_depth += 1
        if _heap_depth == 1:
            for size in _RETAIN_BYTES:
                if libc.mallopt(_M_MMAP_THRESHOLD, size) == 1:
                    break
            libc.mallopt(_M_TRIM_THRESHOLD, _RETAIN_BYTES[0])
    try:
        yield True
    finally:
        with _heap_lock:
            _heap_depth -= 1
            if _heap_depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _EXIT_MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _EXIT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
