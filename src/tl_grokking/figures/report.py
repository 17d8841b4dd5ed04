"""The self-contained HTML report of a training run (``tl-grokking report RUN_DIR``).

One file, ``RUN_DIR/report.html``, that opens with no network: plotly.js is inlined once in the
page head, every figure of :mod:`tl_grokking.figures.plots` is a ``<div>`` drawing from that one copy,
and the circuitsvis attention view uses the JavaScript bundle shipped inside the circuitsvis
Python package (``circuitsvis/dist/cdn/iife.js``), inlined once, instead of the CDN import that
``circuitsvis``' own HTML uses outside a notebook.

Contents: the run's status (finished / still training, and why), summary numbers (epoch at
99 % test accuracy, final losses, key frequencies by each rule, phase boundaries), the run's
configuration, and the figures.  Progress measures come from ``measures.csv`` /
``phases.json`` when ``tl-grokking analyze`` wrote them, and are computed otherwise.

The page is built in memory and written atomically: on bad input (not a run directory, no
checkpoints) a :class:`~tl_grokking.runs.rundir.RunDirError` is raised and nothing is written.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from tl_grokking._version import __version__
from tl_grokking.analysis.progress import MEASURES_FILE, PHASES_FILE
from tl_grokking.runs.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    RESUME_FILE,
    RunDirError,
    atomic_write_text,
    is_run_dir,
    list_checkpoints,
    read_json,
    read_metrics,
)

__all__ = [
    "REPORT_FILE",
    "RunStatus",
    "run_status",
    "check_run_dir",
    "build_report",
    "write_report",
    "external_urls",
]

REPORT_FILE = "report.html"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222;
       background: #fafafa; }
header { background: #203a5c; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 1.5em; }
header p { margin: 0; opacity: 0.85; }
main { max-width: 1280px; margin: 0 auto; padding: 12px 32px 48px 32px; }
nav ol { columns: 2; font-size: 0.92em; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 10px 18px;
          margin: 18px 0; }
section h2 { font-size: 1.15em; margin: 6px 0; }
p.caption { color: #444; font-size: 0.92em; margin: 4px 0 8px 0; max-width: 980px; }
table.summary { border-collapse: collapse; font-size: 0.93em; }
table.summary th { text-align: left; padding: 3px 18px 3px 0; color: #555; font-weight: 600;
                   vertical-align: top; white-space: nowrap; }
table.summary td { padding: 3px 0; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 14px 0; font-weight: 600; }
.banner.done { background: #e6f4ea; border: 1px solid #9ed3ab; }
.banner.running { background: #fff4e0; border: 1px solid #f0c36d; }
.banner.missing { background: #fdecea; border: 1px solid #f1a9a0; }
pre.config { background: #f4f4f4; padding: 8px; font-size: 0.85em; overflow-x: auto; }
.cv-example h3 { font-size: 0.95em; margin: 8px 0 0 0; }
footer { color: #777; font-size: 0.85em; margin-top: 24px; }
"""


@dataclass
class ReportSection:
    """One block of the report: a heading, a caption and its body.

    ``figure`` is a plotly figure, ``body_html`` any other HTML (tables, circuitsvis views,
    notes); both may be given.  ``anchor`` is the section's id (default: from the title).
    A section of ``kind="circuitsvis"`` makes the page inline the circuitsvis bundle.
    """

    title: str
    caption: str = ""
    figure: go.Figure | None = None
    body_html: str = ""
    anchor: str = ""
    kind: str = "figure"  # "figure", "note", or "circuitsvis" (the page then inlines its JS)

    def __post_init__(self) -> None:
        if not self.anchor:
            self.anchor = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A plotly figure as a ``<div>`` + ``<script>`` that draws from the page's plotly.js."""
    height = fig.layout.height or 450
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
        f'<div id="{element_id}" class="circuitsvis"></div>\n'
        f"<script>CircuitsVis.render({json.dumps(element_id)}, CircuitsVis.{component}, "
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


def _summary_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


