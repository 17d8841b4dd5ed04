"""Effective weight matrices of a one-layer grokking transformer, with the paper's names.

All functions take a compatible :class:`~transformer_lens.HookedTransformer` (see
:func:`tl_grokking.model.transformer.check_compatible`) and return detached float tensors. Only
the p number tokens and the first p output classes are kept (the authors' checkpoints have a
``p + 1``-th output logit for ``=``; the analysis always ignores it).

* ``W_E``    — number-token embedding, ``[p, d_model]`` (``model.W_E[:p]``).
* ``W_U``    — unembedding restricted to the p residue classes, ``[d_model, p]``.
* ``W_L``    — neuron → logit map ``W_out @ W_U``, ``[d_mlp, p]`` (the paper's ``W_L``).
* ``W_neur`` — token → neuron map through each head's OV circuit, ``[n_heads, p, d_mlp]``
  (``W_E W_V^h W_O^h W_in``, the direct path of a token's embedding into the neurons).
* ``W_attn`` — token → attention score from the ``=`` position, ``[n_heads, p]``.
* Fourier norms of ``W_E`` (along the token axis) and ``W_L`` (along the class axis), the
  evidence of the "embed" and "unembed" key-frequency rules and of the Gini progress measures.
  They work in the task's coordinates (``reindex``, see :mod:`tl_grokking.analysis.grid`): the
  tokens 0 .. p-1 for + and −, the discrete-log order over Z_{p-1} for × and ÷ (token 0
  dropped, basis size p - 1), or the token order for any task with ``reindex=False``.
  :func:`norms_by_frequency` combines cos and sin per frequency and
  :func:`frequency_mass_count` measures the sparsity.
"""

from __future__ import annotations

import math

import torch
from fancy_einsum import einsum
from jaxtyping import Float, Int
from torch import Tensor

from tl_grokking.analysis.fourier import basis_frequencies, fourier_transform
from tl_grokking.analysis.grid import fourier_order, resolve_task
from tl_grokking.data.tasks import Task
from tl_grokking.model.transformer import GrokModel, check_compatible

__all__ = [
    "model_p",
    "W_E",
    "W_U",
    "W_L",
    "W_neur",
    "W_attn",
    "fourier_norms",
    "norms_by_frequency",
    "embed_fourier_norms",
    "unembed_fourier_norms",
    "frequency_mass_count",
]


def model_p(model: GrokModel) -> int:
    """The modulus p of a compatible model (``d_vocab - 1``)."""
    check_compatible(model)
    return model.cfg.d_vocab - 1


@torch.no_grad()
def W_E(model: GrokModel) -> Float[Tensor, "p d_model"]:
    """Embedding of the p number tokens (``model.W_E[:p]``; the ``=`` row is dropped)."""
    p = model_p(model)
    return model.W_E[:p].detach().clone()


@torch.no_grad()
def W_U(model: GrokModel) -> Float[Tensor, "d_model p"]:
    """Unembedding restricted to the p residue classes (``model.W_U[:, :p]``)."""
    p = model_p(model)
    return model.W_U[:, :p].detach().clone()


@torch.no_grad()
def W_L(model: GrokModel) -> Float[Tensor, "d_mlp p"]:
    """The paper's neuron → logit map ``W_L = W_out W_U`` on the p output classes."""
    p = model_p(model)
    return (model.blocks[0].mlp.W_out @ model.W_U[:, :p]).detach()


@torch.no_grad()
def W_neur(model: GrokModel) -> Float[Tensor, "n_heads p d_mlp"]:
    """Token → neuron-input map through each head's OV circuit: ``W_E W_V^h W_O^h W_in``.

    Entry ``[h, t, n]`` is what token t's embedding contributes to neuron n's pre-activation
    when head h attends fully to it (positional embeddings and biases left out).
    """
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    ov = einsum("head d_model d_head, head d_head d_out -> head d_model d_out", attn.W_V, attn.W_O)
    return einsum(
        "vocab d_model, head d_model d_out, d_out d_mlp -> head vocab d_mlp",
        W_E(model),
        ov,
        mlp.W_in,
    ).detach()


