"""Where a sweep's runs are trained: this machine (:class:`LocalExecutor`) or a Ray cluster
(:class:`RayExecutor`).

An executor takes the job function (:func:`tl_grokking.sweeps.runner.train_job`, which trains
or resumes one run and returns its outcome as a dict) and the jobs, and yields
:class:`JobEvent`\\ s: each job's outcome as it finishes, and a ``tick`` about once a second
while it waits (the coordinator refreshes its progress bar then). The job function never
raises for a run's own failure; an executor turns a lost worker into a retry, and after
``max_retries`` retries into a failed outcome.

* :class:`LocalExecutor` — the embedded default, needs nothing: a pool of ``workers`` processes
  (one per core by default), each started once and reused for run after run (no per-run
  start-up cost); with one worker, or one job, the runs are trained in this process.
* :class:`RayExecutor` — each run one Ray task declaring its resources (``cpus_per_run``,
  ``gpus_per_run``), on an existing cluster (``address``) or a local instance started for the
  sweep. Needs the optional extra: ``pip install "tl_grokking[ray]"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tl_grokking._pool import WorkerPool
from tl_grokking._resources import available_cores
from tl_grokking._validation import check_int

__all__ = [
    "SweepJob",
    "JobEvent",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "ExecutorUnavailableError",
    "EXECUTORS",
    "make_executor",
]

#: Executor names (``tl-grokking sweep --executor``).
EXECUTORS = ("local", "ray")
#: Seconds between ``tick`` events while runs are in flight.
TICK = 1.0


@dataclass(frozen=True)
class SweepJob:
    """One run to train or resume: its name, its run directory (absolute), its config dict."""

    name: str
    run_dir: str
    config: dict[str, Any]
    progress: bool = False  # show the run's own progress bar (in-process runs only)


@dataclass(frozen=True)
class JobEvent:
    """``finished`` (with the job's ``outcome``) or ``tick`` (no job)."""

    kind: str
    job: SweepJob | None = None
    outcome: dict[str, Any] | None = None


JobFunction = Callable[[SweepJob], dict[str, Any]]


class ExecutorUnavailableError(ValueError):
    """The executor asked for cannot run here (Ray not installed, a bad address, ...)."""


class Executor(Protocol):
    name: str

    def in_flight(self) -> list[str]:
        """Names of the jobs being trained now (or submitted and not yet finished)."""
        ...

    def run(self, fn: JobFunction, jobs: Sequence[SweepJob]) -> Iterator[JobEvent]:
        """Train every job, yielding each outcome as it finishes (and ticks)."""
        ...


def _died(job: SweepJob, times: int, where: str) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": f"the {where} training run {job.name} died {times} time(s) (killed, or out "
        "of memory); its checkpoints are intact: rerun the sweep with --retry-failed to resume it",
    }


class LocalExecutor:
    """This machine: ``workers`` processes (default: one per available core), started once.

    A worker that dies (``kill -9``, out of memory) breaks the pool: the pool is restarted and
    every run it was training is resumed from its last checkpoint, up to ``max_retries`` times.
    """

    name = "local"

    def __init__(self, workers: int | None = None, *, max_retries: int = 2) -> None:
        if workers is not None:
            workers = check_int(workers, "workers")
        max_retries = check_int(max_retries, "max_retries", minimum=0)
        self.workers = workers if workers is not None else available_cores()
        self.max_retries = max_retries
        self._running: list[str] = []
        self._pool: WorkerPool[SweepJob, dict[str, Any]] | None = None

    def in_flight(self) -> list[str]:
        if self._pool is not None:
            return [job.name for job in self._pool.in_flight]
        return list(self._running)

    def run(self, fn: JobFunction, jobs: Sequence[SweepJob]) -> Iterator[JobEvent]:
        if min(self.workers, len(jobs)) <= 1:
            yield from self._run_here(fn, jobs)
        else:
            yield from self._run_pool(fn, jobs)

    def _run_here(self, fn: JobFunction, jobs: Sequence[SweepJob]) -> Iterator[JobEvent]:
        for job in jobs:
            self._running = [job.name]
            try:
                outcome = fn(job)
            finally:
                self._running = []
            yield JobEvent("finished", job, outcome)

    def _run_pool(self, fn: JobFunction, jobs: Sequence[SweepJob]) -> Iterator[JobEvent]:
        pool: WorkerPool[SweepJob, dict[str, Any]] = WorkerPool(self.workers)
        self._pool = pool

        def died(job: SweepJob, times: int) -> dict[str, Any]:
            return _died(job, times, "worker process")

        try:
            for event in pool.map(fn, jobs, on_death=died, retries=self.max_retries, tick=TICK):
                yield JobEvent("tick") if event is None else JobEvent("finished", *event)
        finally:
            self._pool = None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailableError(
            "the ray executor needs Ray, an optional extra: pip install 'tl_grokking[ray]' "
            "(from a checkout: pip install -e '.[ray]'); or use --executor local"
        ) from None
    return ray


class RayExecutor:
    """A Ray cluster: each run one task with ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs.

    ``address`` connects to a running cluster (``"auto"``, ``"ray://host:10001"``, ...); None
    starts a local instance with ``num_cpus`` CPUs (default: the available cores) for the sweep
    and stops it afterwards. A task whose worker dies is retried by Ray (``max_retries``) and
    the retry resumes the run from its last checkpoint. Every node must have tl_grokking
    installed and see the sweep directory at the same path (docs/sweeps.md).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        cpus_per_run: float = 1.0,
        gpus_per_run: float = 0.0,
        max_retries: int = 2,
        num_cpus: int | None = None,
    ) -> None:
        if not cpus_per_run > 0:
            raise ValueError(f"cpus_per_run must be > 0, got {cpus_per_run!r}")
        if not gpus_per_run >= 0:
            raise ValueError(f"gpus_per_run must be >= 0, got {gpus_per_run!r}")
        max_retries = check_int(max_retries, "max_retries", minimum=0)
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self._running: list[str] = []

    def in_flight(self) -> list[str]:
        return list(self._running)

    def run(self, fn: JobFunction, jobs: Sequence[SweepJob]) -> Iterator[JobEvent]:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(
                    address=self.address,
                    num_cpus=None if self.address else (self.num_cpus or available_cores()),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ExecutorUnavailableError(
                    f"could not start or reach a Ray cluster (--ray-address {self.address}): {err}"
                ) from None
        remote = ray.remote(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )(fn)
        refs = {remote.remote(job): job for job in jobs}
        try:
            while refs:
                self._running = [job.name for job in refs.values()]
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=TICK)
                if not ready:
                    yield JobEvent("tick")
                    continue
                for ref in ready:
                    job = refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as err:  # the task's worker died for good
                        outcome = _died(job, self.max_retries + 1, "Ray worker")
                        outcome["traceback"] = str(err)
                    yield JobEvent("finished", job, outcome)
        finally:
            self._running = []
            for ref in refs:
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()


def make_executor(
    name: str,
    *,
    workers: int | None = None,
    max_retries: int = 2,
    ray_address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
) -> Executor:
    """The executor called ``name`` (one of :data:`EXECUTORS`) with its settings."""
    if name == "local":
        return LocalExecutor(workers, max_retries=max_retries)
    if name == "ray":
        return RayExecutor(
            ray_address,
            cpus_per_run=cpus_per_run,
            gpus_per_run=gpus_per_run,
            max_retries=max_retries,
            num_cpus=workers,
        )
    raise ValueError(f"executor must be one of {EXECUTORS}, got {name!r}")
