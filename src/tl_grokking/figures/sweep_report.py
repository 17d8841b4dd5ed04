"""The self-contained HTML report of a sweep (``tl-grokking report SWEEP_DIR``).

One file, ``SWEEP_DIR/sweep_report.html``, built like the run report
(:mod:`tl_grokking.figures.report`: the same jinja2 page template with autoescaping, plotly.js
inlined once, no network needed), from the sweep's ``runs.csv``
(:mod:`tl_grokking.analysis.sweep`) and each run's ``measures.csv``:

* a summary (runs per status, grokked runs, the median grok epoch, the swept axes) and every
  caveat (failed, unfinished or broken runs; tasks without some measures);
* a **phase diagram** of the grok epoch over two swept axes (``x`` / ``y``, or the two with
  most values, a ``seed`` axis last), the median over the axes not shown;
* the **distributions** over runs of the grok epoch and of each phase boundary;
* how often each frequency is a **key frequency**, and how many key frequencies runs use;
* the **progress-measure curves** of every run overlaid;
* a **table of every run** (status, swept values, results, error), linking to each run's own
  ``report.html`` where it exists (``run_reports=True`` writes them first).

A section that cannot be drawn (one axis, no grokked run, no analysed run, a task without the
restricted / excluded losses) is a visible note saying why. Run names, swept values and error
messages are text in the page (escaped for HTML, and for plotly's own markup in the figures).

``runs.csv`` is used as it is when it lists the manifest's runs and every analysed run is
unchanged since; otherwise :func:`~tl_grokking.analysis.sweep.analyze_sweep` brings it (and
the stale runs' analyses) up to date first, and the page says so.
"""

from __future__ import annotations

import html
import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import plotly.graph_objects as go
from markupsafe import Markup, escape
from plotly.subplots import make_subplots

from tl_grokking._format import fmt_num
from tl_grokking.analysis.sweep import (
    RUNS_CSV,
    RunsTable,
    analyze_sweep,
    measures_columns,
    read_runs_csv,
    stale_reason,
    sweep_summary,
)
from tl_grokking.figures.report import (
    REPORT_FILE,
    ReportSection,
    _display_path,
    _environment,
    render_report_html,
    write_report,
)
from tl_grokking.runs.rundir import GROK_ACC, atomic_write_text, path_kind, run_fingerprint
from tl_grokking.runs.sweepdir import Manifest, read_manifest, run_path

__all__ = [
    "SWEEP_REPORT_FILE",
    "SWEEP_CAPTIONS",
    "SEED_AXIS",
    "choose_axes",
    "load_sweep_table",
    "build_sweep_report",
    "write_sweep_report",
]

SWEEP_REPORT_FILE = "sweep_report.html"
#: The sweep report's captions (package data, ``templates/``).
SWEEP_CAPTIONS = "sweep_captions.html.j2"
#: The axis shown last in the automatic phase diagram (its values are replicates, not settings).
SEED_AXIS = "seed"
_THRESHOLD = f"{100 * GROK_ACC:g} %"
_BOUNDARY_LABELS = {
    "grok_epoch": f"grok epoch (test acc ≥ {_THRESHOLD})",
    "memorization_end": "memorisation ends",
    "circuit_formation_end": "circuit formation ends",
    "cleanup_end": "cleanup ends",
}
#: The panels of the overlaid curves: (title, measures.csv columns tried in order, log scale).
_CURVES = (
    ("test loss", ("test_loss", "loss"), True),
    ("restricted loss", ("restricted_loss",), True),
    ("excluded loss", ("excluded_loss",), True),
    ("Gini of W_E", ("gini_W_E",), False),
    ("Gini of W_L", ("gini_W_L",), False),
    ("sum of squared weights", ("sum_sq_weights",), True),
)
_PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
)  # fmt: skip


