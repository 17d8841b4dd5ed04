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
* **Key frequencies.** Each piece of the paper's evidence gives a rule of its own:

  ``clusters``  the frequencies of the clusters at FVE ≥ 0.85 (the paper's text);
  ``neurons``   frequencies that are the dominant one (FVE ≥ 1/2) of many neurons — at least
                1/32 of the MLP each, a quarter of it together (a cluster at moderate FVE
                counts, a few stray neurons do not);
  ``embed``     W_E Fourier norm greater than max/4 (the TransformerLens demo);
  ``unembed``   W_L Fourier norm greater than max/4 (the paper's appendix);
  ``logits``    the trig-identity fit ``L ≈ Σ_k α_k cos(w_k(a+b-c))`` over all frequencies:
                ``α_k`` at least a tenth of the largest, the kept terms explaining at least a
                quarter of the logits' variance (addition only: the sum directions).

  None of them is right on every model (``docs/analysis.md`` has the cases), so the default
  rule, ``circuit``, combines them: a frequency is key when it has a real neuron group
  (``neurons``) or a real share of the logits (``logits``); ``clusters``, ``embed`` and
  ``unembed`` are reported beside it. :func:`key_frequencies` reports every rule, whether they
  agree, the *contested* frequencies (named by some rules, not by others) and, for addition,
  what each one changes: the restricted loss of the key set with and without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_grokking.analysis.fourier import (
    SumProjection,
    block_fve,
    frequencies,
    trig_coefficients,
)
from tl_grokking.analysis.grid import (
    all_logits,
    fourier_order,
    grid_activations,
    loss_and_accuracy,
    resolve_task,
)
from tl_grokking.analysis.weights import (
    embed_fourier_norms,
    norms_by_frequency,
    unembed_fourier_norms,
)
from tl_grokking.data.tasks import Task
from tl_grokking.model.transformer import GrokModel

__all__ = [
    "NeuronClusters",
    "KeyFrequencies",
    "LossAccuracy",
    "neuron_clusters",
    "key_frequencies",
    "KEY_FREQUENCY_RULES",
    "SINGLE_EVIDENCE_RULES",
    "NEURON_FVE",
    "NEURON_CHANCE_FACTOR",
    "NEURON_SHARE",
    "NEURON_COVERAGE",
    "ALPHA_FRACTION",
    "TRIG_SHARE",
    "NORM_FRACTION",
    "MLP_POST",
]

#: The rules of :func:`key_frequencies`: the default ``"circuit"``, then the single-evidence
#: rules it combines and reports (:data:`SINGLE_EVIDENCE_RULES`).
KEY_FREQUENCY_RULES = ("circuit", "clusters", "neurons", "embed", "unembed", "logits")
#: Rules that read one piece of evidence each.
SINGLE_EVIDENCE_RULES = KEY_FREQUENCY_RULES[1:]
#: ``neurons`` rule: a neuron counts for frequency k when the 3×3 block of k explains at least
#: half its centred variance — then k is its one dominant frequency (no other block can explain
#: as much), far above chance (a block is 8 of the n² − 1 components: 0.06 % at p = 113).
NEURON_FVE = 0.5
#: ``neurons`` rule: with few frequencies (small p) a neuron with no preferred frequency puts
#: about ``1 / n_freqs`` of its variance in each block, and one block can reach 1/2 by chance
#: (random p = 11 models do); the FVE needed is raised to this many times ``1 / n_freqs``
#: (at most the paper's 0.85). From 8 frequencies on (p ≥ 17) it is :data:`NEURON_FVE`.
NEURON_CHANCE_FACTOR = 4.0
#: ``neurons`` rule: k's group must hold at least this fraction of the MLP's neurons ("many
#: neurons"). The smallest real groups we have seen hold 11–17 % (88 of 512 neurons at
#: frequency 3 on the authors' low-precision run), stray groups at most 1.6 % (6 of 512 at
#: frequency 41 without weight decay), and a model still memorising 1 %.
NEURON_SHARE = 1 / 32
#: ``neurons`` rule: the groups it keeps must together hold at least this fraction of the
#: neurons, or it keeps none. In a formed circuit most neurons belong to a frequency (433 of 512
#: in the paper's main run; 77–99 % in the runs we checked); a model without one can still have
#: a neuron or two that look periodic by chance (one of 32 in a random p = 17 model).
NEURON_COVERAGE = 0.25
#: ``logits`` rule: ``α_k`` must be at least this fraction of the largest ``α``. Real keys reach
#: 12–29 % of the largest (α_3 = 4.2 against 21.7 on the low-precision run); noise at most 3.4 %.
ALPHA_FRACTION = 0.1
#: ``logits`` rule: the frequencies it keeps must explain at least this fraction of the logits'
#: variance, or it keeps none: a model with no Fourier circuit yet still has a largest α. Grokked
#: runs: 47 % (low precision) to 98.5 %; a small run still memorising (epoch 50): at most 2.4 %.
TRIG_SHARE = 0.25
#: ``embed`` / ``unembed`` rules: Fourier norm greater than this fraction of the largest
#: ("max/4", the TransformerLens demo's cut-off).
NORM_FRACTION = 0.25
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


@dataclass(frozen=True)
class LossAccuracy:
    """Cross-entropy (float64) and accuracy of a set of logits over all p² inputs."""

    loss: float
    accuracy: float

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "accuracy": self.accuracy}

    def __str__(self) -> str:
        return f"{_num(self.loss)} (acc {100 * self.accuracy:.2f} %)"


def _num(x: float) -> str:
    return f"{x:.3e}" if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5) else f"{x:.4g}"


