"""Cross-run analysis of a sweep: ``runs.csv`` (``tl_grokking.analysis.sweep``), the sweep
report (``tl_grokking.figures.sweep_report``) and ``tl-grokking analyze / report SWEEP_DIR``.

One small sweep is trained per module (p = 23, a tiny model, 400 epochs: seeds 0, 1 × weight
decays 0.1, 1; seed 0 at weight decay 1 groks, the others do not within the run) and
analysed once with a pool of two processes; tests that change it work on copies. Every column
of ``runs.csv`` is checked against the run's own files, read here with ``json`` / ``csv``.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from markupsafe import Markup

from tl_grokking.analysis.sweep import (
    ANALYSIS_COLUMNS,
    RUNS_CSV,
    RunsCsvError,
    analyze_sweep,
    read_runs_csv,
    stale_reason,
)
from tl_grokking.cli import main
from tl_grokking.figures.report import external_urls
from tl_grokking.figures.sweep_report import SWEEP_REPORT_FILE, choose_axes, write_sweep_report
from tl_grokking.runs.sweepdir import SweepDirError, read_manifest, run_path, write_manifest
from tl_grokking.sweeps.executors import LocalExecutor
from tl_grokking.sweeps.runner import run_sweep
from tl_grokking.sweeps.spec import SweepSpec
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import train_model

#: Base fields of the module's sweep (the shipped run_p23's settings, shorter).
BASE = {
    "p": 23,
    "frac_train": 0.6,
    "d_model": 32,
    "n_heads": 4,
    "d_mlp": 128,
    "lr": 5e-3,
    "epochs": 400,
    "checkpoint_every": 50,
    "log_every": 20,
}
AXES = {"seed": [0, 1], "weight_decay": [0.1, 1.0]}
PAYLOAD = '<img src=x onerror="window.__tlg_injected=1">'


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread, and bit-reproducible sums
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The module's sweep, trained (not analysed)."""
    sweep = tmp_path_factory.mktemp("cross_run") / "sweep"
    run_sweep(SweepSpec(axes=AXES, base=BASE), sweep, executor=LocalExecutor(1), progress=False)
    assert read_manifest(sweep).counts()["done"] == 4
    return sweep


@pytest.fixture(scope="module")
def analysed(trained, tmp_path_factory):
    """A copy of the sweep analysed with a pool of two processes: (sweep_dir, analysis)."""
    sweep = tmp_path_factory.mktemp("analysed") / "sweep"
    shutil.copytree(trained, sweep)
    return sweep, analyze_sweep(sweep, workers=2, progress=False)


@pytest.fixture
def sweep_copy(analysed, tmp_path) -> Path:
    dst = tmp_path / "sweep"
    shutil.copytree(analysed[0], dst)
    return dst


# ---------------------------------------------------------------------------------------------
# independent readers of a run's files


def metrics_lines(run_dir: Path) -> list[dict]:
    text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def measures_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "measures.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def checkpoint_epochs(run_dir: Path) -> list[int]:
    names = (run_dir / "checkpoints").glob("epoch_*.safetensors")
    return sorted(int(p.name[len("epoch_") : -len(".safetensors")]) for p in names)


def raw_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------
# runs.csv


