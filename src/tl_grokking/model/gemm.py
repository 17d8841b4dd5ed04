"""Dense float32 matrix products of the fast path, through oneDNN where the CPU has AVX-512.

torch's CPU ``mm`` calls MKL. MKL picks its kernels by CPU vendor, not by instruction set: on
an AMD CPU with AVX-512 (Zen 4 and later) it runs its AVX2 kernels, half the width the
hardware has. oneDNN (bundled with every x86 build of torch, as ``mkldnn``) picks by
instruction set. On a 2-core AMD EPYC the read-out products of the paper's model
(``[3830, 512] × [512, 113]`` and its two gradients) ran at ≈ 290 GFLOP/s through oneDNN
against ≈ 130 through MKL (``benchmarks/train_speed.py`` prints both); on a 2-core Intel Xeon
with AVX-512, where MKL uses its AVX-512 kernels, at ≈ 285 against ≈ 237.

:func:`mm` is the one entry point. Which library computes a product is decided by the machine
and the operands (float32, on the CPU, AVX-512, oneDNN present and enabled, at least
:data:`ONEDNN_MIN_MACS` multiply-adds: oneDNN's per-call set-up outweighs its wider kernels
on the fast path's small per-step weight products, which ran 1.1-1.6× faster through MKL on
a 2-core Zen 4 EPYC, 2026-12-02) — never by timing —
so the same command on the same machine always computes the same bits. Both libraries give
float32 results (their summation orders differ, so their last bits differ). oneDNN's
``linear`` has no autograd formula: :func:`mm` is for code that writes its own backward (the
fast path's :class:`torch.autograd.Function` s) or runs without gradients; anything that needs
autograd, and anything off the CPU, goes through ``torch.mm``.
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["mm", "onednn_available", "uses_onednn", "ONEDNN_MIN_MACS"]

#: Products with fewer multiply-adds (``m · k · n``) than this go to ``torch.mm`` even where
#: oneDNN could take them (the per-step weight products of the fast path, such as
#: ``[512, 128] × [128, 113]``; see the module doc). The read-out's batch-sized products
#: (``3830 · 512 · 113`` for the paper's model) are far above it.
ONEDNN_MIN_MACS = 1 << 24


@functools.cache
def onednn_available() -> bool:
    """Whether this torch build and CPU give oneDNN's float32 ``linear`` AVX-512 kernels."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False
    return bool(
        torch.backends.mkldnn.is_available() and capability.startswith("AVX512") and op is not None
    )


def _onednn_can(a: Tensor, b: Tensor) -> bool:
    """Whether oneDNN can compute ``a @ b`` here (whatever the size)."""
    return (
        a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.dtype == torch.float32
        and b.dtype == torch.float32
        and a.ndim == 2
        and b.ndim == 2
        and a.shape[0] > 0
        and torch.backends.mkldnn.enabled
        and onednn_available()
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
    )


def uses_onednn(a: Tensor, b: Tensor) -> bool:
    """Whether :func:`mm` computes ``a @ b`` with oneDNN: where it can, for products of at
    least :data:`ONEDNN_MIN_MACS` multiply-adds (see the module doc)."""
    macs = a.shape[0] * a.shape[-1] * b.shape[-1] if a.ndim == b.ndim == 2 else 0
    return macs >= ONEDNN_MIN_MACS and _onednn_can(a, b)


def mm(
    a: Float[Tensor, "m k"], b: Float[Tensor, "k n"], *, onednn: bool | None = None
) -> Float[Tensor, "m n"]:
    """``a @ b``: oneDNN's float32 kernel where :func:`uses_onednn` holds, else ``torch.mm``.

    ``onednn=False`` forces ``torch.mm`` (to compare the two); ``onednn=True`` asks for oneDNN
    at any size and raises ``ValueError`` where it cannot be used. oneDNN reads ``b`` in any
    layout (a transposed view costs nothing) and ``a`` contiguous (a strided ``a`` is copied
    first).
    """
    use = uses_onednn(a, b) if onednn is None else onednn
    if onednn and not _onednn_can(a, b):
        raise ValueError(
            "onednn=True needs float32 CPU matrices without autograd and a torch build whose "
            "oneDNN has AVX-512 kernels on this CPU"
        )
    if not use:
        return torch.mm(a, b)
    # linear(X, W) = X @ W.T, with W [n, k] in any layout and X [m, k] contiguous.
    return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.T, None, "none", [], "")
