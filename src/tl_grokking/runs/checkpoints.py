"""Load grokking checkpoints of every known layout into a :class:`HookedTransformer`, safely.

Formats (see ``docs/checkpoints.md``):

* ``run_dir`` — our run directory: ``config.json`` + ``checkpoints/epoch_<N>.safetensors``.
* ``safetensors`` — one of our ``epoch_<N>.safetensors`` files (a HookedTransformer state dict);
  the run's ``config.json`` two levels up is used when present.
* ``authors`` — the layout of Nanda et al.'s original code: a dict with ``model`` (their state
  dict: ``embed.W_E`` is ``(d_model, p + 1)``, ``W_Q/W_K/W_V`` are ``(n_heads, d_head, d_model)``,
  ``W_O`` is ``(d_model, n_heads * d_head)`` with head-major columns, ``W_in``/``W_out`` are
  transposed, ``p + 1`` output logits); full runs add ``state_dicts`` and ``epochs``.
* ``tl_demo`` — the TransformerLens grokking demo ``.pth``: ``model``, ``config``,
  ``checkpoints``, ``checkpoint_epochs``, ``train_losses``, ``test_losses``, ``train_indices``,
  ``test_indices``.
* ``state_dict`` — a plain HookedTransformer state dict (in memory, or a ``.pt``/``.pth`` file).

Safety: files are read only with safetensors or ``torch.load(..., weights_only=True)``; no code
in a file ever runs. The one non-tensor object the demo format pickles, its
``HookedTransformerConfig``, is unpickled into an inert attribute bag (:class:`_PickledConfig`)
and read as a dict. A pickle that needs anything else raises :class:`UnsafeCheckpointError`.

Every state dict is checked before it becomes a model: structure (one layer, no LayerNorm,
``n_ctx`` 3, ``d_vocab_out`` p or p + 1, the requested p) → :class:`IncompatibleModelError` naming
each failing property; every tensor's shape → :class:`CheckpointShapeError` naming the key; finite
values → :class:`NonFiniteWeightsError` naming the tensor. The model is built with
:func:`tl_grokking.model.transformer.make_model` and passes
:func:`tl_grokking.model.transformer.check_compatible`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import einops
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor

from tl_grokking._format import fmt_num
from tl_grokking._resources import available_memory
from tl_grokking._validation import check_int
from tl_grokking.data.tasks import SPLIT_METHODS, Task, make_task, validate_frac_train
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.fastforward import final_logits_batched
from tl_grokking.model.transformer import (
    GrokModel,
    IncompatibleModelError,
    check_compatible,
    make_model,
)
from tl_grokking.runs.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RunDirError,
    SpecialFileError,
    checkpoint_epoch,
    is_run_dir,
    path_kind,
    read_json,
    read_metrics,
    read_safetensors,
    require_file,
    require_run_dir,
)

__all__ = [
    "CHECKPOINT_FORMATS",
    "CheckpointFormatError",
    "CheckpointShapeError",
    "NonFiniteWeightsError",
    "UnsafeCheckpointError",
    "CheckpointSizeError",
    "MAX_INFLATE_RATIO",
    "INFLATE_FLOOR",
    "inflate_limit",
    "LoadedRun",
    "SplitInfo",
    "SplitCheck",
    "AUTHORS_SEED",
    "AUTHORS_FRAC_TRAIN",
    "AUTHORS_SEED_SEARCH",
    "SPLIT_CHECK_RTOL",
    "load_checkpoint",
    "load_run",
    "read_checkpoint_file",
    "detect_format",
    "state_dict_layout",
    "convert_state_dict",
    "infer_model_config",
]

CHECKPOINT_FORMATS: dict[str, str] = {
    "run_dir": "our run directory: config.json + checkpoints/epoch_<N>.safetensors",
    "safetensors": "one of our checkpoint files, epoch_<N>.safetensors (GrokModel keys)",
    "authors": (
        "the authors' original layout: a dict with 'model' (their state dict, W_E of shape "
        "(d_model, p+1), 2-D W_O); full runs add 'state_dicts' and 'epochs'"
    ),
    "tl_demo": (
        "the TransformerLens grokking demo .pth: 'model', 'config', 'checkpoints', "
        "'checkpoint_epochs', 'train_losses', 'test_losses', 'train_indices', 'test_indices'"
    ),
    "state_dict": "a plain HookedTransformer state dict (a dict of tensors, or a .pt/.pth of one)",
}


class CheckpointFormatError(ValueError):
    """The input is not a checkpoint in any known format, or is corrupt or truncated."""


class UnsafeCheckpointError(CheckpointFormatError):
    """The file is a pickle that could only be loaded by running code it names."""


class CheckpointSizeError(CheckpointFormatError):
    """A torch zip file declares more uncompressed bytes than loading it may inflate
    (:func:`inflate_limit`); refused before anything is inflated."""


class CheckpointShapeError(CheckpointFormatError):
    """A tensor in a state dict has the wrong shape for the model the others describe."""


class NonFiniteWeightsError(ValueError):
    """A weight tensor contains NaN or infinite values."""


def _formats_help() -> str:
    return "known formats: " + "; ".join(f"{k} ({v})" for k, v in CHECKPOINT_FORMATS.items())


# ---------------------------------------------------------------------------------------------
# Reading files: safetensors or weights-only torch.load, nothing else.
# ---------------------------------------------------------------------------------------------


class _PickledConfig:
    """Inert stand-in for a pickled ``HookedTransformerConfig``: unpickling only fills __dict__.

    It has no ``__setstate__`` or other behaviour, so allowlisting it for ``weights_only``
    loading cannot run code. :func:`_config_hints` reads it as a plain dict.
    """


# Where HookedTransformerConfig lived across TransformerLens versions (pickles name the path),
# and TransformerLens 4's TransformerBridgeConfig (the demo notebook run on 4.x pickles it).
_CONFIG_CLASS_PATHS = (
    "transformer_lens.config.hooked_transformer_config.HookedTransformerConfig",
    "transformer_lens.config.transformer_bridge_config.TransformerBridgeConfig",
    "transformer_lens.HookedTransformerConfig.HookedTransformerConfig",
    "transformer_lens.config.HookedTransformerConfig.HookedTransformerConfig",
    "easy_transformer.EasyTransformerConfig.EasyTransformerConfig",
)


def _safe_globals() -> list:
    """Globals a demo config needs: the inert stand-in and numpy scalars (plain data)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    scalar = getattr(core, "multiarray").scalar  # noqa: B009 (numpy.core has no stubs)
    allowed: list = [(_PickledConfig, path) for path in _CONFIG_CLASS_PATHS]
    allowed += [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    allowed += [
        getattr(np.dtypes, name)
        for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name)
    ]
    return allowed


_UNSAFE_PATTERNS = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+)"),
    re.compile(r"reduce for unrecognized function (.+)"),
    re.compile(r"Can only (?:create new object|build)[^\n]*"),
)


