"""Plotly figures of the paper's evidence, each usable on its own in a notebook.

Every function returns a :class:`plotly.graph_objects.Figure` and takes explicit data (metric
records, a measures table, cluster assignments, ...) or a model and its task — never a file
path, so the same figure can be drawn for a run on disk, a checkpoint in memory or a model
being trained.  :mod:`tl_grokking.figures.report` assembles them into one HTML page.

Figures (Nanda et al. 2023):

* :func:`loss_curves` — train/test loss, log scale, the three phases (memorisation, circuit
  formation, cleanup) shaded.
* :func:`progress_measures_panel` — restricted / excluded loss, Gini coefficients of the Fourier
  norms of W_E and W_L, and the total sum of squared weights.
* :func:`embedding_fourier_norms` — the norm of each Fourier component of W_E (cos-first basis).
* :func:`unembed_fourier_heatmap` — the neuron→logit map W_L in the Fourier basis of the output.
* :func:`neuron_cluster_sizes` and :func:`fve_histogram` — neurons grouped by frequency.
* :func:`neuron_activation_grids` — (a, b)-grid activations of the top neurons per cluster.
* :func:`attention_to_operands` — attention from ``=`` to ``a`` and to ``b``, per head.
* :func:`trig_identity_coefficients` — the α_k of logits ≈ Σ_k α_k cos(w_k(a + b − c)).
* :func:`ablation_table_figure` — the ablation table.

:func:`attention_examples` and :func:`attention_heads_view` give the per-example attention
patterns and their circuitsvis view.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from tl_grokking._format import fmt_num
from tl_grokking.analysis import weights
from tl_grokking.analysis.ablations import AblationTable
from tl_grokking.analysis.circuits import NeuronClusters
from tl_grokking.analysis.fourier import fourier_basis, to_grid
from tl_grokking.analysis.grid import grid_activations
from tl_grokking.analysis.logits import TrigDecomposition
from tl_grokking.data.tasks import ModularAddition, Task
from tl_grokking.model.transformer import GrokModel

__all__ = [
    "PHASE_COLORS",
    "phase_spans",
    "loss_curves",
    "progress_measures_panel",
    "embedding_fourier_norms",
    "unembed_fourier_heatmap",
    "neuron_cluster_sizes",
    "fve_histogram",
    "neuron_activation_grids",
    "attention_to_operands",
    "attention_examples",
    "attention_heads_view",
    "trig_identity_coefficients",
    "ablation_table_figure",
]

#: Fill colours of the three phases (memorisation, circuit formation, cleanup).
PHASE_COLORS: dict[str, str] = {
    "memorization": "rgba(31, 119, 180, 0.12)",
    "circuit_formation": "rgba(255, 127, 14, 0.12)",
    "cleanup": "rgba(44, 160, 44, 0.14)",
}
_PHASE_LABELS = {
    "memorization": "memorisation",
    "circuit_formation": "circuit formation",
    "cleanup": "cleanup",
}
_OTHER_PHASE_COLOR = "rgba(127, 127, 127, 0.12)"
#: The plotly template of every figure (white background: the phase shading stays visible).
TEMPLATE = "plotly_white"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _norm_phase_name(name: str) -> str:
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return "memorization" if key in ("memorisation", "memorization") else key


def phase_spans(phases: Any) -> list[tuple[str, float, float]]:
    """Normalise phase boundaries to ``[(name, start_epoch, end_epoch), ...]``, sorted by start.

    Accepts a sequence of ``(name, start, end)`` triples, a mapping ``name -> (start, end)``,
    a mapping with a ``"phases"`` entry holding either, an object with a ``to_dict()`` method
    returning one, or a sequence of mappings with ``name``/``start``/``end`` keys.  Names are
    normalised to ``memorization``, ``circuit_formation``, ``cleanup`` (others kept).  ``None``
    (or ``{"phases": None}``) gives ``[]``.  Spans whose start or end is missing are dropped.
    """
    if phases is None:
        return []
    if hasattr(phases, "to_dict") and not isinstance(phases, Mapping):
        phases = phases.to_dict()
    if isinstance(phases, Mapping) and "phases" in phases:
        phases = phases["phases"]  # phases.json / Phases.to_dict(); null when none detected
        if phases is None:
            return []
    items: list[tuple[Any, Any, Any]] = []
    if isinstance(phases, Mapping):
        for name, span in phases.items():
            if isinstance(span, Mapping):
                items.append((name, span.get("start"), span.get("end")))
            else:
                start, end = span
                items.append((name, start, end))
    else:
        for entry in phases:
            if isinstance(entry, Mapping):
                items.append((entry.get("name"), entry.get("start"), entry.get("end")))
            else:
                name, start, end = entry
                items.append((name, start, end))
    spans = []
    for name, start, end in items:
        if start is None or end is None:
            continue
        start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"phase {name!r} must have finite start <= end, got ({start}, {end})")
        spans.append((_norm_phase_name(name), start, end))
    return sorted(spans, key=lambda s: s[1])


def _shade_phases(fig: go.Figure, spans: Sequence[tuple[str, float, float]], **where) -> None:
    for i, (name, start, end) in enumerate(spans):
        fig.add_vrect(
            x0=start,
            x1=end,
            fillcolor=PHASE_COLORS.get(name, _OTHER_PHASE_COLOR),
            line_width=0,
            layer="below",
            annotation_text=_PHASE_LABELS.get(name, name.replace("_", " ")),
            # alternate label heights so that labels of short phases do not overlap
            annotation_position="top left" if i % 2 == 0 else "bottom left",
            annotation_font_size=10,
            name=name,
            **where,
        )


def _columns(table: Any) -> dict[str, list[float]]:
    """A measures table as ``{column: list}``: accepts a mapping of columns, a list of row
    mappings, a :class:`~tl_grokking.analysis.progress.ProgressMeasures` (its ``columns``) or a
    DataFrame-like object with ``to_dict(orient="list")``."""
    if isinstance(getattr(table, "columns", None), Mapping):  # ProgressMeasures
        table = table.columns
    elif hasattr(table, "to_dict") and not isinstance(table, Mapping):
        try:
            table = table.to_dict(orient="list")  # pandas
        except TypeError:
            table = table.to_dict()
    if isinstance(table, Mapping):
        return {str(k): [float(x) for x in _as_list(v)] for k, v in table.items()}
    rows = list(table)
    cols: dict[str, list[float]] = {}
    keys = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(key)
    for key in keys:
        cols[str(key)] = [float(row.get(key, math.nan)) for row in rows]
    return cols


def _as_list(values: Any) -> list:
    if isinstance(values, Tensor):
        return values.detach().cpu().tolist()
    if hasattr(values, "tolist"):
        return values.tolist()
    return list(values)


def _model_p(model: GrokModel, task: Task | None) -> int:
    p = model.cfg.d_vocab - 1
    if task is not None and task.p != p:
        raise ValueError(
            f"task has p = {task.p} but the model's d_vocab {model.cfg.d_vocab} means p = {p}"
        )
    return p


def _cluster_data(
    clusters: NeuronClusters | Sequence[int] | Tensor,
    fve: Sequence[float] | Tensor | None,
    threshold: float | None,
) -> tuple[list[int], list[float], float]:
    """``(frequency per neuron, FVE per neuron, threshold)`` from a
    :class:`~tl_grokking.analysis.circuits.NeuronClusters` or from explicit per-neuron arrays."""
    if isinstance(clusters, NeuronClusters):
        freqs, fves = clusters.freq, clusters.fve
        threshold = clusters.threshold if threshold is None else threshold
    else:
        if fve is None:
            raise ValueError("fve is required when clusters is an array of neuron frequencies")
        freqs, fves = clusters, fve
    freqs = [int(f) for f in _as_list(freqs)]
    fves = [float(v) for v in _as_list(fves)]
    if len(freqs) != len(fves):
        raise ValueError(
            f"neuron frequencies ({len(freqs)}) and fve ({len(fves)}) differ in length"
        )
    threshold = 0.85 if threshold is None else float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    return freqs, fves, threshold


def _category_bars(fig: go.Figure, title: str, xaxis_title: str, yaxis_title: str) -> go.Figure:
    """The layout of a bar chart over categories (clusters, key frequencies); returns ``fig``."""
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        xaxis_title=xaxis_title,
        yaxis_title=yaxis_title,
        xaxis={"type": "category"},
        height=380,
    )
    return fig


def _cluster_members(freqs: list[int], fves: list[float], threshold: float) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for i, (f, v) in enumerate(zip(freqs, fves, strict=True)):
        if v >= threshold and f > 0:
            members.setdefault(f, []).append(i)
    return dict(sorted(members.items()))


def _grid_task(
    model: GrokModel,
    task: Task | None,
    analysis: str,
    *,
    needs: str | None = None,
) -> Task:
    """The task of a figure (default: addition): checked against the model, on the full
    (a, b) grid, and with capability ``needs`` of ``task.meaningful_analyses`` if given
    (:meth:`~tl_grokking.data.tasks.Task.require` raises ``ValueError`` naming ``analysis``)."""
    task = task if task is not None else ModularAddition(_model_p(model, None))
    _model_p(model, task)
    if needs is not None:
        task.require(needs, analysis)
    if not task.is_full_grid:
        raise ValueError(
            f"{analysis} needs every pair (a, b) of the p² grid; task {task.name!r} is "
            f"defined on {task.pairs().shape[0]} pairs only"
        )
    return task


# ---------------------------------------------------------------------------------------------
# training curves and progress measures
# ---------------------------------------------------------------------------------------------


def loss_curves(
    metrics: Iterable[Mapping[str, Any]],
    *,
    phases: Any = None,
    title: str = "Train and test loss",
) -> go.Figure:
    """Train and test cross-entropy against epoch on a log scale, the phases shaded.

    ``metrics`` are records like the lines of ``metrics.jsonl`` (``epoch``, ``train_loss``,
    ``test_loss``; records lacking a loss are skipped for that curve).  ``phases`` is anything
    :func:`phase_spans` accepts (e.g. the result of ``detect_phases`` or ``phases.json``).
    """
    records = list(metrics)
    fig = go.Figure()
    for key, label, color in (("train_loss", "train", "#1f77b4"), ("test_loss", "test", "#d62728")):
        pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and "epoch" in r]
        fig.add_trace(
            go.Scatter(
                x=[e for e, _ in pts],
                y=[v for _, v in pts],
                name=f"{label} loss",
                mode="lines",
                line={"color": color},
                hovertemplate=f"epoch %{{x}}<br>{label} loss %{{y:.3g}}<extra></extra>",
            )
        )
    _shade_phases(fig, phase_spans(phases))
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        xaxis_title="epoch",
        yaxis_title="cross-entropy loss (log scale)",
        yaxis_type="log",
        hovermode="x unified",
        height=420,
    )
    return fig


#: Columns of the progress-measure panel: (subplot, column aliases, legend label).
_MEASURE_SERIES: tuple[tuple[int, tuple[str, ...], str], ...] = (
    (1, ("train_loss",), "train loss"),
    (1, ("test_loss",), "test loss"),
    (1, ("restricted_loss",), "restricted loss"),
    (1, ("excluded_loss",), "excluded loss"),
    (2, ("gini_W_E", "gini_embed", "gini_we", "gini_W_E_fourier"), "Gini of W_E Fourier norms"),
    (2, ("gini_W_L", "gini_unembed", "gini_wl", "gini_W_L_fourier"), "Gini of W_L Fourier norms"),
    (
        3,
        ("sum_sq_weights", "weight_norm", "total_sum_sq_weights", "sum_squared_weights"),
        "sum of squared weights",
    ),
)


def _find_column(cols: Mapping[str, list[float]], aliases: Sequence[str]) -> str | None:
    lower = {k.lower(): k for k in cols}
    for alias in aliases:
        if alias in cols:
            return alias
        if alias.lower() in lower:
            return lower[alias.lower()]
    return None


def progress_measures_panel(
    measures: Any,
    *,
    phases: Any = None,
    title: str = "Progress measures",
) -> go.Figure:
    """The paper's progress measures against epoch, in three panels, the phases shaded.

    Panel 1 (log scale): train, test, restricted and excluded loss.  Panel 2: Gini coefficients
    of the Fourier-component norms of W_E and W_L.  Panel 3: total sum of squared weights.

    ``measures`` is a table with an ``epoch`` column: a mapping of columns, a list of rows or a
    DataFrame-like object (``measures.csv`` read back, or ``progress_measures(...)``).  Missing
    columns are left out of the panel.
    """
    cols = _columns(measures)
    if "epoch" not in cols:
        raise ValueError(f"measures must have an 'epoch' column, got columns {sorted(cols)}")
    epochs = cols["epoch"]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "train / test / restricted / excluded loss",
            "Gini coefficient of Fourier norms",
            "total sum of squared weights",
        ),
        horizontal_spacing=0.07,
    )
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for i, (panel, aliases, label) in enumerate(_MEASURE_SERIES):
        key = _find_column(cols, aliases)
        if key is None:
            continue
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=cols[key],
                name=label,
                mode="lines",
                line={"color": colors[i % len(colors)]},
                meta=key,
                hovertemplate=f"epoch %{{x}}<br>{label} %{{y:.4g}}<extra></extra>",
            ),
            row=1,
            col=panel,
        )
    spans = phase_spans(phases)
    for col in (1, 2, 3):
        _shade_phases(fig, spans, row=1, col=col)
    fig.update_yaxes(type="log", title_text="loss (log scale)", row=1, col=1)
    fig.update_yaxes(title_text="Gini", row=1, col=2)
    fig.update_yaxes(title_text="Σ w²", row=1, col=3)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(template=TEMPLATE, title=title, height=440, hovermode="x unified")
    fig.update_annotations(font_size=11)
    return fig


# ---------------------------------------------------------------------------------------------
# Fourier structure of the weights
# ---------------------------------------------------------------------------------------------


def embedding_fourier_norms(
    model: GrokModel,
    task: Task | None = None,
    *,
    key_freqs: Iterable[int] = (),
    title: str = "Fourier components of the embedding W_E",
) -> go.Figure:
    """Norm over d_model of each Fourier component of W_E (rows of ``F @ W_E[:p]``).

    Bars are in the basis order ``const, cos 1, sin 1, cos 2, ...`` (cos first), labelled with
    the names from :func:`~tl_grokking.analysis.fourier.fourier_basis`.  A trained model is
    sparse here: large norm only at a few key frequencies, which are drawn in a second colour.
    """
    p = _grid_task(model, task, "the W_E Fourier-norm plot", needs="token_fourier").p
    basis, names = fourier_basis(p, dtype=torch.float64)
    norms = (basis @ weights.W_E(model).to(torch.float64).cpu()).norm(dim=1)
    keys = set(int(k) for k in key_freqs)
    freq_of_row = [0] + [int(n.split()[1]) for n in names[1:]]
    colors = ["#d62728" if k in keys and k > 0 else "#1f77b4" for k in freq_of_row]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=norms.tolist(),
            marker_color=colors,
            hovertemplate="%{x}<br>norm %{y:.4g}<extra></extra>",
            name="‖(F W_E)_row‖",
        )
    )
    subtitle = f" — key frequencies {sorted(keys)} in red" if keys else ""
    fig.update_layout(
        template=TEMPLATE,
        title=title + subtitle,
        xaxis_title="Fourier component of the input token (cos-first basis)",
        yaxis_title="norm over d_model",
        xaxis={"categoryorder": "array", "categoryarray": names},
        height=400,
        bargap=0.1,
    )
    return fig


def unembed_fourier_heatmap(
    model: GrokModel,
    task: Task | None = None,
    *,
    clusters: NeuronClusters | None = None,
    title: str = "Neuron-logit map W_L in the Fourier basis of the output",
) -> go.Figure:
    """Heatmap of ``W_L @ F.T``: each neuron's read-out weights in the Fourier basis over c.

    ``W_L = W_out W_U`` (restricted to the p classes, :func:`tl_grokking.analysis.weights.W_L`) maps
    MLP neurons to logits; for a grokked model it is approximately rank 2|K|, reading cos(w_k c) and
    sin(w_k c) only.  Columns are basis rows (cos first); rows are neurons, grouped by cluster
    frequency (unclustered last) when ``clusters`` is given, else in index order.
    """
    p = _grid_task(model, task, "the W_L Fourier heatmap", needs="token_fourier").p
    basis, names = fourier_basis(p, dtype=torch.float64)
    coeffs = weights.W_L(model).to(torch.float64).cpu() @ basis.T  # [d_mlp, basis row]
    d_mlp = coeffs.shape[0]
    order = list(range(d_mlp))
    labels = [f"neuron {i}" for i in order]
    if clusters is not None:
        freqs, fves, threshold = _cluster_data(clusters, None, None)
        if len(freqs) != d_mlp:
            raise ValueError(f"clusters must cover d_mlp = {d_mlp} neurons, got {len(freqs)}")
        member = [f if v >= threshold else 0 for f, v in zip(freqs, fves, strict=True)]
        order = sorted(order, key=lambda i: (member[i] == 0, member[i], i))
        labels = [
            f"neuron {i} (k={member[i]})" if member[i] else f"neuron {i} (unclustered)"
            for i in order
        ]
    z = coeffs[order]
    zmax = float(z.abs().max()) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z.tolist(),
            x=names,
            y=labels,
            colorscale="RdBu",
            zmid=0.0,
            zmin=-zmax,
            zmax=zmax,
            colorbar={"title": "weight"},
            hovertemplate="%{y}<br>%{x}<br>%{z:.3g}<extra></extra>",
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        xaxis_title="Fourier component of the output class c (cos-first basis)",
        yaxis_title="MLP neuron" + (" (grouped by cluster)" if clusters is not None else ""),
        yaxis={"autorange": "reversed", "showticklabels": False},
        height=520,
    )
    return fig


# ---------------------------------------------------------------------------------------------
# neurons
# ---------------------------------------------------------------------------------------------


def neuron_cluster_sizes(
    clusters: NeuronClusters | Sequence[int] | Tensor,
    fve: Sequence[float] | Tensor | None = None,
    *,
    threshold: float | None = None,
    title: str = "Neuron clusters by frequency",
) -> go.Figure:
    """Bar chart: how many neurons belong to each frequency cluster, plus the unclustered.

    ``clusters`` is a :class:`~tl_grokking.analysis.circuits.NeuronClusters` (from
    ``neuron_clusters``), or each neuron's best frequency with ``fve`` its fraction of variance
    explained.  A neuron is in the cluster of its best frequency when its FVE is ``>= threshold``
    (default: the clusters' own threshold, else the paper's 0.85); the rest are "unclustered".
    """
    freqs, fves, threshold = _cluster_data(clusters, fve, threshold)
    members = _cluster_members(freqs, fves, threshold)
    n_clustered = sum(len(v) for v in members.values())
    x = [f"k={k}" for k in members] + ["unclustered"]
    y = [len(v) for v in members.values()] + [len(freqs) - n_clustered]
    fig = go.Figure(
        go.Bar(
            x=x,
            y=y,
            marker_color=["#1f77b4"] * len(members) + ["#7f7f7f"],
            text=y,
            textposition="outside",
            hovertemplate="%{x}<br>%{y} neurons<extra></extra>",
        )
    )
    title = f"{title} (FVE ≥ {threshold:g}; {n_clustered} of {len(freqs)} clustered)"
    return _category_bars(fig, title, "cluster (frequency k)", "number of neurons")


def fve_histogram(
    clusters: NeuronClusters | Sequence[float] | Tensor,
    *,
    threshold: float | None = None,
    nbins: int = 40,
    title: str = "Fraction of each neuron's variance explained by its best frequency",
) -> go.Figure:
    """Histogram of the per-neuron FVE of the best frequency, with the clustering threshold.

    FVE = energy of the neuron's centred (a, b) activation in the 3×3 block
    ``{const, cos k, sin k} × {const, cos k, sin k}`` of its best k, over its total energy.
    ``clusters`` is a :class:`~tl_grokking.analysis.circuits.NeuronClusters` or the FVE values.
    """
    if isinstance(clusters, NeuronClusters):
        values = [float(v) for v in _as_list(clusters.fve)]
        threshold = clusters.threshold if threshold is None else threshold
    else:
        values = [float(v) for v in _as_list(clusters)]
    threshold = 0.85 if threshold is None else float(threshold)
    if isinstance(nbins, bool) or int(nbins) != nbins or nbins < 1:
        raise ValueError(f"nbins must be a positive integer, got {nbins!r}")
    fig = go.Figure(
        go.Histogram(
            x=values,
            xbins={"start": 0.0, "end": 1.0, "size": 1.0 / int(nbins)},
            marker_color="#1f77b4",
            hovertemplate="FVE %{x}<br>%{y} neurons<extra></extra>",
        )
    )
    fig.add_vline(
        x=threshold,
        line_dash="dash",
        line_color="#d62728",
        annotation_text=f"threshold {threshold:g}",
        annotation_position="top left",
    )
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        xaxis_title="fraction of variance explained by the best frequency",
        yaxis_title="number of neurons",
        xaxis_range=[0, 1],
        height=380,
    )
    return fig


def _grid_pattern(model: GrokModel, task: Task) -> Float[Tensor, "p_sq head q k"]:
    """Attention pattern ``blocks.0.attn.hook_pattern`` for every input of the grid."""
    name = "blocks.0.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(task.tokens().to(model.cfg.device), names_filter=name)
    return cache[name].detach().cpu()


def neuron_activation_grids(
    model: GrokModel,
    task: Task | None,
    clusters: NeuronClusters | Sequence[int] | Tensor,
    fve: Sequence[float] | Tensor | None = None,
    *,
    threshold: float | None = None,
    per_cluster: int = 2,
    max_clusters: int = 8,
    title: str = "MLP activations over the (a, b) grid, top neurons of each cluster",
) -> go.Figure:
    """Heatmaps of final-position MLP activations (``blocks.0.mlp.hook_post``) over (a, b).

    For each frequency cluster (``clusters`` as in :func:`neuron_cluster_sizes`) the
    ``per_cluster`` neurons with the largest activation variance over the grid are shown, one
    row per cluster, at most ``max_clusters`` clusters (the largest first).  A neuron of
    frequency k shows periodic stripes of period p/k along a, b and a + b.
    """
    task = _grid_task(model, task, "the neuron activation grids")
    p = task.p
    freqs, fves, threshold = _cluster_data(clusters, fve, threshold)
    for name, value in (("per_cluster", per_cluster), ("max_clusters", max_clusters)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    name = "blocks.0.mlp.hook_post"
    acts = grid_activations(model, task, [name])[name].detach().cpu()  # [p², d_mlp]
    if len(freqs) != acts.shape[1]:
        raise ValueError(f"clusters must cover d_mlp = {acts.shape[1]} neurons, got {len(freqs)}")
    variance = acts.to(torch.float64).var(dim=0)
    members = _cluster_members(freqs, fves, threshold)
    chosen = sorted(members, key=lambda k: (-len(members[k]), k))[:max_clusters]
    if not chosen:
        fig = go.Figure()
        fig.update_layout(
            template=TEMPLATE,
            title=title + " — no neuron reaches the clustering threshold",
            height=200,
        )
        return fig
    tops = {
        k: sorted(members[k], key=lambda i: (-float(variance[i]), i))[:per_cluster] for k in chosen
    }
    cells = [(k, i) for k in chosen for i in tops[k]]
    n_cols = min(4, len(cells))
    n_rows = math.ceil(len(cells) / n_cols)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=[f"k={k}, neuron {i}" for k, i in cells],
        vertical_spacing=min(0.12, 0.5 / n_rows),
        horizontal_spacing=0.05,
    )
    grid = to_grid(acts, p)  # [a, b, neuron]
    for n, (k, i) in enumerate(cells):
        fig.add_trace(
            go.Heatmap(
                z=grid[:, :, i].tolist(),
                colorscale="Viridis",
                showscale=False,
                name=f"neuron {i} (k={k})",
                meta=i,
                hovertemplate=(
                    f"neuron {i} (k={k})<br>a=%{{y}}, b=%{{x}}<br>act %{{z:.3g}}<extra></extra>"
                ),
            ),
            row=n // n_cols + 1,
            col=n % n_cols + 1,
        )
    _square_grid_axes(fig, len(cells))
    fig.update_layout(template=TEMPLATE, title=title, height=120 + 290 * n_rows)
    fig.update_annotations(font_size=11)
    return fig


def _square_grid_axes(fig: go.Figure, n_panels: int) -> None:
    """(a, b) heatmap panels: b along x, a down y (row a = 0 at the top), square cells."""
    for n in range(1, n_panels + 1):
        suffix = "" if n == 1 else str(n)
        fig.update_layout(
            {
                f"xaxis{suffix}": {"title": {"text": "b", "standoff": 2}, "constrain": "domain"},
                f"yaxis{suffix}": {
                    "title": {"text": "a", "standoff": 2},
                    "autorange": "reversed",
                    "scaleanchor": f"x{suffix}",
                    "constrain": "domain",
                },
            }
        )


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------


def attention_to_operands(
    model: GrokModel,
    task: Task | None = None,
    *,
    title: str = "Attention from '=' to a and to b over the (a, b) grid",
) -> go.Figure:
    """Per head, the attention weight from the ``=`` position to ``a`` and to ``b``.

    Reads ``blocks.0.attn.hook_pattern`` at query position 2 (``=``), key positions 0 (a) and 1
    (b), for every input of the grid; two panels per head ("to a", "to b"), two heads per row.
    The two weights and the one to ``=`` itself sum to 1.
    """
    task = _grid_task(model, task, "the attention-to-operands plot")
    p = task.p
    pattern = _grid_pattern(model, task)
    n_heads = pattern.shape[1]
    eq_row = pattern[:, :, 2, :]  # [batch, head, key]
    n_cols = 4 if n_heads > 1 else 2  # two heads per row, each as (to a, to b)
    n_rows = math.ceil(2 * n_heads / n_cols)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=[f"head {h}: '=' → {w}" for h in range(n_heads) for w in ("a", "b")],
        vertical_spacing=min(0.12, 0.5 / n_rows),
        horizontal_spacing=0.05,
    )
    for h in range(n_heads):
        for j, (pos, name) in enumerate(((0, "a"), (1, "b"))):
            n = 2 * h + j
            fig.add_trace(
                go.Heatmap(
                    z=to_grid(eq_row[:, h, pos], p).tolist(),
                    zmin=0.0,
                    zmax=1.0,
                    colorscale="Blues",
                    showscale=n == 0,
                    colorbar={"title": "attention"},
                    name=f"head {h} → {name}",
                    meta=[h, pos],
                    hovertemplate=(
                        f"head {h}, '=' → {name}<br>a=%{{y}}, b=%{{x}}<br>%{{z:.3f}}<extra></extra>"
                    ),
                ),
                row=n // n_cols + 1,
                col=n % n_cols + 1,
            )
    _square_grid_axes(fig, 2 * n_heads)
    fig.update_layout(template=TEMPLATE, title=title, height=120 + 290 * n_rows)
    fig.update_annotations(font_size=11)
    return fig


def attention_examples(
    model: GrokModel,
    task: Task | None = None,
    examples: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[list[str], Float[Tensor, "head dest src"]]]:
    """Attention patterns of a few inputs: ``[(tokens, pattern[head, dest, src]), ...]``.

    ``tokens`` are display strings like ``["a=3", "b=5", "="]``.  Default examples: three
    fixed pairs spread over the grid.
    """
    p = _model_p(model, task)
    if examples is None:
        examples = [(0, 0), (1 % p, (p // 2)), (p - 1, p // 3)]
    pairs = []
    for a, b in examples:
        if not (0 <= int(a) < p and 0 <= int(b) < p):
            raise ValueError(
                f"examples must be pairs (a, b) with 0 <= a, b < p = {p}, got {(a, b)}"
            )
        pairs.append((int(a), int(b)))
    tokens = torch.tensor([[a, b, p] for a, b in pairs], dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"].detach().cpu().float()
    return [([f"a={a}", f"b={b}", "="], pattern[i]) for i, (a, b) in enumerate(pairs)]


def attention_heads_view(
    model: GrokModel,
    task: Task | None = None,
    examples: Sequence[tuple[int, int]] | None = None,
):
    """circuitsvis ``attention_heads`` views (one per example) for display in a notebook.

    Returns a list of ``circuitsvis`` RenderedHTML objects.  Note: outside a notebook, their
    ``str()`` loads circuitsvis' JavaScript from a CDN; :mod:`tl_grokking.figures.report` instead
    inlines the JavaScript bundle shipped in the circuitsvis package.
    """
    from circuitsvis.attention import attention_heads

    n_heads = model.cfg.n_heads
    return [
        attention_heads(
            attention=pattern,
            tokens=toks,
            attention_head_names=[f"head {h}" for h in range(n_heads)],
            mask_upper_tri=True,
        )
        for toks, pattern in attention_examples(model, task, examples)
    ]


# ---------------------------------------------------------------------------------------------
# logits and ablations
# ---------------------------------------------------------------------------------------------


def trig_identity_coefficients(
    decomposition: TrigDecomposition | Mapping[int, float] | Sequence[tuple[int, float]],
    *,
    fve: float | None = None,
    title: str = "Trig-identity read-out: logits ≈ Σ_k α_k cos(w_k (a + b − c))",
) -> go.Figure:
    """Bar chart of the coefficient α_k of each key frequency k in the logit decomposition.

    ``decomposition`` is a :class:`~tl_grokking.analysis.logits.TrigDecomposition` (from
    ``trig_logit_decomposition``; its ``fve`` and approximation loss go in the title) or a
    mapping frequency → α_k.  ``fve`` is the fraction of the logits' variance explained
    (paper: about 95 %).
    """
    approx = None
    if isinstance(decomposition, TrigDecomposition):
        alphas: Any = decomposition.alpha
        fve = decomposition.fve if fve is None else fve
        approx = (decomposition.loss, decomposition.approx_loss)
    else:
        alphas = decomposition
    items = sorted(
        (int(k), float(v)) for k, v in (alphas.items() if isinstance(alphas, Mapping) else alphas)
    )
    fig = go.Figure(
        go.Bar(
            x=[f"k={k}" for k, _ in items],
            y=[v for _, v in items],
            marker_color="#9467bd",
            text=[fmt_num(v) for _, v in items],
            textposition="outside",
            hovertemplate="%{x}<br>α = %{y:.4g}<extra></extra>",
        )
    )
    extra = f" — explains {100 * fve:.1f} % of logit variance" if fve is not None else ""
    if approx is not None:
        extra += (
            f"<br><sup>loss: model {fmt_num(approx[0])}, approximation {fmt_num(approx[1])}</sup>"
        )
    return _category_bars(fig, title + extra, "key frequency k", "α_k")


def ablation_table_figure(
    rows: Any,
    *,
    title: str = "Ablations (loss over all p² inputs unless stated)",
) -> go.Figure:
    """A plotly Table of ablation results.

    ``rows`` is an :class:`~tl_grokking.analysis.ablations.AblationTable` (from ``ablation_table``),
    a list of mappings (one per ablation), a mapping of columns, or a DataFrame.  Cells are shown by
    :func:`tl_grokking._format.fmt_num` (4 significant digits, scientific notation for small
    losses).
    """
    widths = None
    if isinstance(rows, AblationTable):
        widths = [3.0, 1.0, 1.5, 1.5]
        rows = [
            {"ablation": r.name, "inputs": r.subset, "loss": r.loss, "accuracy": r.accuracy}
            for r in rows.rows
        ]
    elif hasattr(rows, "to_dict") and not isinstance(rows, Mapping):
        try:
            rows = rows.to_dict(orient="records")
        except TypeError:
            rows = rows.to_dict()
    if isinstance(rows, Mapping):  # columns
        keys = list(rows)
        n = len(_as_list(rows[keys[0]])) if keys else 0
        rows = [{k: _as_list(rows[k])[i] for k in keys} for i in range(n)]
    rows = [dict(r) for r in rows]
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    cells = [[fmt_num(r.get(k, "")) for r in rows] for k in keys]
    fig = go.Figure(
        go.Table(
            header={
                "values": [f"<b>{k}</b>" for k in keys],
                "align": "left",
                "fill_color": "#e8eef7",
            },
            cells={"values": cells, "align": "left"},
            columnwidth=widths,
        )
    )
    fig.update_layout(template=TEMPLATE, title=title, height=150 + 26 * len(rows), margin={"b": 10})
    return fig
