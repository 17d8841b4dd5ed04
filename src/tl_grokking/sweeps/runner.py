"""Running a sweep: plan which runs to train, hand them to an executor, record the outcomes.

:func:`run_sweep` is what ``tl-grokking sweep`` does. It holds the sweep directory's lock,
compares the spec with the manifest (:mod:`tl_grokking.runs.sweepdir`), and trains every run
that is not finished:

* a run already ``done`` with the same configuration is skipped;
* an interrupted run (``pending`` with a run directory on disk) is resumed from its last
  checkpoint, bit-identically, like ``tl-grokking train --resume``; so is a finished run whose
  configuration changed only in a resumable field (``--epochs 3000`` extends every run);
* a ``failed`` run is reported with its error, and trained again only with ``retry_failed``;
* a run whose stored configuration differs in a field that changes its trajectory is refused
  before anything is trained.

Each run is trained by :func:`train_job` in an executor's worker; the manifest is rewritten
(atomically) as each one finishes. Runs of a sweep use one torch thread each unless the spec
sets ``threads``, so a run's weights equal those of ``tl-grokking train --threads 1`` with
its configuration, whichever executor trained it.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_grokking._validation import expected_errors, one_line, worded
from tl_grokking.runs.rundir import (
    METRICS_FILE,
    RunDirLockedError,
    holds_files,
    is_run_dir,
    require_out_dir,
    resume_epoch,
    run_lock,
)
from tl_grokking.runs.sweepdir import (
    MANIFEST_FILE,
    RUNS_DIR,
    Manifest,
    RunRecord,
    SweepDirError,
    is_sweep_dir,
    read_manifest,
    run_path,
    write_manifest,
)
from tl_grokking.sweeps.executors import Executor, LocalExecutor, SweepJob
from tl_grokking.sweeps.spec import SweepRun, SweepSpec
from tl_grokking.training.config import RESUMABLE_FIELDS, TrainConfig, config_changes

__all__ = [
    "SweepPlan",
    "SweepResult",
    "plan_sweep",
    "run_sweep",
    "train_job",
    "DEFAULT_RUN_THREADS",
]

#: torch threads per run unless the spec sets ``threads`` (one per worker: the executors run
#: as many runs at once as there are cores).
DEFAULT_RUN_THREADS = 1
#: Seconds a job waits for a run directory's lock, held by a worker that is still exiting.
LOCK_WAIT = 30.0


# ---------------------------------------------------------------------------------------------
# one run (in a worker)


def _summary(result: Any) -> dict[str, Any]:
    final = {k: result.metrics.get(k) for k in ("train_loss", "test_loss", "train_acc", "test_acc")}
    return {
        "epoch": result.epoch,
        "grok_epoch": result.grok_epoch,
        "stopped_early": result.stopped_early,
        "wall_time": round(result.wall_time, 3),
        "final": final,
    }


def train_job(job: SweepJob) -> dict[str, Any]:
    """Train or resume one run of a sweep; returns ``{"status": "done", "result": {...}}`` or
    ``{"status": "failed", "error": ..., "traceback": ...}`` and never raises for the run's own
    failure (a bug keeps its traceback in the outcome). Runs in an executor's worker."""
    try:
        from tl_grokking.analysis.progress import config_callbacks
        from tl_grokking.training.trainer import train_model

        config = TrainConfig.from_dict(job.config)
        run_dir = Path(job.run_dir)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                result = train_model(
                    config,
                    run_dir,
                    resume=is_run_dir(run_dir),
                    progress=job.progress,
                    callbacks=config_callbacks(config),
                )
                break
            except RunDirLockedError:
                # a worker of a broken pool may still be exiting; anything else holds it for good
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        return {"status": "done", "result": _summary(result)}
    except KeyboardInterrupt:
        raise
    except Exception as err:
        if isinstance(err, expected_errors()):
            return {"status": "failed", "error": one_line(err), "traceback": None}
        return {
            "status": "failed",
            "error": f"{type(err).__name__}: {one_line(err)} (a bug: traceback in {MANIFEST_FILE})",
            "traceback": traceback.format_exc(),
        }


# ---------------------------------------------------------------------------------------------
# planning


@dataclass
class SweepPlan:
    """What :func:`run_sweep` will do: the updated manifest and, per run name, the action
    (``train``, ``resume``, ``extend``, ``skip`` (done), ``failed`` (kept failed))."""

    manifest: Manifest
    runs: list[SweepRun]
    actions: dict[str, str] = field(default_factory=dict)

    def to_run(self) -> list[str]:
        return [name for name, act in self.actions.items() if act in ("train", "resume", "extend")]


def _with_threads(run: SweepRun) -> dict[str, Any]:
    config = run.config
    if config.threads is None:
        config = config.replace(threads=DEFAULT_RUN_THREADS)
    return config.to_dict()


def _check_sweep_dir(sweep_dir: Path) -> None:
    require_out_dir(sweep_dir)  # not under a file, a FIFO, a link loop, ...
    if sweep_dir.is_dir() and not is_sweep_dir(sweep_dir) and holds_files(sweep_dir):
        raise worded(
            FileExistsError,
            "{sweep_dir} exists, is not empty and holds no sweep ({manifest} missing); "
            "choose another directory",
            sweep_dir=sweep_dir,
            manifest=MANIFEST_FILE,
        )


