"""The HTML report: contents equal the run's numbers, no external resource, bad input refused
with nothing written, a run still training says so, and ``tl-grokking reproduce`` end to end."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from markupsafe import Markup

from tl_grokking.cli import main
from tl_grokking.figures import plots
from tl_grokking.figures.report import (
    ReportSection,
    RunStatus,
    build_report,
    external_urls,
    render_report_html,
    run_status,
    write_report,
)
from tl_grokking.runs.rundir import RunDirError, read_json, read_metrics, write_json

FIGURE_ANCHORS = [
    "loss-curves",
    "progress-measures",
    "embedding",
    "unembedding",
    "neuron-clusters",
    "fraction-of-variance-explained",
    "neuron-activations",
    "attention-to-a-and-b",
    "trig-identity-logits",
    "ablations",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is much faster on a busy machine
    yield
    torch.set_num_threads(threads)


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("measures.csv", "phases.json", "report.html")
    )
    return dst


@pytest.fixture(scope="module")
def run_copy(small_run, tmp_path_factory) -> Path:
    return _copy_run(small_run, tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def page(run_copy) -> str:
    path = write_report(run_copy)
    assert path == run_copy / "report.html"
    return path.read_text(encoding="utf-8")


def _figure_traces(page: str, anchor: str) -> list[dict]:
    """The plotly traces of the figure in section ``anchor``, decoded from the page."""
    match = re.search(r'Plotly\.newPlot\(\s*"(fig-\d+-' + re.escape(anchor) + r')",\s*', page)
    assert match, f"no figure for section {anchor}"
    data, _ = json.JSONDecoder().raw_decode(page, match.end())
    return data


def _values(array) -> list[float]:
    """A plotly data array: a JSON list, or a typed array ``{"dtype", "bdata"}``."""
    if isinstance(array, dict):
        dtype = {
            "f8": torch.float64,
            "f4": torch.float32,
            "i4": torch.int32,
            "i1": torch.int8,
            "u1": torch.uint8,
            "i2": torch.int16,
        }[array["dtype"]]
        raw = bytearray(base64.b64decode(array["bdata"]))
        return torch.frombuffer(raw, dtype=dtype).tolist()
    return list(array)


def _summary_value(page: str, label: str) -> str:
    match = re.search(r"<tr><th>" + re.escape(label) + r"</th><td>(.*?)</td></tr>", page)
    assert match, f"no summary row {label!r}"
    return match.group(1)


def _caveats(page: str) -> list[str]:
    """The items of the page's Caveats box, as plain text."""
    box = re.search(r'<div class="caveats" id="caveats">(.*?)</div>', page, flags=re.DOTALL)
    if box is None:
        return []
    return [html.unescape(c) for c in re.findall(r"<li>(.*?)</li>", box.group(1), re.DOTALL)]


def _notes(console: str) -> list[str]:
    """The caveats a command printed (its ``note: ...`` lines)."""
    return [line.removeprefix("note: ") for line in console.splitlines() if line[:6] == "note: "]


# ---------------------------------------------------------------------------------------------
# contents
# ---------------------------------------------------------------------------------------------


def test_report_holds_every_figure_and_one_plotly_bundle(page):
    assert page.count('class="plotly-graph-div"') == len(FIGURE_ANCHORS)
    for anchor in FIGURE_ANCHORS:
        assert f'<section id="{anchor}"' in page
        _figure_traces(page, anchor)
    assert page.count('class="circuitsvis"') == 3  # three example inputs
    assert page.count("CircuitsVis.render(") == 3
    assert len(re.findall(r"^\* plotly\.js v\d", page, flags=re.MULTILINE)) == 1
    assert page.count("var CircuitsVis=") == 1


def test_report_loads_nothing_from_the_network(page):
    assert external_urls(page) == []
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", page, flags=re.IGNORECASE)
    assert not [t for t in tags if re.search(r"(src|href)\s*=", t, flags=re.IGNORECASE)]
    assert "unpkg.com" not in page and "cdn.plot.ly/plotly" not in page


