"""Reference computations written out the slow, obvious way, shared by several test modules.

They are independent of the library's implementations (no basis matrices, no projections from
``tl_grokking``), so tests can check the library against them.
"""

from __future__ import annotations

import math

import torch


def brute_sum_projection(x: torch.Tensor, p: int, freqs) -> torch.Tensor:
    """P_K written out: each column of a ``[p², n]`` grid tensor (rows ``a * p + b``) projected
    onto the normalised directions ``cos(w_k(a+b))`` and ``sin(w_k(a+b))`` of each k, in float64.
    """
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    out = torch.zeros_like(x, dtype=torch.float64)
    for k in freqs:
        for fn in (torch.cos, torch.sin):
            v = fn(2 * math.pi * k * (a + b) / p)
            if v.norm() < 1e-9:  # the Nyquist sine of even p is zero
                continue
            v = v / v.norm()
            out += v[:, None] * (v @ x.double())[None, :]
    return out


def logits_of(model, tokens: torch.Tensor, hooks=()) -> torch.Tensor:
    """Final-position logits of the plain TransformerLens forward under ``hooks`` (no grad)."""
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=list(hooks))[:, -1]
