"""Neuron clusters and key frequencies: which frequencies a trained model uses.

Both work in the task's group coordinates (``reindex``, see :mod:`tl_grokking.analysis.grid`):
over Z_p indexed by the tokens for + and −, over Z_{p-1} in discrete-log order for × and ÷
(token 0 dropped). Frequencies then range over ``1 .. n // 2`` with ``n = task.fourier_size``
(for even n the last one is the Nyquist frequency). ``reindex=False`` runs the same analysis in
token order over Z_p for any task (e.g. to show that × is not sparse without the re-indexing).

* **Neuron clusters** (Nanda et al. 2023). Each MLP neuron's final-position activation over the
  n×n grid, centred and 2-D Fourier transformed, is mostly in the 3×3 block
  ``{const, cos k, sin k}²`` of one frequency k; the fraction of variance explained (FVE) by
  that block is :func:`tl_grokking.analysis.fourier.block_fve`. Neurons with FVE ≥ 0.85 form
  the cluster of k.
* **Key frequencies** by three rules: the frequencies of the clusters; the Fourier norms of the
  embedding W_E (the TransformerLens demo's rule); and those of the neuron→logit map W_L (the
  paper's appendix). Both norm rules keep the frequencies whose norm is **greater than** a
  fraction (default 1/4, "max/4") of the largest. :func:`key_frequencies` computes any or all
  and says whether they agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from tl_grokking.analysis.fourier import block_fve, frequencies
from tl_grokking.analysis.grid import fourier_order, grid_activations, resolve_task
from tl_grokking.analysis.weights import (
    embed_fourier_norms,
    norms_by_frequency,
    unembed_fourier_norms,
)
from tl_grokking.data.tasks import Task

__all__ = [
    "NeuronClusters",
    "KeyFrequencies",
    "neuron_clusters",
    "key_frequencies",
    "KEY_FREQUENCY_RULES",
    "MLP_POST",
]

KEY_FREQUENCY_RULES = ("clusters", "embed", "unembed")
#: The activations the neuron clusters are computed from.
MLP_POST = "blocks.0.mlp.hook_post"


def _coordinates_text(p: int, discrete_log: bool) -> str:
    return f"discrete-log order over Z_{p - 1}" if discrete_log else f"token order over Z_{p}"


@dataclass
class NeuronClusters:
    """Each MLP neuron's frequency and the fraction of its variance that frequency explains.

    ``freq[i]`` is the arg-max over k of ``fve_all[k - 1, i]`` (see
    :func:`~tl_grokking.analysis.fourier.block_fve`), ``fve[i]`` its value; neurons with
    ``fve >= threshold`` are *clustered* with that frequency. ``p`` is the task's modulus;
    ``discrete_log`` says whether the frequencies are of Z_{p-1} in discrete-log order (× and
    ÷) rather than of Z_p in token order; :attr:`n` is that group's size.
    """

    p: int
    threshold: float
    freq: Int[Tensor, " d_mlp"]
    fve: Float[Tensor, " d_mlp"]
    fve_all: Float[Tensor, "n_freqs d_mlp"]
    discrete_log: bool = False

    @property
    def n(self) -> int:
        """Size of the group the frequencies are of (``p``, or ``p - 1`` in discrete-log order)."""
        return self.p - 1 if self.discrete_log else self.p

    @property
    def clustered(self) -> Bool[Tensor, " d_mlp"]:
        """Boolean mask of clustered neurons."""
        return self.fve >= self.threshold

    @property
    def sizes(self) -> dict[int, int]:
        """Cluster sizes by frequency (clustered neurons only), ascending k."""
        ks, counts = torch.unique(self.freq[self.clustered], return_counts=True)
        return {int(k): int(c) for k, c in zip(ks, counts, strict=True)}

    @property
    def n_clustered(self) -> int:
        return int(self.clustered.sum())

    @property
    def n_unclustered(self) -> int:
        return int((~self.clustered).sum())

    def neurons(self, k: int) -> Int[Tensor, " n"]:
        """Indices of the neurons clustered at frequency ``k``."""
        return torch.nonzero(self.clustered & (self.freq == k)).flatten()

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}: {n}" for k, n in self.sizes.items()) or "none"
        d_mlp = self.freq.shape[0]
        return (
            f"neuron clusters (FVE >= {self.threshold:g}, "
            f"{_coordinates_text(self.p, self.discrete_log)}): {self.n_clustered} of {d_mlp} "
            f"neurons clustered; sizes by frequency {{{sizes}}}; {self.n_unclustered} unclustered"
        )


@dataclass
class KeyFrequencies:
    """Key frequencies by up to three rules, with the evidence of each.

    ``keys`` are those of the primary ``rule`` (``"clusters"`` when several were computed);
    ``by_rule[r]`` the set from rule r; ``evidence[r]`` one value per frequency (row ``k - 1``):
    cluster sizes for ``"clusters"``, Fourier norms of ``W_E`` / ``W_L`` for ``"embed"`` /
    ``"unembed"``; ``thresholds[r]`` the cut-off applied to that evidence (cluster size ≥ it,
    norm > it). ``discrete_log`` and :attr:`n` are as in :class:`NeuronClusters`.
    """

    p: int
    rule: str
    keys: list[int]
    by_rule: dict[str, list[int]]
    evidence: dict[str, Tensor]
    thresholds: dict[str, float]
    clusters: NeuronClusters | None = None
    discrete_log: bool = False

    @property
    def n(self) -> int:
        """Size of the group the frequencies are of (``p``, or ``p - 1`` in discrete-log order)."""
        return self.p - 1 if self.discrete_log else self.p

    @property
    def freqs(self) -> list[int]:
        """Alias of :attr:`keys`."""
        return self.keys

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def agree(self) -> bool:
        """True when every computed rule gives the same set."""
        sets = [tuple(v) for v in self.by_rule.values()]
        return all(s == sets[0] for s in sets)

    def __str__(self) -> str:
        where = _coordinates_text(self.p, self.discrete_log)
        lines = [f"key frequencies (p = {self.p}, {where}, rule {self.rule!r}): {self.keys}"]
        describe = {
            "clusters": "neuron clusters, size >= {t:g} (FVE >= {fve:g})",
            "embed": "W_E Fourier norm > {t:.3g} ({f:g} × max)",
            "unembed": "W_L Fourier norm > {t:.3g} ({f:g} × max)",
        }
        fve = self.clusters.threshold if self.clusters is not None else float("nan")
        for r, keys in self.by_rule.items():
            ev = self.evidence[r]
            top = float(ev.max()) if ev.numel() else 0.0
            fraction = self.thresholds[r] / top if top > 0 else float("nan")
            how = describe[r].format(t=self.thresholds[r], fve=fve, f=fraction)
            vals = ", ".join(f"{k}: {float(ev[k - 1]):.3g}" for k in keys)
            lines.append(f"  {r:8s} {keys}   [{how}; {vals}]")
        if len(self.by_rule) > 1:
            lines.append(f"  rules agree: {'yes' if self.agree else 'no'}")
        return "\n".join(lines)


def _coordinates(
    model: HookedTransformer, task: Task | None, reindex: bool | None, analysis: str
) -> tuple[Task, int]:
    """The task and the size n of its Fourier analysis in the coordinates of ``reindex``.

    Group coordinates (``reindex`` None or True) need ``"group_fourier"``; token order
    (``False``) is computed for any task.
    """
    needs = None if reindex is False else "group_fourier"
    task = resolve_task(model, task, needs=needs, analysis=analysis)
    return task, fourier_order(task, reindex, analysis=analysis).shape[0]


def neuron_clusters(
    model: HookedTransformer,
    task: Task | None = None,
    threshold: float = 0.85,
    *,
    activations: Float[Tensor, "n_sq d_mlp"] | None = None,
    reindex: bool | None = None,
) -> NeuronClusters:
    """Cluster the MLP neurons by frequency, in the task's group coordinates (module doc).

    For each neuron: final-position post-activation over the n×n grid
    (:func:`~tl_grokking.analysis.grid.grid_activations` with the same ``reindex``), centred,
    2-D Fourier transformed with the size-n basis; FVE by k = energy in the 3×3 block of k /
    total energy; frequency = arg-max; clustered when FVE >= ``threshold``. ``activations``
    (``[n², d_mlp]`` in that grid order) skip the forward pass. ``task`` defaults to modular
    addition with the model's p.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    if not (0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    task, n = _coordinates(model, task, reindex, "neuron clusters")
    if activations is None:
        activations = grid_activations(model, task, [MLP_POST], reindex=reindex)[MLP_POST]
    if activations.ndim != 2 or activations.shape[0] != n * n:
        raise ValueError(
            f"activations must be [n², d_mlp] over the n×n grid (n = {n} for task "
            f"{task.name!r} with reindex={reindex!r}), got shape {tuple(activations.shape)}"
        )
    fve_all = block_fve(activations.double(), n)
    fve, idx = fve_all.max(dim=0)
    return NeuronClusters(
        p=task.p,
        threshold=float(threshold),
        freq=idx + 1,
        fve=fve,
        fve_all=fve_all,
        discrete_log=n != task.p,
    )


