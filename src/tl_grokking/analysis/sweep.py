"""Cross-run analysis of a sweep: every run's progress measures, one table (``runs.csv``).

:func:`analyze_sweep` brings the analysis of every finished run of a sweep directory
(:mod:`tl_grokking.runs.sweepdir`) up to date and writes ``SWEEP_DIR/runs.csv``, one row per
run of the manifest:

* a run whose ``measures.csv`` / ``phases.json`` are missing, unreadable or stale
  (:func:`stale_reason`: the run's fingerprint, :func:`tl_grokking.runs.rundir.run_fingerprint`,
  differs from the one ``phases.json`` records, or ``measures.csv`` does not list the run's
  checkpoint epochs) is analysed again with
  :func:`tl_grokking.analysis.progress.analyze_run`; a current one is read as it is;
* the runs to analyse are spread over a pool of processes (one torch thread each; by default
  one per core, when the work is worth starting them: :data:`POOL_MIN_WORK`) when there are at
  least two of them; otherwise, and with ``workers=1``, they are analysed in this process;
* each row is read back from the run's files (``metrics.jsonl``, ``measures.csv``,
  ``phases.json``), so a recomputed run and a reused one give the same row; the clock/pizza
  verdict (:func:`tl_grokking.analysis.clock_pizza.classify_clock_pizza`) is computed on the
  last checkpoint, or taken from the previous ``runs.csv`` when the run's fingerprint is the
  same;
* failed, unfinished and broken runs get a row too: their status, swept values and ``error``,
  with empty analysis columns.

The columns are :data:`LEADING_COLUMNS`, the swept fields (the spec's axes, in order), then
:data:`ANALYSIS_COLUMNS` (docs/sweep_analysis.md defines each). :func:`read_runs_csv` reads the
file back, checking every field; its errors name the file, the line and the column.

This module imports no torch (the coordinating process stays small); the analysis itself runs
in :func:`analyze_one`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_grokking._pool import WorkerPool
from tl_grokking._resources import available_cores, using_threads
from tl_grokking._validation import check_int, expected_errors, one_line
from tl_grokking.analysis.phases import check_phases_record
from tl_grokking.runs.rundir import (
    GROK_ACC,
    atomic_write_text,
    grok_epoch,
    list_checkpoints,
    path_kind,
    read_json,
    read_metrics,
    require_file,
    run_fingerprint,
)
from tl_grokking.runs.sweepdir import (
    MANIFEST_FILE,
    RUNS_DIR,
    STATUSES,
    Manifest,
    RunRecord,
    read_manifest,
    run_path,
)

__all__ = [
    "RUNS_CSV",
    "POOL_MIN_WORK",
    "LEADING_COLUMNS",
    "ANALYSIS_COLUMNS",
    "BOUNDARIES",
    "CLOCK_PIZZA_LABELS",
    "RunsCsvError",
    "RunsTable",
    "SweepAnalysis",
    "SweepSummary",
    "analyze_sweep",
    "analyze_one",
    "stale_reason",
    "measures_columns",
    "read_runs_csv",
    "write_runs_csv",
    "runs_csv_text",
    "sweep_summary",
    "sweep_summary_lines",
]

#: The table :func:`analyze_sweep` writes into the sweep directory.
RUNS_CSV = "runs.csv"
#: File names of a run's stored analysis (those of :mod:`tl_grokking.analysis.progress`,
#: repeated here so that this module needs no torch).
_MEASURES_FILE, _PHASES_FILE = "measures.csv", "phases.json"

#: The phase boundaries of ``phases.json`` that become columns, in order.
BOUNDARIES = ("memorization_end", "circuit_formation_end", "cleanup_end")
#: The verdicts of the clock/pizza column.
CLOCK_PIZZA_LABELS = ("clock", "pizza", "ambiguous")

#: The first two columns; the swept fields follow them.
LEADING_COLUMNS = ("name", "status")
#: The columns after the swept fields, with the kind of value each holds (empty = none):
#: ``bool`` (``true``/``false``), ``int``, ``float`` (round-trip ``repr``), ``freqs``
#: (space-separated integers), ``label`` (:data:`CLOCK_PIZZA_LABELS`), ``str``.
ANALYSIS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("grokked", "bool"),
    ("grok_epoch", "int"),
    *((name, "int") for name in BOUNDARIES),
    ("key_freqs", "freqs"),
    ("n_key_freqs", "int"),
    ("key_freq_rule", "str"),
    ("final_train_loss", "float"),
    ("final_test_loss", "float"),
    ("final_train_acc", "float"),
    ("final_test_acc", "float"),
    ("final_restricted_loss", "float"),
    ("final_excluded_loss", "float"),
    ("final_gini_W_E", "float"),
    ("final_gini_W_L", "float"),
    ("final_sum_sq_weights", "float"),
    ("clock_pizza", "label"),
    ("gradient_symmetricity", "float"),
    ("distance_irrelevance", "float"),
    ("last_epoch", "int"),
    ("n_checkpoints", "int"),
    ("fingerprint", "str"),
    ("error", "str"),
)
_KINDS = dict(ANALYSIS_COLUMNS)
_ANALYSIS_NAMES = tuple(name for name, _ in ANALYSIS_COLUMNS)
#: measures.csv columns whose last-row value is a ``final_*`` column.
_FINAL_MEASURES = ("restricted_loss", "excluded_loss", "gini_W_E", "gini_W_L", "sum_sq_weights")
_FINAL_METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")
#: What :func:`analyze_one` may copy from a previous row of the same run (same fingerprint).
_CLOCK_PIZZA_COLUMNS = ("clock_pizza", "gradient_symmetricity", "distance_irrelevance")

_INT = re.compile(r"^-?\d+$")
#: With ``workers=None``, :func:`analyze_sweep` starts a pool only for at least this many
#: multiply-adds of analysis (:func:`_analysis_work`): about 4 s of work on one core, more than
#: a worker process costs to start (importing torch and TransformerLens).
POOL_MIN_WORK = 1e11


class RunsCsvError(ValueError):
    """``runs.csv`` is not what :func:`write_runs_csv` writes; names the file, line, column."""


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass
class RunsTable:
    """The rows of ``runs.csv``: ``axes`` are the swept fields (columns after ``name`` and
    ``status``); each row maps every column to its value (``None`` where empty)."""

    axes: list[str]
    rows: list[dict[str, Any]]

    @property
    def columns(self) -> list[str]:
        return [*LEADING_COLUMNS, *self.axes, *_ANALYSIS_NAMES]

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, name: str) -> dict[str, Any]:
        for row in self.rows:
            if row["name"] == name:
                return row
        raise KeyError(f"no run {name!r} in the table")

    def names(self) -> list[str]:
        return [row["name"] for row in self.rows]


def _format_cell(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if kind == "freqs":
        return " ".join(str(int(k)) for k in value)
    if kind == "float":
        return repr(float(value))
    if kind == "int":
        return str(int(value))
    return str(value)


def _format_axis(value: Any) -> str:
    """A swept value in a cell: ``""`` for none (``off``), ``true``/``false``, numbers as
    ``repr``, strings as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse_axis(text: str) -> Any:
    """The inverse of :func:`_format_axis` for the values training-config fields take."""
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    if _INT.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def runs_csv_text(table: RunsTable) -> str:
    """``runs.csv`` as text (RFC 4180 quoting: run names hold commas)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow(
            [
                row["name"],
                row["status"],
                *(_format_axis(row.get(axis)) for axis in table.axes),
                *(_format_cell(row.get(name), kind) for name, kind in ANALYSIS_COLUMNS),
            ]
        )
    return buffer.getvalue()


def write_runs_csv(path: str | os.PathLike, table: RunsTable) -> Path:
    """Write ``table`` to ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, runs_csv_text(table))
    return path