def test_without_a_circuitsvis_bundle_the_patterns_are_tables(run_copy, monkeypatch):
    """A circuitsvis that ships no browser bundle: the page still loads nothing from the
    network and shows the example patterns as tables holding the same numbers."""
    from tl_grokking.figures import report
    from tl_grokking.runs.checkpoints import load_run

    def missing():
        raise FileNotFoundError("circuitsvis ships no browser bundle")

    monkeypatch.setattr(report, "circuitsvis_bundle", missing)
    page = build_report(run_copy, examples=[(3, 4)])
    assert "var CircuitsVis=" not in page and 'class="circuitsvis"' not in page
    assert external_urls(page) == []
    run = load_run(run_copy)
    ((_, pattern),) = plots.attention_examples(run.model(), run.task, [(3, 4)])
    cells = re.findall(r"rgba\(31, 119, 180, [0-9.]+\)\">([0-9.]+)</td>", page)
    assert [float(c) for c in cells] == pytest.approx(pattern.flatten().tolist(), abs=0.006)


def test_external_url_checker_finds_each_kind():
    bad = (
        '<script src="https://cdn.example.com/a.js"></script>'
        "<link rel=stylesheet href='//fonts.example.com/x.css'>"
        '<img src="http://example.com/i.png">'
        "<style>@import url(https://example.com/s.css);</style>"
        '<script type="module">import { render } from "https://unpkg.com/x/esm.js";</script>'
        '<svg xmlns="http://www.w3.org/2000/svg"></svg><a href="#local">ok</a>'
        '<script src="local.js"></script>'
    )
    assert external_urls(bad) == [
        "https://cdn.example.com/a.js",
        "//fonts.example.com/x.css",
        "http://example.com/i.png",
        "https://example.com/s.css",
        "https://unpkg.com/x/esm.js",
    ]


def test_summary_numbers_equal_the_run(page, run_copy):
    from tl_grokking.analysis.circuits import key_frequencies
    from tl_grokking.runs.checkpoints import load_run

    metrics = read_metrics(run_copy)
    grok = next(r["epoch"] for r in metrics if r["test_acc"] >= 0.99)
    assert _summary_value(page, "test accuracy ≥ 99 %") == (
        f"first at epoch {grok} (metrics.jsonl, logged every 50 epochs)"
    )
    last = metrics[-1]
    final = _summary_value(page, "final losses (epoch 1000)")
    assert f"train {last['train_loss']:.3e}" in final or f"train {last['train_loss']:.4g}" in final
    assert f"test {last['test_acc']:.4g}" in final
    run = load_run(run_copy)
    keys = key_frequencies(run.model(), run.task, rule="all")
    assert keys.keys, "the small run has grokked: it has clusters"
    assert _summary_value(page, "key frequencies").startswith(f"<b>{keys.keys}</b>")
    clusters = _summary_value(page, "neuron clusters")
    assert f"{sum(keys.clusters.sizes.values())} of 128 neurons clustered" in clusters
    assert "Finished: trained all 1000 epochs." in page
    assert 'class="banner done"' in page