def render_report_html(
    title: str,
    sections: list[ReportSection],
    *,
    subtitle: str = "",
    banner: tuple[str, str] | None = None,
    summary: list[tuple[str, str]] | None = None,
    config: dict[str, Any] | None = None,
) -> str:
    """Assemble a self-contained HTML page: plotly.js once in the head, each figure section a
    ``<div class="plotly-graph-div">``, the circuitsvis bundle inlined once if any section
    uses it.  ``banner`` is ``(kind, text)`` with kind ``done``/``running``/``missing``;
    ``summary`` rows are ``(label, html)``.
    """
    uses_cv = any(s.kind == "circuitsvis" for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_plotly_js()}</script>",
    ]
    if uses_cv:
        parts.append(f"<script>{circuitsvis_bundle()}</script>")
    parts += ["</head><body>", f"<header><h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f"<p>{html.escape(subtitle)}</p>")
    parts.append("</header><main>")
    if banner is not None:
        kind, text = banner
        parts.append(f'<div class="banner {kind}" id="status">{text}</div>')
    if summary:
        parts.append('<section id="summary"><h2>Summary</h2>' + _summary_table(summary))
        if config is not None:
            cfg = html.escape(json.dumps(config, indent=2, sort_keys=True))
            parts.append(
                "<details><summary>run configuration</summary>"
                f'<pre class="config">{cfg}</pre></details>'
            )
        parts.append("</section>")
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    parts.append(f"<nav><h2>Contents</h2><ol>{toc}</ol></nav>")
    for i, sec in enumerate(sections):
        parts.append(f'<section id="{sec.anchor}" class="report-{sec.kind}">')
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.caption:
            parts.append(f'<p class="caption">{sec.caption}</p>')
        if sec.figure is not None:
            parts.append(figure_html(sec.figure, f"fig-{i}-{sec.anchor}"))
        if sec.body_html:
            parts.append(sec.body_html)
        parts.append("</section>")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(
        f"<footer>Generated by tl-grokking {html.escape(__version__)} on {stamp}. "
        "Self-contained: opens without a network connection.</footer>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts)


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


def _resume_epoch(run_dir: Path) -> int | None:
    from safetensors import safe_open

    path = run_dir / RESUME_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return int(meta["epoch"])
    except Exception:  # unreadable (e.g. being replaced right now): epoch unknown
        return None


def check_run_dir(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Raise :class:`~tl_grokking.runs.rundir.RunDirError` unless ``run_dir`` is a run directory with
    at least one checkpoint; return its checkpoints."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; expected a run directory")
    if not is_run_dir(run_dir):
        raise RunDirError(
            f"{run_dir} is not a run directory: no {CONFIG_FILE} "
            f"(expected {CONFIG_FILE}, {METRICS_FILE}, {CHECKPOINT_DIR}/epoch_<N>.safetensors)"
        )
    found = list_checkpoints(run_dir)
    if not found:
        raise RunDirError(
            f"{run_dir} has no checkpoints ({CHECKPOINT_DIR}/epoch_<N>.safetensors); "
            "nothing to report yet"
        )
    return found


def run_status(run_dir: str | os.PathLike) -> RunStatus:
    """The :class:`RunStatus` of a run directory (``RunDirError`` if it is not one)."""
    run_dir = Path(run_dir)
    found = check_run_dir(run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    if not isinstance(config, dict):
        raise RunDirError(f"{run_dir / CONFIG_FILE} must hold a JSON object")
    metrics = read_metrics(run_dir)
    epochs_cfg = config.get("epochs")
    epochs_cfg = int(epochs_cfg) if isinstance(epochs_cfg, int | float) else None
    last_ckpt = found[-1][0]
    logged = [int(r["epoch"]) for r in metrics if "epoch" in r]
    last_logged = max(logged) if logged else None
    resume = _resume_epoch(run_dir)

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
# Building the report of a run
# ---------------------------------------------------------------------------------------------

_CAPTIONS = {
    "loss": (
        "Cross-entropy on the training pairs and on the held-out pairs, log scale. Grokking: "
        "train loss collapses early (memorisation) while test loss stays high, then test loss "
        "falls late. Shaded: the phases memorisation, circuit formation and cleanup."
    ),
    "measures": (
        "The paper's progress measures at every checkpoint. <b>Restricted loss</b> keeps only "
        "the key-frequency components cos/sin(w_k(a+b)) of the logits (plus their mean); it "
        "falls during circuit formation, long before test loss. <b>Excluded loss</b> removes "
        "them and is measured on the training pairs; it rises as the memorising solution is "
        "replaced. The Gini coefficients of the Fourier norms of W_E and W_L rise when the "
        "weights become sparse in frequency (cleanup); the total sum of squared weights falls "
        "throughout, driven by weight decay."
    ),
    "embed": (
        "Norm of each component of the embedding W_E (number tokens only) in the cos-first "
        "Fourier basis. A grokked model embeds each token through a handful of key "
        "frequencies: cos(w_k a) and sin(w_k a) for k in the key set."
    ),
    "unembed": (
        "W_L = W_out W_U maps MLP neurons to the p logits. In the Fourier basis of the output "
        "class c it is non-zero only at the key frequencies: the model reads cos(w_k c) and "
        "sin(w_k c). Neurons are grouped by their cluster frequency."
    ),
    "clusters": (
        "Each neuron's final-position activation over all p² inputs, centred and transformed "
        "with the 2-D Fourier basis, is mostly in the 3×3 block {const, cos k, sin k}² of one "
        "frequency k. Neurons whose best frequency explains at least the threshold fraction of "
        "their variance form that frequency's cluster."
    ),
    "fve": (
        "Distribution of the fraction of variance explained by each neuron's best frequency. "
        "A grokked model has most neurons near 1."
    ),
    "neurons": (
        "Final-position MLP activations over the (a, b) grid for the neurons with the largest "
        "activation variance in each cluster: periodic patterns of frequency k in a, b and "
        "a + b."
    ),
    "attention": (
        "Attention weight from the '=' position to the a token and to the b token for every "
        "input, per head (the rest goes to '=' itself). Heads attend to a and b with weights "
        "that vary periodically with a and b, which lets the MLP form products of cos/sin terms."
    ),
    "circuitsvis": (
        "Full attention patterns of a few inputs (circuitsvis; hover a head to enlarge it)."
    ),
    "alpha": (
        "Fitting the logits with the trig identity logit(a, b, c) ≈ Σ_k α_k cos(w_k(a + b − c)) "
        "over the key frequencies: each key frequency contributes a cosine 'vote' that peaks at "
        "c = a + b mod p."
    ),
    "ablation": (
        "Loss of the model under the paper's ablations: keeping only the key-frequency "
        "components, removing them, replacing neurons by their frequency block, zeroing the "
        "attention. Computed on all p² inputs unless the row says otherwise."
    ),
}


def _fmt_num(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.3e}"
        return f"{x:.4g}"
    return html.escape(str(x))


def _first_epoch_at(metrics: list[dict[str, Any]], key: str, level: float) -> int | None:
    return next(
        (int(r["epoch"]) for r in metrics if r.get(key) is not None and r[key] >= level), None
    )


def _freqs_text(freqs: list[int], limit: int = 12) -> str:
    """A frequency list for the summary; long lists (a rule that picks everything) shortened."""
    if len(freqs) <= limit:
        return str(list(freqs))
    return f"{len(freqs)} frequencies [{', '.join(map(str, freqs[:6]))}, …]"


@dataclass
class _Measures:
    table: Any  # ProgressMeasures
    phases: Any | None  # phases.json content or a Phases
    source: str
    phase_note: str = ""


def _load_or_compute_measures(run_dir: Path, run: Any, *, device: str, progress: bool) -> _Measures:
    """``measures.csv`` + ``phases.json`` written by ``tl-grokking analyze`` when present,
    otherwise computed here (in memory: the report writes no analysis file)."""
    from tl_grokking.analysis.phases import detect_phases
    from tl_grokking.analysis.progress import progress_measures, read_measures_csv

    csv_path, phases_path = run_dir / MEASURES_FILE, run_dir / PHASES_FILE
    table, stale = None, False
    if csv_path.is_file():
        table = read_measures_csv(csv_path)
        source = f"{MEASURES_FILE} (from tl-grokking analyze)"
        if table.epochs != list(run.epochs):  # analysed before the run went on: recompute
            table, stale = None, True
    if table is None:
        table = progress_measures(run, device=device, progress=progress)
        source = "computed for this report" + (
            f" ({MEASURES_FILE} is out of date: it does not cover the run's checkpoints)"
            if stale
            else " (tl-grokking analyze stores them)"
        )
    if phases_path.is_file() and not stale:
        stored = read_json(phases_path)
        if isinstance(stored, dict) and stored.get("phases", []) is None:
            why = stored.get("reason", "phases.json holds none")
            return _Measures(table, None, source, phase_note=f"phases not detected: {why}")
        return _Measures(table, stored, source)
    try:
        return _Measures(table, detect_phases(table), source)
    except ValueError as err:  # too few checkpoints, no split, ...
        return _Measures(table, None, source, phase_note=f"phases not detected: {err}")


def _phase_summary(spans: list[tuple[str, float, float]]) -> str:
    if not spans:
        return "not detected"
    names = {"memorization": "memorisation", "circuit_formation": "circuit formation"}
    return "; ".join(f"{names.get(n, n.replace('_', ' '))} {s:g}–{e:g}" for n, s, e in spans)


def build_report(
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    progress: bool = False,
    examples: list[tuple[int, int]] | None = None,
) -> str:
    """The HTML of the report of ``run_dir`` (nothing is written; see :func:`write_report`).

    Raises :class:`~tl_grokking.runs.rundir.RunDirError` if ``run_dir`` is not a run directory or has
    no checkpoint.  The model analysed is the last checkpoint.  ``examples`` are the (a, b)
    inputs of the circuitsvis attention view.
    """
    from tl_grokking.analysis.ablations import ablation_table
    from tl_grokking.analysis.circuits import key_frequencies
    from tl_grokking.analysis.logits import trig_logit_decomposition
    from tl_grokking.figures import plots
    from tl_grokking.runs.checkpoints import load_run

    run_dir = Path(run_dir)
    status = run_status(run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    run = load_run(run_dir)
    task = run.task
    epoch = run.final_epoch
    model = run.model(epoch, device=device)
    model.eval()
    metrics = [r for r in read_metrics(run_dir) if "epoch" in r]

    meaningful = task.meaningful_analyses
    keys = key_frequencies(model, task, rule="all") if "token_fourier" in meaningful else None
    clusters = keys.clusters if keys is not None else None
    measures = _load_or_compute_measures(run_dir, run, device=device, progress=progress)
    spans = plots.phase_spans(measures.phases)
    key_freqs = list(keys.keys) if keys is not None else []  # the cluster rule (the paper's)

    sections: list[ReportSection] = [
        ReportSection(
            "Loss curves",
            _CAPTIONS["loss"],
            plots.loss_curves(metrics, phases=spans),
            anchor="loss-curves",
        ),
        ReportSection(
            "Progress measures",
            _CAPTIONS["measures"]
            + f" Key frequencies used: {html.escape(_freqs_text(measures.table.key_freqs))}"
            f" (rule: {html.escape(str(measures.table.key_freq_rule))}); "
            f"source: {html.escape(measures.source)}.",
            plots.progress_measures_panel(measures.table, phases=spans),
            anchor="progress-measures",
        ),
    ]
    if clusters is not None:
        sections += [
            ReportSection(
                "Embedding W_E in the Fourier basis",
                _CAPTIONS["embed"],
                plots.embedding_fourier_norms(model, task, key_freqs=key_freqs),
                anchor="embedding",
            ),
            ReportSection(
                "Neuron-logit map W_L in the Fourier basis",
                _CAPTIONS["unembed"],
                plots.unembed_fourier_heatmap(model, task, clusters=clusters),
                anchor="unembedding",
            ),
            ReportSection(
                "Neuron clusters", _CAPTIONS["clusters"], plots.neuron_cluster_sizes(clusters)
            ),
            ReportSection(
                "Fraction of variance explained", _CAPTIONS["fve"], plots.fve_histogram(clusters)
            ),
            ReportSection(
                "Neuron activations",
                _CAPTIONS["neurons"],
                plots.neuron_activation_grids(model, task, clusters),
            ),
        ]
    else:
        sections.append(
            _skipped_section(
                "Fourier structure of the weights and neurons",
                task,
                "token_fourier",
                "the Fourier analysis of W_E, W_L and the neurons (key frequencies, clusters)",
            )
        )
    if "group_fourier" in meaningful and "token_fourier" not in meaningful:
        sections.append(_discrete_log_section(model, task))
    if task.is_full_grid:
        sections.append(
            ReportSection(
                "Attention to a and b",
                _CAPTIONS["attention"],
                plots.attention_to_operands(model, task),
            )
        )
    else:
        sections.append(
            _note_section(
                "Attention to a and b",
                f"The attention-to-operands grid needs every pair (a, b); task {task.name!r} "
                f"is defined on {task.pairs().shape[0]} of the {task.p**2} pairs, so it is "
                "skipped (the example patterns below still apply).",
            )
        )
    sections.append(_circuitsvis_section(model, task, examples))
    decomposition = None
    if "sum_directions" not in meaningful:
        sections.append(
            _skipped_section(
                "Trig-identity logits",
                task,
                "sum_directions",
                "the trig logit decomposition cos(w_k(a + b − c))",
            )
        )
    elif key_freqs:
        decomposition = trig_logit_decomposition(model, task, key_freqs)
        sections.append(
            ReportSection(
                "Trig-identity logits",
                _CAPTIONS["alpha"],
                plots.trig_identity_coefficients(decomposition),
            )
        )
    if clusters is None:
        sections.append(
            _skipped_section(
                "Ablations", task, "token_fourier", "the ablation table (neuron clusters)"
            )
        )
    elif key_freqs:
        table = ablation_table(
            model, task, key_freqs=key_freqs, train_indices=run.train_indices, clusters=clusters
        )
        notes = "".join(f" <b>Skipped:</b> {html.escape(n)}." for n in table.notes)
        sections.append(
            ReportSection(
                "Ablations", _CAPTIONS["ablation"] + notes, plots.ablation_table_figure(table)
            )
        )
    else:
        sections.append(
            ReportSection(
                "Trig-identity logits and ablations",
                kind="note",
                body_html="<p>No key frequency found (no neuron cluster): the model has not "
                "formed the Fourier circuit, so the trig-identity fit and the ablations are "
                "skipped.</p>",
            )
        )

    last = metrics[-1] if metrics else {}
    grok = _first_epoch_at(metrics, "test_acc", 0.99)
    summary = [
        ("run directory", html.escape(str(run_dir))),
        ("task", html.escape(f"(a {task.symbol} b) mod {task.p}  [{task.name}]")),
        (
            "training fraction / seed",
            f"{_fmt_num(config.get('frac_train'))} / {_fmt_num(config.get('seed'))}",
        ),
        (
            "optimiser",
            f"AdamW lr {_fmt_num(config.get('lr'))}, "
            f"weight decay {_fmt_num(config.get('weight_decay'))}",
        ),
        (
            "model",
            html.escape(
                f"d_model {run.model_config.d_model}, {run.model_config.n_heads} heads × "
                f"{run.model_config.d_head}, d_mlp {run.model_config.d_mlp}, "
                f"{run.model_config.act_fn}"
            ),
        ),
        (
            "epochs",
            f"{_fmt_num(status.last_logged_epoch)} logged of {_fmt_num(status.epochs_configured)} "
            f"configured; {len(run.epochs)} checkpoints; figures of the model use epoch {epoch}",
        ),
        ("epoch at 99 % test accuracy", _fmt_num(grok) if grok is not None else "not reached"),
        (
            f"final losses (epoch {_fmt_num(last.get('epoch'))})",
            f"train {_fmt_num(last.get('train_loss'))}, test {_fmt_num(last.get('test_loss'))}; "
            f"accuracy train {_fmt_num(last.get('train_acc'))}, "
            f"test {_fmt_num(last.get('test_acc'))}",
        ),
        (
            "phase boundaries (epochs)",
            html.escape(measures.phase_note or _phase_summary(spans)),
        ),
    ]
    summary[-1:-1] = _key_frequency_summary(keys, task)
    if decomposition is not None:
        summary.append(
            (
                "trig-identity fit",
                f"explains {100 * decomposition.fve:.1f} % of logit variance; loss "
                f"{_fmt_num(decomposition.loss)} → {_fmt_num(decomposition.approx_loss)} "
                "with the approximation",
            )
        )
    banner = ("done" if status.finished else "running", html.escape(status.message))
    return render_report_html(
        f"Grokking report — {run_dir.name}",
        sections,
        subtitle=f"(a {task.symbol} b) mod {task.p} — the analysis of Nanda et al. (2023), "
        "'Progress measures for grokking via mechanistic interpretability'",
        banner=banner,
        summary=summary,
        config=config,
    )


def _note_section(title: str, text: str) -> ReportSection:
    """A visible note in place of a section (``kind="note"``)."""
    return ReportSection(
        title, kind="note", body_html=f"<p><b>Skipped:</b> {html.escape(text)}</p>"
    )


def _skipped_section(title: str, task: Any, capability: str, analysis: str) -> ReportSection:
    """The note for an analysis that is not meaningful for ``task``: the message of
    :func:`tl_grokking.analysis.hooks.require_analysis` (which task, which analysis, what instead)."""
    from tl_grokking.analysis.hooks import require_analysis

    try:
        require_analysis(task, capability, analysis)
    except ValueError as err:
        return _note_section(title, str(err))
    raise AssertionError(f"{analysis} is meaningful for task {task.name!r}; nothing to skip")


def _discrete_log_section(model: Any, task: Any) -> ReportSection:
    """Key frequencies of a × / ÷ model in discrete-log order (:mod:`tl_grokking.data.discrete_log`):
    the Fourier norms of the re-indexed W_E and W_L per frequency of Z_{p-1}."""
    from tl_grokking.analysis.fourier import frequencies
    from tl_grokking.data import discrete_log as dl

    n = task.fourier_size
    figure = go.Figure()
    for name, norms in (
        ("W_E", dl.reindexed_embed_norms(model, task)),
        ("W_L", dl.reindexed_unembed_norms(model, task)),
    ):
        per_freq = dl.frequency_norms(norms, n)
        figure.add_bar(
            x=[str(k) for k in frequencies(n)], y=(per_freq / per_freq.max()).tolist(), name=name
        )
    figure.update_layout(
        title="Fourier norms per frequency in discrete-log order (relative to the largest)",
        xaxis_title=f"frequency k of Z_{n}",
        yaxis_title="norm / max",
        barmode="group",
        height=380,
    )
    keys = {rule: dl.reindexed_key_frequencies(model, task, rule=rule) for rule in _DL_RULES}
    found = "; ".join(f"{rule}: {_freqs_text(v)}" for rule, v in keys.items())
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


_DL_RULES = ("embed", "unembed", "clusters")


def _key_frequency_summary(keys: Any, task: Any) -> list[tuple[str, str]]:
    """Summary rows on the key frequencies and neuron clusters (or why there are none)."""
    if keys is None:
        from tl_grokking.analysis.hooks import require_analysis

        try:
            require_analysis(task, "token_fourier", "token-order key frequencies")
        except ValueError as err:
            return [("key frequencies", "not computed: " + html.escape(str(err)))]
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
        _CAPTIONS["circuitsvis"],
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


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    progress: bool = False,
    examples: list[tuple[int, int]] | None = None,
) -> Path:
    """Build the report of ``run_dir`` and write it atomically to ``out`` (default
    ``RUN_DIR/report.html``); returns the path.  On any error nothing is written."""
    page = build_report(run_dir, device=device, progress=progress, examples=examples)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    atomic_write_text(path, page)
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)  # a page to share: the temp file was private (0600)
    return path