def test_runs_csv_columns_against_the_runs_files(analysed):
    sweep, analysis = analysed
    manifest = read_manifest(sweep)
    rows = raw_rows(sweep / RUNS_CSV)
    header = next(csv.reader(open(sweep / RUNS_CSV, encoding="utf-8")))
    assert header == ["name", "status", "seed", "weight_decay", *(n for n, _ in ANALYSIS_COLUMNS)]
    assert [r["name"] for r in rows] == list(manifest.runs)
    grokked = 0
    for raw in rows:
        run_dir = run_path(sweep, raw["name"])
        record = manifest.runs[raw["name"]]
        assert raw["status"] == "done" and raw["error"] == ""
        assert int(raw["seed"]) == record.point["seed"]
        assert float(raw["weight_decay"]) == record.point["weight_decay"]
        # grok epoch: the first logged epoch with test accuracy >= 0.99
        lines = metrics_lines(run_dir)
        first = next((m["epoch"] for m in lines if m["test_acc"] >= 0.99), None)
        assert raw["grok_epoch"] == ("" if first is None else str(first))
        assert raw["grokked"] == ("true" if first is not None else "false")
        grokked += first is not None
        # final train/test loss and accuracy: the last line of metrics.jsonl
        for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
            assert float(raw[f"final_{key}"]) == lines[-1][key]
        # phase boundaries and key frequencies: phases.json
        phases = json.loads((run_dir / "phases.json").read_text())
        for key in ("memorization_end", "circuit_formation_end", "cleanup_end"):
            assert raw[key] == ("" if phases.get(key) is None else str(phases[key]))
        assert raw["key_freqs"] == " ".join(map(str, phases["key_freqs"]))
        assert int(raw["n_key_freqs"]) == len(phases["key_freqs"])
        assert raw["key_freq_rule"] == phases["key_freq_rule"]
        assert raw["fingerprint"] == phases["fingerprint"]
        # last-row measures: measures.csv
        last = measures_rows(run_dir)[-1]
        for key in ("restricted_loss", "excluded_loss", "gini_W_E", "gini_W_L", "sum_sq_weights"):
            assert raw[f"final_{key}"] == last.get(key, ""), key
        epochs = checkpoint_epochs(run_dir)
        assert int(raw["last_epoch"]) == epochs[-1] == int(last["epoch"])
        assert int(raw["n_checkpoints"]) == len(epochs)
        # clock/pizza: only for a last checkpoint that solves the task
        if float(last["test_acc"]) >= 0.99:
            assert raw["clock_pizza"] in ("clock", "pizza", "ambiguous")
            assert 0 <= float(raw["gradient_symmetricity"]) <= 1
        else:
            assert raw["clock_pizza"] == raw["gradient_symmetricity"] == ""
    assert grokked >= 1  # seed 0, weight decay 1 groks (test acc >= 99 % at epoch ~340)
    # the table returned is the file read back
    assert read_runs_csv(sweep / RUNS_CSV).rows == analysis.table.rows
    assert analysis.workers == 2 and sorted(analysis.recomputed) == sorted(manifest.runs)


def test_clock_pizza_column_is_the_verdict_on_the_last_checkpoint(analysed):
    from tl_grokking.analysis.clock_pizza import classify_clock_pizza
    from tl_grokking.runs.checkpoints import load_run

    sweep, analysis = analysed
    solved = [r for r in analysis.table.rows if r["clock_pizza"] is not None]
    assert solved, "the grokked run's last checkpoint solves the task"
    for row in solved:
        run = load_run(run_path(sweep, row["name"]))
        model = run.model(run.final_epoch)
        verdict = classify_clock_pizza(model, run.task, fast=True)
        assert row["clock_pizza"] == verdict.label
        assert row["distance_irrelevance"] == verdict.distance_irrelevance
        assert row["gradient_symmetricity"] == verdict.gradient_symmetricity
        # the fast forward's q is the model's own to float32 rounding
        hooked = classify_clock_pizza(model, run.task)
        assert row["distance_irrelevance"] == pytest.approx(hooked.distance_irrelevance, 1e-5)


def test_parallel_and_serial_analyses_write_the_same_files(analysed, tmp_path):
    sweep, _ = analysed
    serial = tmp_path / "serial"
    shutil.copytree(sweep, serial)
    for run in (serial / "runs").iterdir():
        (run / "measures.csv").unlink()
        (run / "phases.json").unlink()
    (serial / RUNS_CSV).unlink()
    result = analyze_sweep(serial, workers=1, threads=1, progress=False)
    assert result.workers == 1 and len(result.recomputed) == 4
    assert (serial / RUNS_CSV).read_bytes() == (sweep / RUNS_CSV).read_bytes()
    for run in (sweep / "runs").iterdir():
        assert (serial / "runs" / run.name / "measures.csv").read_bytes() == (
            run / "measures.csv"
        ).read_bytes()