@dataclass
class KeyFrequencies:
    """Key frequencies by one rule or by all of them, with the evidence of each.

    ``keys`` are those of ``rule`` (``"circuit"``, the default, combines the others: see
    :func:`key_frequencies`); ``by_rule[r]`` the set from each rule computed; ``evidence[r]`` one
    value per frequency (row ``k - 1``): cluster sizes for ``"clusters"``, sizes of the groups
    of neurons at FVE ≥ :attr:`neuron_fve` for ``"neurons"``, Fourier norms of ``W_E`` / ``W_L``
    for ``"embed"`` / ``"unembed"``, the trig-fit ``α_k`` for ``"logits"``;
    ``thresholds[r]`` the cut-off applied to that evidence (size ≥ it for the neuron rules,
    norm > it, ``α`` ≥ it). ``discrete_log`` and :attr:`n` are as in :class:`NeuronClusters`.

    When several rules were computed, :attr:`contested` lists the frequencies some rule names
    and another does not. For addition (whose logits have the sum directions) ``full`` is the
    loss of the logits, ``restricted`` that of the restricted logits of ``keys`` (over all p²
    inputs), and ``toggled[k]`` that of ``keys`` without k (k a key) or with k (k contested,
    not a key): what each key and each contested frequency changes. Empty / ``None`` otherwise.
    """

    p: int
    rule: str
    keys: list[int]
    by_rule: dict[str, list[int]]
    evidence: dict[str, Tensor]
    thresholds: dict[str, float]
    clusters: NeuronClusters | None = None
    discrete_log: bool = False
    full: LossAccuracy | None = None
    restricted: LossAccuracy | None = None
    toggled: dict[int, LossAccuracy] = field(default_factory=dict)
    neuron_fve: float = NEURON_FVE
    neuron_coverage: float = NEURON_COVERAGE
    trig_fve: float = float("nan")
    trig_share: float = TRIG_SHARE
    #: Contested frequencies the paper's test added to the evidence's keys (see
    #: :func:`key_frequencies`), in the order they were added.
    completed: list[int] = field(default_factory=list)

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

    @property
    def contested(self) -> list[int]:
        """Frequencies named by some computed rule but not by all of them, ascending."""
        sets = [set(v) for v in self.by_rule.values()]
        if not sets:
            return []
        return sorted(set.union(*sets) - set.intersection(*sets))

    def named_by(self, k: int) -> list[str]:
        """The computed rules whose set holds ``k``."""
        return [r for r, v in self.by_rule.items() if k in v]

    def effect(self, k: int) -> float:
        """Relative change of the restricted loss when ``k`` is toggled (removed from the keys,
        or added to them), ``(toggled − restricted) / restricted``; NaN when not measured."""
        if self.restricted is None or k not in self.toggled or self.restricted.loss == 0:
            return float("nan")
        return (self.toggled[k].loss - self.restricted.loss) / self.restricted.loss

    def _contest_label(self, k: int) -> str:
        """``"3 (a key; not by clusters)"`` / ``"9 (not a key; only unembed)"``."""
        named = [r for r in self.named_by(k) if r != "circuit"]
        if k in self.keys:
            missing = [r for r in self.by_rule if r not in named and r != "circuit"]
            added = "; added by the restricted-loss test" if k in self.completed else ""
            return f"{k} (a key; not by {', '.join(missing)}{added})"
        return f"{k} (not a key; only {', '.join(named)})"

    def contested_lines(self) -> list[str]:
        """One line per contested frequency: which rules name it (or leave it out, for a key)
        and, when measured, the restricted loss of the keys with it and without it."""
        lines = []
        for k in self.contested:
            text = self._contest_label(k)
            if self.restricted is not None and k in self.toggled:
                with_k, without_k = (
                    (self.restricted, self.toggled[k])
                    if k in self.keys
                    else (self.toggled[k], self.restricted)
                )
                text += f": restricted loss {with_k} with it, {without_k} without"
            lines.append(text)
        return lines

    def contested_summary(self) -> str:
        """The contested frequencies in one short line (``""`` when there are none): for each,
        the rules that leave it out (a key) or the rules that name it (not a key), and, when
        measured, the restricted loss of the keys without it (a key) or with it (not a key)."""
        parts = []
        for k in self.contested:
            text = self._contest_label(k)
            if self.restricted is not None and k in self.toggled:
                text += f": {'without' if k in self.keys else 'with'} it {self.toggled[k]}"
            parts.append(text)
        if not parts:
            return ""
        head = f"keys {self.restricted}; " if self.restricted is not None else ""
        return f"{head}{'; '.join(parts)}"

    def to_dict(self) -> dict:
        """A JSON-ready summary: keys, rule, by_rule, agree, contested and the losses."""
        out: dict = {
            "keys": list(self.keys),
            "rule": self.rule,
            "by_rule": {r: list(v) for r, v in self.by_rule.items()},
            "agree": self.agree,
            "thresholds": dict(self.thresholds),
            "contested": self.contested,
            "completed": list(self.completed),
        }
        if self.restricted is not None and self.full is not None:
            out["full"] = self.full.to_dict()
            out["restricted"] = self.restricted.to_dict()
            out["without"] = {
                str(k): v.to_dict() for k, v in self.toggled.items() if k in self.keys
            }
            out["with"] = {
                str(k): v.to_dict() for k, v in self.toggled.items() if k not in self.keys
            }
        return out

    def __str__(self) -> str:
        where = _coordinates_text(self.p, self.discrete_log)
        lines = [f"key frequencies (p = {self.p}, {where}, rule {self.rule!r}): {self.keys}"]
        d_mlp = self.clusters.freq.shape[0] if self.clusters is not None else 0
        describe = {
            "clusters": "neuron clusters, size >= {t:g} (FVE >= {fve:g})",
            "neurons": "neurons whose frequency explains >= {nf:g} of their variance, "
            ">= {t:g} of the {d_mlp} per frequency, >= {cov:.0%} of them in all",
            "embed": "W_E Fourier norm > {t:.3g} ({f:g} × max)",
            "unembed": "W_L Fourier norm > {t:.3g} ({f:g} × max)",
            "logits": "trig-fit α_k >= {t:.3g} ({f:g} × max), explaining {share:.1%} of the "
            "logit variance (needs >= {need:.0%})",
        }
        fve = self.clusters.threshold if self.clusters is not None else float("nan")
        for r, keys in self.by_rule.items():
            if r == "circuit":
                how = "neurons ∪ logits" if "logits" in self.by_rule else "neurons"
                if "logits" not in self.by_rule:
                    how += "; no logit fit for this task (it needs the a + b sum directions)"
                lines.append(f"  {r:8s} {keys}   [{how}]")
                continue
            ev = self.evidence[r]
            top = float(ev.max()) if ev.numel() else 0.0
            fraction = self.thresholds[r] / top if top > 0 else float("nan")
            how = describe[r].format(
                t=self.thresholds[r],
                fve=fve,
                nf=self.neuron_fve,
                d_mlp=d_mlp,
                cov=self.neuron_coverage,
                f=fraction,
                share=self.trig_fve,
                need=self.trig_share,
            )
            vals = ", ".join(f"{k}: {float(ev[k - 1]):.3g}" for k in keys)
            lines.append(f"  {r:8s} {keys}   [{how}; {vals}]")
        if len(self.by_rule) > 1:
            lines.append(f"  rules agree: {'yes' if self.agree else 'no'}")
        if self.restricted is not None and self.full is not None:
            lines.append(
                f"  restricted loss of the keys (all {self.p}² inputs): {self.restricted}; "
                f"full loss {self.full}"
            )
            removed = ", ".join(f"{k}: {_num(self.toggled[k].loss)}" for k in self.keys)
            if removed:
                lines.append(f"  restricted loss without each key: {removed}")
        for line in self.contested_lines():
            lines.append(f"  contested {line}")
        return "\n".join(lines)