def _caption(name: str, *args: Any) -> Markup:
    """The caption ``name`` of ``templates/sweep_captions.html.j2`` (arguments escaped)."""
    macro = getattr(_environment().get_template(SWEEP_CAPTIONS).module, name)
    return Markup(" ".join(str(macro(*args)).split()))


def _plain(text: Any) -> str:
    """Text for a plotly string (labels, hover, legend): plotly renders a subset of HTML tags
    in them, so ``&``, ``<``, ``>`` become entities (which it shows as the characters)."""
    return html.escape(str(text), quote=False)


def _value_text(value: Any) -> str:
    """A swept value as the page shows it (``off`` for none)."""
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# The data: runs.csv (up to date), the manifest, each run's curves
# ---------------------------------------------------------------------------------------------


def _table_is_current(sweep_dir: Path, manifest: Manifest, table: RunsTable) -> bool:
    """``runs.csv`` lists exactly the manifest's runs with their statuses, no finished run has
    an error to retry, and every analysed run is unchanged since (fingerprint, stored files)."""
    rows = {row["name"]: row for row in table.rows}
    if list(rows) != list(manifest.runs):
        return False
    for name, record in manifest.runs.items():
        row = rows[name]
        if row["status"] != record.status:
            return False
        if record.status != "done":
            continue
        run_dir = run_path(sweep_dir, name)
        if row["error"] is not None:  # current only while its run directory is still missing
            if path_kind(run_dir) == "a directory":
                return False
            continue
        try:
            fingerprint = run_fingerprint(run_dir)
            if row["fingerprint"] != fingerprint or stale_reason(run_dir, fingerprint=fingerprint):
                return False
        except (ValueError, OSError):
            return False
    return True


def load_sweep_table(
    sweep_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[Manifest, RunsTable, str]:
    """The manifest and the up-to-date ``runs.csv`` of ``sweep_dir``, and where the table
    came from: read as it was, or written now by
    :func:`~tl_grokking.analysis.sweep.analyze_sweep` (missing, unreadable or out of date)."""
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)  # SweepDirError before any work
    path = sweep_dir / RUNS_CSV
    reason = f"there was no {RUNS_CSV}"
    if path_kind(path) is not None:
        try:
            table = read_runs_csv(path)
            if _table_is_current(sweep_dir, manifest, table):
                return manifest, table, f"{RUNS_CSV} (from tl-grokking analyze)"
            reason = f"{RUNS_CSV} was out of date"
        except (ValueError, OSError):
            reason = f"{RUNS_CSV} could not be read"
    analysis = analyze_sweep(sweep_dir, workers=workers, device=device, progress=progress)
    done = len(analysis.recomputed)
    return (
        analysis.manifest,
        analysis.table,
        f"{RUNS_CSV} written for this report ({reason}; {done} run(s) analysed now)",
    )


def _axis_values(manifest: Manifest, table: RunsTable) -> dict[str, list[Any]]:
    """Every swept field's values: the spec's order, then values only older runs have."""
    spec_axes = manifest.spec.get("axes") or {}
    out: dict[str, list[Any]] = {}
    for axis in table.axes:
        values = list(spec_axes.get(axis) or [])
        for row in table.rows:
            if row.get(axis) not in values:
                values.append(row.get(axis))
        out[axis] = values
    return out