def _file_kind(path: Path) -> str:
    """Identify a file by its first bytes: 'zip' (torch.save), 'pickle' (legacy), 'safetensors'."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= path.stat().st_size - 8:
            return "safetensors"
    return "unknown"


#: A torch zip file whose entries are compressed may declare at most this many times its own
#: size in uncompressed bytes (beyond :data:`INFLATE_FLOOR`). ``torch.save`` stores every entry
#: uncompressed (ratio 1), and re-compressed trained weights shrink by ~10 %, so only a file
#: made to expand (a "zip bomb") comes near it.
MAX_INFLATE_RATIO = 32
#: Uncompressed bytes any torch zip file may declare, whatever its size: 256 MiB, far beyond
#: every model these tools analyse (the paper's p = 113 model is 0.9 MB a checkpoint; the
#: authors' full run of 500 checkpoints is ~0.5 GB on disk, stored, so not bound by it).
INFLATE_FLOOR = 256 * 2**20


def inflate_limit(file_size: int, compressed: bool) -> tuple[int | None, str]:
    """The most uncompressed bytes a torch zip file of ``file_size`` bytes may declare, and
    why: half of the memory available now (``MemAvailable``), and, when any entry is
    compressed, ``max(MAX_INFLATE_RATIO × file_size, INFLATE_FLOOR)``. ``(None, "")``: no
    bound known (no memory figure and nothing compressed)."""
    bounds: list[tuple[int, str]] = []
    available = available_memory()
    if available is not None:
        bounds.append((available // 2, f"half of the {_gb(available)} of memory available"))
    if compressed:
        ratio = MAX_INFLATE_RATIO * file_size
        if ratio >= INFLATE_FLOOR:
            why = f"{MAX_INFLATE_RATIO} times the file's compressed size of {_gb(file_size)}"
        else:
            why = f"the {_gb(INFLATE_FLOOR)} any compressed checkpoint may expand to"
        bounds.append((max(ratio, INFLATE_FLOOR), why))
    if not bounds:
        return None, ""
    return min(bounds)


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 10**8 else f"{n / 1e6:.3g} MB" if n >= 10**5 else f"{n} B"


def _check_zip_sizes(path: Path) -> None:
    """Refuse a torch zip file from its central directory, before ``torch.load`` inflates
    anything: an entry whose stored bytes lie beyond the end of the file (truncated or
    forged) → :class:`CheckpointFormatError`; declared uncompressed sizes summing to more than
    :func:`inflate_limit` → :class:`CheckpointSizeError` naming the total, the largest entry
    and the bound. (torch reads each entry into a buffer of the size the central directory
    declares, so the declared sizes bound what loading allocates.)"""
    import zipfile

    file_size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise CheckpointFormatError(
            f"{path}: corrupt or truncated torch file (its zip directory cannot be read: {err})"
        ) from None
    for entry in entries:
        if entry.header_offset + entry.compress_size > file_size:
            raise CheckpointFormatError(
                f"{path}: corrupt or truncated torch file (zip entry {entry.filename} declares "
                f"{entry.compress_size} stored bytes at offset {entry.header_offset}, beyond "
                f"the end of the {file_size}-byte file)"
            )
    compressed = any(e.compress_type != zipfile.ZIP_STORED for e in entries)
    total = sum(e.file_size for e in entries)
    bound, why = inflate_limit(file_size, compressed)
    if bound is not None and total > bound:
        largest = max(entries, key=lambda e: e.file_size)
        how = "compressed" if largest.compress_type != zipfile.ZIP_STORED else "stored"
        raise CheckpointSizeError(
            f"{path}: refusing to load: its zip entries declare {total} bytes ({_gb(total)}) "
            f"uncompressed, more than the {bound} bytes ({_gb(bound)}) allowed: {why}; the "
            f"largest entry, {largest.filename}, declares {largest.file_size} bytes "
            f"({how}, {largest.compress_size} bytes in the file). torch.save stores its "
            "entries uncompressed: this file was re-packed or made to expand"
        )


def _unpickler_detail(message: str) -> str:
    """What torch's weights-only unpickler objected to, from its long message (which ends
    with a pointer to the documentation)."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    text = rest.split("Check the documentation")[0] if found else message
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Check the documentation")]
    return " ".join(lines)[:300] or "unreadable pickle"


def read_checkpoint_file(path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """Read a checkpoint file without executing code; return ``(object, safetensors metadata)``.

    The format is decided by the file's first bytes (:func:`_file_kind`), never by its name: a
    torch file called ``*.safetensors`` loads as the torch file it is.

    safetensors files are read with :func:`tl_grokking.runs.rundir.read_safetensors`; torch
    files with ``torch.load(map_location="cpu", weights_only=True)`` (CUDA-saved tensors land
    on the CPU).
    Raises :class:`UnsafeCheckpointError` for a pickle that would need to run code,
    :class:`CheckpointFormatError` for a corrupt, truncated or unrecognised file,
    :class:`CheckpointSizeError` for a zip file whose entries declare more uncompressed bytes
    than :func:`inflate_limit` allows (checked from the zip directory before anything is
    inflated), and what :func:`tl_grokking.runs.rundir.require_file` raises for a path that
    is not a regular file (a directory, a FIFO, a symbolic link loop; never opened).

    A legacy (non-zip) torch file cannot be checked so: its storage sizes are inside the
    pickle. It is not compressed either: torch allocates each storage at the size the pickle
    declares and fills it from the file, so a storage larger than the rest of the file (or
    than memory) fails as a corrupt or truncated file after reading at most the file's bytes.
    """
    path = require_file(path, "checkpoint file")
    kind = _file_kind(path)
    if kind == "safetensors":
        try:
            return read_safetensors(path)  # read, not mapped: validates the file
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointFormatError(
                f"{path}: corrupt or truncated safetensors file ({err})"
            ) from None
    if kind in ("zip", "pickle"):
        if kind == "zip":
            _check_zip_sizes(path)
        try:
            # Only what is not allowlisted already: leaving the context removes what it added.
            present = set(torch.serialization.get_safe_globals())
            extra = [g for g in _safe_globals() if g not in present]
            # A file object, not the path: torch picks a format by the file's suffix, and the
            # bytes (a zip or a pickle, whatever the name says) decide here.
            with torch.serialization.safe_globals(extra), open(path, "rb") as fh:
                with warnings.catch_warnings():  # "Detected pickle protocol N": not the user's
                    warnings.simplefilter("ignore", UserWarning)
                    obj = torch.load(fh, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            message = str(err)
            for pattern in _UNSAFE_PATTERNS:
                match = pattern.search(message)
                if match:
                    culprit = match.group(1) if match.groups() else match.group(0)
                    raise UnsafeCheckpointError(
                        f"{path}: refusing to load: the file pickles a Python object "
                        f"({culprit}) that only code execution could rebuild. Checkpoints are "
                        "loaded with torch.load(weights_only=True) or safetensors, never a plain "
                        "unpickler. If you trust the file, re-save its tensors (e.g. the state "
                        "dict) in a trusted session and load that."
                    ) from None
            raise CheckpointFormatError(
                f"{path}: corrupt or truncated torch file, or one torch.load(weights_only=True) "
                f"cannot read ({_unpickler_detail(message)})"
            ) from None
        except Exception as err:  # noqa: BLE001 - garbage can fail anywhere in the decoder
            # (IndexError, struct.error, ...); weights_only never runs the file's code
            raise CheckpointFormatError(
                f"{path}: corrupt or truncated torch file ({type(err).__name__}: {err})"
            ) from None
        return obj, {}
    if path.suffix == ".safetensors":  # e.g. a run's checkpoint cut off in a copy
        raise CheckpointFormatError(
            f"{path}: corrupt or truncated safetensors file (its first bytes are not a "
            "safetensors header: an 8-byte length, then a JSON object that fits in the file)"
        )
    raise CheckpointFormatError(
        f"{path}: not a safetensors or torch file (unrecognised first bytes); " + _formats_help()
    )


# ---------------------------------------------------------------------------------------------
# State-dict layouts, structure checks, shape tables, conversion.
# ---------------------------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_NORM_RE = re.compile(r"(^|\.)ln(\d+|_final|_pre)?\.")
_BUFFERS = ("blocks.0.attn.mask", "blocks.0.attn.IGNORE")
_BIASES = (
    "blocks.0.attn.b_Q",
    "blocks.0.attn.b_K",
    "blocks.0.attn.b_V",
    "blocks.0.attn.b_O",
    "blocks.0.mlp.b_in",
    "blocks.0.mlp.b_out",
    "unembed.b_U",
)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def state_dict_layout(state: Mapping[str, Tensor]) -> str:
    """``"authors"`` (2-D ``W_O``, transposed weights) or ``"tl"`` (GrokModel layout).

    Both layouts share key names; the attention output matrix tells them apart: the authors'
    ``W_O`` is ``(d_model, n_heads * d_head)``, TransformerLens' is ``(n_heads, d_head, d_model)``.
    """
    if not _is_state_dict(state):
        raise CheckpointFormatError(
            "expected a state dict (a non-empty dict of str -> tensor); " + _formats_help()
        )
    if "embed.weight" in state and any(
        re.fullmatch(r"blocks\.\d+\.attn\.o\.weight", k) for k in state
    ):
        raise CheckpointFormatError(
            "this is a TransformerLens 4 TransformerBridge state dict (keys 'embed.weight', "
            "'blocks.0.attn.o.weight', ...), which does not record the number of heads; save "
            "the TL-3-keyed weights instead: tl_grokking.model.transformer.tl3_state_dict(model) "
            "(or model.tl_parameters()); docs/transformerlens.md"
        )
    w_o = [k for k in state if re.fullmatch(r"blocks\.\d+\.attn\.W_O", k)]
    if not w_o or "embed.W_E" not in state:
        raise CheckpointFormatError(
            "state dict has no 'embed.W_E' / 'blocks.<i>.attn.W_O': not a transformer state dict "
            f"(first keys: {sorted(state)[:6]}); " + _formats_help()
        )
    ndim = state[w_o[0]].ndim
    if ndim == 2:
        return "authors"
    if ndim == 3:
        return "tl"
    raise CheckpointFormatError(f"{w_o[0]} has {ndim} dimensions; expected 2 (authors') or 3 (TL)")


def _structure(state: Mapping[str, Tensor], layout: str) -> dict[str, int]:
    """Read p, d_model, n_heads, d_head, d_mlp, d_vocab_out, n_ctx, n_layers off the shapes."""
    for key in _MATRICES:
        if key in state and state[key].ndim != 2:
            raise CheckpointShapeError(
                f"{key} has shape {tuple(state[key].shape)}; expected a matrix (2 dimensions)"
            )
    w_e = state["embed.W_E"]
    d_vocab, d_model = (w_e.shape[1], w_e.shape[0]) if layout == "authors" else tuple(w_e.shape)
    layers = {int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))}
    info = {
        "p": d_vocab - 1,
        "d_model": d_model,
        "n_layers": max(layers) + 1 if layers else 0,
        "n_ctx": state["pos_embed.W_pos"].shape[0] if "pos_embed.W_pos" in state else -1,
        "d_vocab_out": state["unembed.W_U"].shape[-1] if "unembed.W_U" in state else -1,
    }
    w_q = state.get("blocks.0.attn.W_Q")
    if w_q is not None and w_q.ndim == 3:
        info["n_heads"] = w_q.shape[0]
        info["d_head"] = w_q.shape[1] if layout == "authors" else w_q.shape[2]
    w_in = state.get("blocks.0.mlp.W_in")
    if w_in is not None and w_in.ndim == 2:
        info["d_mlp"] = w_in.shape[0] if layout == "authors" else w_in.shape[1]
    return info


