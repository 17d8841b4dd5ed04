"""Compiled CPU kernels of the fast path: the read-out's memory-bound passes and the float64 loss.

The trainer's step (:mod:`tl_grokking.model.fastforward`) is, apart from its three
``[batch, d_mlp] × [d_mlp, d_vocab_out]`` products, a dozen passes over batch-sized buffers —
the attention pattern, the mixing of table rows, the ReLU and its mask, the pattern's and the
tables' gradients, the column sums, the float64 cross-entropy — each a separate torch operation
that reads and writes its whole buffer. ``native.c`` (next to this file) does them in four
passes: the read-out forward, the read-out backward per sample, the read-out backward per
table row, and the loss with its gradient. They compute what the torch operations compute, in
float32 (the loss in float64), to float32 rounding; they are not bit-identical to them (their
sums run in another order).

**Building.** The first call in a process compiles ``native.c`` with the system's GCC (``$CC``
if set, else ``cc`` or ``gcc``) for this CPU (``-march=native``) into a cache directory
(``$TL_GROKKING_CACHE``, else ``$XDG_CACHE_HOME/tl_grokking``, else ``~/.cache/tl_grokking``;
about a second, once per machine and source), writing to a temporary file that is renamed into
place with its SHA-256 beside it (a cached file that does not match is built again), and loads
it with :mod:`ctypes`. The kernels run on the OpenMP runtime torch has loaded
(the library is linked against that very ``libgomp``), so they share torch's threads and its
thread count (:func:`torch.get_num_threads`) rather than contending with them for the cores.

**When they are used.** :func:`enabled`: on Linux, with GCC, with torch on GNU OpenMP, and
unless ``TL_GROKKING_NATIVE=0``; then for float32 CPU tensors. Anywhere else the fast path
runs its torch operations, with the same results to float32 rounding. :func:`status` says
which and why. The choice depends on the machine and the environment only, so the same
command on the same machine always computes the same bits; the kernels' results do not
depend on the thread count.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "ENV_SWITCH",
    "ENV_CACHE",
    "NativeStatus",
    "status",
    "enabled",
    "switch_on",
    "cache_dir",
    "cross_entropy64",
    "readout_forward",
    "readout_backward",
]

#: Set to ``0`` to run the fast path on torch operations only.
ENV_SWITCH = "TL_GROKKING_NATIVE"
#: Where the compiled kernels are kept (default: ``$XDG_CACHE_HOME/tl_grokking``).
ENV_CACHE = "TL_GROKKING_CACHE"

_SOURCE = Path(__file__).with_name("native.c")
_ABI_VERSION = 2  # TLG_ABI_VERSION in native.c
_FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-fopenmp", "-fno-math-errno", "-fno-trapping-math")
#: Samples per block of the column sums (fixed: the sums' bits do not depend on the threads).
_SUM_BLOCK = 64


@dataclass(frozen=True)
class NativeStatus:
    """Whether the compiled kernels are used, and the library's path or why not."""

    available: bool
    detail: str

    def __str__(self) -> str:
        return f"native kernels: {'on' if self.available else 'off'} ({self.detail})"


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$TL_GROKKING_CACHE``, else
    ``$XDG_CACHE_HOME/tl_grokking``, else ``~/.cache/tl_grokking``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tl_grokking"


def _loaded_openmp() -> list[str]:
    """Paths of the GNU OpenMP runtimes mapped into this process (torch's, and those other
    wheels bring under their own names, such as sentencepiece's)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            paths = {line.split()[-1] for line in fh if "/libgomp" in line}
    except OSError:
        return []
    return sorted(p for p in paths if Path(p).name.startswith("libgomp"))


def _torch_openmp() -> str | None:
    """The GNU OpenMP runtime torch runs its threads on: the one inside torch's own
    installation (``torch/lib``, or ``torch.libs`` beside it), else the only one mapped."""
    runtimes = _loaded_openmp()
    home = Path(torch.__file__).resolve().parent
    for path in runtimes:
        parent = Path(path).resolve().parent
        if parent == home / "lib" or parent == home.parent / "torch.libs":
            return path
    return runtimes[0] if len(runtimes) == 1 else None


def _compiler() -> tuple[str, str] | None:
    """The C compiler to use and its ``--version`` banner, if it is GCC."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        path = shutil.which(name) if name else None
        if not path:
            continue
        try:
            banner = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "Free Software Foundation" in banner or "gcc" in banner.lower().split("\n")[0]:
            return path, banner
    return None


