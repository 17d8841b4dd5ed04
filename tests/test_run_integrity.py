"""Run directories against concurrency, overwrite, tampering and size (docs/bad_input.md):
one writer at a time, derived files removed with the run, a resume state validated before use,
leftovers of a crash removed, one file mode, a memory estimate before allocation."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch

from tl_grokking.analysis.progress import MEASURES_FILE, PHASES_FILE
from tl_grokking.cli import main
from tl_grokking.figures.report import REPORT_FILE
from tl_grokking.runs.rundir import (
    DERIVED_FILES,
    LOCK_FILE,
    RESUME_FILE,
    RunDirLockedError,
    checkpoint_path,
    list_checkpoints,
    load_safetensors,
    read_metrics,
    run_lock,
    save_safetensors,
)
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import (
    ResumeStateError,
    TooLargeError,
    check_memory,
    memory_estimate,
    train_model,
)

TINY = dict(p=13, frac_train=0.5, d_model=16, n_heads=2, d_mlp=32, lr=3e-3, epochs=20,
            log_every=5, checkpoint_every=10, threads=1)  # fmt: skip


def _train(run_dir, **changes):
    return train_model(TrainConfig(**{**TINY, **changes}), run_dir, progress=False)


# ---- one writer ---------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):
        with pytest.raises(
            RunDirLockedError, match=f"being written by another process \\(pid {os.getpid()}\\)"
        ):
            _train(run)
        assert (
            main(["train", "--out", str(run), "--p", "13", "--epochs", "2", "--no-progress"]) == 2
        )
        assert "being written by another process" in capsys.readouterr().err
    assert not (run / "config.json").exists()  # the refused writer wrote nothing
    _train(run)  # the lock is free again
    assert (run / LOCK_FILE).is_file()


def test_the_lock_is_held_across_processes_and_freed_by_kill(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import sys, time; from tl_grokking.runs.rundir import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLockedError, match=f"pid {holder.pid}"):
            _train(run)
    finally:
        holder.kill()  # kill -9: the OS releases the lock
        holder.wait()
    _train(run)
    assert len(read_metrics(run)) == 5  # one writer's lines, once each


# ---- overwrite ----------------------------------------------------------------------------------


def test_overwrite_removes_what_was_derived_from_the_old_run(tmp_path):
    assert DERIVED_FILES == (MEASURES_FILE, PHASES_FILE, REPORT_FILE)
    run = tmp_path / "run"
    _train(run)
    for name in DERIVED_FILES:
        (run / name).write_text("old run's numbers")
    (run / "notes.txt").write_text("mine")
    train_model(TrainConfig(**{**TINY, "seed": 1}), run, overwrite=True, progress=False)
    assert not any((run / name).exists() for name in DERIVED_FILES)
    assert (run / "notes.txt").read_text() == "mine"  # only what a run writes is removed


# ---- a resume state is validated before it is used --------------------------------------------


def _tamper(run, *, metadata=None, drop=(), reshape=()):
    path = run / RESUME_FILE
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    tensors = {k: v for k, v in load_safetensors(path).items() if k not in drop}
    for key in reshape:
        tensors[key] = torch.zeros(3)
    save_safetensors(tensors, path, metadata={**meta, **(metadata or {})})


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (dict(metadata={"epoch": "-10"}), r"epoch '-10', not a nonnegative integer"),
        (dict(metadata={"epoch": "ten"}), r"epoch 'ten'"),
        (dict(metadata={"epoch": "15"}), r"epoch 15, but .*epoch_15\.safetensors .* is missing"),
        (dict(drop=("optim.embed.W_E.exp_avg",)), r"AdamW exp_avg of embed\.W_E missing"),
        (dict(drop=("model.unembed.W_U",)), r"weight unembed\.W_U missing"),
        (dict(reshape=("model.embed.W_E",)), r"weight embed\.W_E has shape \(3,\)"),
        (
            dict(reshape=("optim.blocks.0.mlp.W_in.exp_avg_sq",)),
            r"exp_avg_sq of blocks\.0\.mlp\.W_in has shape",
        ),
    ],
)
def test_a_tampered_resume_state_is_refused_and_nothing_is_changed(tmp_path, tamper, message):
    run = tmp_path / "run"
    _train(run)
    _tamper(run, **tamper)
    before = {p.name: p.read_bytes() for _, p in list_checkpoints(run)}
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(ResumeStateError, match=message):
        train_model(TrainConfig(**{**TINY, "epochs": 30}), run, resume=True, progress=False)
    assert {p.name: p.read_bytes() for _, p in list_checkpoints(run)} == before
    assert (run / "metrics.jsonl").read_text() == metrics


def test_resuming_past_the_asked_epochs_is_refused(tmp_path):
    run = tmp_path / "run"
    _train(run)
    with pytest.raises(ResumeStateError, match="already at epoch 20, past the 10 epochs"):
        train_model(TrainConfig(**{**TINY, "epochs": 10}), run, resume=True, progress=False)
    # the same number of epochs is a finished run, reused as it is (reproduce relies on that)
    assert train_model(TrainConfig(**TINY), run, resume=True, progress=False).epoch == 20


def test_resume_removes_the_temporary_files_of_a_killed_write(tmp_path):
    run = tmp_path / "run"
    _train(run)
    for leftover in (
        run / ".metrics.jsonl.abc.tmp",
        run / "checkpoints" / ".epoch_30.safetensors.x.tmp",
    ):
        leftover.write_bytes(b"half")
    train_model(TrainConfig(**{**TINY, "epochs": 30}), run, resume=True, progress=False)
    assert not list(run.glob(".*.tmp")) and not list((run / "checkpoints").glob(".*.tmp"))


# ---- one file mode ------------------------------------------------------------------------------


def test_every_file_of_a_run_has_the_same_mode(tmp_path):
    run = tmp_path / "run"
    _train(run)
    files = [
        run / "config.json",
        run / "metrics.jsonl",
        run / RESUME_FILE,
        checkpoint_path(run, 10),
    ]
    modes = {stat.S_IMODE(path.stat().st_mode) for path in files}
    assert len(modes) == 1, modes


# ---- memory before allocation -------------------------------------------------------------------


def test_the_memory_estimate_refuses_a_run_that_cannot_fit():
    config = TrainConfig(p=2003)
    parts = memory_estimate(config)
    assert parts["logits of all p² pairs"] >= 2003**2 * 2003 * 4  # the p² × p logits at least
    with pytest.raises(
        TooLargeError, match=r"needs about .* GB of memory .* but 1 GB are available"
    ):
        check_memory(config, available=10**9)
    check_memory(TrainConfig(**TINY), available=10**9)  # tiny runs fit


def test_a_huge_p_is_refused_before_anything_is_allocated(tmp_path, capsys):
    start = time.perf_counter()
    code = main(["train", "--out", str(tmp_path / "run"), "--p", "100003", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "GB of memory" in err, err
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "run").exists()


# ---- formats by their bytes ---------------------------------------------------------------------


def test_a_file_is_read_by_its_bytes_not_its_name(tmp_path):
    """torch.load picks a format by the suffix; the loader decides by the first bytes."""
    from tl_grokking.model.config import ModelConfig
    from tl_grokking.model.transformer import make_model, tl3_state_dict
    from tl_grokking.runs.checkpoints import CheckpointFormatError, detect_format, load_checkpoint

    state = tl3_state_dict(make_model(ModelConfig(p=13, d_model=16, n_heads=2, d_mlp=32)))
    torch.save(state, tmp_path / "named.safetensors")  # a torch zip with a safetensors name
    assert detect_format(tmp_path / "named.safetensors") == "state_dict"
    model = load_checkpoint(tmp_path / "named.safetensors")
    assert all(torch.equal(v, state[k]) for k, v in tl3_state_dict(model).items())
    save_safetensors(state, tmp_path / "named.pt")  # and the other way round
    assert detect_format(tmp_path / "named.pt") == "safetensors"
    (tmp_path / "zip.safetensors").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointFormatError, match="corrupt or truncated torch file"):
        load_checkpoint(tmp_path / "zip.safetensors")


# ---- run files are validated on read ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"p": 23.5}, r"config\.json: p must be an integer >= 3, got 23\.5"),
        ({"p": "23"}, r"config\.json: p must be an integer >= 3, got '23'"),
        ({"seed": None}, r"config\.json: seed must be an integer >= 0, got None"),
        ({"frac_train": 2}, r"config\.json: frac_train must be in the open interval"),
        ({"task": "nope"}, r"config\.json: task must be one of"),
        ({"d_mlp": "many"}, r"config\.json: d_mlp must be a positive integer"),
    ],
)
def test_a_malformed_config_json_is_refused_naming_file_and_field(
    shipped_run, tmp_path, change, message, capsys
):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(shipped_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **change}))
    from tl_grokking.runs.checkpoints import load_run
    from tl_grokking.runs.rundir import RunDirError

    with pytest.raises(RunDirError, match=message):
        load_run(run)
    for command in (["analyze", str(run)], ["train", "--out", str(run), "--resume"]):
        assert main([*command, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "config.json" in err, err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"epoch": 5, "test_acc": "high"}', r"line 2: test_acc must be a number, got 'high'"),
        ('{"epoch": -5}', r"line 2: epoch must be a nonnegative integer, got -5"),
        ('{"epoch": "5"}', r"line 2: epoch must be a nonnegative integer, got '5'"),
        ('{"epoch": 5, "train_loss": true}', r"line 2: train_loss must be a number, got True"),
        ("[1, 2]", r"line 2 must be a JSON object, got list"),
    ],
)
def test_a_malformed_metrics_line_is_refused_naming_the_line(tmp_path, line, message):
    from tl_grokking.runs.rundir import RunDirError

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "test_acc": 0.1}\n' + line + "\n")
    with pytest.raises(RunDirError, match=message):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_bytes(b'{"epoch": 0}\n\xff\xfe\n')
    with pytest.raises(RunDirError, match=r"metrics\.jsonl is not UTF-8 text"):
        read_metrics(tmp_path)


# ---- derived files know what they were computed from --------------------------------------------


def test_measures_of_another_run_with_the_same_epochs_are_not_shown_as_this_runs(tmp_path):
    """measures.csv / phases.json carry the run's fingerprint: copied next to another run with
    the same checkpoint epochs (or left after the run changed), the report recomputes them."""
    import html
    import shutil

    from tl_grokking.analysis.progress import analyze_run
    from tl_grokking.figures.report import build_report
    from tl_grokking.runs.rundir import read_json, run_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    _train(a)
    _train(b, seed=1)
    analyze_run(a, progress=False)
    assert read_json(a / PHASES_FILE)["fingerprint"] == run_fingerprint(a) != run_fingerprint(b)
    page = build_report(a)
    assert "out of date" not in page
    for name in (MEASURES_FILE, PHASES_FILE):
        shutil.copy(a / name, b / name)
    page = html.unescape(build_report(b))
    assert f"{MEASURES_FILE} is out of date: it was not computed from the run's checkpoints" in page


# ---- arguments ----------------------------------------------------------------------------------


def test_a_negative_number_in_exponent_form_reaches_the_validator(tmp_path, capsys):
    """argparse took '-1e-3' for a flag ('expected one argument'); it is a value."""
    assert main(["train", "--out", str(tmp_path / "r"), "--lr", "-1e-3"]) == 2
    assert "lr must be in (0, inf), got -0.001" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["train", "--out"], ["reproduce", "--quick", "--out"]])
def test_an_empty_out_is_refused_not_taken_for_the_current_directory(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, ""])
    assert info.value.code == 2
    assert "argument --out: must be a path, got an empty string" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phases": "x"}, r"phases\.json: phases must be a list of \{name, start, end\} or null"),
        ({"key_freqs": "abc"}, r"phases\.json: key_freqs must be a list of integers, got 'abc'"),
        ({"cleanup_end": "late"}, r"phases\.json: cleanup_end must be a number or null"),
        ({"notes": [1]}, r"phases\.json: notes must be a list of strings"),
        ({"phases": [{"name": "cleanup", "start": 0, "end": "late"}]}, r"phases\[0\] must be"),
    ],
)
def test_a_malformed_phases_json_is_refused_naming_the_field(tmp_path, change, message):
    import json

    from tl_grokking.analysis.progress import analyze_run
    from tl_grokking.figures.report import build_report
    from tl_grokking.runs.rundir import RunDirError

    run = tmp_path / "run"
    _train(run)
    analyze_run(run, progress=False)
    record = json.loads((run / PHASES_FILE).read_text())
    (run / PHASES_FILE).write_text(json.dumps({**record, **change}))
    with pytest.raises(RunDirError, match=message):
        build_report(run)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch,train_loss\n0,abc\n", r"line 2: train_loss must be a number, got 'abc'"),
        ("epoch,train_loss\nx,1\n", r"line 2: epoch must be an integer, got 'x'"),
        ("train_loss,epoch\n1,0\n", r"line 1 must name distinct columns, 'epoch' first"),
        ("epoch,a,a\n0,1,2\n", r"line 1 must name distinct columns"),
    ],
)
def test_a_malformed_measures_csv_is_refused_naming_line_and_column(tmp_path, text, message):
    from tl_grokking.analysis.progress import read_measures_csv

    (tmp_path / MEASURES_FILE).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_measures_csv(tmp_path / MEASURES_FILE)
    (tmp_path / MEASURES_FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_measures_csv(tmp_path / MEASURES_FILE)


# ---- a compressed archive is sized before it is inflated ---------------------------------------


def _deflated_archive(path, pad: int) -> None:
    """A torch.save zip of a small state dict and ``pad`` zero floats, every entry re-packed
    deflated (torch.save stores them): ``pad`` floats of declared size in a few KB."""
    import io
    import zipfile

    plain = io.BytesIO()
    torch.save({"embed.W_E": torch.randn(18, 16), "pad": torch.zeros(pad)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename), zipfile.ZIP_DEFLATED)


def test_a_compressed_archive_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    """A zip bomb is refused from the zip directory's declared sizes, before torch.load
    inflates anything; the message names the file, the sizes and the bound."""
    from tl_grokking.runs import checkpoints
    from tl_grokking.runs.checkpoints import CheckpointSizeError, read_checkpoint_file

    bomb = tmp_path / "bomb.pt"
    _deflated_archive(bomb, pad=1_000_000)  # 4 MB of zeros
    assert bomb.stat().st_size < 50_000
    assert set(read_checkpoint_file(bomb)[0]) == {"embed.W_E", "pad"}  # within the bound

    monkeypatch.setattr(checkpoints, "INFLATE_FLOOR", 2**20)  # a bound the test can cross
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(CheckpointSizeError) as info:
        read_checkpoint_file(bomb)
    message = str(info.value)
    assert str(bomb) in message and "refusing to load" in message
    assert "declare 40" in message and "more than the 1048576 bytes" in message
    assert "/data/" in message and "compressed" in message  # the largest entry, named


def test_a_forged_declared_size_is_refused_or_fails_as_corrupt(tmp_path):
    import struct

    from tl_grokking.runs.checkpoints import (
        CheckpointFormatError,
        CheckpointSizeError,
        read_checkpoint_file,
    )

    def forge(size):
        data = bytearray((tmp_path / "bomb.pt").read_bytes())
        pos = data.find(b"PK\x01\x02")
        while pos != -1:  # central directory entries: the uncompressed size at +24
            name = bytes(data[pos + 46 : pos + 46 + struct.unpack_from("<H", data, pos + 28)[0]])
            if name.endswith(b"/data/1"):
                struct.pack_into("<I", data, pos + 24, size)
            pos = data.find(b"PK\x01\x02", pos + 46)
        (tmp_path / "forged.pt").write_bytes(bytes(data))
        return tmp_path / "forged.pt"

    _deflated_archive(tmp_path / "bomb.pt", pad=1000)
    with pytest.raises(CheckpointSizeError, match=r"forged\.pt: refusing to load.*4294967294"):
        read_checkpoint_file(forge(2**32 - 2))  # declares 4 GB: beyond the 256 MiB floor
    with pytest.raises(CheckpointFormatError, match=r"forged\.pt: corrupt or truncated torch"):
        read_checkpoint_file(forge(8))  # declares less than it holds: torch stops there


def test_a_stored_archive_larger_than_memory_allows_is_refused(tmp_path, monkeypatch):
    from tl_grokking.runs import checkpoints
    from tl_grokking.runs.checkpoints import CheckpointSizeError, read_checkpoint_file

    torch.save({"w": torch.zeros(1_000_000)}, tmp_path / "big.pt")  # stored, as torch writes
    monkeypatch.setattr(checkpoints, "available_memory", lambda: 2_000_000)
    with pytest.raises(CheckpointSizeError, match=r"half of the 2 MB of memory available"):
        read_checkpoint_file(tmp_path / "big.pt")


def test_a_legacy_pickle_declaring_huge_storages_fails_as_corrupt(tmp_path):
    """A legacy (non-zip) file cannot be sized before loading, and cannot expand either: torch
    fills each storage from the file, so a storage larger than the file is a truncated file."""
    import io
    import struct

    from tl_grokking.runs.checkpoints import CheckpointFormatError, read_checkpoint_file

    out = io.BytesIO()
    torch.save({"w": torch.zeros(10)}, out, _use_new_zipfile_serialization=False)
    blob = out.getvalue()
    for numel in (2_000_000_000, 200_000_000_000):  # 8 GB (allocated lazily), 800 GB (refused)
        code = b"\x8a\x05" + numel.to_bytes(5, "little")  # LONG1: the storage's size and shape
        head = blob[:-48].replace(b"K\nN)", code + b"N)", 1)
        head = head.replace(b"K\x00K\n\x85", b"K\x00" + code + b"\x85", 1)
        (tmp_path / "huge.pt").write_bytes(head + struct.pack("<q", numel) + blob[-40:])
        with pytest.raises(CheckpointFormatError, match=r"huge\.pt: corrupt or truncated torch"):
            read_checkpoint_file(tmp_path / "huge.pt")


# ---- special files are named for what they are, never opened -----------------------------------


@contextlib.contextmanager
def _unblocking(fifo):
    """If a reader blocks on ``fifo`` for long, open it for writing (the reader then reads an
    empty file) and say so: the test fails instead of hanging."""
    done, blocked = threading.Event(), []

    def writer():
        if not done.wait(20):  # a hang guard, not a measurement
            blocked.append(True)
            with open(fifo, "wb"):
                pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        assert not blocked, f"{fifo} was opened for reading: the reader blocked"


SPECIAL_KINDS = {
    "fifo": (lambda path: os.mkfifo(path), r"is a FIFO \(named pipe\)"),
    "loop": (lambda path: os.symlink(path.name, path), r"is a symbolic link loop"),
    "dir": (lambda path: path.mkdir(), r"is a directory, not a"),
    "device": (lambda path: os.symlink("/dev/zero", path), r"is a character device"),
}


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("where", ["checkpoint", "config.json", "metrics.jsonl", "file"])
def test_special_files_are_named_for_what_they_are(tmp_path, kind, where):
    from tl_grokking.runs.checkpoints import load_checkpoint, load_run
    from tl_grokking.runs.rundir import read_json, read_metrics

    run = tmp_path / "run"
    _train(run)
    make, said = SPECIAL_KINDS[kind]
    target = {
        "checkpoint": checkpoint_path(run, 20),
        "config.json": run / "config.json",
        "metrics.jsonl": run / "metrics.jsonl",
        "file": tmp_path / "model.pt",
    }[where]
    if target.exists():
        target.unlink()
    make(target)
    calls = {
        "checkpoint": [lambda: load_run(run).model(20), lambda: load_checkpoint(target)],
        "config.json": [lambda: load_run(run), lambda: read_json(target)],
        "metrics.jsonl": [lambda: load_run(run), lambda: read_metrics(run)],
        "file": [lambda: load_checkpoint(target), lambda: load_run(target)],
    }[where]
    for call in calls:
        with _unblocking(target if kind == "fifo" else tmp_path / "none"):
            with pytest.raises((OSError, ValueError), match=said) as info:
                call()
        assert target.name in str(info.value) and "does not exist" not in str(info.value)


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_a_special_run_directory_or_output_is_named_by_the_command(tmp_path, kind, capsys):
    """The CLI side (the hostile harness covers every command and file): one line, exit 2."""
    make, said = SPECIAL_KINDS[kind]
    make(tmp_path / "run")
    flags = ["--p", "13", "--epochs", "2", "--no-progress"]
    for argv in (
        ["report", str(tmp_path / "run")],
        ["train", "--out", str(tmp_path / "run"), *flags],
    ):
        if kind == "dir":  # an empty directory: no run there
            continue
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(said, err), err


# ---- a failing write names its file and leaves the old one --------------------------------------


def test_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    from tl_grokking.runs.rundir import append_metrics, write_json

    full = OSError(errno.ENOSPC, "No space left on device")
    write_json(tmp_path / "config.json", {"p": 13})
    append_metrics(tmp_path, {"epoch": 0, "train_loss": 1.0})
    before = (tmp_path / "metrics.jsonl").read_bytes()

    def fail(*args):
        raise full

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match=r"\[Errno 28\] cannot write .*config\.json: No space left"):
        write_json(tmp_path / "config.json", {"p": 17})
    with pytest.raises(OSError, match=r"cannot write .*metrics\.jsonl: No space left"):
        append_metrics(tmp_path, {"epoch": 5, "train_loss": 0.5})
    assert json.loads((tmp_path / "config.json").read_text()) == {"p": 13}
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # no partial line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.jsonl"]


def test_a_checkpoint_is_read_not_mapped(tmp_path):
    """safetensors' load_file maps the file: truncating it in place then kills the reader with
    SIGBUS. The loader reads it (a separate process, so that a regression is a failure, not the
    end of the test run)."""
    code = (
        "import sys, torch\n"
        "from tl_grokking.runs.rundir import load_safetensors, save_safetensors\n"
        "save_safetensors({'w': torch.ones(100_000)}, sys.argv[1])\n"
        "state = load_safetensors(sys.argv[1])\n"
        "open(sys.argv[1], 'wb').close()  # truncated in place by someone else\n"
        "print(float(state['w'].sum()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.safetensors")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout.strip() == "100000.0", done.stderr


def test_an_all_zero_checkpoint_has_nan_gini_and_the_rest_is_measured(tmp_path):
    from tl_grokking.analysis.progress import analyze_run

    run = tmp_path / "run"
    _train(run)
    path = checkpoint_path(run, 20)
    save_safetensors({k: v * 0 for k, v in load_safetensors(path).items()}, path)
    measures, _ = analyze_run(run, progress=False)
    gini_e = measures["gini_W_E"]
    assert math.isnan(gini_e[-1]) and all(math.isfinite(g) for g in gini_e[:-1])
    assert all(math.isfinite(x) for x in measures["test_loss"])
