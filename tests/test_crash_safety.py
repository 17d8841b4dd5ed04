"""Crash safety of a training run: SIGKILL mid-run, check the run directory, resume bit-exactly.

Also: the trainer refuses an unusable output directory without writing anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tl_grokking.cli import main
from tl_grokking.runs.checkpoints import load_checkpoint, load_run
from tl_grokking.runs.rundir import list_checkpoints, load_safetensors, read_metrics
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import train_model

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

# Tiny, so that the whole test stays well under 30 s even on a loaded 2-core machine.
CONFIG = dict(
    p=17, d_model=16, n_heads=2, d_mlp=32, frac_train=0.5, seed=0, weight_decay=1.0,
    epochs=300, log_every=10, checkpoint_every=10,
)  # fmt: skip

FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in CONFIG.items()] + [
    "--no-progress"
]

# The killed run is the `tl-grokking train` command in its own interpreter (one thread, as the
# in-process resume below), started as `python -m tl_grokking`.
CLI = ["-m", "tl_grokking"]


def _start_training(run_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as stderr:  # a file, not a pipe: a full pipe would block the child
        return subprocess.Popen(
            [sys.executable, *CLI, "train", f"--out={run_dir}", *FLAGS],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _kill_after_checkpoints(
    proc: subprocess.Popen, run_dir: Path, log: Path, n: int, timeout: float
) -> int:
    """Poll until ``n`` checkpoints past epoch 0 exist, then SIGKILL; return the last epoch seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended before the kill (rc {proc.returncode}): "
                        f"{log.read_text()[-2000:]}")  # fmt: skip
        found = [e for e, _ in list_checkpoints(run_dir) if e > 0]
        if len(found) >= n:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return max(found)
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no {n} checkpoints within {timeout} s")


