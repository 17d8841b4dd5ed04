"""A pool of worker processes for many independent jobs (a sweep's runs, their analyses).

:class:`WorkerPool` starts ``workers`` fresh interpreters once (``spawn``: a fork would copy
torch's thread pools and locks) and feeds them jobs, at most one per worker in flight, so
:attr:`WorkerPool.in_flight` is exactly what is being computed. Each worker uses one torch
thread until the job sets its own (as many workers as cores, so they never oversubscribe).

A worker that dies (``kill -9``, out of memory) breaks a ``ProcessPoolExecutor`` and the
executor stops every other worker too. The pool then waits until they have all exited (so
locks they held are released), starts new ones, and retries each job that was in flight up to
``retries`` times; after that the job's result is ``on_death(job, deaths)``.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Generic, TypeVar

from tl_grokking._validation import check_int

__all__ = ["WorkerPool"]

J = TypeVar("J")
R = TypeVar("R")


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


class WorkerPool(Generic[J, R]):
    """``workers`` processes that compute ``fn(job)`` for a sequence of jobs (see module doc)."""

    def __init__(self, workers: int) -> None:
        self.workers = check_int(workers, "workers")
        self.in_flight: list[J] = []

    def _new(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_one_thread)

    def map(
        self,
        fn: Callable[[J], R],
        jobs: Sequence[J],
        *,
        on_death: Callable[[J, int], R],
        retries: int = 0,
        tick: float | None = None,
    ) -> Iterator[tuple[J, R] | None]:
        """Yield ``(job, fn(job))`` as each job finishes (in completion order), and ``None``
        every ``tick`` seconds while none does (when ``tick`` is given). ``fn`` must be
        picklable by reference (a module-level function) and must not raise for a job's own
        failure: an exception it raises is raised here."""
        queue = deque(jobs)
        deaths: dict[int, int] = {}
        running: dict[Future[R], J] = {}
        pool = self._new()
        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    job = queue.popleft()
                    running[pool.submit(fn, job)] = job
                self.in_flight = list(running.values())
                done, _ = wait(running, timeout=tick, return_when=FIRST_COMPLETED)
                if not done:
                    yield None
                    continue
                lost: list[J] = []
                for future in done:
                    job = running.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        lost.append(job)
                        continue
                    yield job, result
                if not lost:
                    continue
                lost += running.values()  # the executor stopped every other worker too
                running.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                pool = self._new()
                for job in reversed(lost):
                    deaths[id(job)] = deaths.get(id(job), 0) + 1
                    if deaths[id(job)] > retries:
                        yield job, on_death(job, deaths[id(job)])
                    else:
                        queue.appendleft(job)
        finally:
            self.in_flight = []
            pool.shutdown(wait=True, cancel_futures=True)
