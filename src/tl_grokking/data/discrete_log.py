"""Discrete-log re-indexing: Fourier analysis of tasks that are a cyclic group in disguise.

Nanda et al. (2023) read the algorithm of a modular-*addition* model off Fourier transforms over
Z_p, indexed by the tokens themselves. For multiplication and division mod a prime p the right
group is Z_p^* (the p - 1 non-zero residues), which is cyclic: with a generator g (a primitive
root of p) every non-zero token x is ``g^i`` for a unique ``i = log_g x`` in Z_{p-1}, and

    a · b = g^(log a + log b),        a · b^(-1) = g^(log a - log b).

So after re-indexing the non-zero tokens by their discrete logarithm, × is + mod ``p - 1`` and
÷ is - mod ``p - 1``, and the whole Fourier toolkit applies with basis size ``n = p - 1`` (even:
the last basis row is the Nyquist cosine, see :func:`tl_grokking.analysis.fourier.fourier_basis`).
Token 0 has no logarithm and is left out of these analyses.

This module works in *group coordinates* for any task with a ``fourier_structure``: the
identity order (n = p) for additive tasks and the discrete-log order (n = p - 1) for
multiplicative ones, as given by :meth:`tl_grokking.data.tasks.Task.fourier_tokens`. It provides:

* number theory: :func:`primitive_root`, :func:`discrete_log_table`, :func:`discrete_logarithm`;
* grids in group coordinates: :func:`reindexed_tokens`, :func:`reindex_grid`;
* the W_E Fourier-norm rule for key frequencies on the re-indexed embedding
  (:func:`reindexed_embed_norms`, rule "embed" of :func:`reindexed_key_frequencies`);
* the neuron-cluster rule (fraction of variance explained by one frequency's 3×3 block of the
  2-D transform of each neuron's activations over the re-indexed n×n grid;
  :func:`reindexed_neuron_clusters`, rule "clusters");
* the W_L Fourier-norm rule on the re-indexed output classes (rule "unembed").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from tl_grokking.analysis.fourier import fourier_basis, fourier_transform, freq_rows, frequencies
from tl_grokking.data.tasks import Task, is_prime, validate_p

__all__ = [
    "primitive_root",
    "discrete_log_table",
    "discrete_logarithm",
    "reindexed_tokens",
    "reindex_grid",
    "reindexed_embedding",
    "reindexed_embed_norms",
    "reindexed_unembed_norms",
    "reindexed_mlp_activations",
    "reindexed_neuron_fve",
    "reindexed_neuron_clusters",
    "reindexed_key_frequencies",
    "ReindexedClusters",
    "frequency_norms",
    "frequency_mass_count",
]

_RULES = ("embed", "clusters", "unembed")
MLP_POST = "blocks.0.mlp.hook_post"


# ---- number theory ------------------------------------------------------------------------
def _prime_factors(n: int) -> list[int]:
    factors, d = [], 2
    while d * d <= n:
        if n % d == 0:
            factors.append(d)
            while n % d == 0:
                n //= d
        d += 1
    if n > 1:
        factors.append(n)
    return factors


def _validate_prime(p: object) -> int:
    p = validate_p(p, min_value=3)
    if not is_prime(p):
        raise ValueError(f"p must be a prime >= 3 (Z_p^* is cyclic only then), got {p}")
    return p


def primitive_root(p: int) -> int:
    """The smallest primitive root g of the prime p: ``g^i mod p`` runs over all of Z_p^*.

    g generates Z_p^* iff ``g^((p-1)/q) != 1 (mod p)`` for every prime q dividing ``p - 1``.
    """
    return _primitive_root(_validate_prime(p))


@lru_cache(maxsize=64)
def _primitive_root(p: int) -> int:
    factors = _prime_factors(p - 1)
    for g in range(2, p):
        if all(pow(g, (p - 1) // q, p) != 1 for q in factors):
            return g
    raise AssertionError(f"no primitive root found for prime {p}")  # pragma: no cover


@lru_cache(maxsize=64)
def _exp_log(p: int, g: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    exp = tuple(pow(g, i, p) for i in range(p - 1))
    if sorted(exp) != list(range(1, p)):
        raise ValueError(f"generator {g} is not a primitive root of {p}")
    log = [-1] * p
    for i, x in enumerate(exp):
        log[x] = i
    return exp, tuple(log)


def discrete_log_table(
    p: int, generator: int | None = None
) -> tuple[Int[Tensor, " n"], Int[Tensor, " p"]]:
    """``(exp, log)`` tables of the discrete logarithm base g (default: smallest primitive root).

    ``exp[i] = g^i mod p`` for ``i = 0 .. p-2`` (the tokens in group order) and
    ``log[x] = i`` with ``g^i = x`` for ``x = 1 .. p-1``; ``log[0] = -1`` (no logarithm).
    Fresh tensors on every call (the tables themselves are cached).
    """
    p = _validate_prime(p)
    g = _primitive_root(p) if generator is None else int(generator) % p
    exp, log = _exp_log(p, g)
    return torch.tensor(exp), torch.tensor(log)


def discrete_logarithm(
    x: Int[Tensor, "..."], p: int, generator: int | None = None
) -> Int[Tensor, "..."]:
    """Elementwise discrete logarithm of non-zero residues; ``ValueError`` for any x ≡ 0."""
    x = torch.as_tensor(x) % p
    if bool((x == 0).any()):
        raise ValueError(f"the discrete logarithm is undefined for 0 (mod {p})")
    return discrete_log_table(p, generator)[1].to(x.device)[x]


# ---- grids in group coordinates -----------------------------------------------------------
def _group_task(task: Task, analysis: str) -> Task:
    if not isinstance(task, Task):
        raise ValueError(f"task must be a tl_grokking Task, got {type(task).__name__}")
    task.require_structure("additive", "multiplicative", analysis=analysis)
    return task


def reindexed_tokens(task: Task) -> Int[Tensor, "n_sq 3"]:
    """Inputs ``[a, b, =]`` over the n×n grid in group coordinates, row ``i * n + j``.

    ``a = task.fourier_tokens()[i]``, ``b = task.fourier_tokens()[j]``: the lexicographic p² grid
    for additive tasks, the (p-1)² non-zero pairs in discrete-log order for multiplicative ones.
    """
    task = _group_task(task, "the re-indexed grid")
    order = task.fourier_tokens()
    n = order.shape[0]
    a = order.repeat_interleave(n)
    b = order.repeat(n)
    if not bool(task.valid(a, b).all()):  # pragma: no cover - guarded by fourier_structure
        raise ValueError(f"task {task.name!r} is undefined on part of its group grid")
    eq = torch.full_like(a, task.eq_token)
    return torch.stack([a, b, eq], dim=1)


def reindex_grid(x: Float[Tensor, "n_pairs ..."], task: Task) -> Float[Tensor, "n n ..."]:
    """Rearrange per-input values (rows in ``task.pairs()`` order) into the group-coordinate grid.

    Entry ``[i, j]`` is the value for operands ``(order[i], order[j])`` with
    ``order = task.fourier_tokens()``; pairs outside the group (token 0 for × and ÷) are dropped.
    For an additive task on the full grid this is ``to_grid(x, p)``.
    """
    task = _group_task(task, "reindex_grid")
    pairs = task.pairs()
    if x.shape[0] != pairs.shape[0]:
        raise ValueError(
            f"x must have one row per input of task {task.name!r} ({pairs.shape[0]} rows in "
            f"task.pairs() order), got shape {tuple(x.shape)}"
        )
    p = task.p
    row_of = torch.full((p, p), -1, dtype=torch.long)
    row_of[pairs[:, 0], pairs[:, 1]] = torch.arange(pairs.shape[0])
    order = task.fourier_tokens()
    rows = row_of[order[:, None], order[None, :]]  # [n, n]
    return x[rows.to(x.device)]


def reindexed_embedding(model: HookedTransformer, task: Task) -> Float[Tensor, "n d_model"]:
    """Rows of W_E for the number tokens in group order (token 0 dropped for × and ÷)."""
    task = _group_task(task, "the re-indexed embedding")
    return model.W_E[task.fourier_tokens().to(model.W_E.device)]


def reindexed_embed_norms(model: HookedTransformer, task: Task) -> Float[Tensor, " n"]:
    """Norm (over d_model) of each Fourier component of the re-indexed W_E, basis size n.

    Row ``r`` is ``‖(F_n W_E[order])[r]‖``; rows follow :func:`tl_grokking.analysis.fourier.fourier_basis`
    (``[const, cos 1, sin 1, ...]``, Nyquist cosine last for even n).
    """
    w = reindexed_embedding(model, task).detach().to(torch.float64)
    return fourier_transform(w, dim=0).norm(dim=1)


def reindexed_unembed_norms(model: HookedTransformer, task: Task) -> Float[Tensor, " n"]:
    """Norm (over neurons) of each Fourier component of W_L = W_out W_U along its class axis,
    output classes taken in group order (class 0 dropped for × and ÷)."""
    task = _group_task(task, "the re-indexed unembedding")
    order = task.fourier_tokens().to(model.W_U.device)
    w_l = (model.W_out[0] @ model.W_U).detach().to(torch.float64)  # [d_mlp, d_vocab_out]
    return fourier_transform(w_l[:, order], dim=1).norm(dim=0)


def frequency_norms(row_norms: Float[Tensor, " n"], n: int) -> Float[Tensor, " n_freqs"]:
    """Combine the cos and sin rows of each frequency k = 1 .. n//2 into one norm
    (``sqrt(|cos k|² + |sin k|²)``); the constant row is dropped."""
    if row_norms.shape != (n,):
        raise ValueError(f"row_norms must have shape ({n},), got {tuple(row_norms.shape)}")
    return torch.stack([row_norms[freq_rows([k], n)].norm() for k in frequencies(n)])


def frequency_mass_count(freq_norms: Float[Tensor, " n_freqs"], mass: float = 0.9) -> int:
    """Fewest frequencies whose squared norms hold at least ``mass`` of the total (sparsity)."""
    if not (0.0 < mass <= 1.0):
        raise ValueError(f"mass must be in (0, 1], got {mass!r}")
    energy = freq_norms.to(torch.float64) ** 2
    cumulative = energy.sort(descending=True).values.cumsum(0) / energy.sum()
    return int((cumulative < mass - 1e-12).sum().item()) + 1


# ---- neuron clusters on the re-indexed grid -------------------------------------------------
def reindexed_mlp_activations(model: HookedTransformer, task: Task) -> Float[Tensor, "n n d_mlp"]:
    """Final-position MLP activations (``blocks.0.mlp.hook_post``) over the group grid."""
    tokens = reindexed_tokens(task).to(model.W_E.device)
    n = task.fourier_size
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=MLP_POST)
    acts = cache[MLP_POST][:, -1, :]
    return einops.rearrange(acts, "(i j) neuron -> i j neuron", i=n, j=n)


def reindexed_neuron_fve(model: HookedTransformer, task: Task) -> Float[Tensor, "d_mlp n_freqs"]:
    """Fraction of each neuron's variance explained by each frequency (PAPER_NOTES §6).

    The neuron's centred activation over the n×n group grid is 2-D Fourier transformed with
    the size-n basis; the FVE of frequency k is the energy in the block
    ``{const, cos k, sin k} × {const, cos k, sin k}`` (``{const, cos k}`` for the Nyquist k of
    even n) divided by the total energy. Columns are k = 1 .. n // 2.
    """
    acts = reindexed_mlp_activations(model, task).to(torch.float64)
    n = acts.shape[0]
    acts = acts - acts.mean(dim=(0, 1), keepdim=True)
    basis, _ = fourier_basis(n, dtype=torch.float64, device=acts.device)
    coeffs = einops.einsum(basis, acts, basis, "r i, i j neuron, s j -> r s neuron")
    energy = coeffs**2
    total = energy.sum(dim=(0, 1)).clamp_min(1e-30)
    fve = []
    for k in frequencies(n):
        rows = torch.tensor(freq_rows([k], n, include_const=True), device=acts.device)
        fve.append(energy[rows][:, rows].sum(dim=(0, 1)) / total)
    return torch.stack(fve, dim=1)


@dataclass(frozen=True)
class ReindexedClusters:
    """Neuron clusters by frequency in group coordinates.

    ``neuron_freq[i]`` is neuron i's best frequency (in Z_n, n = ``task.fourier_size``),
    ``fve[i]`` its fraction of variance explained; neurons with ``fve >= threshold`` are
    clustered. ``clusters`` maps each key frequency to its neurons (sorted by frequency).
    """

    n: int
    threshold: float
    neuron_freq: list[int]
    fve: list[float]
    clusters: dict[int, list[int]]

    @property
    def key_freqs(self) -> list[int]:
        return sorted(self.clusters)

    @property
    def n_clustered(self) -> int:
        return sum(len(v) for v in self.clusters.values())


def reindexed_neuron_clusters(
    model: HookedTransformer, task: Task, *, threshold: float = 0.85, min_size: int = 1
) -> ReindexedClusters:
    """Cluster neurons by the frequency explaining most of their variance (FVE ≥ threshold).

    Frequencies with fewer than ``min_size`` clustered neurons are not reported as clusters.
    Dead neurons (zero variance) are never clustered.
    """
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    fve = reindexed_neuron_fve(model, task)
    best, idx = fve.max(dim=1)
    freqs = frequencies(task.fourier_size)
    neuron_freq = [freqs[int(i)] for i in idx]
    clusters: dict[int, list[int]] = {}
    for neuron, (k, value) in enumerate(zip(neuron_freq, best.tolist(), strict=True)):
        if value >= threshold:
            clusters.setdefault(k, []).append(neuron)
    clusters = {k: v for k, v in sorted(clusters.items()) if len(v) >= min_size}
    return ReindexedClusters(
        n=task.fourier_size,
        threshold=float(threshold),
        neuron_freq=neuron_freq,
        fve=best.tolist(),
        clusters=clusters,
    )


def reindexed_key_frequencies(
    model: HookedTransformer,
    task: Task,
    *,
    rule: str = "embed",
    threshold: float | None = None,
    min_size: int = 1,
) -> list[int]:
    """Key frequencies in group coordinates (Z_p for + and -, Z_{p-1} after re-indexing × ÷).

    Rules (PAPER_NOTES §6): ``"embed"``: frequencies whose re-indexed W_E Fourier norm is at
    least ``threshold`` (default 0.25) times the largest; ``"unembed"``: the same on W_L's class
    axis; ``"clusters"``: frequencies of the neuron clusters with FVE ≥ ``threshold``
    (default 0.85) and at least ``min_size`` neurons.
    """
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
    if rule == "clusters":
        found = reindexed_neuron_clusters(
            model, task, threshold=0.85 if threshold is None else threshold, min_size=min_size
        )
        return found.key_freqs
    threshold = 0.25 if threshold is None else threshold
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    norms = (
        reindexed_embed_norms(model, task)
        if rule == "embed"
        else reindexed_unembed_norms(model, task)
    )
    n = task.fourier_size
    per_freq = frequency_norms(norms, n)
    keep = per_freq >= threshold * per_freq.max()
    return [k for k, kept in zip(frequencies(n), keep.tolist(), strict=True) if kept]