def _one_thread(fn, *args, **kwargs):
    """Run ``fn`` with one intra-op thread, like the subprocess (bit-identity needs it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    log = tmp_path / "stderr.txt"
    proc = _start_training(killed, log)
    seen = _kill_after_checkpoints(proc, killed, log, n=3, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert seen < CONFIG["epochs"]

    # --- the directory the crash left is consistent --------------------------------------
    listed = list_checkpoints(killed)
    on_disk = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert [p.name for _, p in listed] == sorted(
        n for n in on_disk if n.startswith("epoch_") and n.endswith(".safetensors")
    )  # anything else (an interrupted write's temp file) is not listed as a checkpoint
    assert all(n.startswith(".") and n.endswith(".tmp") for n in set(on_disk) - {
        p.name for _, p in listed
    })  # fmt: skip
    for epoch, path in listed:
        model = load_checkpoint(path)  # every listed checkpoint is complete and valid
        assert model.cfg.d_vocab == CONFIG["p"] + 1, epoch
    run = load_run(killed)
    assert run.epochs == [e for e, _ in listed]
    metrics = read_metrics(killed)
    epochs_logged = [m["epoch"] for m in metrics]
    assert epochs_logged == sorted(set(epochs_logged)) and epochs_logged[0] == 0
    assert load_checkpoint(killed / "resume.safetensors") is not None

    # --- resume to the end with nothing but --out (the flags are read from config.json);
    # compare with an uninterrupted run ------------------------------------------------------
    assert _one_thread(main, ["train", f"--out={killed}", "--resume", "--no-progress"]) == 0
    assert _one_thread(main, ["train", f"--out={reference}", *FLAGS]) == 0
    final = CONFIG["epochs"]
    resumed_ckpts, reference_ckpts = list_checkpoints(killed), list_checkpoints(reference)
    assert [e for e, _ in resumed_ckpts] == [e for e, _ in reference_ckpts]
    assert resumed_ckpts[-1][0] == final
    for (epoch, a), (_, b) in zip(resumed_ckpts, reference_ckpts, strict=True):
        ta, tb = load_safetensors(a), load_safetensors(b)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"epoch {epoch}: {key} differs"
    # the metrics history is the same too (wall-clock fields aside)
    strip = ("elapsed",)
    got = [{k: v for k, v in m.items() if k not in strip} for m in read_metrics(killed)]
    want = [{k: v for k, v in m.items() if k not in strip} for m in read_metrics(reference)]
    assert got == want


SMALL = TrainConfig(**{**CONFIG, "epochs": 2, "log_every": 1, "checkpoint_every": 1})


def test_output_path_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="results.txt is a file, not a directory"):
        train_model(SMALL, blocker / "run", progress=False)
    with pytest.raises(NotADirectoryError, match="results.txt is a file"):  # run dir is a file
        train_model(SMALL, blocker, progress=False)
    assert blocker.read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def _unwritable_parent(tmp_path: Path) -> Path | None:
    """A directory this process cannot create entries in: a read-only temp directory, or (as
    root, which ignores permission bits) sysfs, which refuses new entries to everyone."""
    if os.name == "posix" and os.geteuid() != 0:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o500)
        return parent
    sysfs = Path("/sys")
    probe = sysfs / "tl_grokking_write_probe"
    try:
        probe.mkdir()
    except OSError:
        return sysfs
    probe.rmdir()  # pragma: no cover - a writable /sys: nothing here is unwritable
    return None


def test_unwritable_output_directory_is_refused(tmp_path):
    parent = _unwritable_parent(tmp_path)
    if parent is None:  # pragma: no cover
        pytest.skip("no unwritable directory on this machine (root with a writable /sys)")
    before = sorted(p.name for p in parent.iterdir())
    try:
        with pytest.raises(OSError):
            train_model(SMALL, parent / "tl_grokking_run", progress=False)
        assert sorted(p.name for p in parent.iterdir()) == before
    finally:
        if parent.is_relative_to(tmp_path):
            parent.chmod(0o700)


# ---- the kill -9 harness ------------------------------------------------------------------------

#: SIGKILLs of the harness below (TL_GROKKING_KILL_TRIALS=100 for a longer run).
KILL_TRIALS = int(os.environ.get("TL_GROKKING_KILL_TRIALS", "20"))
HARNESS = dict(CONFIG, epochs=2000, log_every=5, checkpoint_every=5, threads=1)
HARNESS_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in HARNESS.items()] + ["--no-progress"]


def _progress(run_dir: Path) -> int:
    """Bytes of the metrics log: grows with every logged epoch (and shrinks on a resume)."""
    path = run_dir / "metrics.jsonl"
    return path.stat().st_size if path.is_file() else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """KILL_TRIALS kill -9s of `tl-grokking train` / `train --resume` at random moments — most
    while it trains (so during checkpoint, resume-state and metrics writes), every fourth
    while a resume is still starting up — then one last resume; the checkpoints and the
    metrics equal an uninterrupted run's, and no temporary file is left."""
    import random

    killed, reference, log = tmp_path / "killed", tmp_path / "reference", tmp_path / "log"
    rng = random.Random(1234)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    kills = during_training = 0
    for trial in range(10 * KILL_TRIALS):
        if kills == KILL_TRIALS:
            break
        resume = ["--resume"] if (killed / "config.json").is_file() else []
        before = _progress(killed)
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, *CLI, "train", f"--out={killed}", *HARNESS_FLAGS, *resume],
                env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        early = bool(resume) and trial % 4 == 3
        deadline = time.monotonic() + 120
        if early:  # kill during start-up or the resume's own reads and rewrites
            time.sleep(rng.uniform(0.2, 3.0))
        else:  # wait until it trains, then kill at a random moment of the next ~0.1 s
            while proc.poll() is None and _progress(killed) <= before + 200:
                assert time.monotonic() < deadline, "training did not progress"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.1))
        if proc.poll() is not None:  # it finished (or failed) before the kill
            assert proc.returncode == 0, log.read_text()[-2000:]
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        during_training += not early
    assert kills == KILL_TRIALS, f"the run finished after {kills} kills"
    assert during_training >= KILL_TRIALS // 2

    args = ["train", f"--out={killed}", "--resume", "--no-progress"]
    assert subprocess.run([sys.executable, *CLI, *args], env=env).returncode == 0
    ref = ["train", f"--out={reference}", *HARNESS_FLAGS]
    assert subprocess.run([sys.executable, *CLI, *ref], env=env).returncode == 0
    got, want = list_checkpoints(killed), list_checkpoints(reference)
    assert [e for e, _ in got] == [e for e, _ in want] and got[-1][0] == HARNESS["epochs"]
    for (epoch, a), (_, b) in zip(got, want, strict=True):
        ta, tb = load_safetensors(a), load_safetensors(b)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), epoch
    strip = ("elapsed",)
    got_m = [{k: v for k, v in m.items() if k not in strip} for m in read_metrics(killed)]
    want_m = [{k: v for k, v in m.items() if k not in strip} for m in read_metrics(reference)]
    assert got_m == want_m
    leftovers = [*killed.glob(".*.tmp"), *(killed / "checkpoints").glob(".*.tmp")]
    assert not leftovers
