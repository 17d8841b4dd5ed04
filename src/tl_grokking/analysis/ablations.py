"""The paper's ablation table (Nanda et al. 2023) for any compatible model.

Rows (loss and accuracy; the subset each is measured on is in ``AblationRow.subset``). These
are exactly the names :meth:`AblationTable.__getitem__` accepts, ``{k}`` a key frequency and
``{n}`` a neuron count:

* ``"full model"`` — all inputs; a second ``"full model"`` row on the training pairs when a
  split is given (``table["full model"]`` is the first).
* ``"restricted logits (key x+y)"`` — logits replaced by ``P_K(L) + mean``, all inputs.
* ``"excluded logits (all keys)"`` and ``"excluded k = {k}"`` for each key frequency — logits
  ``L - P_K(L)`` and ``L - P_{k}(L)``, on the training pairs (all inputs when no split is
  known).
* ``"neurons -> own 3x3 block"`` — every clustered neuron's activation replaced by its
  projection onto the 3×3 block ``{const, cos k, sin k}²`` of its own frequency k; unclustered
  neurons kept.
* ``"neurons -> own 3x3 block + unclustered dropped"`` — the same with unclustered neurons
  ablated.
* ``"cluster k = {k} removed ({n} neurons)"`` — the neurons of cluster k ablated.
* ``"attention zero-ablated"`` — every head's output (``hook_z``) set to zero.

The restricted / excluded rows use the ``a + b`` sum directions (task ``add``); for ``sub`` they
are left out and ``table.notes`` says why. "Ablated" neurons are set to zero
(``neuron_ablation="zero"``, the default) or to their mean over the grid (``"mean"``).
Neuron-level rows are computed exactly without extra forward passes: in a one-layer,
LayerNorm-free model the final-position logits are affine in the MLP activations
(``logits = (resid_mid + post @ W_out + b_out) @ W_U + b_U``, see :func:`mlp_readout`), so a change
of activations changes the logits by ``Δpost @ W_L``. With attention ablated the final position
no longer depends on (a, b), so that row needs the forward pass of a single input.
:func:`cluster_block_hooks` gives the same interventions as TransformerLens hooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_grokking.analysis.circuits import NeuronClusters, key_frequencies, neuron_clusters
from tl_grokking.analysis.fourier import SumProjection, project_grid, validate_freqs
from tl_grokking.analysis.grid import grid_activations, loss_and_accuracy, resolve_task
from tl_grokking.analysis.hooks import HookList, grid_fn_hook, grid_guard
from tl_grokking.data.tasks import Task
from tl_grokking.model.transformer import GrokModel

__all__ = [
    "AblationRow",
    "AblationTable",
    "ablation_table",
    "NEURON_ABLATIONS",
    "replace_by_cluster_blocks",
    "cluster_block_hooks",
    "mlp_readout",
    "TABLE_HOOKS",
]

NEURON_ABLATIONS = ("zero", "mean")
#: The final-position activations the table is computed from.
TABLE_HOOKS = ("blocks.0.mlp.hook_post", "unembed.hook_out")


@dataclass(frozen=True)
class AblationRow:
    """One ablation: its name, loss (cross-entropy) and accuracy on ``subset``."""

    name: str
    loss: float
    accuracy: float
    subset: str = "all"


@dataclass
class AblationTable:
    """The ablation table; ``str(table)`` prints it aligned."""

    p: int
    key_freqs: list[int]
    rows: list[AblationRow] = field(default_factory=list)
    clusters: NeuronClusters | None = None
    #: Why rows of the paper's table are missing (e.g. no x+y rows for a task other than add).
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> AblationRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no ablation row named {name!r}; rows: {[r.name for r in self.rows]}")

    def to_dict(self) -> dict:
        return {
            "p": self.p,
            "key_freqs": list(self.key_freqs),
            "rows": [
                {"name": r.name, "loss": r.loss, "accuracy": r.accuracy, "subset": r.subset}
                for r in self.rows
            ],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        width = max(len(r.name) for r in self.rows) if self.rows else 10
        head = f"{'ablation':<{width}}  {'inputs':>6}  {'loss':>10}  {'accuracy':>8}"
        lines = [f"ablation table (p = {self.p}, key frequencies {self.key_freqs})", head]
        lines.append("-" * len(head))
        for r in self.rows:
            lines.append(
                f"{r.name:<{width}}  {r.subset:>6}  {r.loss:>10.3e}  {100 * r.accuracy:>7.2f}%"
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def mlp_readout(
    model: GrokModel,
    resid_mid: Float[Tensor, "batch d_model"],
    post: Float[Tensor, "batch d_mlp"],
) -> Float[Tensor, "batch p"]:
    """Final-position logits (first p classes) from ``resid_mid`` and MLP activations ``post``.

    Exact for one-layer LayerNorm-free models: ``(resid_mid + post W_out + b_out) W_U + b_U``.
    """
    p = model.cfg.d_vocab - 1
    mlp = model.blocks[0].mlp
    W_out, b_out = cast(Tensor, mlp.W_out), cast(Tensor, mlp.b_out)
    dtype = post.dtype
    resid = resid_mid.to(dtype) + post @ W_out.to(dtype) + b_out.to(dtype)
    return resid @ model.W_U[:, :p].to(dtype) + model.b_U[:p].to(dtype)


def _ablate_value(
    post: Float[Tensor, "n_sq d_mlp"], neurons: Int[Tensor, " k"], how: str
) -> Float[Tensor, "n_sq k"]:
    if how == "zero":
        return torch.zeros_like(post[:, neurons])
    return post[:, neurons].mean(dim=0, keepdim=True).expand(post.shape[0], -1)


def _cluster_block_values(
    post: Float[Tensor, "n_sq d_mlp"],
    clusters: NeuronClusters,
    drop_unclustered: bool,
    neuron_ablation: str,
) -> list[tuple[Tensor, Tensor]]:
    """``(neuron indices, their new activations)`` for each group of neurons that changes."""
    if neuron_ablation not in NEURON_ABLATIONS:
        raise ValueError(
            f"neuron_ablation must be one of {NEURON_ABLATIONS}, got {neuron_ablation!r}"
        )
    if post.ndim != 2 or post.shape[0] != clusters.n**2:
        raise ValueError(
            f"post must be [n², d_mlp] over the grid of the clusters (n = {clusters.n}), got "
            f"shape {tuple(post.shape)}"
        )
    groups = []
    for k in clusters.sizes:
        idx = clusters.neurons(k).to(post.device)
        block = project_grid(post[:, idx], clusters.n, [k], basis="block", mode="keep")
        groups.append((idx, block.to(post.dtype)))
    if drop_unclustered:
        idx = torch.nonzero(~clusters.clustered).flatten().to(post.device)
        groups.append((idx, _ablate_value(post, idx, neuron_ablation)))
    return groups


def replace_by_cluster_blocks(
    post: Float[Tensor, "n_sq d_mlp"],
    clusters: NeuronClusters,
    *,
    drop_unclustered: bool = False,
    neuron_ablation: str = "zero",
) -> Float[Tensor, "n_sq d_mlp"]:
    """Each clustered neuron's grid activation projected onto its own frequency's 3×3 block.

    ``post`` is over the n×n grid the clusters were computed on (the canonical p² grid, or the
    group grid for clusters in discrete-log order). The block ``{const, cos k, sin k}²``
    includes the constant (the neuron's mean). Unclustered neurons are kept, or ablated
    (``neuron_ablation``) when ``drop_unclustered``.
    """
    out = post.clone()
    for idx, values in _cluster_block_values(post, clusters, drop_unclustered, neuron_ablation):
        out[:, idx] = values
    return out


def cluster_block_hooks(
    model: GrokModel,
    clusters: NeuronClusters,
    *,
    drop_unclustered: bool = False,
    neuron_ablation: str = "zero",
) -> HookList:
    """:func:`replace_by_cluster_blocks` as ``fwd_hooks`` on ``blocks.0.mlp.hook_post``.

    Run on the full canonical grid (``task.tokens()``); a guard checks it. The clusters must
    be in token order (``clusters.discrete_log`` False), like the grid.
    """
    if clusters.discrete_log:
        raise ValueError(
            "clusters are in discrete-log order; the hooks act on the canonical p² grid and "
            "need clusters in token order (neuron_clusters(..., reindex=False))"
        )
    p = clusters.p

    def fn(post: Tensor) -> Tensor:
        return replace_by_cluster_blocks(
            post, clusters, drop_unclustered=drop_unclustered, neuron_ablation=neuron_ablation
        )

    return [grid_guard(model, p), ("blocks.0.mlp.hook_post", grid_fn_hook(p, fn))]


@torch.no_grad()
def ablation_table(
    model: GrokModel,
    task: Task | None = None,
    *,
    key_freqs: Sequence[int] | None = None,
    train_indices: Int[Tensor, " n_train"] | Sequence[int] | None = None,
    clusters: NeuronClusters | None = None,
    threshold: float = 0.85,
    neuron_ablation: str = "zero",
    activations: Mapping[str, Tensor] | None = None,
) -> AblationTable:
    """Compute the paper's ablation table for ``model`` (rows: see the module docstring).

    Needs a task with ``"token_fourier"`` (add, sub; ``ValueError`` otherwise). The x+y rows
    (restricted / excluded logits) need ``"sum_directions"`` (add): for sub they are left out
    and ``table.notes`` says why.
    ``key_freqs`` default to the circuit rule of :func:`key_frequencies`; ``clusters`` (from
    :func:`neuron_clusters` at ``threshold``) are computed when not given. ``train_indices``
    (rows of ``task.pairs()``) select the training pairs for the excluded-loss rows. One forward
    pass over the grid in all, skipped when ``activations`` (the result of
    :func:`~tl_grokking.analysis.grid.grid_activations` for :data:`TABLE_HOOKS`) are given.
    """
    if neuron_ablation not in NEURON_ABLATIONS:
        raise ValueError(
            f"neuron_ablation must be one of {NEURON_ABLATIONS}, got {neuron_ablation!r}"
        )
    task = resolve_task(model, task, analysis="the ablation table (neuron clusters)")
    p = task.p
    names = list(TABLE_HOOKS)
    acts = activations if activations is not None else grid_activations(model, task, names)
    missing = [n for n in names if n not in acts]
    if missing:
        raise ValueError(f"activations must hold the hooks {names}; missing {missing}")
    post = acts[names[0]]
    logits = acts[names[1]][:, :p].double()
    if post.shape != (p * p, model.cfg.d_mlp) or logits.shape != (p * p, p):
        raise ValueError(
            f"activations must be final-position grid activations ([p², ...] with p = {p}), "
            f"got {tuple(post.shape)} and {tuple(acts[names[1]].shape)}"
        )
    labels = task.labels().to(logits.device)
    if clusters is None:
        clusters = neuron_clusters(model, task, threshold, activations=post)
    elif (clusters.p, clusters.discrete_log) != (p, False):
        raise ValueError(
            f"clusters must be in token order over Z_{p} (the grid of the table), got clusters "
            f"over Z_{clusters.n} for p = {clusters.p}"
        )
    if key_freqs is None:
        key_freqs = key_frequencies(model, task, clusters=clusters, logits=logits).keys
    key_freqs = validate_freqs(key_freqs, p, field="key_freqs")

    excl_rows = None
    if train_indices is not None:
        excl_rows = torch.as_tensor(train_indices, dtype=torch.long, device=logits.device)
    excl_subset = "all" if excl_rows is None else "train"
    excl_labels = labels if excl_rows is None else labels[excl_rows]

    table = AblationTable(p=p, key_freqs=key_freqs, clusters=clusters)
    if key_freqs and "sum_directions" not in task.meaningful_analyses:
        try:
            task.require("sum_directions", "the x+y rows of the ablation table")
        except ValueError as err:  # the neuron and attention rows still apply
            table.notes.append(str(err))

    def add(name: str, rows_logits: Tensor, rows_labels: Tensor, subset: str = "all") -> None:
        loss, acc = loss_and_accuracy(rows_logits, rows_labels)
        table.rows.append(AblationRow(name, loss, acc, subset))

    add("full model", logits, labels)
    if excl_rows is not None:
        add("full model", logits[excl_rows], excl_labels, "train")
    if key_freqs and not table.notes:
        proj = SumProjection(p, key_freqs, rows=excl_rows, device=logits.device)
        coeffs, on_rows = proj.coefficients(logits), proj.on_rows(logits)
        add("restricted logits (key x+y)", proj.restricted(logits, coeffs), labels)
        excluded = proj.excluded(logits, coeffs, x_rows=on_rows)
        add("excluded logits (all keys)", excluded, excl_labels, excl_subset)
        for k in key_freqs:  # one p² × p result alive at a time (not |K| of them)
            excluded = proj.excluded(logits, coeffs, freq=k, x_rows=on_rows)
            add(f"excluded k = {k}", excluded, excl_labels, excl_subset)
    W_L = model.blocks[0].mlp.W_out.detach() @ model.W_U[:, :p].detach()  # [d_mlp, p]

    def readout(groups: list[tuple[Tensor, Tensor]]) -> Tensor:
        # Exact: the logits are affine in the MLP activations (one layer, no LayerNorm), so
        # changing neurons idx by Δ changes the logits by Δ @ W_L[idx].
        out = logits.clone()
        for idx, values in groups:
            out += ((values - post[:, idx]) @ W_L[idx]).double()
        return out

    for drop in (False, True):
        name = "neurons -> own 3x3 block" + (" + unclustered dropped" if drop else "")
        add(name, readout(_cluster_block_values(post, clusters, drop, neuron_ablation)), labels)
    for k in clusters.sizes:
        idx = clusters.neurons(k).to(post.device)
        removed = [(idx, _ablate_value(post, idx, neuron_ablation))]
        add(f"cluster k = {k} removed ({len(idx)} neurons)", readout(removed), labels)
    # Without attention the final position sees only ``=`` and its position: the logits are
    # the same for every input, so one input suffices.
    one = task.tokens()[:1].to(model.cfg.device)
    hooked = model.run_with_hooks(one, fwd_hooks=[("blocks.0.attn.hook_z", _zero_hook)])
    add("attention zero-ablated", hooked[:, -1, :p].double().expand(p * p, p), labels)
    return table


def _zero_hook(act: Tensor, hook: object) -> Tensor:
    return torch.zeros_like(act)
