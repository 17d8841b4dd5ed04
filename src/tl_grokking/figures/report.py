"""The self-contained HTML report of a training run (``tl-grokking report RUN_DIR``).

One file, ``RUN_DIR/report.html``, that opens with no network: plotly.js is inlined once in the
page head, every figure of :mod:`tl_grokking.figures.plots` is a ``<div>`` drawing from that one
copy, and the circuitsvis attention view uses the JavaScript bundle shipped inside the
circuitsvis Python package (``circuitsvis/dist/cdn/iife.js``), inlined once, instead of the CDN
import that ``circuitsvis``' own HTML uses outside a notebook.

Contents: the run's status (finished / still training, and why), every caveat of the analysis
(the notes ``tl-grokking analyze`` prints), summary numbers (the epoch at 99 % test accuracy,
final losses, key frequencies by each rule, phase boundaries), the run's configuration, and one
section per figure.  Progress measures come from ``measures.csv`` / ``phases.json`` when
``tl-grokking analyze`` wrote them, and are computed otherwise.

How it is built: :func:`build_report` gathers the run once (:class:`_Run`), then each section
builder of :data:`_SECTIONS` returns a :class:`ReportSection` (a figure, or a visible note saying
why it is skipped) or ``None`` when the section does not apply to the run's task.
:func:`render_report_html` fills the jinja2 template ``templates/report.html.j2`` (package data:
page skeleton and CSS; the captions are the macros of ``templates/captions.html.j2``) with
autoescaping on, so run names, configuration values and the contents of ``phases.json`` are
shown as text and never run as HTML.

The page is built in memory and written atomically: on bad input (not a run directory, no
checkpoints) a :class:`~tl_grokking.runs.rundir.RunDirError` is raised and nothing is written.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import plotly.graph_objects as go
from markupsafe import Markup

from tl_grokking._format import fmt_num
from tl_grokking._version import __version__
from tl_grokking.analysis.phases import (
    GROK_LABEL,
    analysis_notes,
    check_phases_record,
    grok_summary,
    phases_record,
)
from tl_grokking.runs.rundir import (
    CONFIG_FILE,
    RESUME_FILE,
    atomic_write_text,
    path_kind,
    read_json,
    read_metrics,
    require_run_dir,
    resume_epoch,
    run_fingerprint,
)

__all__ = [
    "REPORT_FILE",
    "TEMPLATE",
    "ReportSection",
    "RunStatus",
    "run_status",
    "caption",
    "build_report",
    "render_report_html",
    "write_report",
    "external_urls",
]

REPORT_FILE = "report.html"
#: The page template (package data of ``tl_grokking.figures``, in ``templates/``).
TEMPLATE = "report.html.j2"
_CAPTIONS_TEMPLATE = "captions.html.j2"


@dataclass
class ReportSection:
    """One block of the report: a heading, a caption and its body.

    ``caption`` and ``body_html`` are HTML put into the page as they are: build them from
    escaped parts (:func:`caption` gives the template's captions).  ``figure`` is a plotly
    figure; ``skipped`` are plain-text notes (escaped in the page), each shown as
    "**Skipped:** note".  ``anchor`` is the section's id (default: from the title).  A section
    of ``kind="circuitsvis"`` makes the page inline the circuitsvis bundle; ``"note"`` marks a
    section that stands in for one that could not be drawn.
    """

    title: str
    caption: str = ""
    figure: go.Figure | None = None
    body_html: str = ""
    anchor: str = ""
    kind: str = "figure"  # "figure", "note", or "circuitsvis" (the page then inlines its JS)
    skipped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.anchor:
            self.anchor = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


# ---------------------------------------------------------------------------------------------
# The page: template, captions, inlined JavaScript
# ---------------------------------------------------------------------------------------------


@functools.cache
def _environment() -> jinja2.Environment:
    """The jinja2 environment of the report templates (autoescape on, strict variables)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("tl_grokking.figures", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def caption(name: str, *args: Any) -> Markup:
    """The caption ``name`` of ``templates/captions.html.j2`` (a macro; ``args`` are escaped),
    as safe HTML for :attr:`ReportSection.caption`."""
    macro = getattr(_environment().get_template(_CAPTIONS_TEMPLATE).module, name)
    return Markup(" ".join(str(macro(*args)).split()))


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A plotly figure as a ``<div>`` + ``<script>`` that draws from the page's plotly.js."""
    height = getattr(fig.layout, "height", None) or 450
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        default_height=f"{int(height)}px",
        default_width="100%",
        config={"displaylogo": False, "responsive": True},
    )


def _safe_inline_js(source: str) -> str:
    """JavaScript made safe to inline in a ``<script>`` element: no ``</script`` terminators
    (``<\\/`` is the same string in JS), no source-map comment pointing at a missing file."""
    source = re.sub(r"</(script)", r"<\\/\1", source, flags=re.IGNORECASE)
    return re.sub(r"^//# sourceMappingURL=.*$", "", source, flags=re.MULTILINE)


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return _safe_inline_js(get_plotlyjs())


def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle (defines the global ``CircuitsVis``), read from the
    installed package, ready to inline.  ``FileNotFoundError`` if the package ships none."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(
            f"circuitsvis {circuitsvis.__version__} ships no browser bundle at {path}; "
            "the report cannot inline its attention view"
        )
    return _safe_inline_js(path.read_text(encoding="utf-8"))