def test_figures_in_the_page_equal_the_analysis(page, run_copy):
    """Progress measures were absent, so the report computed them: the panel equals
    progress_measures of the run, the shading equals detect_phases, the bars equal W_E's."""
    from tl_grokking.analysis.phases import detect_phases
    from tl_grokking.analysis.progress import progress_measures
    from tl_grokking.runs.checkpoints import load_run

    assert not (run_copy / "measures.csv").exists()  # the report writes no analysis file
    assert "computed for this report" in page
    run = load_run(run_copy)
    measures = progress_measures(run, progress=False)
    traces = {t["meta"]: t for t in _figure_traces(page, "progress-measures")}
    for name in ("restricted_loss", "excluded_loss", "gini_W_E", "gini_W_L", "sum_sq_weights"):
        assert _values(traces[name]["y"]) == pytest.approx(measures[name], rel=1e-9)
        assert _values(traces[name]["x"]) == measures["epoch"]
    phases = detect_phases(measures)
    spans = plots.phase_spans(phases)
    assert spans, "the small run groks: phases are detected"
    phase_text = _summary_value(page, "phase boundaries (epochs)")
    for _, start, end in spans:
        assert f"{start:g}–{end:g}" in phase_text
    # the run stops while a Gini coefficient still rises: the caveat is on the page
    assert any(
        "still rising at the last checkpoint" in n and "lower bound" in n for n in phases.notes
    )
    assert _caveats(page) == list(phases.notes)
    bars = _figure_traces(page, "embedding")[0]
    want = plots.embedding_fourier_norms(run.model(), run.task).data[0].y
    assert _values(bars["y"]) == pytest.approx(list(want), rel=1e-9)


def test_stored_measures_and_phases_are_used(run_copy, tmp_path):
    from tl_grokking.analysis.progress import progress_measures

    run = _copy_run(run_copy, tmp_path / "run")
    measures = progress_measures(run, progress=False)
    measures.columns["restricted_loss"] = [2.0 * v for v in measures["restricted_loss"]]
    measures.to_csv(run / "measures.csv")
    write_json(
        run / "phases.json",
        {
            "phases": [
                {"name": "memorization", "start": 0, "end": 100},
                {"name": "circuit_formation", "start": 100, "end": 400},
                {"name": "cleanup", "start": 400, "end": 800},
            ]
        },
    )
    page = build_report(run)
    assert "measures.csv (from tl-grokking analyze)" in page
    traces = {t["meta"]: t for t in _figure_traces(page, "progress-measures")}
    assert _values(traces["restricted_loss"]["y"]) == pytest.approx(measures["restricted_loss"])
    assert _summary_value(page, "phase boundaries (epochs)") == (
        "memorisation 0–100; circuit formation 100–400; cleanup 400–800"
    )


def test_out_of_date_measures_are_recomputed(run_copy, tmp_path):
    """measures.csv that does not cover the run's checkpoints (the run went on after
    `analyze`) is not shown: the measures and phases are computed again."""
    from tl_grokking.analysis.progress import ProgressMeasures

    run = _copy_run(run_copy, tmp_path / "run")
    ProgressMeasures({"epoch": [0, 50], "train_loss": [9.0, 9.0]}).to_csv(run / "measures.csv")
    write_json(run / "phases.json", {"phases": [{"name": "cleanup", "start": 0, "end": 50}]})
    page = build_report(run)
    assert "measures.csv is out of date" in page
    traces = {t["meta"]: t for t in _figure_traces(page, "progress-measures")}
    assert _values(traces["train_loss"]["x"]) == list(range(0, 1001, 50))
    assert "cleanup 0–50" not in _summary_value(page, "phase boundaries (epochs)")


# ---------------------------------------------------------------------------------------------
# one epoch at 99 %, every caveat of analyze, the run directory as given
# ---------------------------------------------------------------------------------------------