def test_a_current_analysis_is_reused_and_a_changed_run_recomputed(sweep_copy):
    manifest = read_manifest(sweep_copy)
    names = list(manifest.runs)
    stamps = {n: (run_path(sweep_copy, n) / "measures.csv").stat().st_mtime_ns for n in names}
    again = analyze_sweep(sweep_copy, workers=2, progress=False)
    assert again.recomputed == [] and again.workers == 1  # nothing to compute: no pool
    assert all(stale_reason(run_path(sweep_copy, n)) is None for n in names)

    # extended: one run trained on for 50 more epochs (a new checkpoint)
    extended = names[0]
    config = TrainConfig.from_dict({**manifest.runs[extended].config, "epochs": 450})
    train_model(config, run_path(sweep_copy, extended), resume=True, progress=False)
    # retrained differently: another run's last checkpoint replaced by an earlier one
    retrained = run_path(sweep_copy, names[1]) / "checkpoints"
    shutil.copyfile(retrained / "epoch_0.safetensors", retrained / "epoch_400.safetensors")
    # a hand-edited measures.csv (a row dropped), then an unreadable phases.json
    edited = run_path(sweep_copy, names[2]) / "measures.csv"
    edited.write_text("".join(edited.read_text().splitlines(keepends=True)[:-1]))
    assert "fingerprint" in stale_reason(run_path(sweep_copy, extended))
    assert "checkpoint epochs" in stale_reason(run_path(sweep_copy, names[2]))
    (run_path(sweep_copy, names[2]) / "phases.json").write_text("{not json")
    assert "cannot be read" in stale_reason(run_path(sweep_copy, names[2]))

    result = analyze_sweep(sweep_copy, progress=False)
    assert result.workers == 1  # by default, no pool for so little work
    assert result.recomputed == names[:3]
    for name in names[3:]:  # the untouched run was read, not recomputed
        assert (run_path(sweep_copy, name) / "measures.csv").stat().st_mtime_ns == stamps[name]
    row = result.table.row(extended)
    assert row["last_epoch"] == 450 and row["n_checkpoints"] == 10
    assert float(measures_rows(run_path(sweep_copy, extended))[-1]["epoch"]) == 450
    assert result.table.row(names[1])["final_sum_sq_weights"] == pytest.approx(
        float(measures_rows(run_path(sweep_copy, names[1]))[0]["sum_sq_weights"])
    )  # the "last" checkpoint is now the initial weights


def test_failed_unfinished_and_missing_runs_get_rows_with_errors(sweep_copy):
    manifest = read_manifest(sweep_copy)
    failed, missing, *_ = list(manifest.runs)
    manifest.runs[failed].status = "failed"
    manifest.runs[failed].error = "TrainingDivergedError: loss is NaN at epoch 120"
    manifest.runs[failed].result = None
    from tl_grokking.runs.sweepdir import RunRecord

    manifest.runs["seed=2,weight_decay=0.1"] = RunRecord(
        name="seed=2,weight_decay=0.1",
        point={"seed": 2, "weight_decay": 0.1},
        config=dict(manifest.runs[failed].config, seed=2),
        status="pending",
    )
    write_manifest(sweep_copy, manifest)
    shutil.rmtree(run_path(sweep_copy, missing))

    result = analyze_sweep(sweep_copy, progress=False)
    table = read_runs_csv(sweep_copy / RUNS_CSV)
    assert table.rows == result.table.rows and len(table) == 5
    empty = [n for n, _ in ANALYSIS_COLUMNS if n not in ("error",)]
    row = table.row(failed)
    assert row["status"] == "failed" and "loss is NaN at epoch 120" in row["error"]
    assert all(row[c] is None for c in empty)
    row = table.row("seed=2,weight_decay=0.1")
    assert row["status"] == "pending" and row["seed"] == 2 and "not finished" in row["error"]
    assert all(row[c] is None for c in empty)
    row = table.row(missing)
    assert (
        row["status"] == "done" and "missing" in row["error"] and f"runs/{missing}" in row["error"]
    )
    assert all(row[c] is None for c in empty)
    assert sum(r["error"] is None for r in table.rows) == 2

    page = write_sweep_report(sweep_copy).read_text(encoding="utf-8")
    caveats = html.unescape(page[page.index('id="caveats"') : page.index("</ul>")])
    assert "1 run(s) failed" in caveats and failed in caveats
    assert "1 run(s) have not finished" in caveats
    assert "have no analysis" in caveats and missing in caveats


