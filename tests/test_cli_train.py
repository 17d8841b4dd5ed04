"""``tl-grokking train``: flags map onto TrainConfig, help is complete, bad input exits 2."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tl_grokking.cli import SUBCOMMANDS, main
from tl_grokking.runs.rundir import list_checkpoints, read_metrics
from tl_grokking.training.trainer import TrainConfig

TINY_ARGS = [
    "--p", "13", "--frac-train", "0.5", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32",
    "--epochs", "12", "--log-every", "4", "--checkpoint-every", "6", "--no-progress",
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registered():
    assert "train" in SUBCOMMANDS


def test_help_documents_every_field_with_paper_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in text, field.name
    for flag in ("--out", "--resume", "--overwrite", "--no-progress"):
        assert flag in text
    for default in (
        "[113]",
        "[0.3]",
        "[1e-3]",
        "[1.0]",
        "[0.9]",
        "[0.98]",
        "[10]",
        "[128]",
        "[512]",
    ):
        assert default in text, default
    assert "examples:" in text and text.count("tl-grokking train --out") == 2


def test_train_writes_the_configured_run_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--seed", "3", "--lr", "0.002", *TINY_ARGS]) == 0
    stored = json.loads((out / "config.json").read_text())
    expected = TrainConfig(
        p=13, frac_train=0.5, d_model=16, n_heads=2, d_mlp=32, epochs=12, log_every=4,
        checkpoint_every=6, seed=3, lr=0.002,
    )  # fmt: skip
    assert stored == expected.to_dict()
    assert [e for e, _ in list_checkpoints(out)] == [0, 6, 12]
    assert [r["epoch"] for r in read_metrics(out)] == [0, 4, 8, 12]
    assert "trained to epoch 12" in capsys.readouterr().out

    # same directory again: refused (exit 2, clean message); --resume with more epochs works
    assert main(["train", "--out", str(out), "--seed", "3", "--lr", "0.002", *TINY_ARGS]) == 2
    assert "already holds a run" in capsys.readouterr().err
    more = [a if a != "12" else "18" for a in TINY_ARGS]
    args = ["train", "--out", str(out), "--seed", "3", "--lr", "0.002", "--resume", *more]
    assert main(args) == 0
    assert [e for e, _ in list_checkpoints(out)] == [0, 6, 12, 18]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--p", "2"], "p must be"),
        (["--frac-train", "1.5"], "frac_train"),
        (["--epochs", "0"], "epochs"),
        (["--d-model", "30", "--n-heads", "4"], "divisible"),
        (["--log-every", "0"], "log_every"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_values_exit_2_with_message(argv, message, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-grokking train: error:") and message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv",
    [["--p", "seven"], ["--act-fn", "tanh"], ["--bogus"], []],  # [] lacks --out
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_bad_output_directories(tmp_path, capsys):
    """A file where a directory is expected, and --resume with nothing to resume: exit 2 with a
    one-line message naming the path, and nothing written."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "run"):
        assert main(["train", "--out", str(out), *TINY_ARGS]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tl-grokking train: error:") and err.count("\n") == 1
        assert "notes.txt is a file, not a directory" in err
    assert blocker.read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "missing"):
        assert main(["train", "--out", str(out), "--resume", *TINY_ARGS]) == 2
        err = capsys.readouterr().err
        assert "--resume" in err and "holds no run to resume" in err and str(out) in err
    assert list(empty.iterdir()) == [] and not (tmp_path / "missing").exists()
    assert main(["train", "--out", str(empty), "--resume", "--overwrite", *TINY_ARGS]) == 2
    assert "--resume and --overwrite exclude each other" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt"]

    # report --out: a directory, or a path under a file, is refused before any analysis
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY_ARGS]) == 0
    capsys.readouterr()
    # --resume without resume.safetensors must not wipe the checkpoints
    state = (run / "resume.safetensors").read_bytes()
    (run / "resume.safetensors").unlink()
    assert main(["train", "--out", str(run), "--resume", *TINY_ARGS]) == 2
    assert "resume.safetensors is missing but checkpoints exist" in capsys.readouterr().err
    assert [e for e, _ in list_checkpoints(run)] == [0, 6, 12]
    (run / "resume.safetensors").write_bytes(state)
    for out, message in ((empty, "is a directory"), (blocker / "r.html", "is a file")):
        assert main(["report", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tl-grokking report: error: --out") and message in err
    assert list(empty.iterdir()) == [] and blocker.read_text() == "keep me"
    assert not (run / "report.html").exists()
