"""The Fourier basis over Z_n and transforms of token-indexed and grid-indexed tensors.

Conventions (PAPER_NOTES §4): a real orthonormal basis whose rows are, in order,
``[const, cos 1, sin 1, cos 2, sin 2, ...]``, each divided by its own norm
(``const = 1/sqrt(n)``, the others ``sqrt(2/n) cos/sin(2 pi k x / n)``).  For odd n that is n
rows; for even n (e.g. n = p - 1 after the discrete-log re-indexing of ×) the last row is the
Nyquist cosine ``cos(pi x) / sqrt(n)``.  ``F @ F.T = I``.

* 1-D transform of anything indexed by a token along ``dim``: contract with ``F`` on that axis.
* 2-D transform of anything on the (a, b) grid: ``F X F^T`` over the two leading grid axes,
  batched over trailing axes.
* The sum directions for frequency k: ``cos(w_k (a + b))`` and ``sin(w_k (a + b))`` over the
  p² grid (lexicographic, row ``a * p + b``), each of unit norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "fourier_basis",
    "basis_frequencies",
    "frequencies",
    "freq_rows",
    "fourier_transform",
    "inverse_fourier_transform",
    "fourier_transform_2d",
    "inverse_fourier_transform_2d",
    "to_grid",
    "from_grid",
    "sum_directions",
    "project_onto_sum_directions",
    "validate_freqs",
]


def fourier_basis(
    n: int, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Float[Tensor, "n n"], list[str]]:
    """The orthonormal cos-first Fourier basis over Z_n and the names of its rows.

    Returns ``(F, names)`` with ``F[i]`` the i-th basis vector and ``names`` like
    ``["const", "cos 1", "sin 1", ...]``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n (basis size) must be an integer >= 2, got {n!r}")
    x = torch.arange(n, dtype=torch.float64)
    rows = [torch.ones(n, dtype=torch.float64)]
    names = ["const"]
    for k in range(1, n // 2 + 1):
        angle = 2 * math.pi * k * x / n
        rows.append(torch.cos(angle))
        names.append(f"cos {k}")
        if 2 * k != n:  # the Nyquist sine of even n is identically zero
            rows.append(torch.sin(angle))
            names.append(f"sin {k}")
    basis = torch.stack(rows)
    basis = basis / basis.norm(dim=1, keepdim=True)
    return basis.to(dtype=dtype, device=device), names


def basis_frequencies(n: int) -> list[int]:
    """Frequency of each basis row: ``[0, 1, 1, 2, 2, ...]``."""
    out = [0]
    for k in range(1, n // 2 + 1):
        out.append(k)
        if 2 * k != n:
            out.append(k)
    return out


def frequencies(n: int) -> list[int]:
    """All non-constant frequencies ``1 .. n // 2`` of Z_n (``(p - 1) / 2`` of them for odd p)."""
    return list(range(1, n // 2 + 1))


def validate_freqs(freqs: Iterable[int], n: int, *, field: str = "freqs") -> list[int]:
    """Sorted unique frequencies, each an integer in ``1 .. n // 2``; ``ValueError`` otherwise."""
    if isinstance(freqs, int):
        freqs = [freqs]
    out = []
    for k in freqs:
        if isinstance(k, bool) or int(k) != k or not (1 <= int(k) <= n // 2):
            raise ValueError(f"{field} must hold integers in 1..{n // 2} for n = {n}, got {k!r}")
        out.append(int(k))
    return sorted(set(out))


def freq_rows(freqs: Iterable[int], n: int, *, include_const: bool = False) -> list[int]:
    """Basis-row indices of the cos and sin components of ``freqs`` (optionally the constant)."""
    freqs = validate_freqs(freqs, n)
    rows = [0] if include_const else []
    for k in freqs:
        rows.append(2 * k - 1)
        if 2 * k != n:
            rows.append(2 * k)
    return rows


def _basis_like(x: Tensor, n: int) -> Tensor:
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return fourier_basis(n, dtype=dtype, device=x.device)[0]


def fourier_transform(x: Tensor, dim: int = 0) -> Tensor:
    """Coefficients of ``x`` in the Fourier basis along ``dim`` (``F @ x`` on that axis)."""
    n = x.shape[dim]
    basis = _basis_like(x, n)
    moved = x.movedim(dim, 0).to(basis.dtype)
    out = torch.tensordot(basis, moved, dims=([1], [0]))
    return out.movedim(0, dim)


def inverse_fourier_transform(x: Tensor, dim: int = 0) -> Tensor:
    """Inverse of :func:`fourier_transform` (``F^T @ x`` on ``dim``)."""
    n = x.shape[dim]
    basis = _basis_like(x, n)
    moved = x.movedim(dim, 0).to(basis.dtype)
    out = torch.tensordot(basis.T, moved, dims=([1], [0]))
    return out.movedim(0, dim)


def to_grid(x: Tensor, p: int) -> Tensor:
    """Reshape ``[p*p, ...]`` (lexicographic rows ``a*p + b``) to ``[p, p, ...]`` (a, b)."""
    if x.shape[0] != p * p:
        raise ValueError(
            f"expected a leading axis of p*p = {p * p} inputs in lexicographic order, "
            f"got shape {tuple(x.shape)}"
        )
    return x.reshape(p, p, *x.shape[1:])


def from_grid(x: Tensor) -> Tensor:
    """Inverse of :func:`to_grid`: ``[p, p, ...] -> [p*p, ...]``."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def fourier_transform_2d(grid: Float[Tensor, "p p ..."]) -> Float[Tensor, "p p ..."]:
    """``F X F^T`` over the two leading (a, b) axes, batched over trailing axes."""
    return fourier_transform(fourier_transform(grid, dim=0), dim=1)


def inverse_fourier_transform_2d(coeffs: Float[Tensor, "p p ..."]) -> Float[Tensor, "p p ..."]:
    """Inverse of :func:`fourier_transform_2d`."""
    return inverse_fourier_transform(inverse_fourier_transform(coeffs, dim=0), dim=1)


def sum_directions(
    p: int,
    freqs: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Float[Tensor, "n_dirs p_sq"]:
    """Unit vectors ``cos(w_k(a+b))`` and ``sin(w_k(a+b))`` over the lexicographic p² grid.

    Rows are ``[cos k1, sin k1, cos k2, sin k2, ...]`` for the sorted frequencies. They are
    mutually orthogonal (and orthogonal to the constant) for distinct k.
    """
    freqs = validate_freqs(freqs, p)
    s = (torch.arange(p, dtype=torch.float64)[:, None] + torch.arange(p)[None, :]).reshape(-1)
    rows = []
    for k in freqs:
        angle = 2 * math.pi * k * s / p
        rows.append(torch.cos(angle))
        if 2 * k != p:
            rows.append(torch.sin(angle))
    if not rows:
        return torch.zeros(0, p * p, dtype=dtype, device=device)
    dirs = torch.stack(rows)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    return dirs.to(dtype=dtype, device=device)


def project_onto_sum_directions(
    x: Float[Tensor, "p_sq ..."], p: int, freqs: Sequence[int]
) -> Float[Tensor, "p_sq ..."]:
    """Orthogonal projection of a grid-indexed tensor onto the sum directions of ``freqs``.

    ``x`` has a leading axis of p² inputs in lexicographic order; trailing axes are batched
    (e.g. output classes). This is ``P_K`` of the restricted / excluded losses (§7).
    """
    if x.shape[0] != p * p:
        raise ValueError(f"expected a leading axis of p*p = {p * p} inputs, got {tuple(x.shape)}")
    dirs = sum_directions(p, freqs, dtype=x.dtype, device=x.device)
    flat = x.reshape(p * p, -1)
    proj = dirs.T @ (dirs @ flat)
    return proj.reshape(x.shape)