def test_a_broken_checkpoint_is_that_runs_error(sweep_copy):
    name = next(iter(read_manifest(sweep_copy).runs))
    ckpt = run_path(sweep_copy, name) / "checkpoints" / "epoch_400.safetensors"
    ckpt.write_bytes(b"not a safetensors file")
    result = analyze_sweep(sweep_copy, workers=1, progress=False)
    row = result.table.row(name)
    assert row["error"].startswith("analysis failed:") and row["grokked"] is None
    assert sum(r["error"] is None for r in result.table.rows) == 3


# ---------------------------------------------------------------------------------------------
# reading runs.csv back


def test_read_runs_csv_round_trips_values(analysed):
    sweep, analysis = analysed
    table = read_runs_csv(sweep / RUNS_CSV)
    assert table.axes == ["seed", "weight_decay"]
    row = table.rows[0]
    assert isinstance(row["seed"], int) and isinstance(row["weight_decay"], float)
    assert isinstance(row["grokked"], bool) and isinstance(row["key_freqs"], list)


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda lines: [], "is empty"),
        (lambda lines: ["name,grokked"] + lines[1:], "line 1 must be the header"),
        (lambda lines: lines[:2] + [lines[2] + ",x"], "line 3 has"),
        (
            lambda lines: [lines[0], lines[1].replace(",done,", ",finished,", 1)],
            "line 2, column status",
        ),
        (lambda lines: lines + [lines[1]], "line 6, column name"),
    ],
)
def test_malformed_runs_csv_errors_name_line_and_column(analysed, tmp_path, edit, where):
    lines = (analysed[0] / RUNS_CSV).read_text(encoding="utf-8").splitlines()
    bad = tmp_path / RUNS_CSV
    bad.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")
    with pytest.raises(RunsCsvError, match=re.escape(str(bad)) + ".*" + re.escape(where)):
        read_runs_csv(bad)


def test_a_bad_cell_names_its_column_and_what_it_accepts(analysed, tmp_path):
    sweep = analysed[0]
    rows = raw_rows(sweep / RUNS_CSV)
    header = list(rows[0])
    for column, value, accepted in (
        ("grok_epoch", "soon", "an integer or empty"),
        ("final_test_acc", "high", "a number or empty"),
        ("grokked", "yes", "true, false or empty"),
        ("key_freqs", "3,4", "space-separated positive integers"),
        ("clock_pizza", "pie", "one of clock, pizza, ambiguous"),
        ("n_key_freqs", "99", "the number of key_freqs"),
    ):
        bad = tmp_path / f"{column}.csv"
        with open(bad, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, header, lineterminator="\n")
            writer.writeheader()
            writer.writerows([rows[0], {**rows[1], column: value}])
        with pytest.raises(RunsCsvError, match=f"line 3, column {column}: expected {accepted}"):
            read_runs_csv(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_runs_csv(tmp_path / "none.csv")
    (tmp_path / "latin.csv").write_bytes(b"name,status\xff\n")
    with pytest.raises(RunsCsvError, match="not UTF-8"):
        read_runs_csv(tmp_path / "latin.csv")


def test_a_malformed_runs_csv_is_replaced_with_a_note(sweep_copy):
    (sweep_copy / RUNS_CSV).write_text("garbage\n")
    result = analyze_sweep(sweep_copy, workers=1, progress=False)
    assert any("unreadable and is replaced" in n for n in result.notes)
    assert len(read_runs_csv(sweep_copy / RUNS_CSV)) == 4


def test_bad_sweep_directories_and_arguments(analysed, tmp_path, unchecked_types):
    sweep = analysed[0]
    with pytest.raises(SweepDirError, match="does not exist"):
        analyze_sweep(tmp_path / "nowhere", progress=False)
    with pytest.raises(SweepDirError, match="no sweep.json"):
        analyze_sweep(run_path(sweep, next(iter(read_manifest(sweep).runs))), progress=False)
    for workers in (0, -1, 1.5, True):
        with unchecked_types(), pytest.raises(ValueError, match="workers must be a positive"):
            analyze_sweep(sweep, workers=workers, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "sweep.json").write_text('{"format": "other"}')
    with pytest.raises(SweepDirError, match="format"):
        analyze_sweep(tmp_path / "bad", progress=False)


def test_a_task_without_sum_directions_has_empty_sum_columns(tmp_path):
    """A run of another task (subtraction): no key frequencies, restricted / excluded or
    clock/pizza values; its row says why, the report says so."""
    sweep = tmp_path / "tasks"
    base = {"p": 17, "d_model": 16, "n_heads": 2, "d_mlp": 32, "epochs": 60}
    base.update(checkpoint_every=20, log_every=20)
    run_sweep(
        SweepSpec(axes={"task": ["add", "sub"]}, base=base),
        sweep,
        executor=LocalExecutor(1),
        progress=False,
    )
    table = analyze_sweep(sweep, workers=1, progress=False).table
    sub = table.row("task=sub")
    assert sub["error"] is None and sub["key_freqs"] == [] and sub["n_key_freqs"] == 0
    assert sub["key_freq_rule"].startswith("none: ") and "'sub'" in sub["key_freq_rule"]
    assert sub["final_restricted_loss"] is None and sub["final_excluded_loss"] is None
    assert sub["clock_pizza"] is None and sub["final_gini_W_E"] is not None
    page = write_sweep_report(sweep).read_text(encoding="utf-8")
    assert "task(s) sub: the restricted / excluded losses" in html.unescape(page)


# ---------------------------------------------------------------------------------------------
# the sweep report


def section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}"')
    return page[start : page.index("</section>", start)]