def test_one_epoch_at_99_percent_and_the_same_caveats_everywhere(
    run_copy, tmp_path, monkeypatch, capsys
):
    """Checkpoints every 100 epochs, metrics every 50: the first *checkpoint* at 99 % test
    accuracy (phases.json's test_acc_99_epoch) comes after the first *logged* epoch there.
    analyze, reproduce and the report all give the logged one (grok_epoch of metrics.jsonl)
    with its resolution, and the same caveats (the run ends inside cleanup)."""
    from tl_grokking.cli import reproduce as reproduce_cli
    from tl_grokking.runs.rundir import grok_epoch
    from tl_grokking.training.config import TrainConfig

    run = _copy_run(run_copy, tmp_path / "run")
    first = grok_epoch(read_metrics(run))
    assert first is not None
    every = next(k for k in (100, 125, 200, 250) if first % k)  # divides the 1000 epochs
    for path in (run / "checkpoints").iterdir():
        if int(path.stem.removeprefix("epoch_")) % every:
            path.unlink()
    config = {**read_json(run / "config.json"), "checkpoint_every": every}
    write_json(run / "config.json", config)
    assert main(["analyze", str(run), "--no-progress"]) == 0
    analyzed = capsys.readouterr().out
    # reproduce of this (finished) run: resumed, nothing retrained, analysed again, reported
    monkeypatch.setattr(
        reproduce_cli, "quick_config", lambda **kw: TrainConfig.from_dict({**config, **kw})
    )
    assert main(["reproduce", "--quick", "--out", str(run), "--no-progress"]) == 0
    reproduced = capsys.readouterr().out
    page = (run / "report.html").read_text(encoding="utf-8")

    logged = grok_epoch(read_metrics(run))
    at_checkpoint = read_json(run / "phases.json")["test_acc_99_epoch"]
    assert logged is not None and at_checkpoint > logged  # not vacuous: the two differ
    text = f"first at epoch {logged} (metrics.jsonl, logged every 50 epochs)"
    assert f"test accuracy ≥ 99 %: {text}" in analyzed.splitlines()
    assert f"test accuracy ≥ 99 %: {text}" in reproduced.splitlines()
    assert html.unescape(_summary_value(page, "test accuracy ≥ 99 %")) == text
    for shown in (analyzed, reproduced, html.unescape(page)):
        assert f"epoch {at_checkpoint} (" not in shown and f"at epoch {at_checkpoint}" not in shown

    notes = _notes(analyzed)
    assert any("still rising at the last checkpoint" in n and "lower bound" in n for n in notes)
    assert _notes(reproduced) == notes
    assert _caveats(page) == notes


def test_a_run_that_has_not_grokked_says_so_everywhere(run_copy, tmp_path, capsys):
    """Stopped at epoch 500, before the test-loss cliff: analyze prints the no-grokking note,
    the report lists it under Caveats."""
    run = _copy_run(run_copy, tmp_path / "run")
    for path in (run / "checkpoints").iterdir():
        if int(path.stem.removeprefix("epoch_")) > 500:
            path.unlink()
    assert main(["analyze", str(run), "--no-progress"]) == 0
    notes = _notes(capsys.readouterr().out)
    assert any("no grokking detected" in n for n in notes)
    assert _caveats(build_report(run)) == notes


def test_the_run_directory_is_never_an_absolute_path(page, run_copy, tmp_path, monkeypatch):
    """Given an absolute path outside the working directory, the page names only the run;
    a relative path is shown as given, an absolute one inside the working directory relative
    to it."""
    from tl_grokking.figures.report import _display_path

    assert _summary_value(page, "run directory") == run_copy.name
    assert str(run_copy.parent) not in page
    monkeypatch.chdir(tmp_path)
    assert _display_path(Path("runs/quick")) == "runs/quick"
    assert _display_path(tmp_path / "runs" / "quick") == "runs/quick"
    assert _display_path(tmp_path.parent / "elsewhere" / "run7") == "run7"


# ---------------------------------------------------------------------------------------------
# the template: escaping, package data
# ---------------------------------------------------------------------------------------------

#: HTML that would set a flag (and fetch a missing file) if it ever ran as HTML.
PAYLOAD = '<img src=x onerror="window.__tlg_injected=1">'


def make_injected_run(src: Path, parent: Path) -> Path:
    """A copy of run ``src`` whose directory name, a configuration value and ``phases.json``
    (a phase name, a note, the key-frequency rule) hold :data:`PAYLOAD`."""
    run = _copy_run(src, parent / PAYLOAD)
    config = read_json(run / "config.json")
    write_json(run / "config.json", {**config, "device": "cpu" + PAYLOAD})
    write_json(
        run / "phases.json",
        {
            "phases": [{"name": PAYLOAD, "start": 0, "end": 100}],
            "notes": [PAYLOAD],
            "key_freqs": [],
            "key_freq_rule": "none " + PAYLOAD,
        },
    )
    return run