def _cpu_fingerprint() -> str:
    """What ``-march=native`` compiles for: the CPU's model and feature flags."""
    keep = ("model name", "flags", "features", "cpu part", "cpu implementer")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            lines = {ln.strip() for ln in fh if ln.split(":")[0].strip().lower() in keep}
    except OSError:
        lines = set()
    return platform.machine() + "\n" + "\n".join(sorted(lines))


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _intact(library: Path) -> bool:
    """Whether ``library`` is the file its build wrote (its SHA-256 beside it): loading a
    damaged shared library can crash the process rather than raise."""
    try:
        expected = _digest_path(library).read_text().strip()
        return hashlib.sha256(library.read_bytes()).hexdigest() == expected
    except OSError:
        return False


#: A build directory this old was left by a killed process (a build takes about a second).
_STALE_BUILD_S = 600.0


def _remove_stale_builds(directory: Path) -> None:
    """Remove the ``.build-*`` directories that killed builds left in ``directory``."""
    now = time.time()
    for leftover in directory.glob(".build-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def _build(cc: str, banner: str, gomp: str) -> Path:
    """Compile ``native.c`` against torch's ``libgomp`` (cached), return the library's path."""
    source = _SOURCE.read_bytes()
    last_error = ""
    for arch in (("-march=native",), ()):
        flags = (*_FLAGS, *arch)
        key = hashlib.sha256(
            b"\0".join(
                x.encode() if isinstance(x, str) else x
                for x in (source, cc, banner, *flags, gomp, _cpu_fingerprint(), str(_ABI_VERSION))
            )
        ).hexdigest()[:20]
        try:
            directory = cache_dir()
            directory.mkdir(parents=True, exist_ok=True)
            probe = tempfile.mkdtemp(prefix=".build-", dir=directory)
        except OSError:  # a read-only home: build for this process only, removed at exit
            directory = Path(tempfile.mkdtemp(prefix="tl_grokking-native-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            probe = tempfile.mkdtemp(prefix=".build-", dir=directory)
        _remove_stale_builds(directory)
        target = directory / f"native-{key}.so"
        if _intact(target):
            shutil.rmtree(probe, ignore_errors=True)
            return target
        obj, lib = Path(probe) / "native.o", Path(probe) / "native.so"
        # two steps: compiling with -fopenmp, linking without it, against torch's libgomp
        # rather than the system's (one OpenMP runtime in the process, not two)
        commands = (
            [cc, *flags, "-c", str(_SOURCE), "-o", str(obj)],
            [cc, "-shared", "-Wl,-z,defs", str(obj), gomp, "-lm", "-o", str(lib)],
        )
        try:
            for command in commands:
                done = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1])
            digest = Path(probe) / "native.so.sha256"
            digest.write_text(hashlib.sha256(lib.read_bytes()).hexdigest())
            os.replace(lib, target)  # atomic: a concurrent build renames an identical file
            os.replace(digest, _digest_path(target))
            return target
        except (OSError, subprocess.SubprocessError, RuntimeError) as err:
            last_error = f"{' '.join([Path(cc).name, *arch])}: {err}"
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    raise RuntimeError(f"compiling native.c failed ({last_error})")


_P, _I, _INT, _F, _D = (
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_int,
    ctypes.c_float,
    ctypes.c_double,
)
_SIGNATURES = {
    "tlg_abi_version": [],
    "tlg_cross_entropy64": [_P, _P, _I, _I, _D, _F, _P, _P, _INT],
    "tlg_readout_forward": [_P] * 6 + [_I] * 5 + [_F] + [_P] * 4 + [_INT],
    "tlg_readout_backward_samples": [_P] * 7 + [_I] * 5 + [_F, _P, _P, _INT],
    "tlg_readout_backward_rows": [_P, _P, _I, _I, _I, _P, _P, _P, _P, _I, _I, _P, _P, _P, _INT],
}


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """The loaded kernels, or None and the reason (tried once per process)."""
    if platform.system() != "Linux":
        return None, f"built on Linux only, not {platform.system()}"
    if "OpenMP" not in torch.__config__.parallel_info():
        return None, "this torch build does not run its threads on OpenMP"
    gomp, runtimes = _torch_openmp(), _loaded_openmp()
    if gomp is None:
        return None, f"torch's GNU OpenMP runtime not found among {runtimes}"
    compiler = _compiler()
    if compiler is None:
        return None, "no GCC found (set CC to a GCC, or install gcc)"
    try:
        path = _build(*compiler, gomp)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as err:
        return None, str(err)
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    if lib.tlg_abi_version() != _ABI_VERSION:
        return None, f"{path} has another interface version"
    if _loaded_openmp() != runtimes:  # pragma: no cover - linking to torch's prevents it
        return None, "loading the kernels brought a second OpenMP runtime"
    return lib, str(path)


def switch_on() -> bool:
    """``TL_GROKKING_NATIVE``: unset, empty or ``1`` (use the kernels where they build) is on,
    ``0`` off; anything else is refused with ``ValueError``."""
    value = os.environ.get(ENV_SWITCH, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(
            f"{ENV_SWITCH} must be 0 (torch operations only) or 1 (the compiled kernels where "
            f"they build), got {value!r}"
        )
    return value != "0"


def status() -> NativeStatus:
    """Whether the fast path uses the compiled kernels here, with the library or the reason."""
    if not switch_on():
        return NativeStatus(False, f"{ENV_SWITCH}=0")
    lib, detail = _library()
    return NativeStatus(lib is not None, detail)


def enabled(*tensors: Tensor) -> bool:
    """Whether the kernels are used for these tensors: :func:`status` says so and every tensor
    is a float32 CPU tensor."""
    if not switch_on():
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    return _library()[0] is not None


def _lib() -> ctypes.CDLL:
    lib, detail = _library()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {detail}")
    return lib


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def cross_entropy64(
    logits: Float[Tensor, "batch d_vocab_out"],
    labels: Int[Tensor, " batch"],
    scale: float | None,
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "batch d_vocab_out"] | None]:
    """Per-row cross-entropy ``log Σ_c exp x[b, c] − x[b, y_b]`` in float64 and, unless
    ``scale`` is None, its gradient ``(softmax(x) − onehot(y)) · scale`` in float32 with the
    entries below float32's smallest normal set to zero. A row with a non-finite logit gets
    a NaN loss (the caller falls back to torch for such a batch)."""
    logits, labels = logits.contiguous(), labels.contiguous().to(torch.int64)
    batch, width = logits.shape
    row_loss = torch.empty(batch, dtype=torch.float64)
    grad = torch.empty_like(logits) if scale is not None else None
    _lib().tlg_cross_entropy64(
        _ptr(logits),
        _ptr(labels),
        batch,
        width,
        0.0 if scale is None else scale,
        torch.finfo(torch.float32).tiny,
        None if grad is None else _ptr(grad),
        _ptr(row_loss),
        torch.get_num_threads(),
    )
    return row_loss, grad


def readout_forward(
    scores: Float[Tensor, "n_scores head"],
    table_M: Float[Tensor, "rows d_mlp"],
    table_L: Float[Tensor, "rows d_vocab_out"],
    c: Float[Tensor, " width"],
    rows: Int[Tensor, "batch k"],
    token_rows: Int[Tensor, " batch_pos"],
    rate: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The read-out's forward pass before its product (see
    :class:`tl_grokking.model.fastforward._ReluReadout`): ``post = relu(Z_M)``, the direct path
    ``Z_L``, the pattern ``P`` (mixed with uniform attention at ``rate``) and the softmax
    itself, ``[batch, 2 · n_heads]`` in (head, position) order."""
    scores, table_M, table_L, c = (t.contiguous() for t in (scores, table_M, table_L, c))
    batch, k = rows.shape
    n_heads, d_mlp, d_out = k // 2, table_M.shape[1], table_L.shape[1]
    post = torch.empty(batch, d_mlp)
    direct = torch.empty(batch, d_out)
    pattern, soft = torch.empty(batch, k), torch.empty(batch, k)
    _lib().tlg_readout_forward(
        _ptr(scores),
        _ptr(table_M),
        _ptr(table_L),
        _ptr(c),
        _ptr(rows),
        _ptr(token_rows),
        batch,
        n_heads,
        (scores.shape[0] - 1) // 2,
        d_mlp,
        d_out,
        rate,
        _ptr(post),
        _ptr(direct),
        _ptr(pattern),
        _ptr(soft),
        torch.get_num_threads(),
    )
    return post, direct, pattern, soft


def readout_backward(
    d_pre: Float[Tensor, "batch d_mlp"],
    post: Float[Tensor, "batch d_mlp"],
    d_logits: Float[Tensor, "batch d_vocab_out"],
    table_M: Float[Tensor, "rows d_mlp"],
    table_L: Float[Tensor, "rows d_vocab_out"],
    soft: Float[Tensor, "batch k"],
    pattern: Float[Tensor, "batch k"],
    rows: Int[Tensor, "batch k"],
    bag_offsets: Int[Tensor, " rows"],
    bag_order: Int[Tensor, " entries"],
    rate: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The read-out's backward pass after its products. ``d_pre`` (the gradient of
    ``relu(Z_M)``) is masked by the ReLU in place; returned: the gradients of the two tables,
    that of the constant term ``c`` (the column sums of ``[d_pre | d_logits]``) and, per table
    row, the summed gradient of its attention score (``[rows]``, head-major)."""
    d_logits = d_logits.contiguous()
    batch, d_mlp = d_pre.shape
    d_out, k = d_logits.shape[1], rows.shape[1]
    n_rows, n_heads = table_M.shape[0], k // 2
    n_blocks = -(-batch // _SUM_BLOCK)
    d_own, colsum = torch.empty(batch, k), torch.empty(n_blocks, d_mlp + d_out)
    lib, threads = _lib(), torch.get_num_threads()
    lib.tlg_readout_backward_samples(
        _ptr(d_pre),
        _ptr(post),
        _ptr(d_logits),
        _ptr(table_M),
        _ptr(table_L),
        _ptr(soft),
        _ptr(rows),
        batch,
        n_heads,
        d_mlp,
        d_out,
        _SUM_BLOCK,
        rate,
        _ptr(d_own),
        _ptr(colsum),
        threads,
    )
    d_table_M, d_table_L = torch.empty(n_rows, d_mlp), torch.empty(n_rows, d_out)
    d_row_score = torch.empty(n_rows)
    lib.tlg_readout_backward_rows(
        _ptr(bag_offsets),
        _ptr(bag_order),
        bag_order.numel(),
        n_rows // n_heads,
        n_heads,
        _ptr(pattern),
        _ptr(d_own),
        _ptr(d_pre),
        _ptr(d_logits),
        d_mlp,
        d_out,
        _ptr(d_table_M),
        _ptr(d_table_L),
        _ptr(d_row_score),
        threads,
    )
    return d_table_M, d_table_L, colsum.sum(0), d_row_score
