"""``tl-grokking train``: flags generated from TrainConfig, help is complete, resume reads the
stored configuration, bad input exits 2 with a one-line message in CLI words."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tl_grokking.cli import SUBCOMMANDS, build_parser, main
from tl_grokking.cli._common import config_values
from tl_grokking.runs.rundir import (
    GROK_ACC,
    grok_epoch,
    list_checkpoints,
    load_safetensors,
    read_metrics,
)
from tl_grokking.training.config import RESUMABLE_FIELDS, TrainConfig

TINY_ARGS = [
    "--p", "13", "--frac-train", "0.5", "--d-model", "16", "--n-heads", "2", "--d-mlp", "32",
    "--epochs", "12", "--log-every", "4", "--checkpoint-every", "6", "--no-progress",
]  # fmt: skip

#: Flags that change the trajectory, all away from their defaults (and TINY_ARGS' sizes).
ODD_ARGS = [
    "--p", "11", "--frac-train", "0.6", "--seed", "5", "--lr", "0.004", "--weight-decay", "0.5",
    "--beta1", "0.8", "--beta2", "0.95", "--warmup-steps", "3", "--d-model", "12",
    "--n-heads", "3", "--d-head", "5", "--d-mlp", "24", "--act-fn", "gelu",
    "--d-vocab-out", "12", "--trainable-biases", "mlp", "--attn-rate", "0.7",
    "--log-every", "2", "--checkpoint-every", "4", "--no-progress",
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _same_checkpoints(a, b) -> None:
    ca, cb = list_checkpoints(a), list_checkpoints(b)
    assert [e for e, _ in ca] == [e for e, _ in cb]
    for (epoch, pa), (_, pb) in zip(ca, cb, strict=True):
        ta, tb = load_safetensors(pa), load_safetensors(pb)
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), epoch


def _metrics(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed"} for r in read_metrics(run_dir)]


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
    assert "examples:" in text and text.count("tl-grokking train --out") == 3


def test_flags_are_generated_from_the_config_fields():
    """One place: each flag's help is its field's metadata, its default the field's default,
    and a flag not given leaves the dataclass default in force."""
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    for field in dataclasses.fields(TrainConfig):
        action = actions[field.name]
        assert action.option_strings == ["--" + field.name.replace("_", "-")]
        assert action.help.startswith(field.metadata["help"].replace("%", "%%")), field.name
        assert action.help.endswith("]"), field.name
    args = parser.parse_args(["train", "--out", "x"])
    assert config_values(args, TrainConfig) == {}
    assert TrainConfig(**config_values(args, TrainConfig)) == TrainConfig()
    # every field given on the command line lands in the config, with its type
    args = parser.parse_args(["train", "--out", "x", *ODD_ARGS, "--early-stop-acc", "0.9"])
    config = TrainConfig(**config_values(args, TrainConfig))
    assert (config.p, config.seed, config.lr, config.d_head, config.act_fn) == (
        11, 5, 0.004, 5, "gelu",
    )  # fmt: skip
    assert (config.d_vocab_out, config.trainable_biases, config.attn_rate) == (12, "mlp", 0.7)
    assert config.early_stop_acc == 0.9 and isinstance(config.warmup_steps, int)
    # optional integers take "none" / "off"
    args = parser.parse_args(["train", "--out", "x", "--d-head", "none", "--measure-every", "off"])
    assert config_values(args, TrainConfig) == {"d_head": None, "measure_every": None}


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
    assert main(args) == 0  # retyping the stored values is fine
    assert [e for e, _ in list_checkpoints(out)] == [0, 6, 12, 18]


def test_resume_with_only_out_matches_the_uninterrupted_run(tmp_path, capsys):
    """A run made with non-default flags everywhere is continued with ``--out DIR --resume``
    (plus ``--epochs``) alone, and reaches the checkpoints and metrics of a straight run."""
    part, straight = tmp_path / "part", tmp_path / "straight"
    assert main(["train", "--out", str(part), *ODD_ARGS, "--epochs", "8"]) == 0
    assert main(["train", "--out", str(part), "--resume", "--epochs", "20", "--no-progress"]) == 0
    assert main(["train", "--out", str(straight), *ODD_ARGS, "--epochs", "20"]) == 0
    capsys.readouterr()
    stored = json.loads((part / "config.json").read_text())
    assert stored == json.loads((straight / "config.json").read_text())
    assert stored["epochs"] == 20 and stored["act_fn"] == "gelu" and stored["d_head"] == 5
    _same_checkpoints(part, straight)
    assert _metrics(part) == _metrics(straight)
    # a finished run resumed with nothing but --out: nothing to do, nothing changes
    before = (part / "checkpoints" / "epoch_20.safetensors").stat().st_mtime_ns
    assert main(["train", "--out", str(part), "--resume", "--no-progress"]) == 0
    assert "trained to epoch 20" in capsys.readouterr().out
    assert (part / "checkpoints" / "epoch_20.safetensors").stat().st_mtime_ns == before
    assert _metrics(part) == _metrics(straight)


def test_resume_refuses_flags_that_change_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *ODD_ARGS, "--epochs", "8"]) == 0
    capsys.readouterr()
    config_before = (out / "config.json").read_text()
    metrics_before = (out / "metrics.jsonl").read_text()
    argv = ["train", "--out", str(out), "--resume", "--lr", "0.01", "--seed", "5", "--p", "13"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-grokking train: error: --resume") and err.count("\n") == 1
    assert "--lr 0.01 (stored: 0.004)" in err and "--p 13 (stored: 11)" in err
    assert "--seed" not in err.split("only")[0]  # the stored value: not a difference
    assert "resume=True" not in err and "lr:" not in err
    for name in RESUMABLE_FIELDS:
        assert "--" + name.replace("_", "-") in err
    assert (out / "config.json").read_text() == config_before
    assert (out / "metrics.jsonl").read_text() == metrics_before
    # what may change does change: the device and the early stop (stored in config.json)
    argv = ["train", "--out", str(out), "--resume", "--device", "cpu", "--early-stop-acc", "0.5"]
    assert main([*argv, "--epochs", "10", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["early_stop_acc"] == 0.5


def test_errors_name_flags_not_keywords(tmp_path, capsys):
    """The trainer's remedies read ``resume=True`` in the API and ``--resume`` on the command
    line; every such error is one line."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY_ARGS]) == 0
    capsys.readouterr()
    cases = [
        (TINY_ARGS, "pass --resume to continue it or --overwrite to start again"),
        ([*TINY_ARGS, "--lr", "0.01"], "use another directory, --resume or --overwrite"),
    ]
    for argv, remedy in cases:
        assert main(["train", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert remedy in err and "=True" not in err and err.count("\n") == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(tmp_path / "full"), *TINY_ARGS]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "pass --overwrite" in err and "=True" not in err


def test_summary_line_uses_the_grok_threshold(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--p", "11", "--frac-train", "0.9", "--lr", "0.01", "--warmup-steps", "0"]
    assert main(["train", "--out", str(out), *args, *TINY_ARGS[4:]]) == 0
    text = capsys.readouterr().out
    expected = grok_epoch(read_metrics(out))
    shown = "not reached" if expected is None else f"epoch {expected}"
    assert f"test acc >= {GROK_ACC:g}: {shown}" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--p", "2"], "p must be"),
        (["--frac-train", "1.5"], "frac_train"),
        (["--epochs", "0"], "epochs"),
        (["--d-model", "30", "--n-heads", "4"], "divisible"),
        (["--log-every", "0"], "log_every"),
        (["--device", "tpu"], "device"),
        (["--task", "subtract"], "task must be one of"),
    ],
)
def test_bad_values_exit_2_with_message(argv, message, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-grokking train: error:") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv",
    [["--p", "seven"], ["--act-fn", "tanh"], ["--d-head", "x"], ["--bogus"], []],  # [] lacks --out
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_expected_failures_are_one_line_and_bugs_keep_their_traceback(
    tmp_path, capsys, monkeypatch
):
    # divergence (TrainingDivergedError, a RuntimeError): exit 2, one line
    out = tmp_path / "diverged"
    args = ["--lr", "1e30", "--warmup-steps", "0", "--weight-decay", "0"]
    assert main(["train", "--out", str(out), *TINY_ARGS, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-grokking train: error:") and "diverged" in err
    assert err.count("\n") == 1
    # a corrupt resume.safetensors (a safetensors error): exit 2, one line
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY_ARGS]) == 0
    (run / "resume.safetensors").write_bytes(b"garbage" * 10)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "18"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-grokking train: error:") and err.count("\n") == 1
    # Ctrl-C: 130 and a note; anything else is a bug and keeps its traceback
    import tl_grokking.cli.train as train_cli

    def interrupted(args):
        raise KeyboardInterrupt

    def buggy(args):
        raise KeyError("bug")

    monkeypatch.setattr(train_cli, "run", interrupted)
    assert main(["train", "--out", str(tmp_path / "y")]) == 130
    assert capsys.readouterr().err == "tl-grokking train: interrupted\n"
    monkeypatch.setattr(train_cli, "run", buggy)
    with pytest.raises(KeyError, match="bug"):
        main(["train", "--out", str(tmp_path / "y")])


def test_cli_bad_output_directories(tmp_path, capsys):
    """A file where a directory is expected, and --resume with nothing to resume: exit 2 with a
    one-line message naming the path, and nothing written."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "run"):
        assert main(["train", "--out", str(out), *TINY_ARGS]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tl-grokking train: error: --out") and err.count("\n") == 1
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
    err = capsys.readouterr().err
    assert "resume.safetensors is missing but checkpoints exist" in err
    assert "--overwrite" in err and "=True" not in err
    assert [e for e, _ in list_checkpoints(run)] == [0, 6, 12]
    (run / "resume.safetensors").write_bytes(state)
    for out, message in ((empty, "is a directory"), (blocker / "r.html", "is a file")):
        assert main(["report", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tl-grokking report: error: --out") and message in err
    assert list(empty.iterdir()) == [] and blocker.read_text() == "keep me"
    assert not (run / "report.html").exists()


def test_reproduce_says_what_it_does_with_the_output_directory(tmp_path, capsys):
    """Step 1 of ``reproduce`` names what happens to ``--out``: a new run, a resumed one, or a
    finished one that is reused (not retrained)."""
    from tl_grokking.cli.reproduce import _training_step

    config = TrainConfig(**{**dict(p=13, frac_train=0.5, d_model=16, n_heads=2, d_mlp=32),
                            "epochs": 12, "log_every": 4, "checkpoint_every": 6})  # fmt: skip
    out = tmp_path / "run"
    assert _training_step(config, out, overwrite=False).startswith("training p = 13")
    assert main(["train", "--out", str(out), *TINY_ARGS]) == 0
    capsys.readouterr()
    step = _training_step(config, out, overwrite=False)
    assert step == f"already trained to epoch 12: reusing it ({out})"
    assert _training_step(config.replace(epochs=18), out, overwrite=False).startswith(
        "resuming at epoch 12: p = 13"
    )
    assert _training_step(config.replace(lr=0.01), out, overwrite=False).startswith("training")
    assert _training_step(config, out, overwrite=True).startswith("training")
