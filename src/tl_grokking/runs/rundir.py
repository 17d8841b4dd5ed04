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

import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
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
    "safetensors_metadata",
    "read_safetensors",
    "check_safetensors_file",
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
    "SpecialFileError",
    "path_kind",
    "require_file",
    "require_dir_path",
    "require_out_dir",
    "holds_files",
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


class SpecialFileError(OSError):
    """A FIFO, socket, device or symbolic link loop where a regular file or a directory is
    expected (an ``OSError``: the command prints it as one line)."""


def path_kind(path: str | os.PathLike) -> str | None:
    """What is at ``path``, in words, found with ``stat`` (following symbolic links) and never
    by opening it (opening a FIFO for reading blocks until a writer comes): ``"a regular
    file"``, ``"a directory"``, ``"a FIFO (named pipe)"``, ``"a socket"``, ``"a character
    device"``, ``"a block device"``, ``"a symbolic link loop"``, ``"a broken symbolic link (to
    TARGET)"``; ``None`` when nothing is there. Other ``stat`` failures (no permission to
    search a parent) are raised as they are."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        try:
            os.lstat(path)
        except OSError:
            return None
        try:
            target = os.readlink(path)
        except OSError:  # a parent is the broken link
            return "a path through a broken symbolic link"
        return f"a broken symbolic link (to {target})"
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "a special file"  # pragma: no cover - no other kinds on POSIX


def require_file(path: str | os.PathLike, noun: str = "file") -> Path:
    """Check, without opening it, that ``path`` is a regular file (or a link to one); return
    it as a ``Path``. Otherwise raise, naming the path and what it is: ``FileNotFoundError``
    (``"checkpoint file X does not exist"``, or a broken link), ``IsADirectoryError`` (``"X is
    a directory, not a checkpoint file"``), :class:`SpecialFileError` (``"X is a FIFO (named
    pipe), not a regular file; expected a checkpoint file"``, ``"X is a symbolic link loop;
    expected a checkpoint file"``)."""
    path = Path(path)
    kind = path_kind(path)
    if kind == "a regular file":
        return path
    if kind is None:
        raise FileNotFoundError(f"{noun} {path} does not exist")
    if kind == "a directory":
        raise IsADirectoryError(f"{path} is a directory, not a {noun}")
    if kind.startswith(("a broken", "a path through")):
        raise FileNotFoundError(f"{path} is {kind}; expected a {noun}")
    if kind == "a symbolic link loop":
        raise SpecialFileError(f"{path} is a symbolic link loop; expected a {noun}")
    raise SpecialFileError(f"{path} is {kind}, not a regular file; expected a {noun}")


def require_dir_path(path: str | os.PathLike, what: str) -> Path:
    """Check that a directory is, or can be created, at ``path``: the nearest of ``path`` and
    its parents that exists is a directory. Otherwise raise ``NotADirectoryError`` (a regular
    file: ``"WHAT PATH: FILE is a file, not a directory"``) or :class:`SpecialFileError` (a
    FIFO, a symbolic link loop, ...) naming ``what`` (e.g. ``"--out"``) and what is there."""
    path = Path(path)
    for candidate in (path, *path.parents):
        kind = path_kind(candidate)
        if kind is None:
            continue
        if kind == "a directory":
            return path
        if kind == "a regular file":
            raise NotADirectoryError(
                f"{what} {path}: {candidate} is a file, not a directory; choose a directory path"
            )
        raise SpecialFileError(
            f"{what} {path}: {candidate} is {kind}, not a directory; choose a directory path"
        )
    return path  # pragma: no cover - the root exists


def require_out_dir(path: str | os.PathLike) -> Path:
    """:func:`require_dir_path` for the directory a run or a sweep is written to: the message
    names it as the API's ``run_dir`` and, in its ``cli_message``, as ``--out``."""
    from tl_grokking._validation import API_WORDS, CLI_WORDS

    try:
        return require_dir_path(path, API_WORDS["out"])
    except OSError as err:
        err.cli_message = str(err).replace(API_WORDS["out"], CLI_WORDS["out"], 1)  # type: ignore[attr-defined]
        raise


def holds_files(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds anything but a lock file (:data:`LOCK_FILE`)."""
    return any(path.name != LOCK_FILE for path in Path(directory).iterdir())


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

    On any exception the temporary file is removed and ``path`` is left untouched. An
    ``OSError`` (a full disk, a read-only file system) is raised again, of the same class,
    naming ``path``: ``[Errno 28] cannot write RUN/config.json: No space left on device``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _naming(err, path) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files, and a writer may re-create the file (safetensors does):
        # give the result the permissions a plain open() would, whoever wrote it.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise _naming(err, path) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` as the same class with a message naming ``path``, the file being written (a
    full disk's ``[Errno 28] No space left on device`` names no file)."""
    if str(path) in str(err):
        return err
    reason = err.strerror or str(err) or type(err).__name__
    try:
        if err.errno is None:
            return type(err)(f"cannot write {path}: {reason}")
        return type(err)(err.errno, f"cannot write {path}: {reason}")
    except TypeError:  # pragma: no cover - a subclass with another constructor
        return err


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; invalid JSON raises :class:`RunDirError` naming the file; a path that
    is not a regular file raises what :func:`require_file` raises (never blocking on a FIFO)."""
    path = Path(path)
    try:
        return json.loads(_read_text(path, "JSON file"))
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path} is not valid JSON: {err}") from None


def save_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Atomically save contiguous CPU copies of ``tensors`` to a safetensors file.

    The file's bytes are a function of the tensors and the metadata alone
    (:func:`_canonical_safetensors`), so the same run writes byte-identical checkpoints.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    try:
        data = _canonical_safetensors(save(clean, metadata=metadata))
    except SafetensorError as err:
        raise OSError(f"cannot write {path}: {err}") from None
    with atomic_write(path) as tmp:
        _write_all(tmp, data)


def _write_all(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (created or truncated) with :func:`_write_fd`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        _write_fd(fd, data)
    finally:
        os.close(fd)


def _write_fd(fd: int, data: bytes) -> None:
    """``os.write`` ``data`` to ``fd`` until all of it is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a serialized safetensors file) with its header in one canonical form.

    safetensors writes ``__metadata__`` in the iteration order of a Rust ``HashMap``, which is
    seeded at random per map: two saves of the same tensors and metadata, in one process or
    two, give different bytes when the metadata has more than one key. This rewrites the
    header as compact JSON with the metadata keys sorted and the tensor entries in the order
    safetensors chose (by alignment, then name: already deterministic), padded with spaces to
    a multiple of 8 bytes as safetensors pads it. The tensor bytes and their offsets, which
    are relative to the end of the header, are unchanged.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    canonical: dict[str, Any] = {}
    if "__metadata__" in header:
        canonical["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    canonical.update(header)
    text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never executes code) into memory of its own.

    The file is read, not memory-mapped (as ``safetensors.torch.load_file`` does): a mapped
    file that another program truncates in place kills the reader with SIGBUS, whereas a
    read sees the bytes as they were. Checkpoints here are a few MB.
    """
    return read_safetensors(path, device)[0]


def read_safetensors(
    path: str | os.PathLike, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the ``__metadata__`` of a safetensors file, from one read of its bytes
    (:func:`load_safetensors`). ``SafetensorError`` or ``ValueError`` if it is not one."""
    from safetensors.torch import load

    data = Path(path).read_bytes()
    tensors = load(data)  # validates the header and the offsets
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    size = int.from_bytes(data[:8], "little")
    return tensors, _metadata_of(json.loads(data[8 : 8 + size]))


def _metadata_of(header: Any) -> dict[str, str]:
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def check_safetensors_file(path: str | os.PathLike, noun: str) -> None:
    """Check that ``path`` is a regular file (:func:`require_file`) holding a readable
    safetensors file; otherwise raise naming it (:class:`RunDirError`: ``X is not a readable
    NOUN: corrupt or truncated safetensors file (...)``)."""
    from safetensors import SafetensorError

    path = require_file(path, noun)
    try:
        read_safetensors(path)
    except (SafetensorError, ValueError, OSError) as err:
        raise RunDirError(
            f"{path} is not a readable {noun}: corrupt or truncated safetensors file ({err})"
        ) from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its header alone (no mapping).
    ``ValueError`` if the header is not a safetensors header."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < size <= 100_000_000:
            raise ValueError(f"{path}: not a safetensors header")
        raw = fh.read(size)
    try:
        return _metadata_of(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: the safetensors header is not JSON") from None


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
    kind = path_kind(run_dir)
    if kind is None:
        raise RunDirNotFoundError(f"run directory {run_dir} does not exist")
    if kind == "a regular file":
        raise RunDirError(f"{run_dir} is a file, not a directory; expected a run directory")
    if kind == "a symbolic link loop":
        raise RunDirError(f"{run_dir} is a symbolic link loop; expected a run directory")
    if kind != "a directory":
        raise RunDirError(f"{run_dir} is {kind}, not a directory; expected a run directory")
    config = run_dir / CONFIG_FILE
    if path_kind(config) is not None:  # there, but perhaps a directory or a FIFO
        require_file(config, "run configuration (JSON)")
    if not is_run_dir(run_dir):
        raise RunDirError(
            f"{run_dir} is not a run directory: no {CONFIG_FILE} (a run directory, as "
            f"'tl-grokking train' writes it, holds {layout})"
        )
    if not isinstance(read_json(run_dir / CONFIG_FILE), dict):
        raise RunDirError(f"{run_dir / CONFIG_FILE} must hold a JSON object")
    ckpt_kind = path_kind(run_dir / CHECKPOINT_DIR)
    if ckpt_kind not in (None, "a directory"):
        ckpt_kind = "a file" if ckpt_kind == "a regular file" else ckpt_kind
        raise RunDirError(
            f"{run_dir / CHECKPOINT_DIR} is {ckpt_kind}, not a directory; expected the run's "
            f"checkpoint directory ({CHECKPOINT_DIR}/epoch_<N>.safetensors)"
        )
    found = list_checkpoints(run_dir)
    if not found:
        raise RunDirError(
            f"{run_dir} has no checkpoints (no {CHECKPOINT_DIR}/epoch_<N>.safetensors yet)"
        )
    return found


def resume_epoch(run_dir: str | os.PathLike) -> int | None:
    """The epoch of the run's ``resume.safetensors`` (the state ``--resume`` continues from);
    ``None`` if there is none or it cannot be read (e.g. it is being replaced right now)."""
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        return int(safetensors_metadata(path)["epoch"])
    except Exception:  # unreadable or without an epoch: unknown
        return None


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` and flush it to disk. A write that fails (a
    full disk) leaves the file as it was, and raises an ``OSError`` naming it."""
    path = Path(run_dir) / METRICS_FILE
    data = (json.dumps(record, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as err:
        raise _naming(err, path) from None
    try:
        start = os.fstat(fd).st_size
        try:
            _write_fd(fd, data)
            os.fsync(fd)
        except OSError as err:
            with suppress(OSError):
                os.ftruncate(fd, start)  # no partial line for the next append to follow
            raise _naming(err, path) from None
    finally:
        os.close(fd)


def read_metrics(
    run_dir: str | os.PathLike, *, keep: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl``; a final line cut off by a crash is skipped, others must parse.
    No file: no records; a directory, FIFO, ... there: :func:`require_file`'s error."""
    path = Path(run_dir) / METRICS_FILE
    if path_kind(path) is None:
        return []
    text = _read_text(path, "metrics file (JSON lines)")
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


def _read_text(path: Path, noun: str) -> str:
    require_file(path, noun)
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
        digest.update(require_file(found[-1][1], "checkpoint file").read_bytes())
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