def _json_for_script(data: Any) -> str:
    """JSON safe inside a ``<script>`` element (``<`` escaped)."""
    return json.dumps(data).replace("<", "\\u003c")


def circuitsvis_element(component: str, props: dict[str, Any], element_id: str) -> str:
    """A ``<div>`` and the script that renders circuitsvis ``component`` into it (needs the
    bundle from :func:`circuitsvis_bundle` earlier in the page)."""
    from circuitsvis.utils.convert_props import convert_props

    props_json = json.loads(convert_props(props))
    return (
        f'<div id="{html.escape(element_id)}" class="circuitsvis"></div>\n'
        f"<script>CircuitsVis.render({_json_for_script(element_id)}, CircuitsVis.{component}, "
        f"{_json_for_script(props_json)});</script>"
    )


_URL_ATTR_RE = re.compile(
    r"<(script|link|img|iframe|source|audio|video|embed|object)\b[^>]*?\b(src|href|data)\s*=\s*"
    r"[\"']?([^\"'\s>]+)",
    re.IGNORECASE,
)
_CSS_IMPORT_RE = re.compile(r"@import\s+(?:url\()?[\"']?([^\"')\s;]+)", re.IGNORECASE)
_JS_IMPORT_RE = re.compile(r"\bimport\s*(?:[\w{}\s,*]+from\s*)?[\"']((?:https?:)?//[^\"']+)")


def external_urls(page: str) -> list[str]:
    """Every resource the page would fetch from another host: ``src``/``href``/``data`` of
    script, link, img, iframe, ... elements, CSS ``@import`` and JS ``import ... from`` that
    name an ``http(s):`` or protocol-relative URL.  A self-contained report returns ``[]``.

    (Plain strings inside inlined libraries, e.g. the SVG namespace URI, are not fetches and
    are not reported.)
    """
    found = [m.group(3) for m in _URL_ATTR_RE.finditer(page)]
    found += _CSS_IMPORT_RE.findall(page)
    found += _JS_IMPORT_RE.findall(page)
    return [u for u in found if re.match(r"^(https?:)?//", u.strip(), re.IGNORECASE)]


@dataclass(frozen=True)
class _PageSection:
    """A :class:`ReportSection` as the template reads it (HTML parts marked safe)."""

    anchor: str
    kind: str
    title: str
    caption: Markup
    skipped: tuple[str, ...]
    figure_html: Markup
    body_html: Markup


def render_report_html(
    title: str,
    sections: Sequence[ReportSection],
    *,
    subtitle: str = "",
    banner: tuple[str, str] | None = None,
    summary: Sequence[tuple[str, str]] | None = None,
    config: dict[str, Any] | None = None,
    caveats: Sequence[str] = (),
) -> str:
    """Fill the page template: plotly.js once in the head, each figure section a
    ``<div class="plotly-graph-div">``, the circuitsvis bundle inlined once if any section
    uses it.

    ``title``, ``subtitle``, ``caveats`` (one list item each) and ``config`` (shown as JSON)
    are plain text, escaped.  ``banner`` is ``(kind, text)`` with kind ``done`` / ``running`` /
    ``missing``.  ``summary`` rows are ``(label, value)``: a value is escaped unless it is a
    :class:`markupsafe.Markup` (trusted HTML built from escaped parts).
    """
    uses_cv = any(s.kind == "circuitsvis" for s in sections)
    page_sections = [
        _PageSection(
            anchor=s.anchor,
            kind=s.kind,
            title=s.title,
            caption=Markup(s.caption),
            skipped=tuple(s.skipped),
            figure_html=Markup(figure_html(s.figure, f"fig-{i}-{s.anchor}"))
            if s.figure is not None
            else Markup(""),
            body_html=Markup(s.body_html),
        )
        for i, s in enumerate(sections)
    ]
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            title=title,
            subtitle=subtitle,
            banner=banner,
            caveats=list(caveats),
            summary=list(summary or []),
            config_json=None if config is None else json.dumps(config, indent=2, sort_keys=True),
            sections=page_sections,
            plotly_js=Markup(_plotly_js()),
            circuitsvis_js=Markup(circuitsvis_bundle()) if uses_cv else None,
            version=__version__,
            stamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