@torch.no_grad()
def W_attn(model: GrokModel) -> Float[Tensor, "n_heads p"]:
    """Attention score (pre-softmax, scaled by ``1/sqrt(d_head)``) from ``=`` to each token.

    The query is the residual stream at the final position before attention
    (``W_E[=] + W_pos[2]``, with ``b_Q``); the key is the token's embedding ``W_E[t] W_K^h``.
    Terms that do not depend on the token (positional embedding of the key, ``b_K``) shift every
    score of a head equally and are left out.
    """
    p = model_p(model)
    attn = model.blocks[0].attn
    resid_eq = model.W_E[p] + model.W_pos[2]
    query = einsum("d_model, head d_model d_head -> head d_head", resid_eq, attn.W_Q) + attn.b_Q
    keys = einsum("vocab d_model, head d_model d_head -> head vocab d_head", W_E(model), attn.W_K)
    scores = einsum("head vocab d_head, head d_head -> head vocab", keys, query)
    return (scores / math.sqrt(model.cfg.d_head)).detach()


def fourier_norms(x: Float[Tensor, "..."], dim: int = 0) -> Float[Tensor, " n"]:
    """Norm of each Fourier component of ``x`` along ``dim`` (norm over all other axes), float64.

    Returns one value per basis row ``[const, cos 1, sin 1, ...]`` of the size-n basis,
    ``n = x.shape[dim]``.
    """
    coeffs = fourier_transform(x.detach().double(), dim=dim).movedim(dim, 0)
    return coeffs.reshape(coeffs.shape[0], -1).norm(dim=1)


def norms_by_frequency(norms: Float[Tensor, " n"]) -> Float[Tensor, " n_freqs"]:
    """Combine per-basis-row norms into one per frequency: ``sqrt(|cos k|² + |sin k|²)``.

    Row ``k - 1`` is frequency k = 1 .. n // 2 (the Nyquist k of even n has its cosine only);
    the constant is dropped.
    """
    n = norms.shape[0]
    freq = torch.tensor(basis_frequencies(n), device=norms.device)
    out = torch.zeros(n // 2 + 1, dtype=norms.dtype, device=norms.device)
    out.index_add_(0, freq, norms.square())
    return out[1:].sqrt()


def frequency_mass_count(freq_norms: Float[Tensor, " n_freqs"], mass: float = 0.9) -> int:
    """Fewest frequencies whose squared norms hold at least ``mass`` of the total (sparsity).

    ``freq_norms`` are per-frequency norms (:func:`norms_by_frequency`); ``mass`` in (0, 1].
    """
    if isinstance(mass, bool) or not isinstance(mass, int | float) or not (0.0 < mass <= 1.0):
        raise ValueError(f"mass must be a number in (0, 1], got {mass!r}")
    energy = freq_norms.to(torch.float64) ** 2
    cumulative = energy.sort(descending=True).values.cumsum(0) / energy.sum()
    return int((cumulative < mass - 1e-12).sum().item()) + 1


def _token_order(
    model: GrokModel, task: Task | None, reindex: bool | None, what: str
) -> Int[Tensor, " n"]:
    task = resolve_task(model, task, needs=None)
    return fourier_order(task, reindex, analysis=f"the Fourier norms of {what}")


def embed_fourier_norms(
    model: GrokModel, task: Task | None = None, *, reindex: bool | None = None
) -> Float[Tensor, " n"]:
    """Norm over d_model of each Fourier component of ``W_E`` along the token axis, float64.

    Rows of ``F_n W_E[order]`` with ``order = fourier_order(task, reindex)``
    (:func:`tl_grokking.analysis.grid.fourier_order`): ``W_E[:p]`` over Z_p for + and − (and
    for every task with ``reindex=False``), the discrete-log order over Z_{p-1} for × and ÷.
    ``task`` defaults to modular addition with the model's p.
    """
    order = _token_order(model, task, reindex, "W_E")
    return fourier_norms(W_E(model)[order.to(model.W_E.device)], dim=0)


def unembed_fourier_norms(
    model: GrokModel, task: Task | None = None, *, reindex: bool | None = None
) -> Float[Tensor, " n"]:
    """Norm over neurons of each Fourier component of ``W_L`` along its class axis, float64.

    The output classes are taken in the order of :func:`embed_fourier_norms` (class 0 dropped
    for × and ÷ in their group coordinates).
    """
    order = _token_order(model, task, reindex, "W_L")
    return fourier_norms(W_L(model)[:, order.to(model.W_E.device)], dim=1)