def choose_axes(
    axis_values: dict[str, list[Any]], x: str | None = None, y: str | None = None
) -> tuple[str | None, str | None]:
    """The axes of the phase diagram: ``x`` and ``y`` as given (``ValueError`` unless each
    is a swept field with at least two values, and they differ), the others chosen among the
    swept fields with at least two values: most values first, :data:`SEED_AXIS` last, spec
    order on ties. ``(x, None)`` with one such axis, ``(None, None)`` with none."""
    usable = [axis for axis, values in axis_values.items() if len(values) >= 2]
    for flag, axis in (("x", x), ("y", y)):
        if axis is not None and axis not in usable:
            raise ValueError(
                f"--{flag} {axis}: not a swept field with two or more values; the sweep's are "
                f"{', '.join(usable) or 'none'}"
            )
    if x is not None and x == y:
        raise ValueError(f"--x and --y must be two different swept fields, got {x} for both")
    ranked = sorted(
        usable,
        key=lambda a: (a == SEED_AXIS, -len(axis_values[a]), list(axis_values).index(a)),
    )
    rest = [axis for axis in ranked if axis not in (x, y)]
    if x is None and rest:
        x = rest.pop(0)
    if y is None and rest:
        y = rest.pop(0)
    if x is None and y is not None:
        x, y = y, None
    return x, y


@dataclass
class _Sweep:
    """Everything the sections read, loaded once."""

    sweep_dir: Path
    out_dir: Path
    manifest: Manifest
    table: RunsTable
    source: str
    axis_values: dict[str, list[Any]]
    x: str | None
    y: str | None
    curves: dict[str, dict[str, list[float]]]  # run name -> measures.csv columns

    @property
    def analysed(self) -> list[dict[str, Any]]:
        """Rows of finished runs with an analysis (no error)."""
        return [r for r in self.table.rows if r["status"] == "done" and r["grokked"] is not None]

    def p_of(self, name: str) -> Any:
        record = self.manifest.runs.get(name)
        return record.config.get("p") if record is not None else None

    def tasks(self) -> list[str]:
        return sorted({str(r.config.get("task", "add")) for r in self.manifest.runs.values()})

    @property
    def hidden(self) -> list[str]:
        """Swept fields with several values that the phase diagram does not show."""
        return [a for a, v in self.axis_values.items() if len(v) >= 2 and a not in (self.x, self.y)]

    def color_axis(self) -> str | None:
        """The field the curves and the boxes are grouped by (the diagram's x, unless it is the
        seed)."""
        return self.x if self.x is not None and self.x != SEED_AXIS else None


def _read_curves(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, list]]:
    curves = {}
    for row in rows:
        try:
            curves[row["name"]] = measures_columns(
                run_path(sweep_dir, row["name"]) / "measures.csv"
            )
        except (ValueError, OSError):
            continue  # changed since runs.csv was written: the run's row still shows
    return curves


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _note(title: str, anchor: str, *notes: str) -> ReportSection:
    return ReportSection(title, anchor=anchor, kind="note", skipped=tuple(notes))


def _cell_median(rows: Sequence[dict[str, Any]]) -> float:
    """Median grok epoch of ``rows``, a run that never grokked counting as +inf."""
    return statistics.median(
        float(r["grok_epoch"]) if r["grokked"] and r["grok_epoch"] is not None else math.inf
        for r in rows
    )


