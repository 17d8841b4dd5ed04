"""Discrete-log re-indexing: the number theory that turns × and ÷ mod p into + and − mod p − 1.

Nanda et al. (2023) read the algorithm of a modular-*addition* model off Fourier transforms over
Z_p, indexed by the tokens themselves. For multiplication and division mod a prime p the right
group is Z_p^* (the p - 1 non-zero residues), which is cyclic: with a generator g (a primitive
root of p) every non-zero token x is ``g^i`` for a unique ``i = log_g x`` in Z_{p-1}, and

    a · b = g^(log a + log b),        a · b^(-1) = g^(log a - log b).

So after re-indexing the non-zero tokens by their discrete logarithm, × is + mod ``p - 1`` and
÷ is - mod ``p - 1``, and the whole Fourier toolkit applies with basis size ``n = p - 1`` (even:
the last basis row is the Nyquist cosine, see :func:`tl_grokking.analysis.fourier.fourier_basis`).
Token 0 has no logarithm and is left out.

This module holds only the number theory and the re-indexing of the input grid:

* :func:`is_prime`, :func:`primitive_root`, :func:`discrete_log_table`,
  :func:`discrete_logarithm`;
* :func:`reindexed_tokens` and :func:`reindex_grid`: the n×n grid in *group coordinates*, the
  token order given by :meth:`tl_grokking.data.tasks.Task.fourier_tokens` (the identity for
  additive tasks, the discrete-log order for multiplicative ones).

The analyses themselves (key frequencies, neuron clusters, Fourier norms of W_E and W_L) take the
task and work in its group coordinates by default; see ``docs/tasks.md`` and ``docs/analysis.md``.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import ClassVar, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "is_prime",
    "primitive_root",
    "discrete_log_table",
    "discrete_logarithm",
    "reindexed_tokens",
    "reindex_grid",
    "GroupTask",
]


class GroupTask(Protocol):
    """What the re-indexing reads from a task (every :class:`tl_grokking.data.tasks.Task`)."""

    name: ClassVar[str]

    @property
    def p(self) -> int: ...

    @property
    def eq_token(self) -> int: ...

    def fourier_tokens(self) -> Int[Tensor, " n"]: ...

    def pairs(self) -> Int[Tensor, "n_pairs 2"]: ...

    def valid(self, a: Int[Tensor, " m"], b: Int[Tensor, " m"]) -> torch.Tensor: ...


# ---- number theory ------------------------------------------------------------------------
def is_prime(n: int) -> bool:
    """True for a prime ``n`` (trial division; the moduli here are small)."""
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


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
    """``p`` as an int if it is a prime >= 3, else ``ValueError`` naming ``p``."""
    # ints and integer scalars (numpy), not bools, floats or strings
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or not is_prime(int(p)) or p < 3:
        raise ValueError(f"p must be a prime >= 3 (Z_p^* is cyclic only then), got {p!r}")
    return int(p)


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


# ---- the grid in group coordinates ----------------------------------------------------------
def reindexed_tokens(task: GroupTask) -> Int[Tensor, "n_sq 3"]:
    """Inputs ``[a, b, =]`` over the n×n grid in group coordinates, row ``i * n + j``.

    ``a = task.fourier_tokens()[i]``, ``b = task.fourier_tokens()[j]``: the lexicographic p² grid
    for additive tasks, the (p-1)² non-zero pairs in discrete-log order for multiplicative ones.
    ``ValueError`` (from :meth:`~tl_grokking.data.tasks.Task.fourier_tokens`) for a task without
    a group structure.
    """
    order = task.fourier_tokens()
    n = order.shape[0]
    a = order.repeat_interleave(n)
    b = order.repeat(n)
    if not bool(task.valid(a, b).all()):  # a declared group law guarantees it
        raise ValueError(f"task {task.name!r} is undefined on part of its group grid")
    eq = torch.full_like(a, task.eq_token)
    return torch.stack([a, b, eq], dim=1)


def reindex_grid(x: Float[Tensor, "n_pairs ..."], task: GroupTask) -> Float[Tensor, "n n ..."]:
    """Rearrange per-input values (rows in ``task.pairs()`` order) into the group-coordinate grid.

    Entry ``[i, j]`` is the value for operands ``(order[i], order[j])`` with
    ``order = task.fourier_tokens()``; pairs outside the group (token 0 for × and ÷) are dropped.
    For an additive task on the full grid this is ``x.reshape(p, p, ...)``.
    """
    order = task.fourier_tokens()
    pairs = task.pairs()
    if x.shape[0] != pairs.shape[0]:
        raise ValueError(
            f"x must have one row per input of task {task.name!r} ({pairs.shape[0]} rows in "
            f"task.pairs() order), got shape {tuple(x.shape)}"
        )
    p = task.p
    row_of = torch.full((p, p), -1, dtype=torch.long)
    row_of[pairs[:, 0], pairs[:, 1]] = torch.arange(pairs.shape[0])
    rows = row_of[order[:, None], order[None, :]]  # [n, n]
    return x[rows.to(x.device)]