def _above_max_fraction(
    norms: Float[Tensor, " n_freqs"], fraction: float
) -> tuple[list[int], float]:
    """Frequencies (row ``k - 1``) whose norm is greater than ``fraction`` × the largest."""
    cut = float(norms.max()) * fraction
    return [int(i) + 1 for i in torch.nonzero(norms > cut).flatten()], cut


def key_frequencies(
    model: HookedTransformer,
    task: Task | None = None,
    *,
    rule: str = "all",
    threshold: float = 0.85,
    min_cluster_size: int = 1,
    norm_fraction: float = 0.25,
    clusters: NeuronClusters | None = None,
    reindex: bool | None = None,
) -> KeyFrequencies:
    """The key frequencies of a model by one rule or all three, in the task's group coordinates.

    Rules:
        ``"clusters"``: the frequencies of the neuron clusters (:func:`neuron_clusters` at FVE
        ``threshold``, or the ``clusters`` given) holding at least ``min_cluster_size`` neurons.
        ``"embed"`` (TransformerLens demo): frequencies whose ``W_E`` Fourier norm
        ``sqrt(|cos k|² + |sin k|²)`` along the token axis is greater than ``norm_fraction`` ×
        the largest (:func:`~tl_grokking.analysis.weights.embed_fourier_norms`).
        ``"unembed"`` (paper appendix): the same rule on the Fourier norms of ``W_L`` along its
        class axis (norm over neurons), same ``norm_fraction`` (default 1/4).
        ``"all"``: all three; ``keys`` are the cluster rule's and ``agree`` reports agreement.

    ``reindex`` (module doc): ``None`` the task's group coordinates (Z_{p-1} in discrete-log
    order for × and ÷), ``False`` token order. A task without a group structure raises
    ``ValueError`` unless ``reindex=False``.
    """
    rules = KEY_FREQUENCY_RULES if rule == "all" else (rule,)
    if rule != "all" and rule not in KEY_FREQUENCY_RULES:
        raise ValueError(f"rule must be one of {(*KEY_FREQUENCY_RULES, 'all')}, got {rule!r}")
    if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, int):
        raise ValueError(f"min_cluster_size must be a positive integer, got {min_cluster_size!r}")
    if min_cluster_size < 1:
        raise ValueError(f"min_cluster_size must be a positive integer, got {min_cluster_size!r}")
    if not (0.0 < float(norm_fraction) < 1.0):
        raise ValueError(f"norm_fraction must be in (0, 1), got {norm_fraction!r}")
    task, n = _coordinates(model, task, reindex, "key frequencies")
    by_rule: dict[str, list[int]] = {}
    evidence: dict[str, Tensor] = {}
    thresholds: dict[str, float] = {}
    if "clusters" in rules:
        if clusters is None:
            clusters = neuron_clusters(model, task, threshold, reindex=reindex)
        elif (clusters.p, clusters.n) != (task.p, n):
            raise ValueError(
                f"clusters are for p = {clusters.p} over Z_{clusters.n}, but the key "
                f"frequencies of task {task.name!r} with reindex={reindex!r} are over Z_{n}"
            )
        counts = torch.zeros(len(frequencies(n)), dtype=torch.float64)
        for k, size in clusters.sizes.items():
            counts[k - 1] = size
        by_rule["clusters"] = [int(i) + 1 for i in torch.nonzero(counts >= min_cluster_size)]
        evidence["clusters"] = counts
        thresholds["clusters"] = float(min_cluster_size)
    for name, norms_fn in (("embed", embed_fourier_norms), ("unembed", unembed_fourier_norms)):
        if name in rules:
            evidence[name] = norms_by_frequency(norms_fn(model, task, reindex=reindex)).cpu()
            by_rule[name], thresholds[name] = _above_max_fraction(evidence[name], norm_fraction)
    primary = "clusters" if rule == "all" else rule
    return KeyFrequencies(
        p=task.p,
        rule=rule,
        keys=by_rule[primary],
        by_rule=by_rule,
        evidence=evidence,
        thresholds=thresholds,
        clusters=clusters,
        discrete_log=n != task.p,
    )