def outside_scripts(page: str) -> str:
    return re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.DOTALL)


def test_choose_axes_prefers_most_values_and_puts_seed_last():
    values = {"seed": [0, 1, 2, 3], "weight_decay": [0.1, 1], "lr": [1e-3, 3e-3, 1e-2]}
    assert choose_axes(values) == ("lr", "weight_decay")
    assert choose_axes(values, y="seed") == ("lr", "seed")
    assert choose_axes({"seed": [0, 1], "p": [17]}) == ("seed", None)
    assert choose_axes({"p": [17]}) == (None, None)
    with pytest.raises(ValueError, match="--x p: not a swept field with two or more values"):
        choose_axes({"p": [17], "seed": [0, 1]}, x="p")
    with pytest.raises(ValueError, match="two different swept fields"):
        choose_axes(values, x="lr", y="lr")


def test_the_sweep_report_holds_every_section(analysed, tmp_path):
    sweep, analysis = analysed
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    linked = next(iter(read_manifest(copy).runs))
    (run_path(copy, linked) / "report.html").write_text("<html></html>")
    page = write_sweep_report(copy).read_text(encoding="utf-8")
    assert (copy / SWEEP_REPORT_FILE).is_file()
    assert external_urls(page) == []
    assert page.count('class="plotly-graph-div"') == 4
    diagram = section(page, "phase-diagram")
    # x: the axis with most values other than the seed; the seed is aggregated
    assert "<b>weight_decay</b> (across) and <b>seed</b> (up)" in diagram
    text = html.unescape(page)
    assert "runs.csv (from tl-grokking analyze)" in text  # current: read, not recomputed
    for anchor in ("distributions", "key-frequencies", "curves", "runs", "spec"):
        section(page, anchor)
    table = section(page, "runs")
    assert table.count("<tr class=") == 4
    href = "runs/" + linked.replace(",", "%2C").replace("=", "%3D") + "/report.html"
    assert table.count("<a href=") == 1 and f'<a href="{href}">' in table
    summary = section(page, "summary")
    n_grokked = sum(bool(r["grokked"]) for r in analysis.table.rows)
    assert f"{n_grokked} of 4 analysed runs" in summary

    # --y weight_decay --x seed: the diagram's axes as asked
    page = write_sweep_report(copy, tmp_path / "other.html", x="seed", y="weight_decay")
    diagram = section(page.read_text(encoding="utf-8"), "phase-diagram")
    assert "<b>seed</b> (across) and <b>weight_decay</b> (up)" in diagram
    with pytest.raises(ValueError, match="--x lr: not a swept field of this sweep; its swept"):
        write_sweep_report(copy, tmp_path / "x.html", x="lr")
    assert not (tmp_path / "x.html").exists()


