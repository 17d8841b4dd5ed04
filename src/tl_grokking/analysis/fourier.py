"""The Fourier basis over Z_n and transforms of token-indexed and grid-indexed tensors.

Conventions (Nanda et al. 2023; ``docs/analysis.md``): a real orthonormal basis whose rows are, in
order, ``[const, cos 1, sin 1, cos 2, sin 2, ...]``, each divided by its own norm
(``const = 1/sqrt(n)``, the others ``sqrt(2/n) cos/sin(2 pi k x / n)``). For odd n that is n
rows; for even n (e.g. n = p - 1 after the discrete-log re-indexing of ×) the last row is the
Nyquist cosine ``cos(pi x) / sqrt(n)``. ``F @ F.T = I``. Frequencies are ``k = 1 .. n // 2``.

* 1-D transform of anything indexed by a token along ``dim``: contract with ``F`` on that axis.
* 2-D transform of anything on the (a, b) grid: ``F X F^T`` over the two leading grid axes,
  batched over trailing axes.
* The sum directions for frequency k: ``cos(w_k (a + b))`` and ``sin(w_k (a + b))`` over the
  p² grid (lexicographic, row ``a * p + b``), each of unit norm.

Projections onto sets of frequencies (all batched, ``mode="keep"`` or ``"remove"``):

* :func:`project_1d` — along one token axis (e.g. the rows of ``W_E``, the classes of ``W_L``).
* :func:`project_grid` — over the p² grid: ``basis="sum"`` (the 2|K| sum directions),
  ``"block"`` (the union of the 3×3 blocks ``{const, cos k, sin k}²``) or ``"product"`` (every
  2-D component whose two frequencies lie in ``K ∪ {0}``; keeping all of them is the identity).
* :class:`SumProjection` — the projection ``P_K`` onto the sum directions with the directions
  built once: the one implementation of the restricted logits ``P_K(L) + mean(L)`` and the
  excluded logits ``L - P_K(L)`` (used by ``project_grid``, ``logits``, ``ablations`` and
  ``progress``).
* :func:`block_fve` — per column of a tensor on the n×n grid, the fraction of its (centred)
  energy in the 3×3 block of each frequency (the neuron-cluster statistic).
* :func:`trig_features` / :func:`trig_coefficients` — the factors of the trig-identity features
  ``cos(w_k(a+b-c))`` over the p² × p table of (input, class) and the closed-form least-squares
  ``α_k`` of a logit table against them (used by :mod:`tl_grokking.analysis.logits` and the key
  frequencies of :mod:`tl_grokking.analysis.circuits`).

This module is pure linear algebra on tensors (no model, no task): the analyses built on it
live in :mod:`tl_grokking.analysis.weights` (Fourier norms of the weights) and
:mod:`tl_grokking.analysis.circuits` (neuron clusters, key frequencies).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from fancy_einsum import einsum
from jaxtyping import Bool, Float, Int
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
    "SumProjection",
    "trig_features",
    "trig_coefficients",
    "validate_freqs",
    "validate_mode",
    "project_1d",
    "grid_mask",
    "project_grid",
    "block_fve",
    "GRID_BASES",
    "MODES",
]

MODES = ("keep", "remove")
GRID_BASES = ("sum", "block", "product")


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


def _basis_like(x: Tensor, n: int) -> Float[Tensor, "n n"]:
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return fourier_basis(n, dtype=dtype, device=x.device)[0]


def fourier_transform(x: Float[Tensor, "..."], dim: int = 0) -> Float[Tensor, "..."]:
    """Coefficients of ``x`` in the Fourier basis along ``dim`` (``F @ x`` on that axis)."""
    n = x.shape[dim]
    basis = _basis_like(x, n)
    moved = x.movedim(dim, 0).to(basis.dtype)
    out = torch.tensordot(basis, moved, dims=1)
    return out.movedim(0, dim)


def inverse_fourier_transform(x: Float[Tensor, "..."], dim: int = 0) -> Float[Tensor, "..."]:
    """Inverse of :func:`fourier_transform` (``F^T @ x`` on ``dim``)."""
    n = x.shape[dim]
    basis = _basis_like(x, n)
    moved = x.movedim(dim, 0).to(basis.dtype)
    out = torch.tensordot(basis.T, moved, dims=1)
    return out.movedim(0, dim)


def to_grid(x: Float[Tensor, "p_sq ..."], p: int) -> Float[Tensor, "p p ..."]:
    """Reshape ``[p*p, ...]`` (lexicographic rows ``a*p + b``) to ``[p, p, ...]`` (a, b)."""
    if x.shape[0] != p * p:
        raise ValueError(
            f"expected a leading axis of p*p = {p * p} inputs in lexicographic order, "
            f"got shape {tuple(x.shape)}"
        )
    return x.reshape(p, p, *x.shape[1:])


def from_grid(x: Float[Tensor, "p p ..."]) -> Float[Tensor, "p_sq ..."]:
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


class SumProjection:
    """``P_K``: the orthogonal projection of grid-indexed tensors onto the sum directions of K.

    Holds the ``2|K|`` unit directions ``[cos k1, sin k1, cos k2, ...]`` of :func:`sum_directions`
    (one row for a Nyquist k), built once, so that each use is one ``[2|K|, p²] @ [p², C]``
    matmul for the coefficients plus one fused ``addmm`` per result — never a p² × p² projector
    or a p³ cube. Inputs are ``[p², C]`` (leading axis the lexicographic grid, e.g. the logits of
    all inputs, ``C`` the classes) and are cast to ``dtype``.

    * :meth:`restricted` — ``P_K(x) + mean_inputs(x)`` (the paper's restricted logits);
    * :meth:`excluded` — ``x - P_K(x)`` on ``rows`` (the excluded logits, measured on the
      training pairs), or with one frequency's directions only (``freq=k``);
    * :meth:`project` — ``P_K(x)``.

    ``rows`` (row indices into the grid, default all) are the rows :meth:`excluded` returns;
    their slice of the directions is cached as well.
    """

    def __init__(
        self,
        p: int,
        freqs: Iterable[int],
        *,
        rows: Int[Tensor, " n_rows"] | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        field: str = "freqs",
    ) -> None:
        self.p = p
        self.freqs = validate_freqs(freqs, p, field=field)
        #: ``[n_dirs, p²]`` unit sum directions; rows of frequency k: ``self.freq_slices[k]``.
        self.dirs = sum_directions(p, self.freqs, dtype=dtype, device=device)
        self.freq_slices: dict[int, slice] = {}
        start = 0
        for k in self.freqs:
            width = 1 if 2 * k == p else 2
            self.freq_slices[k] = slice(start, start + width)
            start += width
        if rows is None:
            self.rows = None
            self.dirs_rows = self.dirs
        else:
            self.rows = torch.as_tensor(rows, dtype=torch.long, device=self.dirs.device)
            if self.rows.ndim != 1 or bool(((self.rows < 0) | (self.rows >= p * p)).any()):
                raise ValueError(f"rows must be a 1-D tensor of row indices in 0..{p * p - 1}")
            self.dirs_rows = self.dirs[:, self.rows].contiguous()

    def _check(self, x: Float[Tensor, "p_sq c"]) -> Float[Tensor, "p_sq c"]:
        if x.ndim != 2 or x.shape[0] != self.p * self.p:
            raise ValueError(
                f"x must be a [p², C] = [{self.p * self.p}, C] tensor over the grid, "
                f"got shape {tuple(x.shape)}"
            )
        return x.to(self.dirs.dtype)

    def coefficients(self, x: Float[Tensor, "p_sq c"]) -> Float[Tensor, "n_dirs c"]:
        """Each column's components along the sum directions (``dirs @ x``)."""
        return self.dirs @ self._check(x)

    def project(
        self, x: Float[Tensor, "p_sq c"], coeffs: Float[Tensor, "n_dirs c"] | None = None
    ) -> Float[Tensor, "p_sq c"]:
        """``P_K(x)``; ``coeffs`` (from :meth:`coefficients`) skip that matmul."""
        coeffs = self.coefficients(x) if coeffs is None else coeffs
        return self.dirs.T @ coeffs

    def restricted(
        self, x: Float[Tensor, "p_sq c"], coeffs: Float[Tensor, "n_dirs c"] | None = None
    ) -> Float[Tensor, "p_sq c"]:
        """``P_K(x) + mean over inputs of x``: the key sum components and each column's mean."""
        x = self._check(x)
        coeffs = self.coefficients(x) if coeffs is None else coeffs
        return torch.addmm(x.mean(dim=0, keepdim=True), self.dirs.T, coeffs)

    def excluded(
        self,
        x: Float[Tensor, "p_sq c"],
        coeffs: Float[Tensor, "n_dirs c"] | None = None,
        *,
        freq: int | None = None,
        x_rows: Float[Tensor, "n_rows c"] | None = None,
    ) -> Float[Tensor, "n_rows c"]:
        """``x - P_K(x)`` on :attr:`rows` (no mean correction); with ``freq=k`` only the
        directions of k are removed (k must be one of :attr:`freqs`). ``x_rows`` (from
        :meth:`on_rows`) saves gathering the rows again when called for several ``freq``."""
        x = self._check(x)
        coeffs = self.coefficients(x) if coeffs is None else coeffs
        sel = slice(None)
        if freq is not None:
            if freq not in self.freq_slices:
                raise ValueError(f"freq must be one of {self.freqs}, got {freq!r}")
            sel = self.freq_slices[freq]
        x_rows = self.on_rows(x) if x_rows is None else x_rows.to(self.dirs.dtype)
        return torch.addmm(x_rows, self.dirs_rows[sel].T, coeffs[sel], alpha=-1)

    def on_rows(self, x: Float[Tensor, "p_sq c"]) -> Float[Tensor, "n_rows c"]:
        """``x`` restricted to :attr:`rows` (all of it when ``rows`` is None)."""
        x = self._check(x)
        return x if self.rows is None else x[self.rows]


# ---- the trig identity cos(w_k(a + b - c)) ----------------------------------------------------


def trig_features(
    p: int,
    freqs: Iterable[int],
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> tuple[Float[Tensor, "p_sq two_k"], Float[Tensor, "two_k p"]]:
    """Factors ``(A, B)`` with ``A @ diag(α ⊗ [1, 1]) @ B = Σ_k α_k cos(w_k(a+b-c))``.

    ``A[ab] = [cos(w_k s), sin(w_k s), ...]`` with ``s = a + b`` (rows in lexicographic grid
    order); ``B = [cos(w_k c); sin(w_k c); ...]`` over the p classes. Uses
    ``cos(w(s - c)) = cos(ws) cos(wc) + sin(ws) sin(wc)``, so no p² × p feature is ever built.
    """
    freqs = validate_freqs(freqs, p)
    w = 2 * math.pi * torch.tensor(freqs, dtype=torch.float64) / p
    s = (torch.arange(p, dtype=torch.float64)[:, None] + torch.arange(p)[None, :]).reshape(-1)
    c = torch.arange(p, dtype=torch.float64)
    a_ang, b_ang = s[:, None] * w[None, :], w[:, None] * c[None, :]
    A = torch.stack([torch.cos(a_ang), torch.sin(a_ang)], dim=-1).reshape(p * p, -1)
    B = torch.stack([torch.cos(b_ang), torch.sin(b_ang)], dim=1).reshape(-1, p)
    return A.to(dtype=dtype, device=device), B.to(dtype=dtype, device=device)


def trig_coefficients(
    logits: Float[Tensor, "p_sq n_classes"], p: int, freqs: Iterable[int]
) -> tuple[Float[Tensor, " n_freqs"], Float[Tensor, " n_freqs"]]:
    """Least-squares ``α_k`` of ``L ≈ Σ_k α_k cos(w_k(a+b-c))`` over the p² × p table, and the
    fraction of the logits' variance each term explains.

    ``logits``: the all-inputs matrix ``[p², ≥ p]`` (lexicographic rows; only the first p
    classes are used). The features ``f_k`` are mutually orthogonal and sum to zero over c, so
    ``α_k = <L, f_k> / ‖f_k‖²`` with ``‖f_k‖² = p³/2`` (``p³`` for the Nyquist k of even p) and
    ``<L, f_k> = cos_sᵀ L cos_c + sin_sᵀ L sin_c``; the fraction is ``α_k² ‖f_k‖²`` over the
    energy of ``L`` centred per input (a per-input shift changes no prediction; 0 when ``L``
    is constant per input). Returns ``(alpha, fve)`` in sorted ``freqs`` order, in the dtype of
    ``logits`` (float64 for integer input).
    """
    if logits.ndim != 2 or logits.shape[0] != p * p or logits.shape[1] < p:
        raise ValueError(
            f"logits must be an all-inputs matrix [p², ≥p] = [{p * p}, ≥{p}], "
            f"got shape {tuple(logits.shape)}"
        )
    freqs = validate_freqs(freqs, p)
    L = logits[:, :p]
    if not L.is_floating_point():
        L = L.double()
    A, B = trig_features(p, freqs, dtype=L.dtype, device=L.device)  # [p², 2K], [2K, p]
    inner = (A * (L @ B.T)).sum(dim=0).reshape(-1, 2).sum(dim=1)  # [K]
    norms_sq = torch.tensor(
        [p**3 if 2 * k == p else p**3 / 2 for k in freqs], dtype=L.dtype, device=L.device
    )
    alpha = inner / norms_sq
    # ‖L − row means‖² without a p² × p temporary
    centred_sq = torch.linalg.vector_norm(L).square() - p * L.mean(dim=1).square().sum()
    explained = alpha.square() * norms_sq
    fve = explained / centred_sq if centred_sq > 0 else torch.zeros_like(explained)
    return alpha, fve


# ---- projections onto sets of frequencies ---------------------------------------------------


def validate_mode(mode: str) -> str:
    """``"keep"`` or ``"remove"``; ``ValueError`` otherwise."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _const_selected(mode: str, include_const: bool | None) -> bool:
    # Default: the constant is kept in "keep" mode and left alone in "remove" mode, so that
    # ``keep`` reproduces the restricted logits (P_K + mean) and ``remove`` the excluded ones.
    return (mode == "keep") if include_const is None else bool(include_const)


def project_1d(
    x: Float[Tensor, "..."],
    freqs: Iterable[int],
    *,
    dim: int = 0,
    mode: str = "keep",
    include_const: bool | None = None,
) -> Float[Tensor, "..."]:
    """Keep or remove the cos/sin components of ``freqs`` along one token axis ``dim``.

    ``include_const`` says whether the constant component is among the selected ones
    (default: selected when keeping, not when removing). ``keep`` and ``remove`` with the same
    selection sum to ``x``. Batched over all other axes; float dtypes are preserved.
    """
    validate_mode(mode)
    n = x.shape[dim]
    rows = freq_rows(freqs, n, include_const=_const_selected(mode, include_const))
    basis = _basis_like(x, n)[rows]
    proj = basis.T @ basis  # [n, n], symmetric
    moved = x.movedim(dim, -1).to(basis.dtype)
    kept = moved @ proj
    out = kept if mode == "keep" else moved - kept
    return out.movedim(-1, dim)


def grid_mask(
    p: int, freqs: Iterable[int], *, basis: str = "block", include_const: bool = True
) -> Bool[Tensor, "p p"]:
    """Boolean ``[p, p]`` mask of the selected 2-D Fourier components (rows a, columns b).

    ``basis="block"``: the union over k in ``freqs`` of the 3×3 blocks
    ``{const, cos k, sin k} × {const, cos k, sin k}`` (no cross-frequency products).
    ``basis="product"``: every component whose a- and b-frequencies both lie in ``freqs ∪ {0}``.
    The ``const ⊗ const`` entry (the grid mean) is selected iff ``include_const``.
    """
    if basis not in ("block", "product"):
        raise ValueError(f"basis must be 'block' or 'product' for a 2-D mask, got {basis!r}")
    freqs = validate_freqs(freqs, p)
    f = torch.tensor(basis_frequencies(p))
    sel = torch.isin(f, torch.tensor(freqs, dtype=f.dtype))
    zero = f == 0
    if basis == "block":
        same = f[:, None] == f[None, :]
        mask = (sel[:, None] & sel[None, :] & same) | (sel[:, None] & zero[None, :])
        mask = mask | (zero[:, None] & sel[None, :])
    else:
        mask = (sel | zero)[:, None] & (sel | zero)[None, :]
    mask[0, 0] = bool(include_const)
    return mask


def project_grid(
    x: Float[Tensor, "p_sq ..."],
    p: int,
    freqs: Iterable[int],
    *,
    basis: str = "sum",
    mode: str = "keep",
    include_const: bool | None = None,
) -> Float[Tensor, "p_sq ..."]:
    """Keep or remove Fourier components of a grid-indexed tensor (leading axis p², lexicographic).

    ``basis`` (see :func:`grid_mask`): ``"sum"`` projects onto the sum directions
    ``cos/sin(w_k(a+b))`` (``P_K``, :class:`SumProjection`); ``"block"`` onto the union of the
    3×3 blocks; ``"product"`` onto all products of kept frequencies. ``include_const``: whether
    the grid mean (the constant direction) is among the selected components (default: selected
    when keeping, not when removing). Trailing axes are batched (neurons, classes, d_model).
    """
    validate_mode(mode)
    if basis not in GRID_BASES:
        raise ValueError(f"basis must be one of {GRID_BASES}, got {basis!r}")
    if x.shape[0] != p * p:
        raise ValueError(f"expected a leading axis of p*p = {p * p} inputs, got {tuple(x.shape)}")
    const = _const_selected(mode, include_const)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    flat = x.reshape(p * p, -1).to(dtype)
    if basis == "sum":
        proj = SumProjection(p, freqs, dtype=dtype, device=x.device)
        kept = proj.restricted(flat) if const else proj.project(flat)
    else:
        # Only the rows R = {const} ∪ rows(freqs) of the basis take part: coefficients
        # C = F_R X F_R^T ([r, r, n]), masked, mapped back with F_R^T C F_R: O(r p² n) for
        # r = 1 + 2|K| rows instead of O(p³ n) for full 2-D transforms.
        rows = freq_rows(freqs, p, include_const=True)
        basis_r = fourier_basis(p, dtype=dtype, device=x.device)[0][rows]  # [r, p]
        mask = grid_mask(p, freqs, basis=basis, include_const=const)[rows][:, rows]
        grid = to_grid(flat, p)
        coeffs = einsum("i a, a b n, j b -> i j n", basis_r, grid, basis_r)
        coeffs = coeffs * mask.to(x.device, dtype)[:, :, None]
        kept = from_grid(einsum("i a, i j n, j b -> a b n", basis_r, coeffs, basis_r))
    out = kept if mode == "keep" else flat - kept
    return out.reshape(x.shape)


def block_fve(x: Float[Tensor, "n_sq ..."], n: int) -> Float[Tensor, "n_freqs ..."]:
    """Fraction of each column's centred energy in the 3×3 block of each frequency.

    ``x`` is indexed by the n×n grid (leading axis ``n²``, row ``i * n + j``: the lexicographic
    p² grid, or the group grid of :func:`tl_grokking.data.discrete_log.reindexed_tokens`). For
    every trailing index (e.g. a neuron), subtract its mean over the grid, 2-D transform with the
    size-n basis and return ``energy in {const, cos k, sin k}² / total energy`` for
    k = 1 .. n // 2 (row ``k - 1``; for the Nyquist k of even n the block is
    ``{const, cos k}²``). A column with zero variance gets 0 for every k. This is the
    neuron-cluster statistic of Nanda et al. (2023).
    """
    if x.shape[0] != n * n:
        raise ValueError(f"expected a leading axis of n*n = {n * n} inputs, got {tuple(x.shape)}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    flat = x.reshape(n * n, -1).to(dtype)
    centred = flat - flat.mean(dim=0, keepdim=True)
    basis = fourier_basis(n, dtype=dtype, device=x.device)[0]
    half = fourier_transform(to_grid(centred, n), dim=0)  # [i, b, col]: transformed along a only
    total = centred.square().sum(dim=0)  # Parseval: the energy of all 2-D coefficients
    freqs = torch.tensor(frequencies(n), device=x.device)
    cos_idx = 2 * freqs - 1
    has_sin = (2 * freqs != n).to(dtype)[:, None]
    sin_idx = torch.where(2 * freqs != n, 2 * freqs, cos_idx)

    # 2-D coefficients C[i[k], j[k]] for each frequency k → [n_freqs, col]
    def coeff(
        i: Int[Tensor, " n_freqs"], j: Int[Tensor, " n_freqs"]
    ) -> Float[Tensor, "n_freqs col"]:
        return einsum("k b col, k b -> k col", half[i], basis[j])

    col0 = half.sum(dim=1) / math.sqrt(n)  # C[i, const] for every row i
    row0 = basis @ half[0]  # C[const, j] for every column j
    edges = row0[cos_idx].square() + has_sin * row0[sin_idx].square()
    edges = edges + col0[cos_idx].square() + has_sin * col0[sin_idx].square()
    inner = coeff(cos_idx, cos_idx).square() + has_sin * (
        coeff(cos_idx, sin_idx).square()
        + coeff(sin_idx, cos_idx).square()
        + coeff(sin_idx, sin_idx).square()
    )
    block = edges + inner  # [n_freqs, col]; const ⊗ const is zero after centring
    fve = torch.where(total > 0, block / total.clamp_min(torch.finfo(dtype).tiny), 0.0)
    return fve.reshape(len(freqs), *x.shape[1:])
