"""Hooks for Fourier ablations, activations over the input grid, and evaluation under hooks.

Every hook factory returns a list of ``(hook_name, hook_fn)`` pairs, so it composes with the
TransformerLens idioms ``model.run_with_hooks(tokens, fwd_hooks=hooks)`` and
``with model.hooks(fwd_hooks=hooks): ...``; lists concatenate (``a + b``).

Two kinds of Fourier ablation (Nanda et al. 2023, "ablations in Fourier space"):

* **Token-wise** (``where="embed"``, hook ``hook_embed``): every number token's embedding is
  replaced by the corresponding row of ``W_E`` projected along the token axis (1-D Fourier);
  the ``=`` token is untouched. Works on any batch.
* **Grid-wise** (every other site): the final-position activation, seen as a function on the
  (a, b) grid, is projected onto (``keep``) or away from (``remove``) Fourier components over the
  p² inputs: ``basis="sum"`` (the sum directions ``cos/sin(w_k(a+b))``), ``"block"`` (3×3 blocks
  ``{const, cos k, sin k}²``) or ``"product"``. This needs the whole grid in one batch, in the
  canonical lexicographic order (``task.tokens()``); a guard hook on ``hook_embed`` checks it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from tl_grokking.analysis.fourier import (
    GRID_BASES,
    project_1d,
    project_grid,
    validate_freqs,
    validate_mode,
)
from tl_grokking.data.tasks import ModularAddition, Task
from tl_grokking.model.transformer import check_compatible

__all__ = [
    "SITES",
    "resolve_site",
    "resolve_task",
    "require_analysis",
    "grid_tokens",
    "grid_activations",
    "fourier_ablate",
    "grid_guard",
    "grid_fn_hook",
    "zero_ablate",
    "mean_ablate",
    "evaluate_model",
]

HookList = list[tuple[str, Callable]]

#: Friendly site names accepted by ``where`` → TransformerLens hook names.
SITES: dict[str, str] = {
    "embed": "hook_embed",
    "resid_pre": "blocks.0.hook_resid_pre",
    "attn_z": "blocks.0.attn.hook_z",
    "attn_out": "blocks.0.hook_attn_out",
    "resid_mid": "blocks.0.hook_resid_mid",
    "mlp_pre": "blocks.0.mlp.hook_pre",
    "mlp_post": "blocks.0.mlp.hook_post",
    "mlp_out": "blocks.0.hook_mlp_out",
    "resid_post": "blocks.0.hook_resid_post",
    "logits": "unembed.hook_out",
}

# Hook points whose activation is not laid out as [batch, pos, ...].
_NOT_BATCH_POS = ("hook_attn_scores", "hook_pattern")


def resolve_site(model: HookedTransformer, where: str) -> str:
    """Map a friendly site name or a raw hook name to the hook name; ``ValueError`` if unknown."""
    name = SITES.get(where, where)
    if not isinstance(name, str) or name not in model.hook_dict:
        raise ValueError(
            f"where must be one of {sorted(SITES)} or a hook name of the model "
            f"(e.g. 'blocks.0.mlp.hook_post'), got {where!r}"
        )
    if name.endswith(_NOT_BATCH_POS):
        raise ValueError(
            f"where={where!r}: attention scores/patterns are [batch, head, query, key]; "
            "ablate 'blocks.0.attn.hook_z' or 'attn_out' instead"
        )
    return name


#: What each capability of ``Task.meaningful_analyses`` needs, for error messages.
_CAPABILITY_NEEDS: dict[str, str] = {
    "training": "nothing beyond the task",
    "group_fourier": "a task with a known group structure (fourier_structure 'additive' or "
    "'multiplicative')",
    "token_fourier": "an additive task on the full p² grid (Fourier basis indexed by the tokens: "
    "'add', 'sub')",
    "sum_directions": "the a + b sum directions cos/sin(w_k(a + b)), i.e. the task 'add'",
    "clock_pizza": "a commutative group task ('add', 'mul')",
}


def _instead(task: Task, capability: str) -> str:
    """What to use instead of an analysis that needs ``capability`` on ``task``."""
    if task.fourier_structure == "multiplicative":
        return (
            "use the discrete-log re-indexed analyses of tl_grokking.data.discrete_log "
            "(reindexed_key_frequencies, reindexed_neuron_clusters, reindexed_embed_norms, "
            "reindexed_unembed_norms)"
        )
    if task.fourier_structure == "additive" and capability == "sum_directions":
        return (
            "the token-order Fourier analyses still apply (key_frequencies, neuron_clusters, "
            "fourier_ablate on 'embed'); the restricted / excluded losses and the trig logit "
            "decomposition are defined only for a + b"
        )
    return "only the structure-free measures apply (losses, accuracy, weight norm, Gini)"


def require_analysis(task: Task, capability: str, analysis: str) -> None:
    """Raise ``ValueError`` unless ``capability`` is in ``task.meaningful_analyses``.

    The one gate every analysis of this library goes through: ``capability`` is a name of
    :attr:`Task.meaningful_analyses` (``"token_fourier"``, ``"sum_directions"``, ...),
    ``analysis`` the name of the analysis for the message, which also names the task and says
    what to use instead.
    """
    if capability not in _CAPABILITY_NEEDS:
        raise ValueError(
            f"capability must be one of {sorted(_CAPABILITY_NEEDS)}, got {capability!r}"
        )
    if capability not in task.meaningful_analyses:
        raise ValueError(
            f"cannot compute {analysis} for task {task.name!r} (p = {task.p}): not meaningful, "
            f"it needs {_CAPABILITY_NEEDS[capability]}; {_instead(task, capability)}"
        )


def _require_full_grid(task: Task, analysis: str) -> None:
    if not task.is_full_grid:
        raise ValueError(
            f"{analysis} needs every pair (a, b) of the p² grid; task {task.name!r} is defined "
            f"on {task.pairs().shape[0]} pairs only"
        )


def resolve_task(
    model: HookedTransformer,
    task: Task | None = None,
    *,
    needs: str | None = "token_fourier",
    analysis: str = "token-order Fourier analysis (key frequencies, neuron clusters)",
) -> Task:
    """The task to analyse: ``task`` (checked against the model) or modular addition mod p.

    ``needs`` is the capability of :attr:`Task.meaningful_analyses` the caller's analysis
    requires (checked by :func:`require_analysis`, the message naming ``analysis``); ``None``
    accepts every task.
    """
    check_compatible(model, task)
    if task is None:
        task = ModularAddition(model.cfg.d_vocab - 1)
    if needs is not None:
        require_analysis(task, needs, analysis)
    return task


def grid_tokens(model: HookedTransformer, task: Task | None = None) -> Int[Tensor, "p_sq 3"]:
    """All p² inputs ``[a, b, =]`` in canonical (lexicographic) order, on the model's device.

    Any task on the full grid is accepted (the grid itself needs no group structure)."""
    task = resolve_task(model, task, needs=None)
    _require_full_grid(task, "activations over the (a, b) grid")
    return task.tokens().to(model.cfg.device)


@torch.no_grad()
def grid_activations(
    model: HookedTransformer,
    task: Task | None = None,
    names: str | Sequence[str] = ("blocks.0.mlp.hook_post",),
    *,
    fwd_hooks: Iterable[tuple[str, Callable]] = (),
) -> dict[str, Tensor]:
    """Final-position activations over the whole grid, by hook name, from one forward pass.

    ``names`` are hook names or friendly site names (see :data:`SITES`); the result is keyed by
    hook name, each ``[p², ...]`` (the position axis dropped; rows ``a * p + b``). Extra
    ``fwd_hooks`` (e.g. an ablation) run before the activations are recorded.
    """
    if isinstance(names, str):
        names = [names]
    hook_names = [resolve_site(model, n) for n in names]
    cache: dict[str, Tensor] = {}

    def record(act: Tensor, hook) -> None:
        cache[hook.name] = act[:, -1].detach().clone()

    hooks = list(fwd_hooks) + [(n, record) for n in dict.fromkeys(hook_names)]
    model.run_with_hooks(grid_tokens(model, task), fwd_hooks=hooks)
    return {n: cache[n] for n in hook_names}


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
        "tl_grokking.grid_tokens(model)) as one batch"
    )


def grid_guard(model: HookedTransformer, p: int) -> tuple[str, Callable]:
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


def _embed_hook(model: HookedTransformer, p: int, freqs, mode, include_const) -> Callable:
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
    model: HookedTransformer,
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
        require_analysis(task, "sum_directions", "Fourier ablation with basis='sum'")
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


def zero_ablate(model: HookedTransformer, where: str, index=None) -> HookList:
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


def mean_ablate(model: HookedTransformer, where: str, index=None) -> HookList:
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


@torch.no_grad()
def evaluate_model(
    model: HookedTransformer,
    task: Task | None = None,
    fwd_hooks: Iterable[tuple[str, Callable]] = (),
    train_indices: Tensor | Sequence[int] | None = None,
) -> dict[str, float]:
    """Loss and accuracy of the model (under ``fwd_hooks``) on the whole grid and its splits.

    One forward pass over ``task.tokens()``; cross-entropy in float64 over the first p logits.
    Returns ``all_loss, all_acc`` and, when ``train_indices`` (rows into ``task.pairs()``) is
    given, ``train_loss, train_acc, test_loss, test_acc`` (test = the complement).
    """
    from tl_grokking.analysis.logits import loss_and_accuracy

    task = resolve_task(model, task, needs=None)
    tokens = task.tokens().to(model.cfg.device)
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1, : task.p]
    labels = task.labels().to(logits.device)
    out: dict[str, float] = {}
    loss, acc = loss_and_accuracy(logits, labels)
    out["all_loss"], out["all_acc"] = loss, acc
    if train_indices is not None:
        train = torch.as_tensor(train_indices, dtype=torch.long, device=logits.device)
        test_mask = torch.ones(labels.shape[0], dtype=torch.bool, device=logits.device)
        test_mask[train] = False
        out["train_loss"], out["train_acc"] = loss_and_accuracy(logits[train], labels[train])
        if test_mask.any():
            out["test_loss"], out["test_acc"] = loss_and_accuracy(
                logits[test_mask], labels[test_mask]
            )
    return out