def _phase_diagram(s: _Sweep) -> ReportSection:
    title, anchor = "Time to grok: phase diagram", "phase-diagram"
    rows = s.analysed
    if not rows:
        return _note(
            title, anchor, "no finished run has an analysis yet, so there is nothing to map"
        )
    if s.x is None:
        return _note(
            title,
            anchor,
            "the sweep has no swept field with two or more values; the runs are in the table",
        )
    if not any(r["grokked"] for r in rows):
        return _note(
            title,
            anchor,
            f"no run grokked (test accuracy never reached {_THRESHOLD}), so there is no time to "
            "grok to map; the final accuracies are in the table",
        )
    if s.y is None:
        return _one_axis(s, rows)
    xs, ys = s.axis_values[s.x], s.axis_values[s.y]
    z: list[list[float | None]] = []
    hover: list[list[str]] = []
    never_x, never_y, never_hover = [], [], []
    for yv in ys:
        z_row, h_row = [], []
        for xv in xs:
            cell = [r for r in rows if r.get(s.x) == xv and r.get(s.y) == yv]
            where = _plain(f"{s.x} = {_value_text(xv)}, {s.y} = {_value_text(yv)}")
            if not cell:
                z_row.append(None)
                h_row.append(f"{where}: no analysed run")
                continue
            median = _cell_median(cell)
            grokked = sum(bool(r["grokked"]) for r in cell)
            shown = fmt_num(median) if math.isfinite(median) else "never"
            text = (
                f"{where}<br>median grok epoch: {shown}<br>{grokked} of {len(cell)} run(s) grokked"
            )
            if math.isfinite(median):
                z_row.append(median)
            else:
                z_row.append(None)
                never_x.append(_plain(_value_text(xv)))
                never_y.append(_plain(_value_text(yv)))
                never_hover.append(text)
            h_row.append(text)
        z.append(z_row)
        hover.append(h_row)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[_plain(_value_text(v)) for v in xs],
            y=[_plain(_value_text(v)) for v in ys],
            text=hover,
            hoverinfo="text",
            colorscale="Viridis",
            colorbar={"title": {"text": "grok epoch"}},
            hoverongaps=False,
            texttemplate="%{z:.0f}",
        )
    )
    if never_x:
        fig.add_trace(
            go.Scatter(
                x=never_x,
                y=never_y,
                mode="markers+text",
                text=["never"] * len(never_x),
                textposition="bottom center",
                marker={"symbol": "x", "size": 18, "color": "#555"},
                hovertext=never_hover,
                hoverinfo="text",
                name="never grokked",
                showlegend=True,
            )
        )
    fig.update_xaxes(type="category", title_text=_plain(s.x))
    fig.update_yaxes(type="category", title_text=_plain(s.y))
    fig.update_layout(
        height=max(380, 60 * len(ys) + 160),
        title=f"Median epoch to {_THRESHOLD} test accuracy",
        legend={"orientation": "h", "y": -0.2},
    )
    hidden = ", ".join(s.hidden)
    return ReportSection(
        title, _caption("phase_diagram", s.x, s.y, hidden, _THRESHOLD), fig, anchor=anchor
    )


def _one_axis(s: _Sweep, rows: Sequence[dict[str, Any]]) -> ReportSection:
    """The grok epoch of every run along the one swept field (no second axis to map)."""
    assert s.x is not None
    title, anchor = "Time to grok: phase diagram", "phase-diagram"
    grokked = [r for r in rows if r["grokked"]]
    never = [r for r in rows if not r["grokked"]]
    top = max(float(r["grok_epoch"]) for r in grokked) * 1.1
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[_plain(_value_text(r.get(s.x))) for r in grokked],
            y=[r["grok_epoch"] for r in grokked],
            mode="markers",
            name="grokked",
            hovertext=[_plain(r["name"]) for r in grokked],
            marker={"size": 9},
        )
    )
    if never:
        fig.add_trace(
            go.Scatter(
                x=[_plain(_value_text(r.get(s.x))) for r in never],
                y=[top] * len(never),
                mode="markers",
                name="never grokked",
                hovertext=[_plain(r["name"]) for r in never],
                marker={"symbol": "x", "size": 12, "color": "#555"},
            )
        )
    fig.update_xaxes(
        type="category",
        title_text=_plain(s.x),
        categoryarray=[_plain(_value_text(v)) for v in s.axis_values[s.x]],
        categoryorder="array",
    )
    fig.update_yaxes(title_text="grok epoch")
    fig.update_layout(height=420)
    return ReportSection(
        title,
        _caption("one_axis", s.x, _THRESHOLD),
        fig,
        anchor=anchor,
        skipped=(
            f"the sweep has one swept field with two or more values ({s.x}); a phase diagram "
            "needs two, so the grok epoch is plotted against it",
        ),
    )