def _outside_scripts(page: str) -> str:
    return re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.DOTALL)


def test_html_in_run_names_config_and_phases_is_shown_as_text(run_copy, tmp_path):
    page = write_report(make_injected_run(run_copy, tmp_path)).read_text(encoding="utf-8")
    assert PAYLOAD not in page
    assert not re.search(r"<img\b", _outside_scripts(page))
    assert f"<title>Grokking report — {Markup.escape(PAYLOAD)}</title>" in page
    caveats = _caveats(page)
    assert PAYLOAD in caveats  # the note, as text
    assert any(PAYLOAD in c and "no key frequencies" in c for c in caveats)  # the rule
    assert html.unescape(_summary_value(page, "run directory")) == PAYLOAD
    assert Markup.escape(json.dumps("cpu" + PAYLOAD)) in page  # the configuration
    assert external_urls(page) == []


def test_render_escapes_text_and_keeps_trusted_html():
    section = ReportSection("<i>s</i>", caption="<b>kept</b>", skipped=("<u>note</u>",))
    page = render_report_html(
        "<t>",
        [section],
        subtitle="<sub>",
        banner=("done", "<banner>"),
        summary=[("<label>", "<value>"), ("bold", Markup("<b>{}</b>").format("<x>"))],
        caveats=["<caveat>"],
        config={"k": "</pre><script>alert(1)</script>"},
    )
    body = _outside_scripts(page)
    for text in ("<t>", "<sub>", "<banner>", "<label>", "<value>", "<caveat>", "<i>s</i>"):
        assert text not in body and str(Markup.escape(text)) in body
    assert "<b>kept</b>" in body and "<b>&lt;x&gt;</b>" in body
    assert "<b>Skipped:</b> &lt;u&gt;note&lt;/u&gt;" in body
    assert "<script>alert(1)" not in page


def test_the_templates_ship_as_package_data():
    """The installed package reads its templates with importlib.resources, and pyproject.toml
    lists them as package data (so a wheel holds them) and jinja2 as a dependency."""
    from fnmatch import fnmatch
    from importlib.resources import files

    tomllib = pytest.importorskip("tomllib")
    templates = files("tl_grokking.figures").joinpath("templates")
    names = sorted(p.name for p in templates.iterdir() if p.name.endswith(".j2"))
    assert {"report.html.j2", "captions.html.j2"} <= set(names)
    assert "<!DOCTYPE html>" in templates.joinpath("report.html.j2").read_text(encoding="utf-8")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["tl_grokking.figures"]
    assert all(any(fnmatch(f"templates/{n}", g) for g in globs) for n in names)
    assert any(
        d.replace(" ", "").startswith("jinja2>=") for d in pyproject["project"]["dependencies"]
    )


# ---------------------------------------------------------------------------------------------
# run status
# ---------------------------------------------------------------------------------------------


def test_a_run_still_training_says_so(run_copy, tmp_path):
    run = _copy_run(run_copy, tmp_path / "run")
    config = read_json(run / "config.json")
    write_json(run / "config.json", {**config, "epochs": 3000})
    (run / "checkpoints" / "epoch_1000.safetensors").unlink()  # metrics are past it
    status = run_status(run)
    assert status == RunStatus(
        epochs_configured=3000,
        last_checkpoint_epoch=950,
        last_logged_epoch=1000,
        resume_epoch=1000,
        finished=False,
        stopped_early=False,
        notes=(
            "last checkpoint at epoch 950 of 3000",
            "metrics already reach epoch 1000",
            "resume.safetensors (epoch 1000) is newer than the last checkpoint",
        ),
    )
    page = build_report(run)
    assert 'class="banner running"' in page
    assert "Still training (or interrupted): last checkpoint at epoch 950 of 3000" in page
    assert "figures of the model use epoch 950" in page