#: Weights whose two dimensions the structure is read from.
_MATRICES = ("embed.W_E", "pos_embed.W_pos", "unembed.W_U", "blocks.0.mlp.W_in")
#: The tensor each structural field is read from (named when a configuration disagrees).
_READ_FROM = {
    "p": "embed.W_E",
    "d_model": "embed.W_E",
    "n_heads": "blocks.0.attn.W_Q",
    "d_head": "blocks.0.attn.W_Q",
    "d_mlp": "blocks.0.mlp.W_in",
    "d_vocab_out": "unembed.W_U",
}


def _located(err: Exception, where: str | None) -> Exception:
    """``err`` again, of its class, its message prefixed with ``where`` (the file and epoch
    it is about) unless it names it already."""
    if not where or where in str(err):
        return err
    try:
        return type(err)(f"{where}: {err}")
    except TypeError:  # pragma: no cover - a class with another constructor
        return err


def _check_structure(
    state: Mapping[str, Tensor], layout: str, info: dict[str, int], p: int | None
) -> None:
    """Raise :class:`IncompatibleModelError` naming every failing property of a state dict."""
    problems = []
    if info["n_layers"] != 1:
        problems.append(f"n_layers is {info['n_layers']}, must be 1")
    norm_keys = sorted(k for k in state if _NORM_RE.search(k))
    if norm_keys:
        problems.append(
            f"LayerNorm weights present ({', '.join(norm_keys[:4])}), must have none "
            "(normalization_type=None)"
        )
    if info["n_ctx"] != 3:
        problems.append(f"n_ctx is {info['n_ctx']} (pos_embed.W_pos rows), must be 3")
    model_p = info["p"]
    if model_p < 3:
        problems.append(f"d_vocab is {model_p + 1}, must be p + 1 with p >= 3")
    if info["d_vocab_out"] not in (model_p, model_p + 1):
        problems.append(
            f"d_vocab_out is {info['d_vocab_out']} (unembed.W_U), must be p ({model_p}) or "
            f"p + 1 ({model_p + 1}) for d_vocab {model_p + 1}"
        )
    if p is not None and p != model_p:
        problems.append(
            f"d_vocab is {model_p + 1} (p = {model_p}) but p = {p} was requested (embed.W_E "
            f"has shape {tuple(state['embed.W_E'].shape)})"
        )
    if "d_mlp" not in info:
        problems.append("no MLP weights (blocks.0.mlp.W_in), the model must have an MLP")
    mask = state.get("blocks.0.attn.mask")
    if mask is not None and mask.numel() > 0:
        causal = torch.ones(mask.shape[-2:], dtype=torch.bool).tril()
        if mask.shape != causal.shape or not torch.equal(mask.bool(), causal):
            problems.append("blocks.0.attn.mask is not the causal (lower-triangular) mask")
    if problems:
        raise IncompatibleModelError(
            "checkpoint is not a compatible one-layer grokking transformer: " + "; ".join(problems)
        )