# ---------------------------------------------------------------------------------------------
# The run's state
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    """Whether a run directory holds a finished run, and how far it got.

    ``finished`` is true when the last checkpoint is at ``config.epochs``, or when the run
    stopped early (``early_stop_acc`` reached for ``early_stop_patience`` logged epochs in a row,
    ending at the last checkpoint).  Otherwise the run is still training, or was interrupted
    (``tl-grokking train --resume`` continues it); ``notes`` say what was seen.
    """

    epochs_configured: int | None
    last_checkpoint_epoch: int
    last_logged_epoch: int | None
    resume_epoch: int | None
    finished: bool
    stopped_early: bool
    notes: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """One sentence for the banner and the console: finished (how) or still training."""
        if self.finished and self.stopped_early:
            return (
                f"Finished: stopped early at epoch {self.last_checkpoint_epoch} of "
                f"{self.epochs_configured} (early-stop accuracy reached)."
            )
        if self.finished:
            return f"Finished: trained all {self.epochs_configured} epochs."
        return (
            "Still training (or interrupted): "
            + "; ".join(self.notes)
            + ". This report shows the run up to its last checkpoint."
        )


def run_status(run_dir: str | os.PathLike) -> RunStatus:
    """The :class:`RunStatus` of a run directory (``RunDirError`` if it is not one)."""
    run_dir = Path(run_dir)
    found = require_run_dir(run_dir)  # also checks that config.json holds an object
    config = read_json(run_dir / CONFIG_FILE)
    metrics = read_metrics(run_dir)
    epochs_cfg = config.get("epochs")
    epochs_cfg = int(epochs_cfg) if isinstance(epochs_cfg, int | float) else None
    last_ckpt = found[-1][0]
    logged = [int(r["epoch"]) for r in metrics if "epoch" in r]
    last_logged = max(logged) if logged else None
    resume = resume_epoch(run_dir)

    finished = epochs_cfg is not None and last_ckpt >= epochs_cfg
    stopped_early = False
    acc, patience = config.get("early_stop_acc"), int(config.get("early_stop_patience") or 1)
    if not finished and acc is not None and last_logged == last_ckpt:
        tail = [r for r in metrics if r.get("epoch", -1) <= last_ckpt][-patience:]
        if len(tail) == patience and all(r.get("test_acc", 0.0) >= acc for r in tail):
            finished = stopped_early = True
    notes: list[str] = []
    if not finished:
        if epochs_cfg is not None:
            notes.append(f"last checkpoint at epoch {last_ckpt} of {epochs_cfg}")
        else:
            notes.append(f"last checkpoint at epoch {last_ckpt}; config has no epoch count")
        if last_logged is not None and last_logged > last_ckpt:
            notes.append(f"metrics already reach epoch {last_logged}")
        if resume is not None and resume > last_ckpt:
            notes.append(f"{RESUME_FILE} (epoch {resume}) is newer than the last checkpoint")
    return RunStatus(
        epochs_configured=epochs_cfg,
        last_checkpoint_epoch=last_ckpt,
        last_logged_epoch=last_logged,
        resume_epoch=resume,
        finished=finished,
        stopped_early=stopped_early,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# The run, gathered once for every section
# ---------------------------------------------------------------------------------------------


def _freqs_text(freqs: list[int], limit: int = 12) -> str:
    """A frequency list for the summary; long lists (a rule that picks everything) shortened."""
    if len(freqs) <= limit:
        return str(list(freqs))
    return f"{len(freqs)} frequencies [{', '.join(map(str, freqs[:6]))}, …]"


def _display_path(path: Path) -> str:
    """``path`` as the report shows it: as given when relative, relative to the working
    directory when inside it, else only its name (never an absolute path of someone's disk)."""
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(Path.cwd()).as_posix() or "."
    except ValueError:
        return path.name or "."


@dataclass
class _Measures:
    """The progress measures of a run and their ``phases.json`` record (stored or computed)."""

    table: Any  # ProgressMeasures
    record: dict[str, Any]  # phases.json, or phases_record() of the table
    source: str


def _load_or_compute_measures(run_dir: Path, run: Any, *, device: str, progress: bool) -> _Measures:
    """``measures.csv`` + ``phases.json`` written by ``tl-grokking analyze`` when present and
    covering the run's checkpoints, otherwise computed here (in memory: the report writes no
    analysis file)."""
    from tl_grokking.analysis.progress import (
        MEASURES_FILE,
        PHASES_FILE,
        progress_measures,
        read_measures_csv,
    )

    csv_path, phases_path = run_dir / MEASURES_FILE, run_dir / PHASES_FILE
    table, stale = None, False
    # A directory or a FIFO where a file should be is an error (read_json says what it is),
    # not a missing file.
    stored = read_json(phases_path) if path_kind(phases_path) is not None else None
    if stored is not None:
        stored = check_phases_record(stored, phases_path)
    recorded = stored.get("fingerprint") if stored is not None else None
    if path_kind(csv_path) is not None:
        table = read_measures_csv(csv_path)
        source = f"{MEASURES_FILE} (from tl-grokking analyze)"
        if table.epochs != list(run.epochs) or (
            recorded is not None and recorded != run_fingerprint(run_dir)
        ):  # analysed before the run went on, or another run's: recompute
            table, stale = None, True
    if table is None:
        table = progress_measures(run, device=device, progress=progress)
        source = "computed for this report" + (
            f" ({MEASURES_FILE} is out of date: it was not computed from the run's checkpoints)"
            if stale
            else " (tl-grokking analyze stores them)"
        )
    if stored is not None and not stale:
        return _Measures(table, stored, source)
    return _Measures(table, phases_record(table)[1], source)


@dataclass
class _Run:
    """Everything the section builders read, loaded once: the run, its last model, the
    metrics log, the key frequencies and clusters of the last checkpoint, and the progress
    measures with their phases."""

    run_dir: Path
    config: dict[str, Any]
    status: RunStatus
    run: Any  # LoadedRun
    model: Any  # HookedTransformer, eval mode
    metrics: list[dict[str, Any]]
    keys: Any  # KeyFrequencies of the last checkpoint, None if token Fourier does not apply
    measures: _Measures
    examples: list[tuple[int, int]] | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> Any:
        return self.run.task

    @property
    def epoch(self) -> int:
        """The epoch of the model every figure of the weights shows (the last checkpoint)."""
        return self.run.final_epoch

    @property
    def meaningful(self) -> frozenset[str]:
        return self.task.meaningful_analyses

    @property
    def clusters(self) -> Any:
        return self.keys.clusters if self.keys is not None else None

    @property
    def key_freqs(self) -> list[int]:
        """The key frequencies of the circuit rule (``key_frequencies``' default), used below."""
        return list(self.keys.keys) if self.keys is not None else []

    @property
    def spans(self) -> list[tuple[str, float, float]]:
        from tl_grokking.figures.plots import phase_spans

        return phase_spans(self.measures.record)

    def trig(self) -> Any:
        """The trig-identity fit of the logits, when it applies (addition, key frequencies)."""
        if "trig" not in self._cache:
            from tl_grokking.analysis.logits import trig_logit_decomposition

            applies = "sum_directions" in self.meaningful and self.key_freqs
            self._cache["trig"] = (
                trig_logit_decomposition(self.model, self.task, self.key_freqs) if applies else None
            )
        return self._cache["trig"]

    @classmethod
    def load(
        cls,
        run_dir: Path,
        *,
        device: str,
        progress: bool,
        examples: list[tuple[int, int]] | None,
    ) -> _Run:
        """Load ``run_dir`` (``RunDirError`` first if it is not a run directory)."""
        from tl_grokking.analysis.circuits import key_frequencies
        from tl_grokking.runs.checkpoints import load_run

        status = run_status(run_dir)  # RunDirError before any work
        run = load_run(run_dir)
        model = run.model(run.final_epoch, device=device)
        model.eval()
        meaningful = run.task.meaningful_analyses
        keys = (
            key_frequencies(model, run.task, rule="all") if "token_fourier" in meaningful else None
        )
        return cls(
            run_dir=run_dir,
            config=read_json(run_dir / CONFIG_FILE),
            status=status,
            run=run,
            model=model,
            metrics=[r for r in read_metrics(run_dir) if "epoch" in r],
            keys=keys,
            measures=_load_or_compute_measures(run_dir, run, device=device, progress=progress),
            examples=examples,
        )


# ---------------------------------------------------------------------------------------------
# Sections: one builder each, in page order. ``None``: the section does not apply to the run's
# task (its docstring says when); a section that applies but cannot be drawn is a visible note.
# ---------------------------------------------------------------------------------------------


def _loss_section(r: _Run) -> ReportSection:
    """Train and test loss per logged epoch, phases shaded (every run)."""
    from tl_grokking.figures import plots

    figure = plots.loss_curves(r.metrics, phases=r.spans)
    return ReportSection("Loss curves", caption("loss"), figure, anchor="loss-curves")


def _progress_section(r: _Run) -> ReportSection:
    """The progress measures at every checkpoint, phases shaded (every run)."""
    from tl_grokking.figures import plots

    table = r.measures.table
    rule = r.measures.record.get("key_freq_rule", table.key_freq_rule)
    text = caption("measures", _freqs_text(table.key_freqs), str(rule), r.measures.source)
    figure = plots.progress_measures_panel(table, phases=r.spans)
    return ReportSection("Progress measures", text, figure, anchor="progress-measures")


def _fourier_skipped_section(r: _Run) -> ReportSection | None:
    """The note standing in for the five token-order Fourier sections (``None`` when the token
    Fourier analysis applies to the task)."""
    if "token_fourier" in r.meaningful:
        return None
    return _skipped_section(
        "Fourier structure of the weights and neurons",
        r.task,
        "token_fourier",
        "the Fourier analysis of W_E, W_L and the neurons (key frequencies, clusters)",
    )


def _embedding_section(r: _Run) -> ReportSection | None:
    """W_E in the Fourier basis (``None`` unless the token Fourier analysis applies)."""
    from tl_grokking.figures import plots

    if r.clusters is None:
        return None
    figure = plots.embedding_fourier_norms(r.model, r.task, key_freqs=r.key_freqs)
    return ReportSection(
        "Embedding W_E in the Fourier basis", caption("embed"), figure, anchor="embedding"
    )


def _unembedding_section(r: _Run) -> ReportSection | None:
    """W_L in the Fourier basis of the output (``None`` unless token Fourier applies)."""
    from tl_grokking.figures import plots

    if r.clusters is None:
        return None
    figure = plots.unembed_fourier_heatmap(r.model, r.task, clusters=r.clusters)
    return ReportSection(
        "Neuron-logit map W_L in the Fourier basis",
        caption("unembed"),
        figure,
        anchor="unembedding",
    )


def _clusters_section(r: _Run) -> ReportSection | None:
    """Neurons per frequency cluster (``None`` unless token Fourier applies)."""
    from tl_grokking.figures import plots

    if r.clusters is None:
        return None
    figure = plots.neuron_cluster_sizes(r.clusters)
    return ReportSection("Neuron clusters", caption("clusters"), figure)


def _fve_section(r: _Run) -> ReportSection | None:
    """Each neuron's best-frequency FVE (``None`` unless token Fourier applies)."""
    from tl_grokking.figures import plots

    if r.clusters is None:
        return None
    figure = plots.fve_histogram(r.clusters)
    return ReportSection("Fraction of variance explained", caption("fve"), figure)


def _neurons_section(r: _Run) -> ReportSection | None:
    """(a, b)-grid activations of the top neurons per cluster (``None`` unless token Fourier
    applies)."""
    from tl_grokking.figures import plots

    if r.clusters is None:
        return None
    figure = plots.neuron_activation_grids(r.model, r.task, r.clusters)
    return ReportSection("Neuron activations", caption("neurons"), figure)


def _discrete_log(r: _Run) -> ReportSection | None:
    """Key frequencies in discrete-log order (``None`` unless the task has a group Fourier
    structure but no token-order one: × and ÷)."""
    if "group_fourier" in r.meaningful and "token_fourier" not in r.meaningful:
        return _discrete_log_section(r.model, r.task)
    return None


def _attention_section(r: _Run) -> ReportSection:
    """Attention from ``=`` to a and to b over the grid (a note when the task is not defined
    on every pair)."""
    from tl_grokking.figures import plots

    title = "Attention to a and b"
    if not r.task.is_full_grid:
        return _note_section(
            title,
            f"The attention-to-operands grid needs every pair (a, b); task {r.task.name!r} "
            f"is defined on {r.task.pairs().shape[0]} of the {r.task.p**2} pairs, so it is "
            "skipped (the example patterns below still apply).",
        )
    return ReportSection(title, caption("attention"), plots.attention_to_operands(r.model, r.task))


def _attention_examples_section(r: _Run) -> ReportSection:
    """circuitsvis views of a few inputs (every run)."""
    return _circuitsvis_section(r.model, r.task, r.examples)


def _trig_section(r: _Run) -> ReportSection | None:
    """The α_k of the trig-identity fit (a note when the task has no a + b sum directions;
    ``None`` without key frequencies: :func:`_no_circuit_section` says so)."""
    from tl_grokking.figures import plots

    title = "Trig-identity logits"
    if "sum_directions" not in r.meaningful:
        return _skipped_section(
            title, r.task, "sum_directions", "the trig logit decomposition cos(w_k(a + b − c))"
        )
    if r.trig() is None:
        return None
    return ReportSection(title, caption("alpha"), plots.trig_identity_coefficients(r.trig()))


def _ablation_section(r: _Run) -> ReportSection | None:
    """The ablation table (a note without neuron clusters; ``None`` without key frequencies:
    :func:`_no_circuit_section` says so)."""
    from tl_grokking.analysis.ablations import ablation_table
    from tl_grokking.figures import plots

    if r.clusters is None:
        return _skipped_section(
            "Ablations", r.task, "token_fourier", "the ablation table (neuron clusters)"
        )
    if not r.key_freqs:
        return None
    table = ablation_table(
        r.model,
        r.task,
        key_freqs=r.key_freqs,
        train_indices=r.run.train_indices,
        clusters=r.clusters,
    )
    return ReportSection(
        "Ablations",
        caption("ablation"),
        plots.ablation_table_figure(table),
        skipped=tuple(table.notes),
    )


def _no_circuit_section(r: _Run) -> ReportSection | None:
    """The note of a model with neuron clusters computed but none found (``None`` otherwise)."""
    if r.clusters is None or r.key_freqs:
        return None
    return ReportSection(
        "Trig-identity logits and ablations",
        kind="note",
        body_html="<p>No key frequency found (no neuron cluster): the model has not formed the "
        "Fourier circuit, so the trig-identity fit and the ablations are skipped.</p>",
    )


#: The section builders, in page order.
_SECTIONS: tuple[Callable[[_Run], ReportSection | None], ...] = (
    _loss_section,
    _progress_section,
    _fourier_skipped_section,
    _embedding_section,
    _unembedding_section,
    _clusters_section,
    _fve_section,
    _neurons_section,
    _discrete_log,
    _attention_section,
    _attention_examples_section,
    _trig_section,
    _ablation_section,
    _no_circuit_section,
)


def _note_section(title: str, text: str) -> ReportSection:
    """A visible note in place of a section (``kind="note"``); ``text`` is plain text."""
    return ReportSection(title, kind="note", skipped=(text,))


def _skipped_section(title: str, task: Any, capability: str, analysis: str) -> ReportSection:
    """The note for an analysis that is not meaningful for ``task``: the message of
    :meth:`~tl_grokking.data.tasks.Task.require` (which task, which analysis, what instead)."""
    try:
        task.require(capability, analysis)
    except ValueError as err:
        return _note_section(title, str(err))
    raise AssertionError(f"{analysis} is meaningful for task {task.name!r}; nothing to skip")


def _discrete_log_section(model: Any, task: Any) -> ReportSection:
    """Key frequencies of a × / ÷ model in its group coordinates, the discrete-log order of
    :mod:`tl_grokking.data.discrete_log`: the Fourier norms of W_E and W_L per frequency of
    Z_{p-1} and the key frequencies by rule (:func:`~tl_grokking.analysis.circuits.key_frequencies`
    with its default ``reindex=None``)."""
    from tl_grokking.analysis.circuits import key_frequencies

    keys = key_frequencies(model, task)  # the task's group coordinates: Z_{p-1}, discrete-log
    n = keys.n
    figure = go.Figure()
    for rule, name in (("embed", "W_E"), ("unembed", "W_L")):
        per_freq = keys.evidence[rule]
        figure.add_bar(
            x=[str(k) for k in range(1, n // 2 + 1)],
            y=(per_freq / per_freq.max()).tolist(),
            name=name,
        )
    figure.update_layout(
        title="Fourier norms per frequency in discrete-log order (relative to the largest)",
        xaxis_title=f"frequency k of Z_{n}",
        yaxis_title="norm / max",
        barmode="group",
        height=380,
    )
    found = "; ".join(f"{rule}: {_freqs_text(v)}" for rule, v in keys.by_rule.items())
    caption = (
        f"Task {html.escape(task.name)!r} is a · b^(±1) in Z_p^*, cyclic of order {n}: writing "
        "each non-zero token as a power of a primitive root g turns it into i ± j in "
        f"Z_{n}, and the paper's Fourier analysis applies in that order "
        "(tl_grokking.data.discrete_log). Token 0 is left out. Key frequencies by rule: "
        f"{html.escape(found)}."
    )
    return ReportSection(
        "Key frequencies in discrete-log order", caption, figure, anchor="discrete-log"
    )


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def _phase_summary(spans: list[tuple[str, float, float]]) -> str:
    if not spans:
        return "not detected"
    names = {"memorization": "memorisation", "circuit_formation": "circuit formation"}
    return "; ".join(
        f"{names.get(n, n.replace('_', ' '))} {fmt_num(s)}–{fmt_num(e)}" for n, s, e in spans
    )


def _summary_rows(r: _Run) -> list[tuple[str, str]]:
    """The summary table: ``(label, value)``, values plain text or :class:`Markup`."""
    config, cfg, task = r.config, r.run.model_config, r.task
    last = r.metrics[-1] if r.metrics else {}
    record = r.measures.record
    if record.get("phases", []) is None:
        phases = f"phases not detected: {record.get('reason') or 'no reason recorded'}"
    else:
        phases = _phase_summary(r.spans)
    rows = [
        ("run directory", _display_path(r.run_dir)),
        ("task", f"(a {task.symbol} b) mod {task.p}  [{task.name}]"),
        ("train split", r.run.split_line().removeprefix("train split: ")),
        (
            "optimiser",
            f"AdamW lr {fmt_num(config.get('lr'))}, "
            f"weight decay {fmt_num(config.get('weight_decay'))}",
        ),
        (
            "model",
            f"d_model {cfg.d_model}, {cfg.n_heads} heads × {cfg.d_head}, d_mlp {cfg.d_mlp}, "
            f"{cfg.act_fn}",
        ),
        (
            "epochs",
            f"{fmt_num(r.status.last_logged_epoch)} logged of "
            f"{fmt_num(r.status.epochs_configured)} configured; {len(r.run.epochs)} "
            f"checkpoints; figures of the model use epoch {r.epoch}",
        ),
        (GROK_LABEL, grok_summary(r.metrics, config.get("log_every"))),
        (
            f"final losses (epoch {fmt_num(last.get('epoch'))})",
            f"train {fmt_num(last.get('train_loss'))}, test {fmt_num(last.get('test_loss'))}; "
            f"accuracy train {fmt_num(last.get('train_acc'))}, "
            f"test {fmt_num(last.get('test_acc'))}",
        ),
    ]
    rows += [(label, Markup(value)) for label, value in _key_frequency_summary(r.keys, r.task)]
    rows.append(("phase boundaries (epochs)", phases))
    trig = r.trig()
    if trig is not None:
        rows.append(
            (
                "trig-identity fit",
                f"explains {100 * trig.fve:.1f} % of logit variance; loss "
                f"{fmt_num(trig.loss)} → {fmt_num(trig.approx_loss)} with the approximation",
            )
        )
    return rows


def _key_frequency_summary(keys: Any, task: Any) -> list[tuple[str, str]]:
    """Summary rows on the key frequencies and neuron clusters (or why there are none)."""
    if keys is None:
        try:
            task.require("token_fourier", "token-order key frequencies")
        except ValueError as err:
            return [("key frequencies", "not computed: " + html.escape(str(err)))]
        return [("key frequencies", "not computed")]
    clusters = keys.clusters
    rule_rows = ", ".join(f"{html.escape(r)}: {_freqs_text(v)}" for r, v in keys.by_rule.items())
    key_freqs = list(keys.keys)
    return [
        (
            "key frequencies",
            (f"<b>{key_freqs}</b>" if key_freqs else "<b>none</b>: no neuron cluster yet")
            + f" (by rule: {rule_rows}; rules "
            f"{'agree' if keys.agree else 'disagree'})",
        ),
        *(
            [("contested frequencies", html.escape(keys.contested_summary()))]
            if keys.contested
            else []
        ),
        (
            "neuron clusters",
            html.escape(
                f"{sum(clusters.sizes.values())} of {clusters.freq.shape[0]} neurons clustered "
                f"(FVE ≥ {clusters.threshold:g}); sizes {clusters.sizes}"
            ),
        ),
    ]


def _circuitsvis_section(
    model: Any, task: Any, examples: list[tuple[int, int]] | None
) -> ReportSection:
    """circuitsvis ``AttentionHeads`` views of a few inputs; plain HTML tables of the same
    patterns if the installed circuitsvis ships no browser bundle to inline."""
    from tl_grokking.figures.plots import attention_examples

    head_names = [f"head {h}" for h in range(model.cfg.n_heads)]
    patterns = attention_examples(model, task, examples)
    try:
        circuitsvis_bundle()
    except FileNotFoundError as err:
        body = [f"<p>{html.escape(str(err))}; the patterns are shown as tables.</p>"]
        body += [_attention_tables(tokens, pattern, head_names) for tokens, pattern in patterns]
        return ReportSection(
            "Attention patterns of example inputs",
            body_html="\n".join(body),
            kind="note",
            anchor="attention-examples",
        )
    body = []
    for i, (tokens, pattern) in enumerate(patterns):
        body.append(f'<div class="cv-example"><h3>input {html.escape(" ".join(tokens))}</h3>')
        body.append(
            circuitsvis_element(
                "AttentionHeads",
                {
                    "attention": pattern,
                    "tokens": tokens,
                    "attentionHeadNames": head_names,
                    "maskUpperTri": True,
                },
                f"circuitsvis-{i}",
            )
        )
        body.append("</div>")
    return ReportSection(
        "Attention patterns of example inputs",
        caption("circuitsvis"),
        body_html="\n".join(body),
        kind="circuitsvis",
        anchor="attention-examples",
    )


def _attention_tables(tokens: list[str], pattern: Any, head_names: list[str]) -> str:
    """One small shaded table per head: rows are destination tokens, columns sources."""
    out = [f'<div class="cv-example"><h3>input {html.escape(" ".join(tokens))}</h3>']
    for name, head in zip(head_names, pattern.tolist(), strict=True):
        head_row = "".join(f"<th>{html.escape(t)}</th>" for t in tokens)
        rows = "".join(
            f"<tr><th>{html.escape(dest)}</th>"
            + "".join(
                f'<td style="background: rgba(31, 119, 180, {w:.3f})">{w:.2f}</td>' for w in row
            )
            + "</tr>"
            for dest, row in zip(tokens, head, strict=True)
        )
        out.append(
            f'<table class="summary" style="display:inline-table; margin-right:18px">'
            f"<caption>{html.escape(name)}</caption><tr><th></th>{head_row}</tr>{rows}</table>"
        )
    out.append("</div>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def build_report(
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    progress: bool = False,
    examples: list[tuple[int, int]] | None = None,
) -> str:
    """The HTML of the report of ``run_dir`` (nothing is written; see :func:`write_report`).

    Raises :class:`~tl_grokking.runs.rundir.RunDirError` if ``run_dir`` is not a run
    directory or has no checkpoint.  The model analysed is the last checkpoint.  ``examples``
    are the (a, b) inputs of the circuitsvis attention view.
    """
    run_dir = Path(run_dir)
    r = _Run.load(run_dir, device=device, progress=progress, examples=examples)
    sections = [s for build in _SECTIONS if (s := build(r)) is not None]
    name = run_dir.name or Path.cwd().name
    return render_report_html(
        f"Grokking report — {name}",
        sections,
        subtitle=f"(a {r.task.symbol} b) mod {r.task.p} — the analysis of Nanda et al. (2023), "
        "'Progress measures for grokking via mechanistic interpretability'",
        banner=("done" if r.status.finished else "running", r.status.message),
        caveats=analysis_notes(r.measures.record),
        summary=_summary_rows(r),
        config=r.config,
    )


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    progress: bool = False,
    examples: list[tuple[int, int]] | None = None,
) -> Path:
    """Build the report of ``run_dir`` and write it atomically to ``out`` (default
    ``RUN_DIR/report.html``), readable like any file the user creates; returns the path.
    On any error nothing is written."""
    page = build_report(run_dir, device=device, progress=progress, examples=examples)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    atomic_write_text(path, page)
    return path