def _parse_cell(text: str, kind: str) -> Any:
    """The value of a cell of kind ``kind``; ``ValueError`` (what is accepted) otherwise."""
    if text == "":
        return None
    if kind == "bool":
        if text not in ("true", "false"):
            raise ValueError("true, false or empty")
        return text == "true"
    if kind == "int":
        if not _INT.match(text):
            raise ValueError("an integer or empty")
        return int(text)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError("a number or empty") from None
    if kind == "freqs":
        parts = text.split(" ")
        if not all(part.isdigit() and int(part) >= 1 for part in parts):
            raise ValueError("space-separated positive integers or empty")
        return [int(part) for part in parts]
    if kind == "label":
        if text not in CLOCK_PIZZA_LABELS:
            raise ValueError(f"one of {', '.join(CLOCK_PIZZA_LABELS)} or empty")
        return text
    return text


def read_runs_csv(path: str | os.PathLike) -> RunsTable:
    """Read a ``runs.csv`` written by :func:`analyze_sweep`, checking every field.

    :class:`RunsCsvError` (a ``ValueError``) names the file, the line, the column and what it
    accepts; a missing file is a ``FileNotFoundError`` naming it.
    """
    path = require_file(path, f"{RUNS_CSV} file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RunsCsvError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise RunsCsvError(f"{path}: line 1: not valid CSV ({err})") from None
    if not header:
        raise RunsCsvError(
            f"{path} is empty; expected a header row ({', '.join(LEADING_COLUMNS)}, ...)"
        )
    lead, tail = len(LEADING_COLUMNS), len(ANALYSIS_COLUMNS)
    if (
        len(header) < lead + tail
        or tuple(header[:lead]) != LEADING_COLUMNS
        or tuple(header[-tail:]) != _ANALYSIS_NAMES
    ):
        raise RunsCsvError(
            f"{path}: line 1 must be the header name,status,<swept fields>,"
            f"{','.join(_ANALYSIS_NAMES[:3])},...,{_ANALYSIS_NAMES[-1]}; "
            f"got {','.join(header)[:120]!r}"
        )
    axes = header[lead : len(header) - tail]
    reserved = set(LEADING_COLUMNS) | set(_ANALYSIS_NAMES)
    for axis in axes:
        if not axis or axis in reserved or axes.count(axis) > 1:
            raise RunsCsvError(
                f"{path}: line 1: the swept-field column {axis!r} must be a distinct, non-empty "
                "name that is not one of the fixed columns"
            )
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise RunsCsvError(f"{path}: line {reader.line_num}: not valid CSV ({err})") from None
        line = reader.line_num
        if not values:
            continue
        if len(values) != len(header):
            raise RunsCsvError(
                f"{path}: line {line} has {len(values)} fields, expected {len(header)} "
                "(the header's)"
            )
        cells = dict(zip(header, values, strict=True))

        def bad(column: str, accepted: str, line: int = line, cells: dict = cells) -> RunsCsvError:
            return RunsCsvError(
                f"{path}: line {line}, column {column}: expected {accepted}, got {cells[column]!r}"
            )

        name = cells["name"]
        if not name or name in seen:
            raise bad("name", "a non-empty run name, each once")
        seen.add(name)
        if cells["status"] not in STATUSES:
            raise bad("status", f"one of {', '.join(STATUSES)}")
        row: dict[str, Any] = {"name": name, "status": cells["status"]}
        row.update({axis: _parse_axis(cells[axis]) for axis in axes})
        for column, kind in ANALYSIS_COLUMNS:
            try:
                row[column] = _parse_cell(cells[column], kind)
            except ValueError as err:
                raise bad(column, str(err)) from None
        keys, count = row["key_freqs"], row["n_key_freqs"]
        if count is not None and count != len(keys or []):
            raise bad("n_key_freqs", f"the number of key_freqs ({len(keys or [])})")
        if count is not None and keys is None:
            row["key_freqs"] = []  # analysed, with no key frequency
        rows.append(row)
    return RunsTable(axes=list(axes), rows=rows)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def measures_columns(path: str | os.PathLike) -> dict[str, list[float]]:
    """The columns of a ``measures.csv`` (written by ``ProgressMeasures.to_csv``) as plain
    lists, ``epoch`` first, every field checked (``ValueError`` naming the file, the line and
    the column). What this module and the sweep report read; unlike
    :func:`~tl_grokking.analysis.progress.read_measures_csv` it needs no torch."""
    path = require_file(path, "measures table (CSV)")
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    names = lines[0].split(",") if lines else []
    if not names or names[0] != "epoch" or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"{path}: line 1 must name distinct columns, 'epoch' first")
    columns: dict[str, list[float]] = {name: [] for name in names}
    for line_no, line in enumerate(lines[1:], start=2):
        values = line.split(",")
        if len(values) != len(names):
            raise ValueError(f"{path}: line {line_no} has {len(values)} fields, not {len(names)}")
        for name, value in zip(names, values, strict=True):
            try:
                columns[name].append(int(value) if name == "epoch" else float(value))
            except ValueError:
                raise ValueError(
                    f"{path}: line {line_no}, column {name}: expected a number, got {value!r}"
                ) from None
    return columns


