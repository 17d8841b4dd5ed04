"""Hook factories: Fourier ablations, zero / mean ablation and the canonical-grid guard.

Every hook factory returns a list of ``(hook_name, hook_fn)`` pairs, so it composes with the
TransformerLens idioms ``model.run_with_hooks(tokens, fwd_hooks=hooks)`` and
``with model.hooks(fwd_hooks=hooks): ...``; lists concatenate (``a + b``). Sites are named as in
:data:`~tl_grokking.analysis.grid.SITES` (``"embed"``, ``"mlp_post"``, ``"logits"``, ...) or by
raw hook name.

Two kinds of Fourier ablation (Nanda et al. 2023, "ablations in Fourier space"):

* **Token-wise** (``where="embed"``, hook ``hook_embed``): every number token's embedding is
  replaced by the corresponding row of ``W_E`` projected along the token axis (1-D Fourier);
  the ``=`` token is untouched. Works on any batch.
* **Grid-wise** (every other site): the final-position activation, seen as a function on the
  (a, b) grid, is projected onto (``keep``) or away from (``remove``) Fourier components over the
  p² inputs: ``basis="sum"`` (the sum directions ``cos/sin(w_k(a+b))``), ``"block"`` (3×3 blocks
  ``{const, cos k, sin k}²``) or ``"product"``. This needs the whole grid in one batch, in the
  canonical lexicographic order (``task.tokens()``); a guard hook on ``hook_embed`` checks it.

The model over the grid (:func:`grid_activations`, :func:`evaluate_model`, :func:`resolve_task`,
:func:`grid_tokens`, :data:`SITES`, :func:`resolve_site`) lives in
:mod:`tl_grokking.analysis.grid`; those names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_grokking.analysis.fourier import (
    GRID_BASES,
    project_1d,
    project_grid,
    validate_freqs,
    validate_mode,
)
from tl_grokking.analysis.grid import (
    resolve_site,
    resolve_task,
)
from tl_grokking.data.tasks import Task
from tl_grokking.model.transformer import GrokModel

__all__ = [
    "HookList",
    "fourier_ablate",
    "grid_guard",
    "grid_fn_hook",
    "zero_ablate",
    "mean_ablate",
]

HookList = list[tuple[str, Callable]]
#: Entries of an activation's last axis (e.g. neurons): an index, a list or tensor of indices,
#: a boolean mask, or ``None`` for all of them.
NeuronIndex = int | Sequence[int] | Tensor | None


# ---- the canonical-grid guard ---------------------------------------------------------------


def _match_tokens(embed: Float[Tensor, "n d_model"], W_E: Tensor) -> Tensor | None:
    """Token ids whose embedding rows ``embed`` are, or ``None`` if some row matches none."""
    scores = embed @ W_E.T - 0.5 * W_E.square().sum(-1)
    ids = scores.argmax(-1)
    err = (embed - W_E[ids]).abs().amax()
    scale = W_E.abs().amax().clamp_min(1e-30)
    return ids if err <= 1e-5 * scale else None


def _grid_error(p: int, why: str) -> ValueError:
    return ValueError(
        f"grid-wise Fourier ablation needs the full grid of p² = {p * p} inputs in canonical "
        f"lexicographic order ({why}); run the model on task.tokens() (or "
        "tl_grokking.analysis.grid.grid_tokens(model)) as one batch"
    )


def grid_guard(model: GrokModel, p: int) -> tuple[str, Callable]:
    """A ``hook_embed`` hook raising ``ValueError`` unless the batch is the canonical p² grid.

    The token ids at positions 0 and 1 are recovered by matching the embeddings against
    ``model.W_E``. If an earlier hook changed the embeddings (e.g. an embed ablation placed
    first), the guard falls back to the grid structure: the position-0 embedding may depend only
    on the row index // p and the position-1 embedding only on the row index % p.
    """

    def guard(embed: Tensor, hook) -> None:
        if embed.shape[0] != p * p or embed.shape[1] < 2:
            raise _grid_error(p, f"got a batch of shape {tuple(embed.shape[:2])}")
        grid = embed[:, :2].reshape(p, p, 2, -1)
        ids = _match_tokens(embed[:, :2].reshape(-1, embed.shape[-1]), model.W_E.detach())
        if ids is not None:
            ids = ids.reshape(p, p, 2)
            a = torch.arange(p, device=ids.device)
            if not (torch.equal(ids[..., 0], a[:, None].expand(p, p))) or not (
                torch.equal(ids[..., 1], a[None, :].expand(p, p))
            ):
                raise _grid_error(p, "the tokens are not in order a * p + b")
            return None
        if not torch.equal(grid[:, :, 0], grid[:, :1, 0].expand_as(grid[:, :, 0])) or not (
            torch.equal(grid[:, :, 1], grid[:1, :, 1].expand_as(grid[:, :, 1]))
        ):
            raise _grid_error(p, "the inputs do not form the (a, b) grid")
        return None

    return ("hook_embed", guard)


# ---- Fourier ablation hooks -------------------------------------------------------------------


def _embed_hook(
    model: GrokModel, p: int, freqs: list[int], mode: str, include_const: bool | None
) -> Callable:
    def hook(embed: Float[Tensor, "batch pos d_model"], hook) -> Tensor:
        W_E = model.W_E.detach()
        ablated = project_1d(W_E[:p], freqs, dim=0, mode=mode, include_const=include_const)
        flat = embed.reshape(-1, embed.shape[-1])
        ids = _match_tokens(flat, W_E)
        if ids is None:
            raise ValueError(
                "hook_embed activations do not match rows of model.W_E (an earlier hook changed "
                "them); put the 'embed' Fourier ablation first in fwd_hooks"
            )
        table = torch.cat([ablated.to(W_E.dtype), W_E[p:]], dim=0)
        return table[ids].reshape(embed.shape)

    return hook


def grid_fn_hook(
    p: int, fn: Callable[[Float[Tensor, "p_sq ..."]], Tensor]
) -> Callable[[Tensor, object], Tensor]:
    """Wrap ``fn`` (a map of final-position activations ``[p², ...]``) as a hook function.

    The hook replaces ``act[:, -1]`` by ``fn(act[:, -1])`` and checks the batch is p² rows.
    """

    def hook(act: Tensor, hook) -> Tensor:
        if act.shape[0] != p * p:
            raise _grid_error(p, f"{hook.name} got a batch of {act.shape[0]}")
        out = act.clone()
        out[:, -1] = fn(act[:, -1]).to(act.dtype)
        return out

    return hook


def fourier_ablate(
    model: GrokModel,
    freqs: Iterable[int],
    where: str = "embed",
    mode: str = "remove",
    *,
    basis: str | None = None,
    include_const: bool | None = None,
    check_grid: bool = True,
    task: Task | None = None,
) -> HookList:
    """Hooks that keep or remove the Fourier components of ``freqs`` at one site.

    Args:
        freqs: frequencies in ``1 .. (p-1)/2`` (an empty list is allowed: ``keep`` then keeps
            only the constant, ``remove`` changes nothing).
        where: a site of :data:`SITES` (``'embed'``, ``'attn_out'``, ``'resid_mid'``,
            ``'resid_post'``, ``'mlp_pre'``, ``'mlp_post'``, ``'logits'``, ...) or a raw hook name.
        mode: ``"remove"`` (project away) or ``"keep"`` (project onto).
        basis: for grid-wise sites, ``"sum"`` (default; the sum directions ``cos/sin(w_k(a+b))``),
            ``"block"`` (3×3 blocks ``{const, cos k, sin k}²``) or ``"product"``. Must be
            ``None`` for ``'embed'`` (token-wise, 1-D along the token axis).
        include_const: whether the constant component is among the selected ones (default:
            selected when keeping, untouched when removing).
        check_grid: for grid-wise sites, prepend :func:`grid_guard` (recommended).
        task: the task the model solves (default: modular addition). The ablation is along the
            token axis, so it needs ``"token_fourier"`` (add, sub); ``basis="sum"`` also needs
            ``"sum_directions"`` (add only). Other tasks raise ``ValueError``.

    Returns a list of ``(hook_name, hook_fn)`` for ``fwd_hooks``.
    """
    validate_mode(mode)
    task = resolve_task(model, task, analysis="Fourier ablation (fourier_ablate)")
    p = task.p
    freqs = validate_freqs(freqs, p)
    name = resolve_site(model, where)
    if name != "hook_embed" and basis in (None, "sum"):
        task.require("sum_directions", "Fourier ablation with basis='sum'")
    if name == "hook_embed":
        if basis is not None:
            raise ValueError(
                f"basis={basis!r} applies to grid-wise sites; 'embed' is ablated along the token "
                "axis (leave basis=None)"
            )
        return [(name, _embed_hook(model, p, freqs, mode, include_const))]
    basis = "sum" if basis is None else basis
    if basis not in GRID_BASES:
        raise ValueError(f"basis must be one of {GRID_BASES}, got {basis!r}")

    def project(x: Tensor) -> Tensor:
        return project_grid(x, p, freqs, basis=basis, mode=mode, include_const=include_const)

    hooks: HookList = [grid_guard(model, p)] if check_grid else []
    return hooks + [(name, grid_fn_hook(p, project))]


def zero_ablate(model: GrokModel, where: str, index: NeuronIndex = None) -> HookList:
    """Hooks setting a site (or ``act[..., index]`` of it, e.g. some neurons) to zero."""
    name = resolve_site(model, where)

    def hook(act: Tensor, hook) -> Tensor:
        out = act.clone()
        if index is None:
            out.zero_()
        else:
            out[..., index] = 0.0
        return out

    return [(name, hook)]


def mean_ablate(model: GrokModel, where: str, index: NeuronIndex = None) -> HookList:
    """Hooks replacing a site's final-position activation (or some of its last-axis entries)
    by its mean over the batch (the whole grid when run on ``task.tokens()``)."""
    name = resolve_site(model, where)

    def hook(act: Tensor, hook) -> Tensor:
        out = act.clone()
        last = act[:, -1]
        mean = last.mean(dim=0, keepdim=True).expand_as(last)
        if index is None:
            out[:, -1] = mean
        else:
            out[:, -1, ..., index] = mean[..., index]
        return out

    return [(name, hook)]