def plan_sweep(
    spec: SweepSpec, sweep_dir: str | os.PathLike, *, retry_failed: bool = False
) -> SweepPlan:
    """Compare ``spec`` with what ``sweep_dir`` holds; nothing is written.

    Raises ``ValueError`` (before anything is trained) naming every run whose stored
    configuration differs from the spec's in a field outside ``RESUMABLE_FIELDS``.
    """
    sweep_dir = Path(sweep_dir)
    _check_sweep_dir(sweep_dir)
    runs = spec.runs()
    if is_sweep_dir(sweep_dir):
        manifest = read_manifest(sweep_dir)
    else:
        manifest = Manifest(spec=spec.to_dict())
    conflicts: list[str] = []
    actions: dict[str, str] = {}
    for run in runs:
        config = _with_threads(run)
        record = manifest.runs.get(run.name)
        if record is None:
            record = manifest.runs[run.name] = RunRecord(run.name, dict(run.point), config)
        changes = config_changes(record.config, config)
        frozen = {k: v for k, v in changes.items() if k not in RESUMABLE_FIELDS}
        if frozen:
            diff = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in frozen.items())
            conflicts.append(f"{run.name} ({diff})")
            continue
        record.config, record.point = config, dict(run.point)
        if changes and record.status == "done":
            record.status, actions[run.name] = "pending", "extend"
        elif record.status == "done":
            actions[run.name] = "skip"
        elif record.status == "failed" and not retry_failed:
            actions[run.name] = "failed"
        else:
            record.status = "pending"
            resumable = resume_epoch(run_path(sweep_dir, run.name)) is not None
            actions[run.name] = "resume" if resumable else "train"
    if conflicts:
        shown = "; ".join(conflicts[:5]) + (
            f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        )
        raise SweepDirError(
            f"{sweep_dir} already holds runs of these names with a different configuration: "
            f"{shown}. Only {', '.join(RESUMABLE_FIELDS)} may change when a sweep is continued; "
            "use another directory for the new settings"
        )
    manifest.spec = spec.to_dict()
    return SweepPlan(manifest=manifest, runs=runs, actions=actions)


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: the manifest after the sweep and what happened."""

    sweep_dir: Path
    manifest: Manifest
    actions: dict[str, str]  # the plan's action per run of the spec
    wall_time: float

    @property
    def failed(self) -> list[RunRecord]:
        """Runs of this spec that are failed after the sweep."""
        return [
            self.manifest.runs[n] for n in self.actions if self.manifest.runs[n].status == "failed"
        ]

    @property
    def done(self) -> list[RunRecord]:
        return [
            self.manifest.runs[n] for n in self.actions if self.manifest.runs[n].status == "done"
        ]


def _latest_epoch(run_dir: Path) -> int | None:
    """The epoch of the last complete line of a run's metrics (a cheap tail read)."""
    try:
        with open(run_dir / METRICS_FILE, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().split(b"\n")
        for line in reversed(lines[:-1]):  # the last element is after the final newline
            epoch = json.loads(line).get("epoch")
            return epoch if isinstance(epoch, int) else None
    except (OSError, ValueError, AttributeError):
        return None
    return None


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | os.PathLike,
    *,
    executor: Executor | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    on_event: Callable[[str, RunRecord], None] | None = None,
) -> SweepResult:
    """Train every run of ``spec`` that is not finished into ``sweep_dir/runs/<name>``.

    ``executor`` defaults to :class:`~tl_grokking.sweeps.executors.LocalExecutor` (one worker
    per core). Rerunning continues the sweep (this module's docstring). A run's failure is
    recorded in the manifest, never raised: see :attr:`SweepResult.failed`. ``on_event(kind,
    record)`` is called as each run finishes (``kind`` is its new status).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    sweep_dir = Path(sweep_dir)
    _check_sweep_dir(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    executor = executor or LocalExecutor()
    with run_lock(sweep_dir):
        plan = plan_sweep(spec, sweep_dir, retry_failed=retry_failed)
        manifest = plan.manifest
        (sweep_dir / RUNS_DIR).mkdir(exist_ok=True)
        write_manifest(sweep_dir, manifest)
        names = plan.to_run()
        jobs = [
            SweepJob(
                name=name,
                run_dir=str(run_path(sweep_dir, name).resolve()),
                config=manifest.runs[name].config,
                progress=False,
            )
            for name in names
        ]
        bar = tqdm(
            total=len(plan.runs),
            initial=len(plan.runs) - len(jobs),
            desc="sweep",
            unit="run",
            dynamic_ncols=True,
            disable=not progress,
        )
        with bar:
            for event in executor.run(train_job, jobs):
                if event.kind == "finished":
                    assert event.job is not None and event.outcome is not None
                    record = manifest.runs[event.job.name]
                    _record_outcome(record, event.outcome)
                    write_manifest(sweep_dir, manifest)
                    bar.update(1)
                    if on_event is not None:
                        on_event(record.status, record)
                bar.set_postfix_str(
                    _in_flight(sweep_dir, manifest, executor.in_flight()), refresh=True
                )
    return SweepResult(sweep_dir, manifest, plan.actions, time.perf_counter() - started)


def _record_outcome(record: RunRecord, outcome: dict[str, Any]) -> None:
    record.attempts += 1
    record.status = outcome.get("status", "failed")
    record.error = outcome.get("error")
    record.traceback = outcome.get("traceback")
    if record.status == "done":
        record.result = outcome.get("result")


def _in_flight(sweep_dir: Path, manifest: Manifest, names: Iterable[str]) -> str:
    shown = []
    for name in names:
        epoch = _latest_epoch(run_path(sweep_dir, name))
        if epoch is not None:
            total = manifest.runs[name].config.get("epochs")
            shown.append(f"{name} epoch {epoch}/{total}")
    return "; ".join(shown[:3]) + (f"; +{len(shown) - 3}" if len(shown) > 3 else "")