def _distributions(s: _Sweep) -> ReportSection:
    title, anchor = "Grok epoch and phase boundaries over seeds", "distributions"
    rows = s.analysed
    if not rows:
        return _note(title, anchor, "no finished run has an analysis yet")
    quantities = [q for q in _BOUNDARY_LABELS if any(r[q] is not None for r in rows)]
    if not quantities:
        return _note(
            title,
            anchor,
            "no run grokked or has phase boundaries (too few checkpoints?); nothing to plot",
        )
    group = s.color_axis()
    groups = s.axis_values[group] if group else [None]
    fig = go.Figure()
    for i, value in enumerate(groups):
        members = [r for r in rows if group is None or r.get(group) == value]
        xs, ys, names = [], [], []
        for q in quantities:
            for r in members:
                if r[q] is not None:
                    xs.append(_BOUNDARY_LABELS[q])
                    ys.append(r[q])
                    names.append(_plain(r["name"]))
        if not ys:
            continue
        fig.add_trace(
            go.Box(
                x=xs,
                y=ys,
                name=_plain(f"{group} = {_value_text(value)}") if group else "all runs",
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                hovertext=names,
                marker={"color": _PALETTE[i % len(_PALETTE)], "size": 5},
            )
        )
    fig.update_xaxes(
        type="category",
        categoryorder="array",
        categoryarray=[_BOUNDARY_LABELS[q] for q in quantities],
    )
    fig.update_layout(boxmode="group", height=460, yaxis_title="epoch", legend_title_text="")
    n_never = sum(not r["grokked"] for r in rows)
    return ReportSection(
        title, _caption("distributions", group or "", n_never, len(rows)), fig, anchor=anchor
    )


def _key_frequencies(s: _Sweep) -> ReportSection:
    title, anchor = "Key frequencies", "key-frequencies"
    rows = s.analysed
    if not rows:
        return _note(title, anchor, "no finished run has an analysis yet")
    if not any(r["key_freqs"] for r in rows):
        rules = sorted({str(r["key_freq_rule"]) for r in rows if r["key_freq_rule"]})
        return _note(
            title,
            anchor,
            "no run has key frequencies (a circuit that has not formed, or a task without the "
            f"sum directions); the rules said: {'; '.join(rules)[:600] or 'nothing recorded'}",
        )
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.7, 0.3],
        subplot_titles=("runs using each key frequency", "key frequencies per run"),
    )
    by_p: dict[Any, Counter[int]] = {}
    for r in rows:
        by_p.setdefault(s.p_of(r["name"]), Counter()).update(r["key_freqs"] or [])
    for i, (p, counter) in enumerate(sorted(by_p.items(), key=lambda kv: str(kv[0]))):
        if not counter:
            continue
        ks = list(range(1, int(p) // 2 + 1)) if isinstance(p, int) else sorted(counter)
        fig.add_trace(
            go.Bar(
                x=ks,
                y=[counter.get(k, 0) for k in ks],
                name=f"p = {_plain(p)}",
                marker_color=_PALETTE[i % len(_PALETTE)],
                showlegend=len(by_p) > 1,
            ),
            row=1,
            col=1,
        )
    sizes = Counter(int(r["n_key_freqs"] or 0) for r in rows)
    fig.add_trace(
        go.Bar(
            x=sorted(sizes),
            y=[sizes[n] for n in sorted(sizes)],
            marker_color="#7f7f7f",
            showlegend=False,
            name="runs",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="frequency k", row=1, col=1)
    fig.update_xaxes(title_text="number of key frequencies", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text="runs", row=1, col=1)
    fig.update_yaxes(title_text="runs", row=1, col=2)
    fig.update_layout(height=420, barmode="group")
    return ReportSection(title, _caption("key_frequencies", len(rows)), fig, anchor=anchor)


def _curves(s: _Sweep) -> ReportSection:
    """Every run's progress measures, overlaid: one line trace per panel and colour group, the
    runs separated by gaps (hundreds of runs stay a few dozen traces)."""
    title, anchor = "Progress measures of every run", "curves"
    if not s.curves:
        return _note(title, anchor, "no finished run has a measures.csv yet")
    fig = make_subplots(rows=2, cols=3, subplot_titles=[c[0] for c in _CURVES])
    group = s.color_axis()
    values = s.axis_values[group] if group else [None]
    rows = {r["name"]: r for r in s.table.rows}
    missing = []
    for i, (panel, names, log) in enumerate(_CURVES):
        row, col = divmod(i, 3)
        drawn = False
        for k, value in enumerate(values):
            xs: list[Any] = []
            ys: list[Any] = []
            hover: list[str] = []
            for run, columns in s.curves.items():
                column = next((n for n in names if n in columns), None)
                if column is None or (group is not None and rows[run].get(group) != value):
                    continue
                xs += [*columns["epoch"], None]
                ys += [*columns[column], None]
                hover += [_plain(run)] * (len(columns["epoch"]) + 1)
            if not xs:
                continue
            legend = _plain(f"{group} = {_value_text(value)}") if group else "runs"
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    connectgaps=False,
                    line={"width": 1, "color": _PALETTE[k % len(_PALETTE)]},
                    opacity=0.6,
                    name=legend,
                    legendgroup=legend,
                    showlegend=group is not None and i == 0,
                    hovertext=hover,
                    hovertemplate="%{hovertext}<br>epoch %{x}: %{y:.4g}<extra></extra>",
                ),
                row=row + 1,
                col=col + 1,
            )
            drawn = True
        if not drawn:
            missing.append(panel)
        if log:
            fig.update_yaxes(type="log", row=row + 1, col=col + 1)
        fig.update_xaxes(title_text="epoch", row=row + 1, col=col + 1)
    fig.update_layout(height=640)
    skipped: tuple[str, ...] = ()
    if missing:
        skipped = (
            f"no run has the {', '.join(missing)} (computed for modular addition with key "
            f"frequencies only; tasks here: {', '.join(s.tasks())})",
        )
    return ReportSection(
        title, _caption("curves", group or ""), fig, anchor=anchor, skipped=skipped
    )


def _fmt_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, float):
        return fmt_num(value)
    return str(value)