def test_one_axis_and_no_grokked_run_are_notes(analysed, tmp_path):
    sweep, analysis = analysed
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    manifest = read_manifest(copy)
    keep = [r["name"] for r in analysis.table.rows if not r["grokked"] and r["seed"] == 1]
    manifest.runs = {n: manifest.runs[n] for n in keep}
    manifest.spec["axes"] = {"weight_decay": AXES["weight_decay"]}
    for record in manifest.runs.values():
        record.point = {"weight_decay": record.point["weight_decay"]}
    write_manifest(copy, manifest)
    page = write_sweep_report(copy).read_text(encoding="utf-8")
    text = html.unescape(page)
    assert "written for this report" in text  # runs.csv listed other runs: rewritten
    assert "Skipped:</b> no run grokked" in section(page, "phase-diagram")
    assert "no run reached 99 % test accuracy" in text
    assert read_runs_csv(copy / RUNS_CSV).axes == ["weight_decay"]
    # one run grokked, one swept field: the grok epoch along it, with a note
    manifest = read_manifest(sweep)
    manifest.spec["axes"] = {"weight_decay": AXES["weight_decay"]}
    for record in manifest.runs.values():
        record.point = {"weight_decay": record.point["weight_decay"]}
    write_manifest(copy, manifest)
    for name in manifest.runs:
        if not run_path(copy, name).exists():
            shutil.copytree(run_path(sweep, name), run_path(copy, name))
    page = write_sweep_report(copy).read_text(encoding="utf-8")
    diagram = section(page, "phase-diagram")
    assert "a phase diagram needs two" in html.unescape(diagram)
    assert 'class="plotly-graph-div"' in diagram


def hostile_sweep(analysed, tmp_path) -> Path:
    """A copy of the sweep with a run named PAYLOAD, PAYLOAD as a swept value and as a failed
    run's error."""
    sweep = tmp_path / "hostile"
    shutil.copytree(analysed[0], sweep)
    manifest = read_manifest(sweep)
    first, second, *_ = list(manifest.runs)
    record = manifest.runs.pop(first)
    record.name = PAYLOAD
    record.point = {**record.point, "weight_decay": PAYLOAD}
    manifest.runs[PAYLOAD] = record
    run_path(sweep, first).rename(run_path(sweep, PAYLOAD))
    (run_path(sweep, PAYLOAD) / "report.html").write_text("<html></html>")
    manifest.runs[second].status = "failed"
    manifest.runs[second].error = PAYLOAD
    write_manifest(sweep, manifest)
    return sweep


def test_hostile_names_values_and_errors_are_text(analysed, tmp_path):
    sweep = hostile_sweep(analysed, tmp_path)
    page = write_sweep_report(sweep).read_text(encoding="utf-8")
    assert PAYLOAD not in page
    body = outside_scripts(page)
    assert not re.search(r"<img\b", body)
    assert str(Markup.escape(PAYLOAD)) in body
    table = section(page, "runs")
    assert html.unescape(table).count(PAYLOAD) >= 3  # name, swept value, error
    # in the figures' JSON, the payload is plotly-escaped text, never markup
    for script in re.findall(r"<script\b[^>]*>(.*?)</script>", page, flags=re.DOTALL)[1:]:
        assert "<img" not in script
    table_csv = read_runs_csv(sweep / RUNS_CSV)
    assert table_csv.row(PAYLOAD)["weight_decay"] == PAYLOAD