def test_an_early_run_without_circuit_is_reported(run_copy, tmp_path):
    """Only the checkpoints of epochs 0 and 50 (memorisation, no cluster yet): the report
    still has the curves and the weights, skips the trig-identity fit and the ablations, and
    says why there are no phases."""
    from tl_grokking.analysis.circuits import neuron_clusters
    from tl_grokking.runs.checkpoints import load_run

    run = _copy_run(run_copy, tmp_path / "run")
    for path in (run / "checkpoints").iterdir():
        if path.name not in ("epoch_0.safetensors", "epoch_50.safetensors"):
            path.unlink()
    loaded = load_run(run)
    assert neuron_clusters(loaded.model(50), loaded.task).sizes == {}
    page = build_report(run)
    assert page.count('class="plotly-graph-div"') == len(FIGURE_ANCHORS) - 2
    assert '<section id="trig-identity-logits"' not in page
    assert "No key frequency found" in page
    assert _summary_value(page, "key frequencies").startswith("<b>none</b>")
    assert _summary_value(page, "phase boundaries (epochs)").startswith(
        "phases not detected: need at least 3 checkpoints"
    )
    assert _caveats(page)[0].startswith("phases not detected: need at least 3 checkpoints")
    assert 'class="banner running"' in page


def test_an_early_stopped_run_is_finished(run_copy, tmp_path):
    run = _copy_run(run_copy, tmp_path / "run")
    config = read_json(run / "config.json")
    write_json(run / "config.json", {**config, "epochs": 3000, "early_stop_acc": 0.99})
    status = run_status(run)
    assert status.finished and status.stopped_early
    assert status.message.startswith("Finished: stopped early at epoch 1000 of 3000")
    write_json(
        run / "config.json",
        {**config, "epochs": 3000, "early_stop_acc": 1.0 - 1e-12, "early_stop_patience": 100},
    )
    assert not run_status(run).finished  # 100 logged epochs at that accuracy never happened