def _coordinates(
    model: GrokModel, task: Task | None, reindex: bool | None, analysis: str
) -> tuple[Task, int]:
    """The task and the size n of its Fourier analysis in the coordinates of ``reindex``.

    Group coordinates (``reindex`` None or True) need ``"group_fourier"``; token order
    (``False``) is computed for any task.
    """
    needs = None if reindex is False else "group_fourier"
    task = resolve_task(model, task, needs=needs, analysis=analysis)
    return task, fourier_order(task, reindex, analysis=analysis).shape[0]


def neuron_clusters(
    model: GrokModel,
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


def _at_least(values: Float[Tensor, " n_freqs"], cut: float) -> list[int]:
    """Frequencies (row ``k - 1``) whose value is positive and at least ``cut``."""
    keep = (values >= cut) & (values > 0)
    return [int(i) + 1 for i in torch.nonzero(keep).flatten()]


def _check_fraction(name: str, value: float, upper_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    ok = 0.0 < float(value) < 1.0 if upper_open else 0.0 < float(value) <= 1.0
    if not ok:
        raise ValueError(f"{name} must be in (0, {'1)' if upper_open else '1]'}, got {value!r}")
    return float(value)


def _neuron_fve_cut(neuron_fve: float, n_freqs: int) -> float:
    """The FVE a neuron needs for the ``neurons`` rule: ``neuron_fve``, raised for small groups
    to :data:`NEURON_CHANCE_FACTOR` × the chance share ``1 / n_freqs`` (capped at the paper's
    0.85) so that it stays well above chance: 0.5 from 8 frequencies on (p ≥ 17), 0.8 at p = 11."""
    return max(neuron_fve, min(0.85, NEURON_CHANCE_FACTOR / n_freqs))


def _restricted_fits(
    logits: Float[Tensor, "p_sq p"], task: Task, keys: list[int], toggle: list[int]
) -> tuple[LossAccuracy, LossAccuracy, dict[int, LossAccuracy]]:
    """Loss of ``logits``, of the restricted logits of ``keys``, and of ``keys`` with each
    frequency of ``toggle`` removed (a key) or added (not a key), over all p² inputs.

    One :class:`~tl_grokking.analysis.fourier.SumProjection` over the union and one coefficient
    matmul; each set's restricted logits then take the rows of its frequencies only.
    """
    p = task.p
    labels = task.labels().to(logits.device)
    full = LossAccuracy(*loss_and_accuracy(logits, labels))
    union = sorted(set(keys) | set(toggle))
    proj = SumProjection(p, union, dtype=logits.dtype, device=logits.device)
    coeffs = proj.coefficients(logits)
    mean = logits.mean(dim=0, keepdim=True)

    def fit(freqs: list[int]) -> LossAccuracy:
        rows = [
            i for k in freqs for i in range(proj.freq_slices[k].start, proj.freq_slices[k].stop)
        ]
        idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
        restricted = torch.addmm(mean, proj.dirs[idx].T, coeffs[idx])
        return LossAccuracy(*loss_and_accuracy(restricted, labels))

    toggled = {
        k: fit([j for j in keys if j != k] if k in keys else sorted([*keys, k])) for k in toggle
    }
    return full, fit(keys), toggled


def key_frequencies(
    model: GrokModel,
    task: Task | None = None,
    *,
    rule: str = "circuit",
    threshold: float = 0.85,
    min_cluster_size: int = 1,
    neuron_fve: float = NEURON_FVE,
    neuron_share: float = NEURON_SHARE,
    neuron_coverage: float = NEURON_COVERAGE,
    norm_fraction: float = NORM_FRACTION,
    alpha_fraction: float = ALPHA_FRACTION,
    trig_share: float = TRIG_SHARE,
    clusters: NeuronClusters | None = None,
    logits: Float[Tensor, "p_sq n_classes"] | None = None,
    reindex: bool | None = None,
) -> KeyFrequencies:
    """The key frequencies of a model, in the task's group coordinates (module doc).

    Single-evidence rules (each also in ``by_rule`` when ``rule="circuit"``):
        ``"clusters"`` (paper): the frequencies of the neuron clusters (:func:`neuron_clusters`
        at FVE ``threshold``, or the ``clusters`` given) holding at least ``min_cluster_size``
        neurons.
        ``"neurons"``: frequencies that are the frequency of at least ``max(min_cluster_size,
        neuron_share × d_mlp)`` neurons with FVE ≥ ``neuron_fve`` (raised when p is small:
        :data:`NEURON_CHANCE_FACTOR`), provided those groups
        together hold at least ``neuron_coverage`` of the neurons (else none: no circuit yet) —
        a cluster of many neurons at moderate FVE counts, a few stray neurons do not.
        ``"embed"`` (TransformerLens demo): frequencies whose ``W_E`` Fourier norm
        ``sqrt(|cos k|² + |sin k|²)`` along the token axis is greater than ``norm_fraction`` ×
        the largest (:func:`~tl_grokking.analysis.weights.embed_fourier_norms`).
        ``"unembed"`` (paper appendix): the same rule on the Fourier norms of ``W_L`` along its
        class axis (norm over neurons), same ``norm_fraction``.
        ``"logits"``: the least-squares ``α_k`` of ``L ≈ Σ_k α_k cos(w_k(a+b-c))`` over every
        frequency (:func:`~tl_grokking.analysis.fourier.trig_coefficients`): those at least
        ``alpha_fraction`` × the largest, provided together they explain at least
        ``trig_share`` of the logits' variance (else none: no Fourier read-out yet). Addition
        only (it needs the task's ``"sum_directions"``).

    ``"circuit"`` (the default): every rule above that applies to the task is computed, and the
    keys are ``neurons ∪ logits`` — the frequencies with a real group of neurons or a real share
    of the logits (``neurons`` alone for a task without the logit fit). ``clusters``, ``embed``
    and ``unembed`` are reported, not used: each names stray frequencies on some model
    (``docs/analysis.md``). For addition the result also holds the restricted loss of the keys,
    of the keys without each key, and of the keys with each contested non-key
    (:class:`KeyFrequencies`). ``"all"`` is an alias of ``"circuit"``.

    ``logits`` (the all-inputs matrix ``[p², ≥p]`` of :func:`~tl_grokking.analysis.grid.all_logits`)
    and ``clusters`` skip the forward passes. ``reindex`` (module doc): ``None`` the task's group
    coordinates (Z_{p-1} in discrete-log order for × and ÷), ``False`` token order. A task
    without a group structure raises ``ValueError`` unless ``reindex=False``.
    """
    if rule == "all":
        rule = "circuit"
    if rule not in KEY_FREQUENCY_RULES:
        raise ValueError(f"rule must be one of {(*KEY_FREQUENCY_RULES, 'all')}, got {rule!r}")
    rules = KEY_FREQUENCY_RULES if rule == "circuit" else (rule,)
    if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, int):
        raise ValueError(f"min_cluster_size must be a positive integer, got {min_cluster_size!r}")
    if min_cluster_size < 1:
        raise ValueError(f"min_cluster_size must be a positive integer, got {min_cluster_size!r}")
    norm_fraction = _check_fraction("norm_fraction", norm_fraction)
    neuron_fve = _check_fraction("neuron_fve", neuron_fve, upper_open=False)
    neuron_share = _check_fraction("neuron_share", neuron_share, upper_open=False)
    neuron_coverage = _check_fraction("neuron_coverage", neuron_coverage, upper_open=False)
    alpha_fraction = _check_fraction("alpha_fraction", alpha_fraction, upper_open=False)
    trig_share = _check_fraction("trig_share", trig_share, upper_open=False)
    task, n = _coordinates(model, task, reindex, "key frequencies")
    if rule == "logits":
        task.require("sum_directions", "the logits rule of the key frequencies (trig fit)")
    elif "sum_directions" not in task.meaningful_analyses:
        rules = tuple(r for r in rules if r != "logits")
    n_freqs = len(frequencies(n))
    by_rule: dict[str, list[int]] = {}
    evidence: dict[str, Tensor] = {}
    thresholds: dict[str, float] = {}
    if "clusters" in rules or "neurons" in rules:
        if clusters is None:
            clusters = neuron_clusters(model, task, threshold, reindex=reindex)
        elif (clusters.p, clusters.n) != (task.p, n):
            raise ValueError(
                f"clusters are for p = {clusters.p} over Z_{clusters.n}, but the key "
                f"frequencies of task {task.name!r} with reindex={reindex!r} are over Z_{n}"
            )
    if "clusters" in rules:
        assert clusters is not None
        counts = torch.zeros(n_freqs, dtype=torch.float64)
        for k, size in clusters.sizes.items():
            counts[k - 1] = size
        by_rule["clusters"] = _at_least(counts, float(min_cluster_size))
        evidence["clusters"] = counts
        thresholds["clusters"] = float(min_cluster_size)
    if "neurons" in rules:
        assert clusters is not None
        strong = clusters.fve >= _neuron_fve_cut(neuron_fve, n_freqs)
        groups = torch.bincount(clusters.freq[strong].cpu() - 1, minlength=n_freqs).double()
        d_mlp = clusters.freq.shape[0]
        cut = max(float(min_cluster_size), neuron_share * d_mlp)
        chosen = _at_least(groups, cut)
        covered = float(groups[[k - 1 for k in chosen]].sum()) if chosen else 0.0
        by_rule["neurons"] = chosen if covered >= neuron_coverage * d_mlp else []
        evidence["neurons"] = groups
        thresholds["neurons"] = cut
    for name, norms_fn in (("embed", embed_fourier_norms), ("unembed", unembed_fourier_norms)):
        if name in rules:
            evidence[name] = norms_by_frequency(norms_fn(model, task, reindex=reindex)).cpu()
            by_rule[name], thresholds[name] = _above_max_fraction(evidence[name], norm_fraction)
    L = None
    trig_fve = float("nan")
    if "logits" in rules:
        if logits is None:
            L = all_logits(model, task)
        elif logits.ndim != 2 or logits.shape[0] != task.p**2 or logits.shape[1] < task.p:
            raise ValueError(
                f"logits must be the all-inputs matrix [p², ≥p] = [{task.p**2}, ≥{task.p}], "
                f"got shape {tuple(logits.shape)}"
            )
        else:
            L = logits[:, : task.p].double()
        alpha, fve = (t.cpu() for t in trig_coefficients(L, task.p, frequencies(task.p)))
        cut = alpha_fraction * float(alpha.max()) if float(alpha.max()) > 0 else math.inf
        chosen = _at_least(alpha, cut)
        trig_fve = float(fve[[k - 1 for k in chosen]].sum()) if chosen else 0.0
        by_rule["logits"] = chosen if trig_fve >= trig_share else []
        evidence["logits"] = alpha
        thresholds["logits"] = cut
    if rule == "circuit":
        keys = sorted(set(by_rule["neurons"]) | set(by_rule.get("logits", [])))
        by_rule = {"circuit": keys, **by_rule}
    result = KeyFrequencies(
        p=task.p,
        rule=rule,
        keys=by_rule[rule],
        by_rule=by_rule,
        evidence=evidence,
        thresholds=thresholds,
        clusters=clusters,
        discrete_log=n != task.p,
        neuron_fve=_neuron_fve_cut(neuron_fve, n_freqs),
        neuron_coverage=neuron_coverage,
        trig_fve=trig_fve,
        trig_share=trig_share,
    )
    if rule == "circuit" and L is not None and result.keys:
        _complete_by_restricted_loss(result, L, task)
    return result


def _complete_by_restricted_loss(
    result: KeyFrequencies, logits: Float[Tensor, "p_sq p"], task: Task
) -> None:
    """The paper's test of a key set, applied to the evidence's keys (addition only).

    A formed circuit's key set must carry the logits: its restricted loss (over all p² inputs)
    falls below the full loss. While it does not, the contested non-key frequency that lowers
    the restricted loss most is added (recorded in ``result.completed``), until the test passes
    or no contested frequency lowers it. Such a frequency is used by the circuit even if no
    neuron group is tuned to it — e.g. a harmonic that the ReLU of the key neurons produces
    (frequency 9 = 3·3 on the authors' low-precision checkpoint). Fills ``full``,
    ``restricted`` and ``toggled`` for the final keys.
    """
    keys = list(result.keys)
    while True:
        toggle = sorted(set(keys) | set(result.contested))
        full, restricted, toggled = _restricted_fits(logits, task, keys, toggle)
        lower = {
            k: fit.loss
            for k, fit in toggled.items()
            if k not in keys and fit.loss < restricted.loss
        }
        if restricted.loss <= full.loss or not lower:
            break
        best = min(lower, key=lambda k: (lower[k], k))
        keys = sorted([*keys, best])
        result.completed.append(best)
        result.keys = keys
        result.by_rule["circuit"] = keys
    result.full, result.restricted, result.toggled = full, restricted, toggled