# ---------------------------------------------------------------------------------------------
# the command line


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_analyze_sweep_prints_a_summary_and_writes_both_files(sweep_copy):
    (sweep_copy / RUNS_CSV).unlink()
    code, out, err = run_cli(["analyze", str(sweep_copy), "--no-progress", "--workers", "1"])
    assert code == 0, err
    table = read_runs_csv(sweep_copy / RUNS_CSV)
    grokked = [r for r in table.rows if r["grokked"]]
    assert f"sweep: {sweep_copy}  (4 runs: 4 done)" in out
    assert f"{len(grokked)} of 4 analysed runs" in out
    median = sorted(r["grok_epoch"] for r in grokked)[len(grokked) // 2]
    if len(grokked) % 2 == 1:
        assert f"median grok epoch {median:g}" in out
    assert "most common key frequencies (runs using each):" in out
    assert f"wrote {sweep_copy / RUNS_CSV} and {sweep_copy / SWEEP_REPORT_FILE}" in out
    assert (sweep_copy / SWEEP_REPORT_FILE).is_file()


def test_cli_flags_for_the_wrong_kind_of_directory_are_errors(analysed, small_tmp):
    sweep = analysed[0]
    run_dir = run_path(sweep, next(iter(read_manifest(sweep).runs)))
    for argv, message in (
        (["analyze", str(run_dir), "--workers", "2"], "--workers is for sweep directories"),
        (["analyze", str(sweep), "--workers", "0"], "--workers must be a positive integer"),
        (["analyze", str(sweep), "--key-freqs", "3"], "--key-freqs is for one run"),
        (["report", str(run_dir), "--x", "seed"], "--x: for sweep directories"),
        (["report", str(sweep), "--x", "lr"], "--x lr: not a swept field"),
        (["report", str(sweep), "--out", str(small_tmp)], "is a directory"),
    ):
        code, _, err = run_cli(argv)
        assert code == 2 and message in err, (argv, err)


@pytest.fixture
def small_tmp(tmp_path) -> Path:
    return tmp_path


def test_cli_report_sweep_with_run_reports_links_them(analysed, tmp_path):
    """``report SWEEP_DIR --run-reports`` on a one-run sweep: the run's report is written and
    linked; ``--out`` elsewhere links relative to the page."""
    sweep = tmp_path / "one"
    shutil.copytree(analysed[0], sweep)
    manifest = read_manifest(sweep)
    name = next(iter(manifest.runs))
    manifest.runs = {name: manifest.runs[name]}
    write_manifest(sweep, manifest)
    out = tmp_path / "pages" / "sweep.html"
    code, stdout, err = run_cli(["report", str(sweep), "--run-reports", "--out", str(out)])
    assert code == 0, err
    assert f"wrote {out}" in stdout
    assert (run_path(sweep, name) / "report.html").is_file()
    href = "../one/runs/" + name.replace(",", "%2C").replace("=", "%3D") + "/report.html"
    assert f'<a href="{href}">' in out.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# in a browser


@pytest.fixture(scope="module")
def chromium() -> str:
    from test_browser import find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    return path


@pytest.mark.browser
def test_sweep_report_renders_offline_without_errors(chromium, analysed, tmp_path):
    from test_browser import inspect_page

    page = write_sweep_report(analysed[0], tmp_path / "sweep_report.html")
    state = inspect_page(page, timeout=40)
    assert state["loaded"] and state["errors"] == []
    assert state["n_plots"] == 4 and state["n_drawn"] == 4


@pytest.mark.browser
def test_hostile_sweep_report_runs_nothing_in_the_browser(chromium, analysed, tmp_path):
    from test_browser import inspect_page

    page = write_sweep_report(hostile_sweep(analysed, tmp_path))
    state = inspect_page(page, timeout=40)
    assert state["loaded"] and state["errors"] == []
    assert state["n_plots"] >= 3 and state["n_drawn"] == state["n_plots"]
    assert state["injected"] is False


def test_nan_cells_round_trip(tmp_path):
    from tl_grokking.analysis.sweep import RunsTable, write_runs_csv

    row = {"name": "a,b", "status": "done", "lr": 1e-3}
    row.update({n: None for n, _ in ANALYSIS_COLUMNS})
    row.update(grokked=False, final_test_loss=math.nan, key_freqs=[], n_key_freqs=0)
    path = write_runs_csv(tmp_path / RUNS_CSV, RunsTable(axes=["lr"], rows=[row]))
    back = read_runs_csv(path).rows[0]
    assert back["name"] == "a,b" and back["lr"] == 1e-3 and math.isnan(back["final_test_loss"])
    assert back["key_freqs"] == [] and back["grokked"] is False