# ---------------------------------------------------------------------------------------------
# bad input: a clear error and nothing written
# ---------------------------------------------------------------------------------------------


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_not_a_run_directory(tmp_path, capsys):
    missing = tmp_path / "nope"
    with pytest.raises(RunDirError, match="does not exist"):
        write_report(missing)
    assert not missing.exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    with pytest.raises(RunDirError, match="not a run directory: no config.json"):
        write_report(plain)
    assert _listing(plain) == ["notes.txt"]
    assert main(["report", str(plain)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert _listing(plain) == ["notes.txt"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        write_report(a_file)


def test_a_run_without_checkpoints(run_copy, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_copy / "config.json", run / "config.json")
    (run / "checkpoints").mkdir()
    with pytest.raises(RunDirError, match="has no checkpoints"):
        write_report(run)
    assert main(["report", str(run)]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert _listing(run) == ["checkpoints", "config.json"]


def test_a_failure_midway_leaves_the_old_report(run_copy, tmp_path, monkeypatch):
    run = _copy_run(run_copy, tmp_path / "run")
    (run / "report.html").write_text("old report")

    def boom(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(plots, "ablation_table_figure", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        write_report(run)
    assert (run / "report.html").read_text() == "old report"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# tl-grokking report / reproduce
# ---------------------------------------------------------------------------------------------


def test_report_cli_writes_to_out(run_copy, tmp_path, capsys):
    out = tmp_path / "sub" / "r.html"
    assert main(["report", str(run_copy), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Finished" in text and str(out) in text
    assert out.read_text(encoding="utf-8").count('class="plotly-graph-div"') == 10
    assert oct(out.stat().st_mode & 0o044) == oct(0o044)  # readable by others, like any page


def test_reproduce_settings():
    """The paper's setting (Nanda et al. 2023, §2–3); the quick one differs only where it says."""
    from tl_grokking.cli.reproduce import paper_config, quick_config

    paper = paper_config(seed=3)
    assert (paper.p, paper.frac_train, paper.epochs, paper.seed) == (113, 0.3, 40_000, 3)
    assert (paper.lr, paper.weight_decay, paper.beta1, paper.beta2) == (1e-3, 1.0, 0.9, 0.98)
    assert (paper.d_model, paper.n_heads, paper.d_mlp, paper.act_fn) == (128, 4, 512, "relu")
    assert paper.checkpoint_every == 100
    quick = quick_config()
    changed = {k for k, v in quick.to_dict().items() if paper_config().to_dict()[k] != v}
    assert changed == {"p", "frac_train", "d_mlp", "lr", "epochs", "log_every", "checkpoint_every"}
    with pytest.raises(ValueError, match="frac_train"):
        quick_config(frac_train=1.5)


def test_reproduce_quick_end_to_end(tmp_path, capsys):
    """The CLI path of the main job on the --quick setting, cut to 100 epochs: the run, the
    analysis files and the report exist and agree with each other."""
    out = tmp_path / "quick"
    assert (
        main(["reproduce", "--quick", "--epochs", "100", "--out", str(out), "--no-progress"]) == 0
    )
    text = capsys.readouterr().out
    config = read_json(out / "config.json")
    assert (config["p"], config["frac_train"], config["d_mlp"], config["lr"], config["epochs"]) == (
        53,
        0.5,
        256,
        3e-3,
        100,
    )
    rows = (out / "measures.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [0, 50, 100]
    phases = read_json(out / "phases.json")
    assert phases["last_epoch"] == 100
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "measures.csv (from tl-grokking analyze)" in page
    assert f"report:        {(out / 'report.html').resolve()}" in text
    grok = "not reached by epoch 100 (metrics.jsonl, logged every 25 epochs)"
    assert f"test accuracy ≥ 99 %: {grok}" in text.splitlines()
    assert html.unescape(_summary_value(page, "test accuracy ≥ 99 %")) == grok
    assert _notes(text) == _caveats(page)
    # running it again resumes the finished run: nothing is retrained
    before = (out / "checkpoints" / "epoch_100.safetensors").stat().st_mtime_ns
    assert (
        main(["reproduce", "--quick", "--epochs", "100", "--out", str(out), "--no-progress"]) == 0
    )
    assert (out / "checkpoints" / "epoch_100.safetensors").stat().st_mtime_ns == before


# ---- every task gets a report; what is not meaningful is skipped with a visible note ---------

SKIPS = {
    "sub": {"trig logit decomposition"},
    "mul": {"Fourier analysis of W_E", "trig logit decomposition", "ablation table"},
    "div": {"Fourier analysis of W_E", "trig logit decomposition", "ablation table", "every pair"},
    "x2+y2": {"Fourier analysis of W_E", "trig logit decomposition", "ablation table"},
}


@pytest.mark.parametrize("name", list(SKIPS))
def test_report_of_every_task_says_what_was_skipped(task_runs, tmp_path, name):
    import html as html_lib

    from tl_grokking.runs.checkpoints import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(task_runs[name], run_dir)
    page = write_report(run_dir).read_text(encoding="utf-8")
    notes = [html_lib.unescape(n) for n in re.findall(r"<b>Skipped:</b> ([^<]*)", page)]
    for what in SKIPS[name]:
        hits = [n for n in notes if what in n]
        assert hits, f"no note on {what!r} in {notes}"
        assert all(repr(name) in n for n in hits)
    assert 'id="embedding"' in page if name == "sub" else 'id="embedding"' not in page
    assert "restricted_loss" not in (run_dir / "report.html").read_text()  # no such column
    run = load_run(run_dir)
    if name in ("mul", "div"):
        from tl_grokking.analysis.circuits import key_frequencies

        assert 'id="discrete-log"' in page and "tl_grokking.data.discrete_log" in page
        model = run.model(run.epochs[-1])
        embed_keys = key_frequencies(model, run.task, rule="embed").keys  # discrete-log order
        assert f"embed: {list(embed_keys)}" in html_lib.unescape(page)
    else:
        assert 'id="discrete-log"' not in page
