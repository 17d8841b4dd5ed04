"""Neuron clusters and key frequencies: which frequencies a trained model uses (PAPER_NOTES §6).

* **Neuron clusters.** Each MLP neuron's final-position activation over the p² grid, centred and
  2-D Fourier transformed, is mostly in the 3×3 block ``{const, cos k, sin k}²`` of one
  frequency k; the fraction of variance explained (FVE) by that block is
  :func:`tl_grokking.analysis.fourier.block_fve`. Neurons with FVE ≥ 0.85 form the cluster of k.
* **Key frequencies** by three rules: the frequencies of the clusters; the large Fourier norms of
  the embedding W_E (the TransformerLens demo's rule); and those of the neuron→logit map W_L
  (the paper's appendix). :func:`key_frequencies` computes any or all and says whether they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_grokking.analysis.fourier import block_fve, frequencies
from tl_grokking.analysis.hooks import grid_activations, resolve_task
from tl_grokking.analysis.weights import (
    embed_fourier_norms,
    norms_by_frequency,
    unembed_fourier_norms,
)

__all__ = ["NeuronClusters", "KeyFrequencies", "neuron_clusters", "key_frequencies"]

KEY_FREQUENCY_RULES = ("clusters", "embed", "unembed")


@dataclass
class NeuronClusters:
    """Each MLP neuron's frequency and the fraction of its variance that frequency explains.

    ``freq[n]`` is the arg-max over k of ``fve_all[k - 1, n]`` (see :func:`block_fve`), ``fve[n]``
    its value; neurons with ``fve >= threshold`` are *clustered* with that frequency.
    """

    p: int
    threshold: float
    freq: Int[Tensor, " d_mlp"]
    fve: Float[Tensor, " d_mlp"]
    fve_all: Float[Tensor, "n_freqs d_mlp"]

    @property
    def clustered(self) -> torch.Tensor:
        """Boolean mask of clustered neurons."""
        return self.fve >= self.threshold

    @property
    def sizes(self) -> dict[int, int]:
        """Cluster sizes by frequency (clustered neurons only), ascending k."""
        ks, counts = torch.unique(self.freq[self.clustered], return_counts=True)
        return {int(k): int(c) for k, c in zip(ks, counts, strict=True)}

    @property
    def n_unclustered(self) -> int:
        return int((~self.clustered).sum())

    def neurons(self, k: int) -> Int[Tensor, " n"]:
        """Indices of the neurons clustered at frequency ``k``."""
        return torch.nonzero(self.clustered & (self.freq == k)).flatten()

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}: {n}" for k, n in self.sizes.items()) or "none"
        n = self.freq.shape[0]
        return (
            f"neuron clusters (FVE >= {self.threshold:g}): {n - self.n_unclustered} of {n} "
            f"neurons clustered; sizes by frequency {{{sizes}}}; {self.n_unclustered} unclustered"
        )


@dataclass
class KeyFrequencies:
    """Key frequencies by up to three rules (§6), with the evidence of each.

    ``keys`` are those of the primary ``rule`` (``"clusters"`` when several were computed);
    ``by_rule[r]`` the set from rule r; ``evidence[r]`` one value per frequency (row ``k - 1``):
    cluster sizes for ``"clusters"``, Fourier norms of ``W_E`` / ``W_L`` for ``"embed"`` /
    ``"unembed"``; ``thresholds[r]`` the cut-off applied to that evidence.
    """

    p: int
    rule: str
    keys: list[int]
    by_rule: dict[str, list[int]]
    evidence: dict[str, Tensor]
    thresholds: dict[str, float]
    clusters: NeuronClusters | None = None

    @property
    def freqs(self) -> list[int]:
        """Alias of :attr:`keys`."""
        return self.keys

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def agree(self) -> bool:
        """True when every computed rule gives the same set."""
        sets = [tuple(v) for v in self.by_rule.values()]
        return all(s == sets[0] for s in sets)

    def __str__(self) -> str:
        lines = [f"key frequencies (p = {self.p}, rule {self.rule!r}): {self.keys}"]
        describe = {
            "clusters": "neuron clusters, size >= {t:g} (FVE >= {fve:g})",
            "embed": "W_E Fourier norm > {t:.3g} (max/4)",
            "unembed": "W_L Fourier norm > {t:.3g} (max/4)",
        }
        fve = self.clusters.threshold if self.clusters is not None else float("nan")
        for r, keys in self.by_rule.items():
            how = describe[r].format(t=self.thresholds[r], fve=fve)
            ev = self.evidence[r]
            vals = ", ".join(f"{k}: {float(ev[k - 1]):.3g}" for k in keys)
            lines.append(f"  {r:8s} {keys}   [{how}; {vals}]")
        if len(self.by_rule) > 1:
            lines.append(f"  rules agree: {'yes' if self.agree else 'no'}")
        return "\n".join(lines)


def neuron_clusters(
    model,
    task=None,
    threshold: float = 0.85,
    *,
    activations: Float[Tensor, "p_sq d_mlp"] | None = None,
) -> NeuronClusters:
    """Cluster the MLP neurons by frequency (§6).

    For each neuron: final-position post-activation over all p² inputs, centred, 2-D Fourier
    transformed; FVE by k = energy in the 3×3 block of k / total energy; frequency = arg-max;
    clustered when FVE >= ``threshold``. ``activations`` (``[p², d_mlp]``, canonical order) skips
    the forward pass.
    """
    if not (0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    task = resolve_task(model, task, analysis="neuron clusters")
    p = task.p
    if activations is None:
        name = "blocks.0.mlp.hook_post"
        activations = grid_activations(model, task, [name])[name]
    fve_all = block_fve(activations.double(), p)
    fve, idx = fve_all.max(dim=0)
    return NeuronClusters(p=p, threshold=float(threshold), freq=idx + 1, fve=fve, fve_all=fve_all)


def _above_max_fraction(norms: Tensor, fraction: float = 0.25) -> tuple[list[int], float]:
    cut = float(norms.max()) * fraction
    return [int(i) + 1 for i in torch.nonzero(norms > cut).flatten()], cut


def key_frequencies(
    model,
    task=None,
    *,
    rule: str = "all",
    threshold: float = 0.85,
    min_cluster_size: int = 1,
    norm_fraction: float = 0.25,
    clusters: NeuronClusters | None = None,
) -> KeyFrequencies:
    """The key frequencies of a model by one rule or all three (§6).

    Rules:
        ``"clusters"``: the frequencies of the neuron clusters (:func:`neuron_clusters` at FVE
        ``threshold``) holding at least ``min_cluster_size`` neurons.
        ``"embed"`` (TransformerLens demo): frequencies whose ``W_E`` Fourier norm
        ``sqrt(|cos k|² + |sin k|²)`` along the token axis exceeds ``norm_fraction`` × the max.
        ``"unembed"`` (paper appendix): the same rule on the Fourier norms of ``W_L`` along its
        class axis (norm over neurons), same ``norm_fraction`` (default 1/4).
        ``"all"``: all three; ``keys`` are the cluster rule's and ``agree`` reports agreement.
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
    task = resolve_task(model, task, analysis="key frequencies")
    p = task.p
    by_rule: dict[str, list[int]] = {}
    evidence: dict[str, Tensor] = {}
    thresholds: dict[str, float] = {}
    if "clusters" in rules:
        if clusters is None:
            clusters = neuron_clusters(model, task, threshold)
        counts = torch.zeros(len(frequencies(p)), dtype=torch.float64)
        for k, n in clusters.sizes.items():
            counts[k - 1] = n
        by_rule["clusters"] = [int(i) + 1 for i in torch.nonzero(counts >= min_cluster_size)]
        evidence["clusters"] = counts
        thresholds["clusters"] = float(min_cluster_size)
    for name, norms_fn in (("embed", embed_fourier_norms), ("unembed", unembed_fourier_norms)):
        if name in rules:
            evidence[name] = norms_by_frequency(norms_fn(model))
            by_rule[name], thresholds[name] = _above_max_fraction(evidence[name], norm_fraction)
    primary = "clusters" if rule == "all" else rule
    return KeyFrequencies(
        p=p,
        rule=rule,
        keys=by_rule[primary],
        by_rule=by_rule,
        evidence=evidence,
        thresholds=thresholds,
        clusters=clusters,
    )