def stale_reason(run_dir: str | os.PathLike, *, fingerprint: str | None = None) -> str | None:
    """Why the stored analysis of ``run_dir`` must be computed again, or ``None`` if it is
    current.

    It is current when ``measures.csv`` and ``phases.json`` both exist and read, the
    fingerprint ``phases.json`` records equals :func:`~tl_grokking.runs.rundir.run_fingerprint`
    of the run now (``fingerprint``, if the caller has it; files written before fingerprints
    existed: skipped), and ``measures.csv`` has one row per checkpoint epoch of the run — the
    rule by which the run report decides to use the stored files."""
    run_dir = Path(run_dir)
    measures, phases = run_dir / _MEASURES_FILE, run_dir / _PHASES_FILE
    for path in (measures, phases):
        if path_kind(path) is None:
            return f"no {path.name}"
    try:
        record = check_phases_record(read_json(phases), phases)
        epochs = measures_columns(measures)["epoch"]
    except (ValueError, OSError) as err:
        return f"the stored analysis cannot be read ({one_line(err)})"
    recorded = record.get("fingerprint")
    current = fingerprint if fingerprint is not None else run_fingerprint(run_dir)
    if recorded is not None and recorded != current:
        return "the run changed since it was analysed (its fingerprint differs)"
    if epochs != [epoch for epoch, _ in list_checkpoints(run_dir)]:
        return f"{_MEASURES_FILE} does not list the run's checkpoint epochs"
    return None