def _runs_table(s: _Sweep) -> ReportSection:
    columns = [
        ("grok_epoch", "grok epoch"),
        ("memorization_end", "memorisation ends"),
        ("circuit_formation_end", "circuit formation ends"),
        ("cleanup_end", "cleanup ends"),
        ("key_freqs", "key frequencies"),
        ("final_test_acc", "final test acc"),
        ("final_test_loss", "final test loss"),
        ("clock_pizza", "clock / pizza"),
    ]
    head = Markup("").join(
        Markup("<th>{}</th>").format(label)
        for label in ["run", "status", *s.table.axes, *(label for _, label in columns), "error"]
    )
    body = []
    n_links = 0
    for row in s.table.rows:
        report = run_path(s.sweep_dir, row["name"]) / REPORT_FILE
        if path_kind(report) == "a regular file":
            href = quote(Path(os.path.relpath(report, s.out_dir)).as_posix())
            name = Markup('<a href="{}">{}</a>').format(href, row["name"])
            n_links += 1
        else:
            name = escape(row["name"])
        cells = [
            name,
            escape(row["status"]),
            *(escape(_value_text(row.get(axis))) for axis in s.table.axes),
            *(escape(_fmt_cell(row.get(key))) for key, _ in columns),
        ]
        error = row.get("error") or ""
        body.append(
            Markup('<tr class="status-{}">{}<td class="error">{}</td></tr>').format(
                row["status"],
                Markup("").join(Markup("<td>{}</td>").format(c) for c in cells),
                error,
            )
        )
    table = Markup(
        '<div class="table-wrap"><table class="runs"><thead><tr>{}</tr></thead>'
        "<tbody>{}</tbody></table></div>"
    ).format(head, Markup("\n").join(body))
    return ReportSection(
        "Every run", _caption("runs_table", n_links), body_html=table, anchor="runs", kind="table"
    )


