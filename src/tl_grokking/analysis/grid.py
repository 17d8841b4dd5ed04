"""The model over the input grid: the task to analyse, its coordinates, activations, logits, loss.

Every analysis of :mod:`tl_grokking.analysis` starts here:

* :func:`resolve_task` — the task (default: modular addition with the model's p), checked
  against the model and, if asked, gated by :meth:`~tl_grokking.data.tasks.Task.require`.
* :func:`fourier_order` — the tokens that index the rows of a Fourier analysis, in order. The
  keyword ``reindex`` means the same everywhere in the package:

  ========== ==================================================================================
  ``None``   the task's natural coordinates: its group order (:meth:`Task.fourier_tokens`, the
             identity over Z_p for + and −, the discrete-log order over Z_{p-1} for × and ÷,
             token 0 dropped) when it has a Fourier structure, the token order otherwise
  ``True``   the group order (``ValueError`` for a task without a group structure)
  ``False``  the token order 0 .. p-1 over Z_p, whatever the task (e.g. to show that × is not
             sparse without the re-indexing)
  ========== ==================================================================================

* :func:`grid_tokens` / :func:`grid_activations` — the inputs over the n×n grid in those
  coordinates (default ``reindex=False``: the canonical lexicographic p² grid, row ``a * p + b``,
  which the grid-wise hooks of :mod:`tl_grokking.analysis.hooks` require) and the final-position
  activations over it, from one forward pass.
* :func:`all_logits`, :func:`loss_and_accuracy`, :func:`evaluate_model` — logits, float64
  cross-entropy and accuracy, evaluation under hooks.

:data:`SITES` maps friendly site names (``"mlp_post"``, ``"logits"``, ...) to hook names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tl_grokking.data.discrete_log import reindexed_tokens
from tl_grokking.data.tasks import ModularAddition, Task
from tl_grokking.model.transformer import GrokModel, check_compatible

__all__ = [
    "SITES",
    "resolve_site",
    "resolve_task",
    "fourier_order",
    "grid_tokens",
    "grid_activations",
    "all_logits",
    "loss_and_accuracy",
    "evaluate_model",
]

#: Friendly site names accepted by ``where`` / ``names`` → TransformerLens hook names.
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


def resolve_site(model: GrokModel, where: str) -> str:
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


def resolve_task(
    model: GrokModel,
    task: Task | None = None,
    *,
    needs: str | None = "token_fourier",
    analysis: str = "token-order Fourier analysis",
) -> Task:
    """The task to analyse: ``task`` (checked against the model) or modular addition mod p.

    ``needs`` is the capability of :attr:`Task.meaningful_analyses` the caller's analysis
    requires (checked by :meth:`Task.require`, the message naming ``analysis``); ``None``
    accepts every task.
    """
    if task is not None and not isinstance(task, Task):
        raise ValueError(f"task must be a tl_grokking Task or None, got {type(task).__name__}")
    check_compatible(model, task)
    if task is None:
        task = ModularAddition(model.cfg.d_vocab - 1)
    if needs is not None:
        task.require(needs, analysis)
    return task


def _group_coordinates(task: Task, reindex: bool | None) -> bool:
    """Whether ``reindex`` selects the group order of ``task`` (see the module doc)."""
    if reindex is None:
        return task.fourier_structure is not None
    if not isinstance(reindex, bool):
        raise ValueError(f"reindex must be True, False or None, got {reindex!r}")
    return reindex


def fourier_order(
    task: Task, reindex: bool | None = None, *, analysis: str = "the Fourier re-indexing"
) -> Int[Tensor, " n"]:
    """Token ids indexing the rows of a Fourier analysis of ``task``: row ``i`` is token
    ``out[i]``, basis size ``n = len(out)``.

    ``reindex`` (module doc): ``None`` the task's natural coordinates, ``True`` its group order
    (``task.fourier_tokens()``; ``ValueError`` naming ``analysis`` for a task without one),
    ``False`` the token order ``0 .. p-1``.
    """
    if _group_coordinates(task, reindex):
        task.require("group_fourier", analysis)
        return task.fourier_tokens()
    return torch.arange(task.p)


def _require_full_grid(task: Task, analysis: str) -> None:
    if not task.is_full_grid:
        raise ValueError(
            f"{analysis} needs every pair (a, b) of the p² grid; task {task.name!r} is defined "
            f"on {task.pairs().shape[0]} pairs only"
        )


def grid_tokens(
    model: GrokModel, task: Task | None = None, *, reindex: bool | None = False
) -> Int[Tensor, "n_sq 3"]:
    """All n² inputs ``[a, b, =]`` of the grid in the coordinates of ``reindex``, on the model's
    device: row ``i * n + j`` holds tokens ``(order[i], order[j])``, ``order =``
    :func:`fourier_order`.

    The default ``reindex=False`` is the canonical lexicographic p² grid (``task.tokens()``);
    any task on the full grid is accepted (the grid needs no group structure). ``None`` /
    ``True`` give the group grid (the (p-1)² non-zero pairs in discrete-log order for × and ÷).
    """
    task = resolve_task(model, task, needs=None)
    if _group_coordinates(task, reindex):
        task.require("group_fourier", "the input grid in group coordinates")
        tokens = reindexed_tokens(task)
    else:
        _require_full_grid(task, "activations over the (a, b) grid")
        tokens = task.tokens()
    return tokens.to(model.cfg.device)


@torch.no_grad()
def grid_activations(
    model: GrokModel,
    task: Task | None = None,
    names: str | Sequence[str] = ("blocks.0.mlp.hook_post",),
    *,
    fwd_hooks: Iterable[tuple[str, Callable]] = (),
    reindex: bool | None = False,
) -> dict[str, Tensor]:
    """Final-position activations over the whole grid, by hook name, from one forward pass.

    ``names`` are hook names or friendly site names (see :data:`SITES`); the result is keyed by
    hook name, each ``[n², ...]`` (the position axis dropped; rows in the order of
    :func:`grid_tokens` with the same ``reindex``, by default ``a * p + b``). Extra
    ``fwd_hooks`` (e.g. an ablation) run before the activations are recorded.
    """
    if isinstance(names, str):
        names = [names]
    hook_names = [resolve_site(model, n) for n in names]
    cache: dict[str, Tensor] = {}

    def record(act: Tensor, hook) -> None:
        cache[hook.name] = act[:, -1].detach().clone()

    hooks: list[tuple[str | Callable, Callable]] = [*fwd_hooks]
    hooks += [(n, record) for n in dict.fromkeys(hook_names)]
    model.run_with_hooks(grid_tokens(model, task, reindex=reindex), fwd_hooks=hooks)
    return {n: cache[n] for n in hook_names}


@torch.no_grad()
def all_logits(
    model: GrokModel,
    task: Task | None = None,
    *,
    fwd_hooks: Iterable[tuple[str, Callable]] = (),
    dtype: torch.dtype = torch.float64,
) -> Float[Tensor, "p_sq p"]:
    """Final-position logits of the first p classes for all p² inputs (canonical order).

    One forward pass (under ``fwd_hooks`` if given); returned in ``dtype`` (float64 default).
    """
    tokens = grid_tokens(model, task)
    p = model.cfg.d_vocab - 1
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1, :p]
    return logits.to(dtype)


def loss_and_accuracy(
    logits: Float[Tensor, "batch n_classes"], labels: Int[Tensor, " batch"]
) -> tuple[float, float]:
    """Mean cross-entropy (computed in float64) and accuracy of ``logits`` against ``labels``."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits ({logits.shape[0]} rows) and labels ({labels.shape[0]}) must match"
        )
    if logits.shape[0] == 0:
        raise ValueError("cannot compute a loss over an empty set of inputs")
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits.double(), labels).item()
    acc = (logits.argmax(dim=-1) == labels).double().mean().item()
    return loss, acc


@torch.no_grad()
def evaluate_model(
    model: GrokModel,
    task: Task | None = None,
    fwd_hooks: Iterable[tuple[str, Callable]] = (),
    train_indices: Int[Tensor, " n_train"] | Sequence[int] | None = None,
) -> dict[str, float]:
    """Loss and accuracy of the model (under ``fwd_hooks``) on all inputs and on the split.

    One forward pass over ``task.tokens()`` (the task's valid pairs; every task is accepted);
    cross-entropy in float64 over the first p logits. Returns ``all_loss, all_acc`` and, when
    ``train_indices`` (rows into ``task.pairs()``) is given, ``train_loss, train_acc,
    test_loss, test_acc`` (test = the complement).
    """
    task = resolve_task(model, task, needs=None)
    tokens = task.tokens().to(model.cfg.device)
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1, : task.p]
    labels = task.labels().to(logits.device)
    out: dict[str, float] = {}
    out["all_loss"], out["all_acc"] = loss_and_accuracy(logits, labels)
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
