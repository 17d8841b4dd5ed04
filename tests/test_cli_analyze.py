"""``tl-grokking analyze``: files written, their contents against the library and the run's own
metrics, the summary, ``--key-freqs``, and clear errors for bad run directories."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from tl_compat import tl_state
from tl_grokking.analysis.phases import detect_phases
from tl_grokking.analysis.progress import read_measures_csv
from tl_grokking.cli import build_parser, main
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import make_model
from tl_grokking.runs.rundir import list_checkpoints, read_metrics, save_safetensors


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread avoids OpenMP contention
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(small_run, dst)
    return dst


@pytest.fixture(scope="module")
def analyzed(small_run, tmp_path_factory):
    """One analyze of a copy of the small run: (run_dir, exit code, stdout, stderr)."""
    dst = tmp_path_factory.mktemp("analyzed") / "run"
    shutil.copytree(small_run, dst)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["analyze", str(dst)])
    return dst, code, out.getvalue(), err.getvalue()


def test_analyze_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "analyze" in sub.choices


def test_analyze_writes_one_row_per_checkpoint(analyzed):
    run_dir, code, _, _ = analyzed
    assert code == 0
    with open(run_dir / "measures.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = [e for e, _ in list_checkpoints(run_dir)]
    assert [int(r["epoch"]) for r in rows] == epochs
    for name in (
        "train_loss",
        "test_loss",
        "train_acc",
        "test_acc",
        "restricted_loss",
        "excluded_loss",
        "gini_W_E",
        "gini_W_L",
        "sum_sq_weights",
    ):
        assert name in rows[0], name
    # the losses/accuracies agree with the trainer's own metrics at the same epochs
    metrics = {r["epoch"]: r for r in read_metrics(run_dir)}
    for r in rows:
        m = metrics[int(r["epoch"])]
        assert float(r["test_acc"]) == pytest.approx(m["test_acc"], abs=1e-12)
        assert float(r["train_loss"]) == pytest.approx(m["train_loss"], rel=1e-5, abs=1e-9)
    # written atomically: no temporary files left behind (the trainer's .lock is not one)
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_phases_json_matches_the_library(analyzed):
    run_dir, _, _, _ = analyzed
    data = json.loads((run_dir / "phases.json").read_text())
    measures = read_measures_csv(run_dir / "measures.csv")
    expected = detect_phases(measures)
    assert data["memorization_end"] == expected.memorization_end
    assert data["circuit_formation_end"] == expected.circuit_formation_end
    assert data["cleanup_end"] == expected.cleanup_end
    assert data["key_freqs"] == measures.key_freqs
    assert data["key_freq_rule"] in ("circuit", "embed")
    assert data["n_checkpoints"] == len(measures)
    first = data["first_epoch"]
    b = [data["memorization_end"], data["circuit_formation_end"], data["cleanup_end"]]
    assert first <= b[0] <= b[1] <= b[2] <= data["last_epoch"]


def test_summary_names_keys_phases_and_the_99_percent_epoch(analyzed):
    run_dir, _, out, err = analyzed
    data = json.loads((run_dir / "phases.json").read_text())
    # independent: the first checkpoint epoch whose logged test accuracy is >= 0.99
    acc99 = next(
        r["epoch"] for r in read_metrics(run_dir) if r["test_acc"] >= 0.99 and r["epoch"] % 50 == 0
    )
    assert data["test_acc_99_epoch"] == acc99
    assert f"first at epoch {acc99}" in out
    assert f"key frequencies: {data['key_freqs']}" in out
    assert f"cleanup ends {data['cleanup_end']}" in out
    assert "checkpoints" in err  # the tqdm bar over checkpoints


def test_key_freqs_option(run_copy, capsys):
    assert main(["analyze", str(run_copy), "--key-freqs", "2", "5", "--no-progress"]) == 0
    data = json.loads((run_copy / "phases.json").read_text())
    assert data["key_freqs"] == [2, 5] and data["key_freq_rule"] == "given"
    header = (run_copy / "measures.csv").read_text().splitlines()[0].split(",")
    assert [h for h in header if h.startswith("excluded_loss_k")] == [
        "excluded_loss_k2",
        "excluded_loss_k5",
    ]
    assert "rule: given" in capsys.readouterr().out
    # the comma form, the comma-and-space form, and the list before RUN_DIR work too
    for argv in (
        [str(run_copy), "--key-freqs", "5,3"],
        [str(run_copy), "--key-freqs", "5,", "3"],
        ["--key-freqs", "5", "3", str(run_copy)],
    ):
        (run_copy / "phases.json").unlink()
        assert main(["analyze", *argv, "--no-progress"]) == 0, argv
        assert json.loads((run_copy / "phases.json").read_text())["key_freqs"] == [3, 5]


KEY_FREQS_FORMS = [
    ["--key-freqs", "14", "19", "RUN"],
    ["--key-freqs", "14,19", "RUN"],
    ["--key-freqs", "14,", "19", "RUN"],
    ["--key-freqs", "14 19", "RUN"],
    ["--key-freqs=14,19", "RUN"],
    ["--key-freqs=14", "19", "RUN"],
    ["RUN", "--key-freqs", "14", "19"],
    ["RUN", "--key-freqs", "14", "19", "--device", "cpu"],
    ["--device", "cpu", "--key-freqs", "14", ",", "19", "RUN"],
]


@pytest.mark.parametrize("command", ["analyze", "ablate"])
@pytest.mark.parametrize("argv", KEY_FREQS_FORMS)
def test_key_freqs_parse_the_same_in_every_command_and_position(command, argv):
    args = build_parser().parse_args([command, *argv])
    assert args.key_freqs == [14, 19]
    assert (args.run_dir if command == "analyze" else args.checkpoint) == "RUN"


@pytest.mark.parametrize("command", ["analyze", "ablate"])
@pytest.mark.parametrize("value", ["", " ", ",", "x", "1.5", "14,x"])
def test_bad_key_freqs_values_are_refused_by_the_parser(command, value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "RUN", "--key-freqs", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --key-freqs" in err and ("at least one integer" in err or "integers" in err)


def test_ablate_takes_the_space_separated_key_freqs(small_run, capsys):
    assert main(["ablate", str(small_run), "--key-freqs", "3", "5", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["ablation_table"]
    assert table["key_freqs"] == [3, 5]


def test_bad_key_freqs(run_copy, capsys):
    assert main(["analyze", str(run_copy), "--key-freqs", "99", "--no-progress"]) == 2
    assert "key_freqs" in capsys.readouterr().err
    assert not (run_copy / "measures.csv").exists()


def test_not_a_directory(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_not_a_run_dir(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_run_without_checkpoints(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    assert main(["analyze", str(run_copy)]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert not (run_copy / "measures.csv").exists()


def test_checkpoints_of_different_shapes(run_copy, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    other = make_model(
        ModelConfig(p=config["p"], d_model=config["d_model"], d_mlp=2 * config["d_mlp"])
    )
    state = {k: v for k, v in tl_state(other).items() if not k.endswith(("mask", "IGNORE"))}
    save_safetensors(state, list_checkpoints(run_copy)[1][1])
    assert main(["analyze", str(run_copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different shapes" in err and "blocks.0.mlp" in err
    assert not (run_copy / "measures.csv").exists()


def test_two_checkpoints_give_measures_but_no_phases(run_copy, capsys):
    for _, path in list_checkpoints(run_copy)[1:-1]:
        path.unlink()
    assert main(["analyze", str(run_copy), "--no-progress", "--key-freqs", "3"]) == 0
    assert len((run_copy / "measures.csv").read_text().splitlines()) == 1 + 2
    data = json.loads((run_copy / "phases.json").read_text())
    assert data["phases"] is None and "at least 3" in data["reason"]
    assert "phases not detected" in capsys.readouterr().out


def test_analyze_a_division_run_omits_the_sum_direction_columns(task_runs, tmp_path):
    from tl_grokking.analysis.progress import progress_measures

    run_dir = tmp_path / "run"
    shutil.copytree(task_runs["div"], run_dir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["analyze", str(run_dir), "--no-progress"]) == 0
    assert "cannot compute the restricted / excluded losses" in out.getvalue()
    with open(run_dir / "measures.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = progress_measures(run_dir, progress=False)
    assert list(rows[0]) == expected.names and "restricted_loss" not in rows[0]
    assert [float(r["test_loss"]) for r in rows] == expected["test_loss"]
    phases = json.loads((run_dir / "phases.json").read_text())
    assert phases["key_freqs"] == [] and "'div'" in phases["key_freq_rule"]
    # explicit key frequencies are refused with the task named, and nothing is written
    (run_dir / "measures.csv").unlink()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["analyze", str(run_dir), "--key-freqs", "1", "--no-progress"]) == 2
    assert "'div'" in err.getvalue() and not (run_dir / "measures.csv").exists()