@dataclass(frozen=True)
class _Job:
    """One finished run to analyse (picklable: it goes to a worker process)."""

    name: str
    run_dir: str
    recompute: bool
    device: str
    previous: dict[str, Any] | None  # the run's row of the previous runs.csv, if any
    fingerprint: str | None = None  # the run's fingerprint now

    @property
    def needs_model(self) -> bool:
        """Whether the job loads a checkpoint (torch): to recompute the analysis, or the
        clock/pizza verdict (none to reuse from the previous row)."""
        reusable = self.previous is not None and self.previous.get("fingerprint") == (
            self.fingerprint
        )
        return self.recompute or not reusable


def _empty_row() -> dict[str, Any]:
    return dict.fromkeys(_ANALYSIS_NAMES)


def analyze_one(
    run_dir: str | os.PathLike,
    *,
    recompute: bool | None = None,
    device: str = "cpu",
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The analysis columns of one finished run (:data:`ANALYSIS_COLUMNS`, ``error`` empty).

    Runs :func:`~tl_grokking.analysis.progress.analyze_run` first when ``recompute`` (default:
    when :func:`stale_reason` says so), then reads every value from the run's files.
    ``previous`` is the run's earlier row: its clock/pizza columns are reused when its
    fingerprint is the run's. Raises what reading the run raises (``RunDirError``, ...).
    """
    run_dir = Path(run_dir)
    if recompute is None:
        recompute = stale_reason(run_dir) is not None
    if recompute:
        from tl_grokking.analysis.progress import analyze_run

        analyze_run(run_dir, device=device, progress=False)
    record = check_phases_record(read_json(run_dir / _PHASES_FILE), run_dir / _PHASES_FILE)
    columns = measures_columns(run_dir / _MEASURES_FILE)
    if not columns["epoch"]:
        raise ValueError(f"{run_dir / _MEASURES_FILE} has no rows")
    last = {name: values[-1] for name, values in columns.items()}
    metrics = [r for r in read_metrics(run_dir) if "epoch" in r]

    row = _empty_row()
    epoch = grok_epoch(metrics)
    row["grokked"], row["grok_epoch"] = epoch is not None, epoch
    for name in BOUNDARIES:
        value = record.get(name)
        row[name] = None if value is None else int(value)
    keys = [int(k) for k in record.get("key_freqs") or []]
    row["key_freqs"], row["n_key_freqs"] = keys, len(keys)
    row["key_freq_rule"] = record.get("key_freq_rule")
    last_logged = next((r for r in reversed(metrics) if "test_acc" in r), {})
    for name in _FINAL_METRICS:
        row[f"final_{name}"] = last_logged.get(name)
    for name in _FINAL_MEASURES:
        row[f"final_{name}"] = last.get(name)
    row["last_epoch"], row["n_checkpoints"] = int(last["epoch"]), len(columns["epoch"])
    row["fingerprint"] = record.get("fingerprint") or run_fingerprint(run_dir)

    if previous is not None and previous.get("fingerprint") == row["fingerprint"]:
        for name in _CLOCK_PIZZA_COLUMNS:
            row[name] = previous.get(name)
    else:
        final_acc = last.get("test_acc", last.get("acc"))
        row.update(_clock_pizza(run_dir, final_acc, device))
    return row


def _clock_pizza(run_dir: Path, final_acc: Any, device: str) -> dict[str, Any]:
    """The clock/pizza columns of the run's last checkpoint: empty unless its task has the
    metrics (``"clock_pizza"`` in ``task.meaningful_analyses``) and it solves the task (test
    accuracy ≥ :data:`~tl_grokking.runs.rundir.GROK_ACC`)."""
    from tl_grokking.analysis.clock_pizza import classify_clock_pizza
    from tl_grokking.runs.checkpoints import load_run

    out: dict[str, Any] = dict.fromkeys(_CLOCK_PIZZA_COLUMNS)
    if not isinstance(final_acc, int | float) or final_acc < GROK_ACC:
        return out
    run = load_run(run_dir)
    if "clock_pizza" not in run.task.meaningful_analyses:
        return out
    model = run.model(run.final_epoch, device=device)
    model.eval()
    verdict = classify_clock_pizza(model, run.task, fast=True)
    out["clock_pizza"] = verdict.label
    out["gradient_symmetricity"] = verdict.gradient_symmetricity
    out["distance_irrelevance"] = verdict.distance_irrelevance
    return out


def _run_job(job: _Job) -> dict[str, Any]:
    """:func:`analyze_one` of a job, in a worker: ``{"row": ...}``, or ``{"error": ...}`` for
    the run's own failure (bad input); a bug raises, with its traceback."""
    try:
        row = analyze_one(
            job.run_dir, recompute=job.recompute, device=job.device, previous=job.previous
        )
        return {"row": row}
    except KeyboardInterrupt:
        raise
    except Exception as err:
        if isinstance(err, expected_errors()):
            return {"error": f"analysis failed: {one_line(err)}"}
        raise


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepAnalysis:
    """What :func:`analyze_sweep` did: the table it wrote (``path``), the manifest it read,
    the runs whose analysis it computed (``recomputed``; the other finished runs' stored
    analyses were current), the worker processes used (1: in this process) and the wall time."""

    sweep_dir: Path
    path: Path
    table: RunsTable
    manifest: Manifest
    recomputed: list[str] = field(default_factory=list)
    workers: int = 1
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _axes(manifest: Manifest) -> list[str]:
    """The swept fields: the spec's axes in order, then any other field a run was swept over
    (runs of an earlier spec stay in the manifest)."""
    axes = list((manifest.spec.get("axes") or {}).keys())
    for record in manifest.runs.values():
        axes += [key for key in record.point if key not in axes]
    return [str(axis) for axis in axes]


def _unfinished_error(record: RunRecord) -> str:
    if record.status == "failed":
        return f"training failed: {record.error or 'no error recorded'}"
    return (
        f"not finished (status {record.status}): run 'tl-grokking sweep' with the same "
        "arguments to finish it"
    )


def _previous_rows(path: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """The rows of an existing ``runs.csv`` by run name (none if it is absent or unreadable:
    it is replaced)."""
    if path_kind(path) is None:
        return {}
    try:
        return {row["name"]: row for row in read_runs_csv(path).rows}
    except (ValueError, OSError) as err:
        notes.append(f"the previous {RUNS_CSV} is unreadable and is replaced ({one_line(err)})")
        return {}


def _analysis_work(config: Mapping[str, Any], n_checkpoints: int) -> float:
    """Multiply-adds of analysing a run: per checkpoint, the MLP of a forward pass over the
    p² inputs (``3 p² · 2 d_model d_mlp``, the measure ``tl-grokking analyze`` sizes its
    threads by). Unknown sizes count as the paper's (p = 113, d_model 128, d_mlp 512)."""

    def size(key: str, default: int) -> int:
        value = config.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    p, d_model, d_mlp = size("p", 113), size("d_model", 128), size("d_mlp", 512)
    return float(n_checkpoints) * 3 * p * p * 2 * d_model * d_mlp


def _check_workers(workers: Any) -> int | None:
    return None if workers is None else check_int(workers, "workers")


def _analysis_died(job: _Job, times: int) -> dict[str, Any]:
    return {
        "error": "analysis failed: its worker process died (killed, or out of memory); "
        "analyse again with --workers 1"
    }


def analyze_sweep(
    sweep_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> SweepAnalysis:
    """Analyse every finished run of the sweep in ``sweep_dir`` and write ``runs.csv``.

    Args:
        sweep_dir: a directory written by ``tl-grokking sweep`` (its ``sweep.json``).
        workers: analysis processes. With more than one, the runs whose stored analysis is
            missing or stale (:func:`stale_reason`) are analysed in a pool of that many
            processes (at most one per such run), one torch thread each, when there are at
            least two of them; otherwise in this process. Default: a pool of one process per
            available core when that pays (at least :data:`POOL_MIN_WORK` multiply-adds to
            compute, on the CPU), else this process.
        threads: torch threads of the analysis in this process (default: as they are; pool
            workers use one each).
        device: where the forward passes run.
        progress: show a progress bar over the runs.

    Returns:
        :class:`SweepAnalysis`; ``runs.csv`` is written atomically. A run's failure (a failed
        or unfinished run, a missing run directory, a corrupt checkpoint) is its row's
        ``error``, never raised; a bad sweep directory or manifest raises
        :class:`~tl_grokking.runs.sweepdir.SweepDirError` before anything is written.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    workers = _check_workers(workers)
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a device name (cpu, cuda, cuda:N, mps), got {device!r}")
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    axes = _axes(manifest)
    out_path = sweep_dir / RUNS_CSV
    notes: list[str] = []
    previous = _previous_rows(out_path, notes)

    rows: dict[str, dict[str, Any]] = {}
    jobs: list[_Job] = []
    work = 0.0  # multiply-adds of the runs to analyse (_analysis_work)
    for name, record in manifest.runs.items():
        row: dict[str, Any] = {"name": name, "status": record.status}
        row.update({axis: record.point.get(axis) for axis in axes})
        row.update(_empty_row())
        rows[name] = row
        run_dir = run_path(sweep_dir, name)
        if record.status != "done":
            row["error"] = _unfinished_error(record)
            continue
        kind = path_kind(run_dir)
        if kind != "a directory":
            where = f"{RUNS_DIR}/{name}"
            row["error"] = (
                f"its run directory {where} is missing (deleted or moved?); {MANIFEST_FILE} "
                "says it finished"
                if kind is None
                else f"its run directory {where} is {kind}, not a directory"
            )
            continue
        try:
            fingerprint = run_fingerprint(run_dir)
            reason = stale_reason(run_dir, fingerprint=fingerprint)
        except (ValueError, OSError) as err:
            row["error"] = f"analysis failed: {one_line(err)}"
            continue
        jobs.append(
            _Job(
                name=name,
                run_dir=str(run_dir),
                recompute=reason is not None,
                device=device,
                previous=previous.get(name),
                fingerprint=fingerprint,
            )
        )
        if reason is not None:
            work += _analysis_work(record.config, len(list_checkpoints(run_dir)))

    recomputed: list[str] = []
    n_heavy = sum(job.recompute for job in jobs)
    if workers is None:  # a pool when it pays: enough work to hide its processes' start-up
        auto = available_cores() if device == "cpu" else 1
        workers = auto if work >= POOL_MIN_WORK else 1
    used = min(workers, n_heavy) if n_heavy >= 2 else 1
    bar = tqdm(total=len(jobs), desc="analyse", unit="run", disable=not progress)

    def on_done(job: _Job, outcome: dict[str, Any]) -> None:
        row = rows[job.name]
        if "row" in outcome:
            row.update(outcome["row"])
            if job.recompute:
                recomputed.append(job.name)
        else:
            row["error"] = outcome["error"]
        bar.update(1)

    with bar:
        if used > 1:
            pool: WorkerPool[_Job, dict[str, Any]] = WorkerPool(used)
            for finished in pool.map(_run_job, jobs, on_death=_analysis_died):
                assert finished is not None  # no ticks asked for
                on_done(*finished)
        elif any(job.needs_model for job in jobs):
            with using_threads(threads):  # imports torch
                for job in jobs:
                    on_done(job, _run_job(job))
        else:  # every analysis current, every clock/pizza verdict reusable: files only
            for job in jobs:
                on_done(job, _run_job(job))

    table = RunsTable(axes=axes, rows=list(rows.values()))
    write_runs_csv(out_path, table)
    return SweepAnalysis(
        sweep_dir=sweep_dir,
        path=out_path,
        table=table,
        manifest=manifest,
        recomputed=[name for name in manifest.runs if name in set(recomputed)],
        workers=used,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# What a sweep shows at a glance
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSummary:
    """Counts over a :class:`RunsTable`: runs per status, runs analysed (finished, no error),
    runs that grokked, the median grok epoch of those, and how many runs use each key
    frequency (``(frequency, runs)``, most common first; with runs of several p, frequencies
    are counted per p: ``key_freq_counts`` then holds ``"k (p = P)"`` labels)."""

    n_runs: int
    counts: dict[str, int]
    n_analysed: int
    n_grokked: int
    median_grok_epoch: float | None
    key_freq_counts: list[tuple[str, int]]
    errors: list[tuple[str, str]]


def sweep_summary(table: RunsTable, p_of: Mapping[str, Any] | None = None) -> SweepSummary:
    """The :class:`SweepSummary` of ``table``; ``p_of`` maps run names to their p (from the
    manifest's configs) so that frequencies of different p are not pooled."""
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for row in table.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    analysed = [r for r in table.rows if r["status"] == "done" and r["grokked"] is not None]
    epochs = [r["grok_epoch"] for r in analysed if r["grokked"] and r["grok_epoch"] is not None]
    ps = {(p_of or {}).get(r["name"]) for r in analysed}
    several_p = len(ps) > 1
    counter: Counter[str] = Counter()
    for r in analysed:
        for k in r["key_freqs"] or []:
            counter[f"{k} (p = {(p_of or {}).get(r['name'])})" if several_p else str(k)] += 1
    errors = [(r["name"], r["error"]) for r in table.rows if r["error"]]
    return SweepSummary(
        n_runs=len(table.rows),
        counts=counts,
        n_analysed=len(analysed),
        n_grokked=len(epochs),
        median_grok_epoch=statistics.median(epochs) if epochs else None,
        key_freq_counts=sorted(counter.items(), key=lambda kv: (-kv[1], _freq_key(kv[0]))),
        errors=errors,
    )


def _freq_key(label: str) -> tuple[float, str]:
    head = label.split(" ", 1)[0]
    return (float(head) if head.isdigit() else math.inf, label)


def sweep_summary_lines(analysis: SweepAnalysis, *, top: int = 8) -> list[str]:
    """What ``tl-grokking analyze SWEEP_DIR`` prints: runs per status, how many were analysed
    now, the grokked count and median grok epoch, the most common key frequencies, one
    ``note:`` line per run with an error."""
    p_of = {name: r.config.get("p") for name, r in analysis.manifest.runs.items()}
    s = sweep_summary(analysis.table, p_of)
    statuses = ", ".join(f"{n} {status}" for status, n in s.counts.items() if n)
    lines = [
        f"sweep: {analysis.sweep_dir}  ({s.n_runs} runs: {statuses or 'none'})",
        f"analysis: {len(analysis.recomputed)} run(s) computed now, "
        f"{s.n_analysed - len(analysis.recomputed)} up to date; {analysis.seconds:.1f} s with "
        f"{analysis.workers} process(es)",
    ]
    if s.n_analysed:
        median = "—" if s.median_grok_epoch is None else f"{s.median_grok_epoch:g}"
        lines.append(
            f"grokked (test accuracy ≥ {100 * GROK_ACC:g} % in metrics.jsonl): {s.n_grokked} of "
            f"{s.n_analysed} analysed runs; median grok epoch {median}"
        )
        if s.key_freq_counts:
            shown = ", ".join(f"{k} ×{n}" for k, n in s.key_freq_counts[:top])
            lines.append(f"most common key frequencies (runs using each): {shown}")
    lines += [f"note: {note}" for note in analysis.notes]
    lines += [f"note: run {name}: {error}" for name, error in s.errors]
    return lines