def _expected_shapes(config: ModelConfig, layout: str) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter in ``layout`` ("tl" or "authors") for ``config``."""
    m, h, e, f = config.d_model, config.n_heads, config.d_head, config.d_mlp
    v_in, v_out = config.d_vocab, config.d_vocab_out
    assert e is not None and v_out is not None  # ModelConfig.__post_init__ resolves them
    if layout == "tl":
        qkv, w_o, w_e = (h, m, e), (h, e, m), (v_in, m)
        w_in, w_out = (m, f), (f, m)
    else:
        qkv, w_o, w_e = (h, e, m), (m, h * e), (m, v_in)
        w_in, w_out = (f, m), (m, f)
    return {
        "embed.W_E": w_e,
        "pos_embed.W_pos": (3, m),
        "blocks.0.attn.W_Q": qkv,
        "blocks.0.attn.W_K": qkv,
        "blocks.0.attn.W_V": qkv,
        "blocks.0.attn.W_O": w_o,
        "blocks.0.attn.b_Q": (h, e),
        "blocks.0.attn.b_K": (h, e),
        "blocks.0.attn.b_V": (h, e),
        "blocks.0.attn.b_O": (m,),
        "blocks.0.mlp.W_in": w_in,
        "blocks.0.mlp.b_in": (f,),
        "blocks.0.mlp.W_out": w_out,
        "blocks.0.mlp.b_out": (m,),
        "unembed.W_U": (m, v_out),
        "unembed.b_U": (v_out,),
    }


def infer_model_config(
    state: Mapping[str, Tensor],
    *,
    hints: Mapping[str, Any] | None = None,
    p: int | None = None,
    drop_eq_logit: bool = False,
    hints_from: str | None = None,
) -> ModelConfig:
    """The :class:`ModelConfig` of a state dict (either layout), checked for compatibility.

    Structural fields (p, d_model, n_heads, d_head, d_mlp, d_vocab_out) come from the tensor
    shapes; ``hints`` (a run's config.json, a demo config, safetensors metadata) supply
    ``act_fn``, ``attn_rate`` and ``trainable_biases`` and must agree with the shapes on any
    structural field they give (``hints_from``, e.g. the config file, is named when one
    does not). ``drop_eq_logit`` turns a ``p + 1``-logit unembedding into p.
    """
    layout = state_dict_layout(state)
    info = _structure(state, layout)
    _check_structure(state, layout, info, p)
    hints = dict(hints or {})
    for name in ("p", "d_model", "n_heads", "d_head", "d_mlp", "n_layers", "d_vocab_out"):
        given = hints.get(name)
        if given is not None and int(given) != info[name]:
            source = "the run's configuration" + (f" ({hints_from})" if hints_from else "")
            tensor = _READ_FROM.get(name, "")
            shown = f" ({tensor} has shape {tuple(state[tensor].shape)})" if tensor in state else ""
            raise CheckpointShapeError(
                f"{source} says {name}={given} but the checkpoint's tensors have "
                f"{name}={info[name]}{shown}"
            )
    d_vocab_out = info["d_vocab_out"]
    if drop_eq_logit and d_vocab_out == info["p"] + 1:
        d_vocab_out = info["p"]
    return ModelConfig(
        p=info["p"],
        d_model=info["d_model"],
        n_heads=info["n_heads"],
        d_head=info["d_head"],
        d_mlp=info["d_mlp"],
        act_fn=hints.get("act_fn") or "relu",
        d_vocab_out=d_vocab_out,
        trainable_biases=hints.get("trainable_biases") or "none",
        attn_rate=float(hints.get("attn_rate", 1.0)),
    )


def convert_state_dict(
    state: Mapping[str, Tensor],
    config: ModelConfig,
    *,
    allow_nonfinite: bool = False,
    where: str = "state dict",
) -> dict[str, Tensor]:
    """Validate ``state`` (either layout) against ``config`` and return HookedTransformer params.

    The authors' layout is rearranged: ``W_E``, ``W_in``, ``W_out`` transposed; ``W_Q/W_K/W_V``
    ``(head, d_head, d_model) -> (head, d_model, d_head)``; ``W_O`` ``(d_model, (head d_head)) ->
    (head, d_head, d_model)``. Absent biases become zeros. An unembedding with one logit more
    than ``config.d_vocab_out`` (the authors' ``=`` logit) is cut to the first p columns.
    Buffers (``attn.mask``, ``attn.IGNORE``) are dropped: the model builds its own.
    """
    try:
        layout = state_dict_layout(state)
        info = _structure(state, layout)
        _check_structure(state, layout, info, config.p)
    except (CheckpointFormatError, IncompatibleModelError) as err:
        raise _located(err, where if where != "state dict" else None) from None
    source_out = info["d_vocab_out"]
    src_config = config
    if source_out != config.d_vocab_out:
        if not (source_out == config.p + 1 and config.d_vocab_out == config.p):
            raise CheckpointShapeError(
                f"{where}: unembed.W_U: expected {config.d_vocab_out} output logits, "
                f"got {source_out}"
            )
        src_config = ModelConfig(**{**config.to_dict(), "d_vocab_out": source_out})
    expected = _expected_shapes(src_config, layout)
    unknown = sorted(set(state) - set(expected) - set(_BUFFERS))
    if unknown:
        raise CheckpointFormatError(f"{where}: unexpected keys {unknown}; " + _formats_help())
    missing = sorted(k for k in expected if k not in state and k not in _BIASES)
    if missing:
        raise CheckpointFormatError(f"{where}: missing keys {missing}")
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            raise CheckpointShapeError(
                f"{where}: {key} ({layout} layout): expected shape {shape}, "
                f"got {tuple(state[key].shape)}"
            )
    params = {k: state[k] for k in expected if k in state}
    if not allow_nonfinite:
        bad = [
            f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()} values)"
            for k, v in params.items()
            if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise NonFiniteWeightsError(
                f"{where}: NaN or infinite weights in {', '.join(bad)}; pass "
                "allow_nonfinite=True to load them anyway"
            )
    out: dict[str, Tensor] = {}
    for key, shape in expected.items():
        value = params.get(key)
        if value is None:  # a bias the source does not have: a zero bias
            value = torch.zeros(shape)
        elif layout == "authors":
            value = _authors_to_tl(key, value, config.n_heads)
        out[key] = value.detach().to("cpu", torch.float32)
    if src_config is not config:  # drop the authors' "=" logit
        out["unembed.W_U"] = out["unembed.W_U"][:, : config.d_vocab_out]
        out["unembed.b_U"] = out["unembed.b_U"][: config.d_vocab_out]
    return out


def _authors_to_tl(key: str, value: Tensor, n_heads: int) -> Tensor:
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("W_E", "W_in", "W_out"):
        return value.T
    if leaf in ("W_Q", "W_K", "W_V"):
        return einops.rearrange(value, "head d_head d_model -> head d_model d_head")
    if leaf == "W_O":
        return einops.rearrange(value, "d_model (head d_head) -> head d_head d_model", head=n_heads)
    return value


def _build_model(
    params: Mapping[str, Tensor], config: ModelConfig, device: str | torch.device, task: Task
) -> GrokModel:
    """``make_model(config)`` with ``params`` loaded, checked by ``check_compatible``."""
    model = make_model(config, device=device, weights=params)
    check_compatible(model, task)
    return model


# ---------------------------------------------------------------------------------------------
# Sources: a run (possibly of one checkpoint) in any format.
# ---------------------------------------------------------------------------------------------

_HINT_FIELDS = ("p", "d_model", "n_heads", "d_head", "d_mlp", "act_fn", "d_vocab_out")


def _config_hints(config: Any) -> dict[str, Any]:
    """Turn a run config (dict, stand-in config object) into ModelConfig hints + task info."""
    if config is None:
        return {}
    data = dict(vars(config)) if isinstance(config, _PickledConfig) else config
    if not isinstance(data, Mapping):
        return {}
    hints = {k: data[k] for k in _HINT_FIELDS if data.get(k) is not None}
    for key in ("trainable_biases", "attn_rate", "task", "frac_train", "seed"):
        if data.get(key) is not None:
            hints[key] = data[key]
    if "d_vocab" in data and "p" not in hints and data["d_vocab"] is not None:
        hints["p"] = int(data["d_vocab"]) - 1
    if data.get("n_layers") is not None:
        hints["n_layers"] = data["n_layers"]
    if data.get("normalization_type") is not None:
        raise IncompatibleModelError(
            f"normalization_type is {data['normalization_type']!r}, must be None"
        )
    return hints


@dataclass
class _Source:
    """A checkpoint source before conversion: raw state dicts (or loaders) by epoch."""

    format: str
    path: Path | None
    snapshots: dict[int | None, Callable[[], Mapping[str, Tensor]]]
    final: int | None  # key in ``snapshots`` of the final model
    hints: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    train_indices: Tensor | None = None
    test_indices: Tensor | None = None
    has_config: bool = False  # the file stores a run configuration (authors' / demo 'config')
    stored_split: dict[str, Any] | None = None  # a safetensors file's "split" metadata
    files: dict[int, Path] = field(default_factory=dict)  # a run directory's checkpoint files
    hints_from: str | None = None  # where ``hints`` come from (a run's config.json)

    def where(self, key: int | None) -> str:
        """What a message about the snapshot ``key`` names: its file and epoch."""
        if key is None:
            return str(self.path or self.format)
        file = self.files.get(key)
        return f"{file if file is not None else self.path or self.format} (epoch {key})"


def _constant(state: Mapping[str, Tensor]) -> Callable[[], Mapping[str, Tensor]]:
    return lambda: state


def _losses_to_metrics(container: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-epoch metrics from the ``train_losses`` / ``test_losses`` histories of a file.

    The longer history has one entry per epoch. A shorter one whose length divides it was
    logged every ``len(longer) / len(shorter)`` epochs (the authors' code records the test loss
    every 10 epochs: 50000 train and 5000 test entries), so its entry i belongs to epoch
    ``i · stride``. A shorter history that does not divide it cannot be placed and is left out
    rather than labelled with the wrong epochs.
    """
    columns = {
        name: list(container[key])
        for name, key in (("train_loss", "train_losses"), ("test_loss", "test_losses"))
        if isinstance(container.get(key), list | tuple) and len(container[key]) > 0
    }
    n = max((len(v) for v in columns.values()), default=0)
    by_epoch: dict[int, dict[str, Any]] = {i: {"epoch": i} for i in range(n)}
    for name, col in columns.items():
        if n % len(col):
            continue
        stride = n // len(col)
        for i, value in enumerate(col):
            by_epoch[i * stride][name] = float(value)
    return list(by_epoch.values())


def _int_list(values: Any, what: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise CheckpointFormatError(f"{what} must be a list of integers") from None


def _indices(values: Any) -> Tensor | None:
    if values is None:
        return None
    return torch.as_tensor(np.asarray(values), dtype=torch.long).sort().values


def _same_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _source_from_object(
    obj: Any, path: Path | None, metadata: Mapping[str, str], *, safetensors: bool = False
) -> _Source:
    """Classify an in-memory object (a loaded file or a user's dict)."""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"{path or 'object'}: expected a dict, got {type(obj).__name__}; " + _formats_help()
        )
    if _is_state_dict(obj):
        layout = state_dict_layout(obj)
        fmt = "authors" if layout == "authors" else ("safetensors" if safetensors else "state_dict")
        epoch = _epoch_from_file(path, metadata)
        hints = _hints_near_file(path, metadata) if safetensors else {}
        if layout == "authors":
            hints.setdefault("trainable_biases", "mlp")
        stored_split = _metadata_split(path, metadata) if safetensors else None
        return _Source(
            fmt, path, {epoch: _constant(obj)}, epoch, hints=hints, stored_split=stored_split
        )
    if "checkpoints" in obj or "checkpoint_epochs" in obj:
        return _demo_source(obj, path)
    if "model" in obj and isinstance(obj["model"], Mapping):
        return _authors_source(obj, path)
    raise CheckpointFormatError(
        f"{path or 'object'}: unrecognised checkpoint "
        f"(top-level keys {sorted(map(str, obj))[:8]}); " + _formats_help()
    )


def _demo_source(obj: Mapping[str, Any], path: Path | None) -> _Source:
    states = obj.get("checkpoints")
    epochs = _int_list(obj.get("checkpoint_epochs", ()), "checkpoint_epochs")
    if not isinstance(states, list | tuple) or len(states) != len(epochs):
        raise CheckpointFormatError(
            f"{path or 'object'}: TransformerLens demo file needs 'checkpoints' and "
            f"'checkpoint_epochs' lists of equal length"
        )
    snapshots: dict[int | None, Callable[[], Mapping[str, Tensor]]] = {
        e: _constant(s) for e, s in zip(epochs, states, strict=True)
    }
    final = epochs[-1] if epochs else None
    model = obj.get("model")
    if isinstance(model, Mapping) and (not states or not _same_state(model, states[-1])):
        # The demo's last checkpoint is normally the final model; if not, label the final
        # model by the number of epochs its loss history records.
        n_epochs = len(obj.get("train_losses") or ())
        final = max(n_epochs - 1, (epochs[-1] + 1) if epochs else 0)
        snapshots[final] = _constant(model)
    if final is None:
        raise CheckpointFormatError(f"{path or 'object'}: TransformerLens demo file has no model")
    hints = _config_hints(obj.get("config"))
    hints.setdefault("trainable_biases", "none")
    return _Source(
        "tl_demo",
        path,
        snapshots,
        final,
        hints=hints,
        metrics=_losses_to_metrics(obj),
        train_indices=_indices(obj.get("train_indices")),
        test_indices=_indices(obj.get("test_indices")),
    )


def _authors_source(obj: Mapping[str, Any], path: Path | None) -> _Source:
    """The authors' container: ``model`` plus, for full runs, ``state_dicts`` and ``epochs``."""
    model = obj["model"]
    layout = state_dict_layout(model)
    states = obj.get("state_dicts", ())
    epochs = _int_list(obj.get("epochs", ()), "epochs")
    if not isinstance(states, list | tuple) or len(states) != len(epochs):
        raise CheckpointFormatError(
            f"{path or 'object'}: a full run needs 'state_dicts' and 'epochs' lists of equal length"
        )
    snapshots: dict[int | None, Callable[[], Mapping[str, Tensor]]] = {
        e: _constant(s) for e, s in zip(epochs, states, strict=True)
    }
    # The final model's epoch: the stored 'epoch' (the authors' last loop index), else the
    # length of the loss history; a final model equal to the last checkpoint is that checkpoint.
    final: int | None
    if isinstance(obj.get("epoch"), int | Tensor):
        final = int(obj["epoch"])
    elif isinstance(obj.get("train_losses"), list | tuple):
        final = len(obj["train_losses"]) - 1
    else:
        final = epochs[-1] + 1 if epochs else None  # a bare {"model": ...}: epoch unknown
    if states and _same_state(model, states[-1]):
        final = epochs[-1]
    else:
        snapshots[final] = _constant(model)
    hints = _config_hints(obj.get("config"))
    hints.setdefault("trainable_biases", "mlp" if layout == "authors" else "none")
    fmt = "authors" if layout == "authors" else "tl_demo"
    return _Source(
        fmt,
        path,
        snapshots,
        final,
        hints=hints,
        metrics=_losses_to_metrics(obj),
        has_config=obj.get("config") is not None,
    )


def _metadata_split(path: Path | None, metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``split`` metadata of a safetensors file: JSON ``{"method", "seed", "frac_train"}``
    and optionally ``"note"`` (how the split was established), e.g. in
    ``tests/data/paper_no_wd.safetensors``, converted from an authors' file."""
    if "split" not in metadata:
        return None
    try:
        split = json.loads(metadata["split"])
    except json.JSONDecodeError:
        split = None
    if not (
        isinstance(split, dict)
        and split.get("method") in SPLIT_METHODS
        and {"seed", "frac_train"} <= set(split)
    ):
        raise CheckpointFormatError(
            f"{path}: safetensors metadata 'split' must be a JSON object with 'method' (one of "
            f"{SPLIT_METHODS}), 'seed' and 'frac_train'; got {metadata['split']!r}"
        )
    return split


def _epoch_from_file(path: Path | None, metadata: Mapping[str, str]) -> int | None:
    if "epoch" in metadata:
        try:
            return int(metadata["epoch"])
        except ValueError:
            pass
    return None if path is None else checkpoint_epoch(path.name)


def _hints_near_file(path: Path | None, metadata: Mapping[str, str]) -> dict[str, Any]:
    """ModelConfig hints for a single file: its run's config.json, then safetensors metadata."""
    hints: dict[str, Any] = {}
    if path is not None:  # checkpoints/epoch_<N>.safetensors, or the run's resume.safetensors
        run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
        if is_run_dir(run_dir):
            hints.update(_config_hints(read_json(run_dir / CONFIG_FILE)))
    for key in ("model_config", "config"):
        if key in metadata:
            try:
                hints.update(_config_hints(json.loads(metadata[key])))
            except json.JSONDecodeError:
                raise CheckpointFormatError(
                    f"{path}: safetensors metadata {key!r} is not valid JSON"
                ) from None
    for key in _HINT_FIELDS + ("trainable_biases", "attn_rate"):
        if key in metadata and key not in hints:
            hints[key] = metadata[key]
    return hints


def _check_run_config(config: Any, path: Path) -> None:
    """Validate what analysis reads from a run's ``config.json`` (the architecture, the task and
    the split) with the trainer's own validators; errors name the file and the field."""
    from tl_grokking.data.tasks import TASKS, validate_frac_train

    if not isinstance(config, Mapping):
        raise RunDirError(f"{path} must hold a JSON object, got {type(config).__name__}")
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        ModelConfig.from_dict({k: v for k, v in config.items() if k in model_fields})
        if "frac_train" in config:
            validate_frac_train(config["frac_train"])
        if "seed" in config:
            check_int(config["seed"], "seed", minimum=0)
        task = config.get("task", "add")
        if not isinstance(task, str) or task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    except ValueError as err:
        raise RunDirError(f"{path}: {err}") from None


def _run_dir_source(run_dir: Path) -> _Source:
    found = require_run_dir(run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    _check_run_config(config, run_dir / CONFIG_FILE)

    def loader(file: Path) -> Callable[[], Mapping[str, Tensor]]:
        return lambda: read_checkpoint_file(file)[0]

    snapshots: dict[int | None, Callable[[], Mapping[str, Tensor]]] = {
        epoch: loader(file) for epoch, file in found
    }
    return _Source(
        "run_dir",
        run_dir,
        snapshots,
        found[-1][0],
        hints=_config_hints(config),
        metrics=read_metrics(run_dir),
        files=dict(found),
        hints_from=str(run_dir / CONFIG_FILE),
    )


#: Names of checkpoint files: a directory so named is a mistake, not a run directory.
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _open_source(path_or_state: Any) -> _Source:
    if isinstance(path_or_state, str | os.PathLike):
        path = Path(path_or_state)
        kind = path_kind(path)
        if kind == "a directory":
            if path.suffix in _CHECKPOINT_SUFFIXES and not is_run_dir(path):
                raise IsADirectoryError(
                    f"{path} is a directory, not a checkpoint file (nor a run directory: no "
                    f"{CONFIG_FILE})"
                )
            return _run_dir_source(path)
        if kind is None or "broken symbolic link" in kind:
            said = "does not exist" if kind is None else f"is {kind}"
            raise FileNotFoundError(
                f"{path} {said} (expected a run directory or a checkpoint file)"
            )
        if kind != "a regular file":  # a FIFO (never opened: it would block), a link loop, ...
            raise SpecialFileError(
                f"{path} is {kind}; expected a run directory or a checkpoint file"
            )
        obj, metadata = read_checkpoint_file(path)
        is_st = _file_kind(path) == "safetensors"
        if is_st and obj and all(k.startswith(("model.", "optim.")) for k in obj):
            # our resume.safetensors: the model's state dict under "model.", AdamW under "optim."
            obj = {k[len("model.") :]: v for k, v in obj.items() if k.startswith("model.")}
        try:
            return _source_from_object(obj, path, metadata, safetensors=is_st)
        except (CheckpointFormatError, IncompatibleModelError) as err:
            raise _located(err, str(path)) from None
    if isinstance(path_or_state, Mapping):
        return _source_from_object(path_or_state, None, {})
    raise CheckpointFormatError(
        f"expected a path or a dict, got {type(path_or_state).__name__}; " + _formats_help()
    )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


#: The authors' defaults (their ``Config``): seed 0, 30 % of the pairs for training.
AUTHORS_SEED = 0
AUTHORS_FRAC_TRAIN = 0.3
#: The seeds :func:`load_run` tries when an authors' file stores no seed and the default seed
#: does not reproduce the file's stored final train loss (see :class:`SplitCheck`).
AUTHORS_SEED_SEARCH = range(100)
#: The relative tolerance of :attr:`SplitCheck.matches`.
SPLIT_CHECK_RTOL = 0.05

_METHOD_NAMES = {"authors": "authors' procedure", "tl_grokking": "tl_grokking's procedure"}
_AUTHORS_CONFIG = "the file's config"


@dataclass(frozen=True)
class SplitInfo:
    """Where a run's train/test split comes from (:attr:`LoadedRun.split`).

    ``method``: ``"authors"`` or ``"tl_grokking"`` (the procedures of
    :meth:`tl_grokking.data.tasks.Task.split`, run with ``seed`` and ``frac_train``), or
    ``"recorded"`` (the file lists its train indices, as the TransformerLens demo does;
    ``seed`` and ``frac_train`` are then ``None``). ``seed_origin`` and ``frac_origin`` say
    where each value comes from: ``"file"`` (the run's stored configuration: our
    ``config.json``, an authors' file's ``config``), ``"given"`` (an argument of
    :func:`load_run`), ``"default"`` (assumed: the format's default, as nothing in the file
    says), ``"search"`` (found by :data:`AUTHORS_SEED_SEARCH`) or ``"recorded"``. ``source``
    says the same in words; ``str(info)`` is the whole description, e.g. ``authors'
    procedure, seed 0, frac_train 0.3: 3830 of 12769 pairs (assumed: the file stores no
    config)``.
    """

    method: str
    seed: int | None
    frac_train: float | None
    seed_origin: str
    frac_origin: str
    n_train: int
    n_inputs: int
    source: str

    @property
    def assumed(self) -> bool:
        """True when a value of the split is the format's default, not read from the file."""
        return "default" in (self.seed_origin, self.frac_origin)

    def to_dict(self) -> dict[str, Any]:
        """The fields and ``description`` (``str(self)``), for JSON."""
        return {**dataclasses.asdict(self), "description": str(self)}

    def __str__(self) -> str:
        if self.method == "recorded":
            return f"{self.source}: {self.n_train} of {self.n_inputs} pairs"
        return (
            f"{_METHOD_NAMES[self.method]}, seed {self.seed}, frac_train "
            f"{fmt_num(self.frac_train)}: {self.n_train} of {self.n_inputs} pairs ({self.source})"
        )


@dataclass(frozen=True)
class SplitCheck:
    """Does the recovered split reproduce the train loss the file stores?

    ``stored`` is the last train loss of the file's history (the authors' ``train_losses[-1]``,
    recorded in their last epoch, just before the final optimiser step); ``recomputed`` is the
    final model's float64 cross-entropy over all its output logits (the authors' loss) on the
    recovered train pairs, ``test_recomputed`` the same on the test pairs. :attr:`matches`
    when ``recomputed`` is within ``rtol`` (relative) of ``stored``; :attr:`conclusive` when
    the test pairs' loss is not, so that the check tells this split from another one.
    """

    epoch: int
    stored: float
    recomputed: float
    test_recomputed: float
    rtol: float = SPLIT_CHECK_RTOL

    @property
    def deviation(self) -> float:
        """``|recomputed / stored - 1|`` (``inf`` when ``stored`` is 0 and they differ)."""
        return _relative_deviation(self.recomputed, self.stored)

    @property
    def matches(self) -> bool:
        return self.deviation <= self.rtol

    @property
    def conclusive(self) -> bool:
        return _relative_deviation(self.test_recomputed, self.stored) > self.rtol

    def to_dict(self) -> dict[str, Any]:
        """The fields, ``matches`` and ``conclusive``, for JSON."""
        return {**dataclasses.asdict(self), "matches": self.matches, "conclusive": self.conclusive}

    def __str__(self) -> str:
        stored, recomputed = fmt_num(self.stored), fmt_num(self.recomputed)
        if not self.matches:
            return (
                f"does NOT reproduce the stored final train loss {stored} (recomputed "
                f"{recomputed} on these pairs): the run was probably trained on other pairs"
            )
        text = (
            f"reproduces the stored final train loss {stored} (recomputed {recomputed}, "
            f"{100 * self.deviation:.1f} % off)"
        )
        if not self.conclusive:
            text += (
                f"; inconclusive: the test pairs' loss {fmt_num(self.test_recomputed)} is as close"
            )
        return text


def _relative_deviation(value: float, reference: float) -> float:
    if not (math.isfinite(value) and math.isfinite(reference)):
        return math.inf
    if reference == 0:
        return 0.0 if value == 0 else math.inf
    return abs(value / reference - 1)


@dataclass(frozen=True)
class LoadedRun:
    """A training run loaded from any format; state dicts are converted on demand.

    ``epochs`` are the checkpoint epochs, ascending. ``train_indices``/``test_indices`` index
    rows of ``task.pairs()`` (sorted; ``None`` when the split is not known); ``split`` says
    where they come from (:class:`SplitInfo`) and, for the authors' format, ``split_check``
    whether they reproduce the file's stored final train loss (:class:`SplitCheck`).
    ``metrics`` are per-epoch dicts with at least ``epoch`` (our ``metrics.jsonl``, or the
    ``train_losses``/``test_losses`` histories of the other formats).
    """

    model_config: ModelConfig
    task: Task
    epochs: list[int]
    train_indices: Tensor | None
    test_indices: Tensor | None
    metrics: list[dict[str, Any]]
    format: str
    path: Path | None
    _source: _Source = field(repr=False, compare=False)
    _allow_nonfinite: bool = field(default=False, repr=False, compare=False)
    split: SplitInfo | None = None
    split_check: SplitCheck | None = None

    @property
    def final_epoch(self) -> int:
        return self.epochs[-1]

    def split_line(self) -> str:
        """One line on the train/test split for people, as the CLI prints it, e.g. ``train
        split: authors' procedure, seed 0, frac_train 0.3: 3830 of 12769 pairs (assumed: the
        file stores no config); reproduces the stored final train loss 1.681e-10 (recomputed
        1.668e-10, 0.8 % off)``."""
        if self.split is None:
            return "train split: none recorded (train-pair measures use all inputs)"
        line = f"train split: {self.split}"
        if self.split_check is not None:
            line += f"; {self.split_check}"
        elif self.format == "authors":
            line += "; the file stores no train loss to check it against"
        return line

    def _key(self, epoch: int | None) -> int | None:
        if epoch is None:
            return self._source.final
        if epoch not in self._source.snapshots:
            raise ValueError(
                f"epoch must be one of the checkpoint epochs {_summary(self.epochs)}, got {epoch}"
            )
        return epoch

    def state_dict(self, epoch: int | None = None) -> dict[str, Tensor]:
        """HookedTransformer parameters at ``epoch`` (default: the final model), validated."""
        key = self._key(epoch)
        where = self._source.where(key)
        return convert_state_dict(
            self._source.snapshots[key](),
            self.model_config,
            allow_nonfinite=self._allow_nonfinite,
            where=where,
        )

    def model(self, epoch: int | None = None, *, device: str | torch.device = "cpu") -> GrokModel:
        """A :class:`HookedTransformer` with the weights of ``epoch`` (default: final)."""
        return _build_model(self.state_dict(epoch), self.model_config, device, self.task)

    def iter_models(
        self, epochs: list[int] | None = None, *, device: str | torch.device = "cpu"
    ) -> Iterator[tuple[int, GrokModel]]:
        """Yield ``(epoch, model)`` for ``epochs`` (default: all), converting one at a time."""
        for epoch in self.epochs if epochs is None else epochs:
            yield epoch, self.model(epoch, device=device)


def _summary(epochs: list[int]) -> str:
    if len(epochs) <= 8:
        return str(epochs)
    return f"[{epochs[0]}, {epochs[1]}, ..., {epochs[-1]}] ({len(epochs)} checkpoints)"


def _resolve_split(
    source: _Source, task: Task, seed: int | None, frac_train: float | None
) -> tuple[Tensor | None, Tensor | None, SplitInfo | None]:
    """The run's split: ``(train_indices, test_indices, SplitInfo)``, ``None`` when unknown.

    The authors' format always uses their procedure (their defaults when neither the file's
    ``config`` nor the caller gives a value); our run directories use ours with the values of
    ``config.json``; any other format uses ours when the caller gives a value, else the
    indices the file records (the demo), else none.
    """
    hints, n_inputs = source.hints, task.pairs().shape[0]
    if source.stored_split is not None:
        method, where, why = source.stored_split["method"], "the file's metadata", ""
        stored = {k: source.stored_split[k] for k in ("seed", "frac_train")}
    elif source.format == "authors":
        method, where = "authors", _AUTHORS_CONFIG
        why = "the file's config does not say" if source.has_config else "the file stores no config"
        stored = {k: hints[k] for k in ("seed", "frac_train") if k in hints}
    elif source.format == "run_dir" and "frac_train" in hints:
        method, where, why = "tl_grokking", "config.json", "config.json does not say"
        stored = {k: hints[k] for k in ("seed", "frac_train") if k in hints}
    elif seed is not None or frac_train is not None:
        method, where, why, stored = "tl_grokking", "", "the file records no split", {}
    elif source.train_indices is not None:
        n_train = int(source.train_indices.numel())
        info = SplitInfo(
            method="recorded",
            seed=None,
            frac_train=None,
            seed_origin="recorded",
            frac_origin="recorded",
            n_train=n_train,
            n_inputs=n_inputs,
            source="the file's train_indices",
        )
        return source.train_indices, source.test_indices, info
    else:
        return None, None, None
    defaults = {"seed": AUTHORS_SEED, "frac_train": AUTHORS_FRAC_TRAIN}
    given = {"seed": seed, "frac_train": frac_train}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name in ("seed", "frac_train"):
        if given[name] is not None:
            values[name], origins[name] = given[name], "given"
        elif name in stored:
            values[name], origins[name] = stored[name], "file"
        else:
            values[name], origins[name] = defaults[name], "default"
    try:
        split_seed = check_int(values["seed"], "seed", minimum=0)
        split_frac = validate_frac_train(values["frac_train"])
        train_idx, test_idx = task.split(split_frac, split_seed, method=method)
    except (TypeError, ValueError) as err:
        raise CheckpointFormatError(f"{source.path or 'object'}: stored split: {err}") from None
    text = _origin_text(origins, where)
    if "default" in origins.values():
        text += f": {why}"
    elif "file" in origins.values() and source.stored_split and source.stored_split.get("note"):
        text += f": {source.stored_split['note']}"
    info = SplitInfo(
        method=method,
        seed=split_seed,
        frac_train=split_frac,
        seed_origin=origins["seed"],
        frac_origin=origins["frac_train"],
        n_train=int(train_idx.numel()),
        n_inputs=n_inputs,
        source=text,
    )
    return train_idx, test_idx, info


def _origin_text(origins: Mapping[str, str], where: str) -> str:
    """Where the seed and frac_train come from, in words (``"assumed"``, ``"from config.json"``,
    ``"seed given, frac_train from the file's config"``)."""
    words = {
        "file": f"from {where}",
        "given": "given",
        "default": "assumed",
        "search": "found by search",
    }
    if origins["seed"] == origins["frac_train"]:
        return words[origins["seed"]]
    return f"seed {words[origins['seed']]}, frac_train {words[origins['frac_train']]}"


def _stored_final_train_loss(metrics: list[dict[str, Any]]) -> float | None:
    """The last train loss of a stored loss history, or ``None``."""
    for row in reversed(metrics):
        if "train_loss" in row:
            return float(row["train_loss"])
    return None


def _check_split(run: LoadedRun, *, search: bool) -> LoadedRun:
    """``run`` with :attr:`LoadedRun.split_check` filled in (authors' format), and with the
    seed found by :data:`AUTHORS_SEED_SEARCH` when ``search`` and the assumed default seed does
    not reproduce the stored final train loss but exactly one seed of the search does."""
    split, stored = run.split, _stored_final_train_loss(run.metrics)
    if split is None or stored is None or run.train_indices is None or run.test_indices is None:
        return run
    try:
        model = run.model()
    except NonFiniteWeightsError:  # raised again when the caller asks for the model
        return run
    task = run.task
    logits = final_logits_batched(model, task.tokens())
    row_loss = F.cross_entropy(logits.double(), task.labels(), reduction="none")

    def check(train: Tensor, test: Tensor) -> SplitCheck:
        losses = float(row_loss[train].mean()), float(row_loss[test].mean())
        return SplitCheck(run.final_epoch, stored, *losses)

    result = check(run.train_indices, run.test_indices)
    if result.matches or not search or split.seed_origin != "default":
        return dataclasses.replace(run, split_check=result)
    frac = split.frac_train
    assert frac is not None  # a procedure's split (not "recorded")
    found = [
        seed
        for seed in AUTHORS_SEED_SEARCH
        if seed != split.seed
        and _relative_deviation(
            float(row_loss[task.split(frac, seed, method="authors")[0]].mean()), stored
        )
        <= SPLIT_CHECK_RTOL
    ]
    seeds = f"seeds {AUTHORS_SEED_SEARCH.start}–{AUTHORS_SEED_SEARCH.stop - 1}"
    if len(found) != 1:
        why = (
            f"none of {seeds} reproduces the stored final train loss"
            if not found
            else f"seeds {found} reproduce the stored final train loss alike"
        )
        info = dataclasses.replace(split, source=f"{split.source}; {why}")
        return dataclasses.replace(run, split=info, split_check=result)
    train, test = task.split(frac, found[0], method="authors")
    origins = {"seed": "search", "frac_train": split.frac_origin}
    why = split.source.partition(": ")[2]  # the source of an assumed seed says why
    info = dataclasses.replace(
        split,
        seed=found[0],
        seed_origin="search",
        source=(
            f"{_origin_text(origins, _AUTHORS_CONFIG)}: {why}; the default seed {split.seed} "
            f"does not reproduce the stored final train loss, and of {seeds} only seed "
            f"{found[0]} does"
        ),
    )
    return dataclasses.replace(
        run, train_indices=train, test_indices=test, split=info, split_check=check(train, test)
    )


def _make_run(
    source: _Source,
    *,
    p: int | None,
    drop_eq_logit: bool,
    allow_nonfinite: bool,
    seed: int | None = None,
    frac_train: float | None = None,
    check_split: bool = False,
) -> LoadedRun:
    final_state = source.snapshots[source.final]()
    try:
        config = infer_model_config(
            final_state,
            hints=source.hints,
            p=p,
            drop_eq_logit=drop_eq_logit,
            hints_from=source.hints_from,
        )
    except (CheckpointFormatError, IncompatibleModelError) as err:
        where = source.where(source.final) if source.path is not None else None
        raise _located(err, where) from None
    task = make_task(source.hints.get("task", "add"), config.p)
    train_idx, test_idx, split = _resolve_split(source, task, seed, frac_train)
    for name, idx in (("train_indices", train_idx), ("test_indices", test_idx)):
        n = task.pairs().shape[0]
        if idx is not None and idx.numel() and (idx.min() < 0 or idx.max() >= n):
            raise CheckpointFormatError(
                f"{source.path or 'object'}: {name} must index the {n} pairs of "
                f"{task.name} p={task.p}"
            )
    epochs = sorted(k for k in source.snapshots if k is not None)
    run = LoadedRun(
        model_config=config,
        task=task,
        epochs=epochs,
        train_indices=train_idx,
        test_indices=test_idx,
        metrics=source.metrics,
        format=source.format,
        path=source.path,
        _source=source,
        _allow_nonfinite=allow_nonfinite,
        split=split,
    )
    if check_split and source.format == "authors":
        run = _check_split(run, search=seed is None)
    return run


def detect_format(path_or_state: Any) -> str:
    """The format name (a key of :data:`CHECKPOINT_FORMATS`) of a path or in-memory dict."""
    return _open_source(path_or_state).format


def load_checkpoint(
    path_or_state: str | os.PathLike | Mapping[str, Any],
    *,
    epoch: int | None = None,
    device: str | torch.device = "cpu",
    p: int | None = None,
    drop_eq_logit: bool = False,
    allow_nonfinite: bool = False,
) -> GrokModel:
    """Load one checkpoint, in any known format, as a compatible :class:`HookedTransformer`.

    ``epoch`` picks a checkpoint of a run (run directory, authors' full run, demo file); the
    default is the final model. ``p`` asserts the modulus (an
    :class:`~tl_grokking.model.transformer.IncompatibleModelError` if the checkpoint has another).
    The authors' ``p + 1`` output logits are kept (``d_vocab_out = p + 1``; analysis reads
    ``logits[..., :p]``) unless ``drop_eq_logit=True``. NaN/inf weights raise
    :class:`NonFiniteWeightsError` unless ``allow_nonfinite=True``.
    """
    source = _open_source(path_or_state)
    run = _make_run(source, p=p, drop_eq_logit=drop_eq_logit, allow_nonfinite=allow_nonfinite)
    return run.model(epoch, device=device)


def load_run(
    path_or_state: str | os.PathLike | Mapping[str, Any],
    *,
    p: int | None = None,
    drop_eq_logit: bool = False,
    allow_nonfinite: bool = False,
    seed: int | None = None,
    frac_train: float | None = None,
) -> LoadedRun:
    """Open a training run (run directory, authors' full run, TL demo file) for analysis.

    Checkpoints are converted lazily by :meth:`LoadedRun.state_dict` / :meth:`LoadedRun.model`.
    A lone state dict with no epoch information is not a run: :class:`CheckpointFormatError`.

    The train/test split (``train_indices``, ``test_indices``, described by ``split``):

    * our run directories: ``task.split(frac_train, seed)`` with the values of ``config.json``;
    * the authors' format: their procedure
      (:func:`tl_grokking.data.tasks.authors_split`) with the ``seed`` and ``frac_train`` of
      the file's ``config``, or their defaults :data:`AUTHORS_SEED` (0) and
      :data:`AUTHORS_FRAC_TRAIN` (0.3) when it stores none. The final model's loss on those
      pairs is compared with the file's stored final train loss (``split_check``, a
      :class:`SplitCheck`, one forward pass over the inputs). When the seed was assumed and
      does not reproduce that loss, the seeds :data:`AUTHORS_SEED_SEARCH` are tried, and the
      one seed that reproduces it, if exactly one does, is used (``split.seed_origin ==
      "search"``);
    * the TransformerLens demo: the indices the file records.

    ``seed`` / ``frac_train`` override the stored values (no search then): with the authors'
    procedure for the authors' format, tl_grokking's for every other (missing values: the
    stored ones, else 0 and 0.3).
    """
    if seed is not None:
        seed = _check_seed(seed)
    if frac_train is not None:
        frac_train = validate_frac_train(frac_train)
    source = _open_source(path_or_state)
    if None in source.snapshots:
        raise CheckpointFormatError(
            f"{source.path or 'object'}: a single state dict with no epoch is not a run; "
            "use load_checkpoint"
        )
    return _make_run(
        source,
        p=p,
        drop_eq_logit=drop_eq_logit,
        allow_nonfinite=allow_nonfinite,
        seed=seed,
        frac_train=frac_train,
        check_split=True,
    )


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a nonnegative integer, got {seed!r}")
    return int(seed)