def _spec_section(s: _Sweep) -> ReportSection:
    spec = json.dumps(s.manifest.spec, indent=2, sort_keys=True, default=str)
    body = Markup('<pre class="config">{}</pre>').format(spec)
    return ReportSection(
        "Sweep specification",
        _caption("spec", s.source),
        body_html=body,
        anchor="spec",
        kind="table",
    )


_SECTIONS = (_phase_diagram, _distributions, _key_frequencies, _curves, _runs_table, _spec_section)


# ---------------------------------------------------------------------------------------------
# Summary and caveats
# ---------------------------------------------------------------------------------------------


def _summary_rows(s: _Sweep) -> list[tuple[str, str]]:
    summary = sweep_summary(s.table, {n: s.p_of(n) for n in s.manifest.runs})
    statuses = ", ".join(f"{n} {status}" for status, n in summary.counts.items() if n)
    configs = [r.config for r in s.manifest.runs.values()]
    ps = sorted({str(c.get("p")) for c in configs})
    median = summary.median_grok_epoch
    rows = [
        ("sweep directory", _display_path(s.sweep_dir)),
        ("runs", f"{summary.n_runs} ({statuses or 'none'})"),
        ("task", f"{', '.join(s.tasks())}; p = {', '.join(ps)}"),
        (
            "swept fields",
            "; ".join(
                f"{axis}: {', '.join(_value_text(v) for v in values)}"
                for axis, values in s.axis_values.items()
            )
            or "none",
        ),
        (
            f"grokked (test acc ≥ {_THRESHOLD})",
            f"{summary.n_grokked} of {summary.n_analysed} analysed runs",
        ),
        (
            "median grok epoch",
            "—" if median is None else f"{fmt_num(median)} (over the grokked runs)",
        ),
        (
            "most common key frequencies",
            ", ".join(f"{k} ({n} runs)" for k, n in summary.key_freq_counts[:8]) or "none",
        ),
        ("phase diagram", f"{s.x or '—'} × {s.y or '—'}"),
        ("table", s.source),
    ]
    return rows


def _caveats(s: _Sweep) -> list[str]:
    out = []
    counts = s.manifest.counts()
    failed = [r for r in s.table.rows if r["status"] == "failed"]
    if failed:
        out.append(
            f"{len(failed)} run(s) failed and have no analysis: "
            + ", ".join(r["name"] for r in failed[:10])
            + (" …" if len(failed) > 10 else "")
            + " (their errors are in the table; rerun with tl-grokking sweep --retry-failed)"
        )
    unfinished = counts.get("pending", 0)
    if unfinished:
        out.append(
            f"{unfinished} run(s) have not finished and are left out of the figures (rerun "
            "tl-grokking sweep with the same arguments to finish them)"
        )
    broken = [r for r in s.table.rows if r["status"] == "done" and r["error"]]
    if broken:
        out.append(
            f"{len(broken)} finished run(s) have no analysis: "
            + "; ".join(f"{r['name']}: {r['error']}" for r in broken[:5])
            + (" …" if len(broken) > 5 else "")
        )
    others = [t for t in s.tasks() if t != "add"]
    if others:
        out.append(
            f"task(s) {', '.join(others)}: the restricted / excluded losses and the clock/pizza "
            "metrics are defined for modular addition (the Gini coefficients and losses are "
            "still shown); see docs/tasks.md"
        )
    rows = s.analysed
    if rows and not any(r["grokked"] for r in rows):
        out.append(f"no run reached {_THRESHOLD} test accuracy: nothing grokked (yet)")
    return out


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _write_run_reports(sweep_dir: Path, manifest: Manifest, device: str, progress: bool) -> None:
    """``report.html`` of every finished run (a run that cannot be reported keeps its row's
    error and gets no link)."""
    from tqdm.auto import tqdm

    names = [n for n, r in manifest.runs.items() if r.status == "done"]
    for name in tqdm(names, desc="run reports", unit="run", disable=not progress):
        try:
            write_report(run_path(sweep_dir, name), device=device)
        except (ValueError, OSError):
            continue


