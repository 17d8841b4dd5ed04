"""The sweep directory and its manifest, ``sweep.json``.

A sweep directory holds::

    SWEEP_DIR/
        sweep.json            the manifest: the latest spec, every run's config, status, result
        runs/<name>/          one ordinary run directory per run (tl_grokking.runs.rundir)
        runs.csv              written by ``tl-grokking analyze SWEEP_DIR``: one row per run
        sweep_report.html     written by ``tl-grokking report SWEEP_DIR`` / ``analyze``

The manifest is written only by the process coordinating the sweep (which holds the sweep
directory's lock, :func:`tl_grokking.runs.rundir.run_lock`), atomically after every finished
run, so a reader sees the state before or after a run, never half of it. Each run's own
directory stays the truth for how far it trained: a run marked ``running`` or ``pending`` is
resumed from its last checkpoint, bit-identically.

Every field is validated on read (:func:`read_manifest`): an error names the file, the run and
the field, and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_grokking.runs.rundir import RunDirError, read_json, write_json

__all__ = [
    "MANIFEST_FILE",
    "RUNS_DIR",
    "STATUSES",
    "SweepDirError",
    "RunRecord",
    "Manifest",
    "is_sweep_dir",
    "read_manifest",
    "write_manifest",
    "run_path",
]

MANIFEST_FILE = "sweep.json"
RUNS_DIR = "runs"
FORMAT = "tl_grokking.sweep"
VERSION = 1
#: ``pending``: not finished (never started, interrupted, or to be extended); ``done``: trained
#: to its configured end (or its early stop); ``failed``: the run raised an error (``error``).
STATUSES = ("pending", "done", "failed")


class SweepDirError(RunDirError):
    """A sweep directory or its manifest is not what it should be."""


@dataclass
class RunRecord:
    """What the manifest knows of one run."""

    name: str
    point: dict[str, Any]  # the swept values
    config: dict[str, Any]  # TrainConfig.to_dict()
    status: str = "pending"
    attempts: int = 0  # times an executor started it
    error: str | None = None  # the one-line error of the last failure
    traceback: str | None = None  # the traceback, where the failure was a bug
    result: dict[str, Any] | None = None  # epoch, grok_epoch, stopped_early, wall_time, final

    def to_dict(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "config": self.config,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "traceback": self.traceback,
            "result": self.result,
        }


@dataclass
class Manifest:
    """``sweep.json``: the latest spec (``SweepSpec.to_dict()``) and every run ever swept here,
    in the order they were added."""

    spec: dict[str, Any]
    runs: dict[str, RunRecord] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Runs per status."""
        out: dict[str, int] = {status: 0 for status in STATUSES}
        for record in self.runs.values():
            out[record.status] += 1
        return out


def run_path(sweep_dir: str | os.PathLike, name: str) -> Path:
    """The run directory of run ``name``."""
    return Path(sweep_dir) / RUNS_DIR / name


def is_sweep_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a sweep (its manifest)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def write_manifest(sweep_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``sweep.json`` atomically."""
    write_json(
        Path(sweep_dir) / MANIFEST_FILE,
        {
            "format": FORMAT,
            "version": VERSION,
            "spec": manifest.spec,
            "runs": {name: record.to_dict() for name, record in manifest.runs.items()},
        },
    )


def _expect(ok: bool, path: Path, where: str, what: str, got: Any) -> None:
    if not ok:
        raise SweepDirError(f"{path}: {where} must be {what}, got {got!r}")


def _read_record(path: Path, name: Any, data: Any) -> RunRecord:
    where = f"runs[{name!r}]"
    plain = isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
    plain = plain and os.sep not in name and "\0" not in name
    _expect(plain, path, "a run name", "a plain directory name (no '/', not '.' or '..')", name)
    _expect(isinstance(data, Mapping), path, where, "an object", data)
    for key, kind, what in (
        ("point", Mapping, "an object"),
        ("config", Mapping, "an object"),
        ("status", str, f"one of {STATUSES}"),
    ):
        _expect(isinstance(data.get(key), kind), path, f"{where}.{key}", what, data.get(key))
    _expect(
        data["status"] in STATUSES, path, f"{where}.status", f"one of {STATUSES}", data["status"]
    )
    attempts = data.get("attempts", 0)
    _expect(
        isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0,
        path,
        f"{where}.attempts",
        "a nonnegative integer",
        attempts,
    )
    for key in ("error", "traceback"):
        value = data.get(key)
        _expect(
            value is None or isinstance(value, str),
            path,
            f"{where}.{key}",
            "a string or null",
            value,
        )
    result = data.get("result")
    _expect(
        result is None or isinstance(result, Mapping),
        path,
        f"{where}.result",
        "an object or null",
        result,
    )
    return RunRecord(
        name=name,
        point=dict(data["point"]),
        config=dict(data["config"]),
        status=data["status"],
        attempts=attempts,
        error=data.get("error"),
        traceback=data.get("traceback"),
        result=None if result is None else dict(result),
    )


def read_manifest(sweep_dir: str | os.PathLike) -> Manifest:
    """The :class:`Manifest` of ``sweep_dir``, every field validated."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / MANIFEST_FILE
    if not sweep_dir.is_dir():
        if sweep_dir.exists():
            raise SweepDirError(f"{sweep_dir} is not a directory; expected a sweep directory")
        raise SweepDirError(f"sweep directory {sweep_dir} does not exist")
    if not path.is_file():
        raise SweepDirError(
            f"{sweep_dir} is not a sweep directory: no {MANIFEST_FILE} (write one with "
            "'tl-grokking sweep --out DIR ...')"
        )
    data = read_json(path)
    _expect(isinstance(data, Mapping), path, "the file", "a JSON object", type(data).__name__)
    _expect(data.get("format") == FORMAT, path, "format", repr(FORMAT), data.get("format"))
    _expect(data.get("version") == VERSION, path, "version", str(VERSION), data.get("version"))
    _expect(isinstance(data.get("spec"), Mapping), path, "spec", "an object", data.get("spec"))
    runs = data.get("runs")
    _expect(isinstance(runs, Mapping), path, "runs", "an object of run name -> record", runs)
    records = {name: _read_record(path, name, record) for name, record in runs.items()}
    return Manifest(spec=dict(data["spec"]), runs=records)
