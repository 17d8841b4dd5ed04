"""The run directory: the on-disk record of one training run, and crash-safe file writes.

Layout::

    RUN_DIR/
        config.json                      # the TrainConfig (task, model, optimiser, schedule)
        metrics.jsonl                    # one JSON object per logged epoch ({"epoch": N, ...})
        checkpoints/epoch_<N>.safetensors  # model state dict at epoch N (weights only)
        resume.safetensors               # latest model + optimiser state, for --resume

Every file is written to a temporary file in the same directory and renamed into place
(:func:`atomic_write`), so a crash leaves either the old or the new file, never half of one.
``metrics.jsonl`` is appended one line at a time; :func:`read_metrics` ignores a final line
cut off by a crash.  Checkpoints are safetensors: loading never executes code.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and safetensors are imported where used: this module stays light
    import torch

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "CHECKPOINT_DIR",
    "RESUME_FILE",
    "atomic_write",
    "atomic_write_text",
    "write_json",
    "read_json",
    "save_safetensors",
    "load_safetensors",
    "checkpoint_path",
    "list_checkpoints",
    "is_run_dir",
    "require_run_dir",
    "checkpoint_epoch",
    "resume_epoch",
    "append_metrics",
    "read_metrics",
    "RunDirError",
    "RunDirNotFoundError",
    "GROK_ACC",
    "grok_epoch",
    "LOCK_FILE",
    "DERIVED_FILES",
    "run_lock",
    "RunDirLockedError",
    "run_fingerprint",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
RESUME_FILE = "resume.safetensors"
#: Test accuracy at which a run counts as grokked. "The epoch at 99 %" everywhere (trainer,
#: ``analyze``, the report, ``reproduce``) is :func:`grok_epoch` of the run's metrics log.
GROK_ACC = 0.99

#: Held (an advisory lock) by the one process writing the run; never removed.
LOCK_FILE = ".lock"
#: What analysis writes into a run directory: stale once the run changes (``--overwrite``
#: removes them).
DERIVED_FILES = ("measures.csv", "phases.json", "report.html")

_CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)\.safetensors$")


class RunDirError(ValueError):
    """A path is not a usable run directory (missing config, no checkpoints, ...)."""


class RunDirNotFoundError(RunDirError, FileNotFoundError):
    """The run directory does not exist (a :class:`RunDirError` and a ``FileNotFoundError``)."""


class RunDirLockedError(RunDirError):
    """Another process is writing this run directory (it holds :data:`LOCK_FILE`)."""


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run directory's exclusive lock for the block (one writer per run).

    An advisory ``flock`` on ``RUN_DIR/.lock``, which records the holder's pid; the OS
    releases it when the holder exits, however it exits (kill -9 included), so a stale lock
    never blocks a resume. A second writer gets :class:`RunDirLockedError` naming the holder.
    Where ``fcntl`` does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_current_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunDirLockedError(
                f"{run_dir} is being written by another process (pid {holder}); wait for it to "
                "finish or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync and rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files, and a writer may re-create the file (safetensors does):
        # give the result the permissions a plain open() would, whoever wrote it.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; invalid JSON raises :class:`RunDirError` naming the file."""
    path = Path(path)
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path} is not valid JSON: {err}") from None


def save_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Atomically save contiguous CPU copies of ``tensors`` to a safetensors file."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_write(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never executes code)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


def checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    """``run_dir/checkpoints/epoch_<epoch>.safetensors`` (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{int(epoch)}.safetensors"


def checkpoint_epoch(name: str | os.PathLike) -> int | None:
    """The epoch N of a checkpoint file named ``epoch_<N>.safetensors``, else ``None``."""
    match = _CHECKPOINT_NAME.match(Path(name).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint in the run directory, sorted by epoch."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        return []
    found = []
    for entry in ckpt_dir.iterdir():
        epoch = checkpoint_epoch(entry.name)
        if epoch is not None:
            found.append((epoch, entry))
    return sorted(found)


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a run (a ``config.json``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def require_run_dir(path: str | os.PathLike) -> list[tuple[int, Path]]:
    """Check that ``path`` is a run directory with at least one checkpoint; return
    :func:`list_checkpoints`.

    Raises :class:`RunDirNotFoundError` (also a ``FileNotFoundError``) if ``path`` does not
    exist, and :class:`RunDirError` if it is a file, has no ``config.json``, a ``config.json``
    that is not a JSON object, or no checkpoint.
    """
    run_dir = Path(path)
    layout = f"{CONFIG_FILE}, {METRICS_FILE}, {CHECKPOINT_DIR}/epoch_<N>.safetensors"
    if not run_dir.exists():
        raise RunDirNotFoundError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a directory; expected a run directory")
    if not is_run_dir(run_dir):
        raise RunDirError(
            f"{run_dir} is not a run directory: no {CONFIG_FILE} (a run directory, as "
            f"'tl-grokking train' writes it, holds {layout})"
        )
    if not isinstance(read_json(run_dir / CONFIG_FILE), dict):
        raise RunDirError(f"{run_dir / CONFIG_FILE} must hold a JSON object")
    found = list_checkpoints(run_dir)
    if not found:
        raise RunDirError(
            f"{run_dir} has no checkpoints (no {CHECKPOINT_DIR}/epoch_<N>.safetensors yet)"
        )
    return found


def resume_epoch(run_dir: str | os.PathLike) -> int | None:
    """The epoch of the run's ``resume.safetensors`` (the state ``--resume`` continues from);
    ``None`` if there is none or it cannot be read (e.g. it is being replaced right now)."""
    from safetensors import safe_open

    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            return int((fh.metadata() or {})["epoch"])
    except Exception:  # unreadable or without an epoch: unknown
        return None


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` and flush it to disk."""
    path = Path(run_dir) / METRICS_FILE
    line = json.dumps(record, sort_keys=True, allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(
    run_dir: str | os.PathLike, *, keep: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl``; a final line cut off by a crash is skipped, others must parse."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    text = _read_text(path)
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            is_last = i == len(lines) - 1  # no trailing newline: the write was cut off
            if is_last:
                continue
            raise RunDirError(f"{path}: line {i + 1} is not valid JSON") from None
        _check_metrics_record(record, path, i + 1)
        if keep is None or keep(record):
            records.append(record)
    return records


def _check_metrics_record(record: Any, path: Path, line: int) -> None:
    """A metrics line is an object with a nonnegative integer ``epoch`` and numbers (or null:
    a measure that could not be computed) for everything else."""
    if not isinstance(record, dict):
        raise RunDirError(f"{path}: line {line} must be a JSON object, got {type(record).__name__}")
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise RunDirError(
            f"{path}: line {line}: epoch must be a nonnegative integer, got {epoch!r}"
        )
    for key, value in record.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise RunDirError(f"{path}: line {line}: {key} must be a number, got {value!r}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RunDirError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def run_fingerprint(run_dir: str | os.PathLike) -> str:
    """What a derived file (``measures.csv``, ``phases.json``) was computed from, in 16 hex
    digits: ``config.json``, every checkpoint's epoch and size, and the last checkpoint's bytes.
    A run that goes on, is overwritten or is replaced gets another fingerprint."""
    import hashlib

    run_dir = Path(run_dir)
    digest = hashlib.sha256()
    config = run_dir / CONFIG_FILE
    digest.update(config.read_bytes() if config.is_file() else b"")
    found = list_checkpoints(run_dir)
    for epoch, path in found:
        digest.update(f"{epoch}:{path.stat().st_size};".encode())
    if found:
        digest.update(found[-1][1].read_bytes())
    return digest.hexdigest()[:16]


def rewrite_metrics(run_dir: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Atomically replace ``metrics.jsonl`` with ``records`` (used when resuming)."""
    text = "".join(json.dumps(r, sort_keys=True, allow_nan=True) + "\n" for r in records)
    atomic_write_text(Path(run_dir) / METRICS_FILE, text)


def grok_epoch(records: Iterable[Mapping[str, Any]], threshold: float = GROK_ACC) -> int | None:
    """The first epoch whose record has ``test_acc >= threshold`` (default :data:`GROK_ACC`).

    ``records`` are metrics lines (``metrics.jsonl``, logged every ``log_every`` epochs) or
    rows of a progress-measures table (one per checkpoint); the answer is only as fine as the
    records, so the run's own metrics log is what every summary uses. ``None`` if never.
    """
    for record in records:
        acc = record.get("test_acc")
        if isinstance(acc, int | float) and acc >= threshold:
            return int(record["epoch"])
    return None