def build_sweep_report(
    sweep_dir: str | os.PathLike,
    *,
    x: str | None = None,
    y: str | None = None,
    out_dir: str | os.PathLike | None = None,
    run_reports: bool = False,
    workers: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> str:
    """The HTML of the sweep report of ``sweep_dir`` (see :func:`write_sweep_report`);
    ``out_dir`` is where the page will be, for its links to the runs' reports."""
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)  # SweepDirError before any work
    known = _known_axes(manifest)
    for flag, axis in (("x", x), ("y", y)):  # a bad --x / --y before any analysis
        if axis is not None and axis not in known:
            raise ValueError(
                f"--{flag} {axis}: not a swept field of this sweep; its swept fields are "
                f"{', '.join(known) or 'none'}"
            )
    manifest, table, source = load_sweep_table(
        sweep_dir, workers=workers, device=device, progress=progress
    )
    if run_reports:
        _write_run_reports(sweep_dir, manifest, device, progress)
    axis_values = _axis_values(manifest, table)
    x, y = choose_axes(axis_values, x, y)
    s = _Sweep(
        sweep_dir=sweep_dir,
        out_dir=Path(out_dir) if out_dir is not None else sweep_dir,
        manifest=manifest,
        table=table,
        source=source,
        axis_values=axis_values,
        x=x,
        y=y,
        curves={},
    )
    s.curves = _read_curves(sweep_dir, s.analysed)
    counts = manifest.counts()
    finished = counts.get("done", 0) == len(manifest.runs)
    banner = (
        ("done", f"All {len(manifest.runs)} runs finished.")
        if finished
        else (
            "running",
            f"{counts.get('done', 0)} of {len(manifest.runs)} runs finished; "
            f"{counts.get('failed', 0)} failed, "
            f"{counts.get('pending', 0)} not finished.",
        )
    )
    name = sweep_dir.resolve().name or "sweep"
    return render_report_html(
        f"Sweep report — {name}",
        [build(s) for build in _SECTIONS],
        subtitle="Cross-run analysis of a tl-grokking sweep: time to grok, phases, key "
        "frequencies and progress measures over the runs",
        banner=banner,
        caveats=_caveats(s),
        summary=_summary_rows(s),
    )


def _known_axes(manifest: Manifest) -> list[str]:
    axes = list((manifest.spec.get("axes") or {}).keys())
    for record in manifest.runs.values():
        axes += [k for k in record.point if k not in axes]
    return axes


def write_sweep_report(
    sweep_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    x: str | None = None,
    y: str | None = None,
    run_reports: bool = False,
    workers: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> Path:
    """Build the sweep report and write it atomically to ``out`` (default
    ``SWEEP_DIR/sweep_report.html``); returns the path.

    ``x`` / ``y``: the swept fields of the phase diagram (default: chosen by
    :func:`choose_axes`). ``run_reports``: write every finished run's ``report.html`` first
    (linked from the table). ``runs.csv`` is brought up to date first when it is missing or
    out of date (:func:`load_sweep_table`; ``workers`` and ``device`` are for that analysis).
    A bad sweep directory raises :class:`~tl_grokking.runs.sweepdir.SweepDirError` and a bad
    ``x`` / ``y`` a ``ValueError``, before anything is written.
    """
    path = Path(out) if out is not None else Path(sweep_dir) / SWEEP_REPORT_FILE
    page = build_sweep_report(
        sweep_dir,
        x=x,
        y=y,
        out_dir=path.parent,
        run_reports=run_reports,
        workers=workers,
        device=device,
        progress=progress,
    )
    atomic_write_text(path, page)
    return path
