"""Sweeps: the spec, the manifest, continuing a sweep, the executors, the command.

The reference for every run of a sweep is the same configuration trained alone by
``train_model`` with one torch thread: a sweep's runs must equal it bit for bit, whichever
executor trained them, and after a worker was killed mid-run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tl_grokking.cli import main
from tl_grokking.runs.rundir import LOCK_FILE, list_checkpoints, load_safetensors, read_metrics
from tl_grokking.runs.sweepdir import (
    MANIFEST_FILE,
    SweepDirError,
    read_manifest,
    run_path,
    write_manifest,
)
from tl_grokking.sweeps.executors import LocalExecutor, RayExecutor, SweepJob, make_executor
from tl_grokking.sweeps.runner import plan_sweep, run_sweep, train_job
from tl_grokking.sweeps.spec import SweepSpec, load_spec, parse_values, run_name
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import train_model

#: A tiny base every sweep here shares (a few hundred milliseconds a run).
BASE = dict(
    p=17, d_model=16, n_heads=2, d_mlp=32, frac_train=0.5, lr=3e-3, epochs=40, log_every=10,
    checkpoint_every=10,
)  # fmt: skip


def _spec(**axes) -> SweepSpec:
    return SweepSpec(axes=axes or {"seed": [0, 1]}, base=dict(BASE))


def _weights(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {epoch: load_safetensors(path) for epoch, path in list_checkpoints(run_dir)}


def _solo(config: TrainConfig, where: Path) -> dict[int, dict[str, torch.Tensor]]:
    """The run trained alone, with one thread (the sweep's default per run)."""
    train_model(config.replace(threads=1), where, progress=False)
    return _weights(where)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for epoch in a:
        assert a[epoch].keys() == b[epoch].keys()
        for key in a[epoch]:
            assert torch.equal(a[epoch][key], b[epoch][key]), (epoch, key)


def _begin(spec: SweepSpec, sweep: Path) -> None:
    """Write the sweep's manifest (all runs pending) without training, as a sweep cut short
    before its first run finished leaves it."""
    plan = plan_sweep(spec, sweep)
    (sweep / "runs").mkdir(parents=True)
    write_manifest(sweep, plan.manifest)


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed"} for r in read_metrics(run_dir)]


# ---------------------------------------------------------------------------------------------
# the spec


def test_parse_values_lists_ranges_and_off():
    assert parse_values("seed", "0-3,7") == [0, 1, 2, 3, 7]
    assert parse_values("seed", " 2 - 4 ") == [2, 3, 4]
    assert parse_values("lr", "1e-3,3e-3") == [1e-3, 3e-3]  # an exponent is not a range
    assert parse_values("weight_decay", "0.3,1,3") == [0.3, 1.0, 3.0]
    assert parse_values("task", "add,sub") == ["add", "sub"]
    assert parse_values("early_stop_acc", "off,0.99") == [None, 0.99]
    assert parse_values("d_head", "none,8") == [None, 8]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("seed", "5-2", "seed: the range '5-2' is empty"),
        ("seed", "one", "seed: 'one' is not a value of this field (it takes integers or ranges"),
        ("seed", "0.5", "seed: '0.5' is not a value"),
        ("lr", "1e-3,,2e-3", "lr: expected a comma-separated list"),
        ("lr", "", "lr: expected a comma-separated list"),
        (
            "weight_decay",
            "off",
            "weight_decay: 'off' is not a value of this field (it takes numbers)",
        ),
        ("learning_rate", "1", "'learning_rate' is not a training-config field; sweepable fields:"),
        ("seed", "0-1000000", "seed: the range '0-1000000' has more than 100000 values"),
    ],
)
def test_parse_values_errors_name_the_field(name, text, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_values(name, text)


def test_grid_and_zip_expansion_order_and_names():
    spec = SweepSpec(axes={"seed": [0, 1], "weight_decay": [0.3, 1.0, 3.0]}, base=dict(BASE))
    points = spec.points()
    assert spec.count() == len(points) == 6
    assert points[:3] == [{"seed": 0, "weight_decay": w} for w in (0.3, 1.0, 3.0)]
    runs = spec.runs()
    assert [r.name for r in runs][:2] == ["seed=0,weight_decay=0.3", "seed=0,weight_decay=1.0"]
    assert all(r.config.p == 17 and r.config.d_mlp == 32 for r in runs)
    assert runs[-1].config.seed == 1 and runs[-1].config.weight_decay == 3.0

    no_lr = {k: v for k, v in BASE.items() if k != "lr"}
    zipped = SweepSpec(axes={"seed": [0, 1], "lr": [1e-3, 3e-3]}, base=no_lr, mode="zip")
    assert [r.name for r in zipped.runs()] == ["seed=0,lr=0.001", "seed=1,lr=0.003"]
    assert SweepSpec(base=dict(BASE)).runs()[0].name == "run" == run_name({})
    # the preset is the starting point; base and axes override it
    quick = SweepSpec(axes={"seed": [0, 1]}, preset="quick").runs()[0].config
    assert (quick.p, quick.d_mlp, quick.epochs, quick.lr) == (53, 256, 1500, 3e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(axes={"seed": [0, 1], "lr": [1e-3]}, mode="zip"),
            "they must have one length, got seed 2, lr 1",
        ),
        (
            dict(axes={"seed": [0]}, base={"seed": 1}),
            "seed: given both as a fixed value and as an axis",
        ),
        (dict(axes={"seed": []}), "axis seed: expected a non-empty list"),
        (dict(axes={"seed": "0-3"}), "axis seed: expected a non-empty list"),
        (dict(axes={"sed": [0]}), "'sed' is not a training-config field"),
        (dict(mode="spiral"), "mode must be one of ('grid', 'zip')"),
        (dict(preset="fast"), "preset must be one of ['paper', 'quick']"),
    ],
)
def test_bad_specs_are_refused_naming_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SweepSpec(**kwargs)


def test_bad_values_name_the_run_and_field_before_anything_runs(tmp_path):
    spec = SweepSpec(axes={"p": [17, 2]}, base={k: v for k, v in BASE.items() if k != "p"})
    with pytest.raises(ValueError, match=r"^sweep run p=2: p must be an integer >= 3, got 2"):
        spec.runs()
    with pytest.raises(ValueError, match="the sweep lists the run seed=1 twice"):
        SweepSpec(axes={"seed": [1, 1.0]}, base=dict(BASE)).runs()
    with pytest.raises(ValueError):
        run_sweep(spec, tmp_path / "s", executor=LocalExecutor(1), progress=False)
    assert not (tmp_path / "s" / MANIFEST_FILE).exists()


def test_toml_spec_and_command_line_overrides(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'preset = "quick"\n[base]\np = 19\nepochs = 30\n[axes]\nseed = "0-2"\n'
        "weight_decay = [0.5, 1.0]\n"
    )
    spec = load_spec(path)
    assert spec.preset == "quick" and spec.base == {"p": 19, "epochs": 30}
    assert spec.axes == {"seed": [0, 1, 2], "weight_decay": [0.5, 1.0]}
    over = spec.with_overrides(axes={"seed": [4], "lr": [1e-3, 2e-3]})
    assert over.axes == {"weight_decay": [0.5, 1.0], "lr": [1e-3, 2e-3]}
    assert over.base == {"p": 19, "epochs": 30, "seed": 4}
    for text, message in [
        ("[axes\nseed = 1", "not valid TOML"),
        ("colour = 1\n", "unknown key(s) colour"),
        ("[axes]\nseed = 'x'\n", "seed: 'x' is not a value"),
        ("base = 3\n", "base must be a table"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            load_spec(path)
        assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# running and continuing a sweep (in this process)


def test_sweep_runs_equal_solo_runs_and_a_rerun_trains_nothing(tmp_path):
    spec = _spec(seed=[0, 1], weight_decay=[0.5, 1.0])
    sweep = tmp_path / "sweep"
    result = run_sweep(spec, sweep, executor=LocalExecutor(1), progress=False)
    assert set(result.actions.values()) == {"train"} and len(result.done) == 4
    manifest = read_manifest(sweep)
    assert manifest.spec == spec.to_dict()
    for run in spec.runs():
        record = manifest.runs[run.name]
        assert record.status == "done" and record.attempts == 1 and record.error is None
        assert record.config == run.config.replace(threads=1).to_dict()
        assert record.result["epoch"] == BASE["epochs"]
        last = read_metrics(run_path(sweep, run.name))[-1]
        assert record.result["final"]["test_acc"] == last["test_acc"]
    solo = _solo(spec.runs()[3].config, tmp_path / "solo")
    _assert_same(_weights(run_path(sweep, spec.runs()[3].name)), solo)

    stamps = {p: p.stat().st_mtime_ns for p in sweep.rglob("*.safetensors")}
    again = run_sweep(spec, sweep, executor=LocalExecutor(1), progress=False)
    assert set(again.actions.values()) == {"skip"}
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("*.safetensors")} == stamps


def test_extending_epochs_resumes_every_run_and_a_changed_trajectory_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    run_sweep(_spec(seed=[0, 1]), sweep, executor=LocalExecutor(1), progress=False)
    longer = SweepSpec(axes={"seed": [0, 1, 2]}, base={**BASE, "epochs": 60})
    plan = plan_sweep(longer, sweep)
    assert plan.actions == {"seed=0": "extend", "seed=1": "extend", "seed=2": "train"}
    run_sweep(longer, sweep, executor=LocalExecutor(1), progress=False)
    solo = _solo(longer.runs()[1].config, tmp_path / "solo")
    _assert_same(_weights(run_path(sweep, "seed=1")), solo)
    assert _metrics(run_path(sweep, "seed=1")) == _metrics(tmp_path / "solo")

    before = (sweep / MANIFEST_FILE).read_bytes()
    other = SweepSpec(axes={"seed": [0, 1]}, base={**BASE, "epochs": 60, "lr": 1e-2})
    with pytest.raises(SweepDirError, match=r"seed=0 \(lr: 0.003 -> 0.01\); seed=1 \(lr"):
        run_sweep(other, sweep, executor=LocalExecutor(1), progress=False)
    assert (sweep / MANIFEST_FILE).read_bytes() == before


def test_an_interrupted_run_is_resumed_bit_identically(tmp_path):
    """A run cut short (here: trained to epoch 20 of 40, its manifest entry still pending)."""
    spec = _spec(seed=[3])
    sweep = tmp_path / "sweep"
    (run,) = spec.runs()
    _begin(spec, sweep)
    train_model(run.config.replace(threads=1, epochs=20), run_path(sweep, run.name), progress=False)
    assert plan_sweep(spec, sweep).actions == {run.name: "resume"}
    run_sweep(spec, sweep, executor=LocalExecutor(1), progress=False)
    _assert_same(_weights(run_path(sweep, run.name)), _solo(run.config, tmp_path / "solo"))
    assert _metrics(run_path(sweep, run.name)) == _metrics(tmp_path / "solo")


def test_a_failed_run_is_reported_kept_and_retried_on_request(tmp_path):
    spec = _spec(seed=[0, 1])
    sweep = tmp_path / "sweep"
    _begin(spec, sweep)
    blocker = run_path(sweep, "seed=1")
    blocker.write_text("not a directory")
    result = run_sweep(spec, sweep, executor=LocalExecutor(1), progress=False)
    (failed,) = result.failed
    assert failed.name == "seed=1" and "is a file, not a directory" in failed.error
    assert failed.traceback is None  # an expected failure, not a bug
    assert [r.name for r in result.done] == ["seed=0"]
    assert read_manifest(sweep).runs["seed=1"].status == "failed"

    again = run_sweep(spec, sweep, executor=LocalExecutor(1), progress=False)
    assert again.actions == {"seed=0": "skip", "seed=1": "failed"}
    blocker.unlink()
    retried = run_sweep(spec, sweep, executor=LocalExecutor(1), retry_failed=True, progress=False)
    assert retried.actions["seed=1"] == "train" and not retried.failed
    record = read_manifest(sweep).runs["seed=1"]
    assert record.status == "done" and record.attempts == 2 and record.error is None


def test_a_bug_in_a_run_keeps_its_traceback(tmp_path, monkeypatch):
    import tl_grokking.training.trainer as trainer

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(trainer, "train_model", broken)
    job = SweepJob("x", str(tmp_path / "x"), TrainConfig(**BASE).to_dict())
    outcome = train_job(job)
    assert outcome["status"] == "failed" and outcome["error"].startswith("KeyError: 'boom'")
    assert "Traceback" in outcome["traceback"] and "broken" in outcome["traceback"]


def test_the_sweep_directory_is_checked_and_locked(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        run_sweep(_spec(), tmp_path / "file", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty and holds no sweep"):
        run_sweep(_spec(), tmp_path / "full", progress=False)
    from tl_grokking.runs.rundir import RunDirLockedError, run_lock

    (tmp_path / "busy").mkdir()
    with run_lock(tmp_path / "busy"), pytest.raises(RunDirLockedError, match=f"pid {os.getpid()}"):
        run_sweep(_spec(), tmp_path / "busy", progress=False)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(version=7), "version must be 1, got 7"),
        (
            lambda d: d["runs"]["seed=0"].update(status="great"),
            "runs['seed=0'].status must be one of",
        ),
        (
            lambda d: d["runs"]["seed=0"].update(attempts=-1),
            "attempts must be a nonnegative integer",
        ),
        (lambda d: d["runs"].update({"../../etc": d["runs"]["seed=0"]}), "a plain directory name"),
        (lambda d: d.update(runs=[]), "runs must be an object"),
    ],
)
def test_a_tampered_manifest_is_refused_naming_the_field(tmp_path, edit, message):
    sweep = tmp_path / "sweep"
    run_sweep(_spec(seed=[0]), sweep, executor=LocalExecutor(1), progress=False)
    data = json.loads((sweep / MANIFEST_FILE).read_text())
    edit(data)
    (sweep / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(SweepDirError, match=re.escape(message)) as err:
        read_manifest(sweep)
    assert str(sweep / MANIFEST_FILE) in str(err.value)


# ---------------------------------------------------------------------------------------------
# executors: a pool of processes, and Ray


def test_the_process_pool_gives_the_in_process_results(tmp_path):
    spec = _spec(seed=[0, 1, 2])
    run_sweep(spec, tmp_path / "here", executor=LocalExecutor(1), progress=False)
    run_sweep(spec, tmp_path / "pool", executor=LocalExecutor(2), progress=False)
    for run in spec.runs():
        here, pool = run_path(tmp_path / "here", run.name), run_path(tmp_path / "pool", run.name)
        _assert_same(_weights(pool), _weights(here))
        assert _metrics(pool) == _metrics(here)


#: Long enough (a few seconds) to be killed in the middle.
LONG = dict(BASE, p=23, d_mlp=64, epochs=700, checkpoint_every=50, log_every=50)


def _kill_worker_mid_run(sweep: Path, name: str, after_epoch: int, timeout: float = 120) -> int:
    """SIGKILL the process training run ``name`` (the pid its run lock records) once its
    metrics reach ``after_epoch``; returns the killed pid."""
    run_dir = run_path(sweep, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            records = read_metrics(run_dir)
            pid = int((run_dir / LOCK_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            records, pid = [], 0
        if pid and records and records[-1]["epoch"] >= after_epoch:
            os.kill(pid, signal.SIGKILL)
            # killed mid-run: the run had not finished (its last line is not the final epoch)
            assert (
                read_metrics(run_dir)[-1]["epoch"]
                < read_manifest(sweep).runs[name].config["epochs"]
            )
            return pid
        time.sleep(0.02)
    pytest.fail(f"run {name} did not reach epoch {after_epoch} within {timeout} s")


def _sweep_in_thread(spec, sweep, executor):
    out: dict = {}

    def target():
        try:
            out["result"] = run_sweep(spec, sweep, executor=executor, progress=False)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            out["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_a_killed_pool_worker_is_replaced_and_its_run_resumed_bit_identically(tmp_path):
    spec = SweepSpec(axes={"seed": [0, 1]}, base=dict(LONG))
    sweep = tmp_path / "sweep"
    thread, out = _sweep_in_thread(spec, sweep, LocalExecutor(2))
    killed = _kill_worker_mid_run(sweep, "seed=0", after_epoch=200)
    thread.join(timeout=300)
    assert "error" not in out, out.get("error")
    assert killed != os.getpid() and not out["result"].failed
    # the run finished in another process than the one killed
    assert int((run_path(sweep, "seed=0") / LOCK_FILE).read_text()) != killed
    for run in spec.runs():
        solo = _solo(run.config, tmp_path / f"solo_{run.name}")
        _assert_same(_weights(run_path(sweep, run.name)), solo)
        assert _metrics(run_path(sweep, run.name)) == _metrics(tmp_path / f"solo_{run.name}")
    assert not list(sweep.rglob("*.tmp"))


def test_a_worker_that_keeps_dying_fails_its_run_after_the_retries(tmp_path):
    executor = LocalExecutor(2, max_retries=0)
    jobs = [SweepJob(f"j{i}", str(tmp_path / f"j{i}"), {}) for i in range(2)]
    events = [e for e in executor.run(_die, jobs) if e.kind == "finished"]
    assert sorted(e.job.name for e in events) == ["j0", "j1"]
    for event in events:
        assert event.outcome["status"] == "failed"
        assert (
            "died 1 time(s)" in event.outcome["error"]
            and "--retry-failed" in event.outcome["error"]
        )


def _die(job: SweepJob) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def test_executor_settings_are_checked():
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        LocalExecutor(0)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        LocalExecutor(1, max_retries=-1)
    with pytest.raises(ValueError, match="executor must be one of"):
        make_executor("slurm")
    with pytest.raises(ValueError, match="cpus_per_run must be > 0"):
        RayExecutor(cpus_per_run=0)


# ---------------------------------------------------------------------------------------------
# the command


def _flags(**values) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


def test_the_command_trains_continues_and_shows_the_status(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", f"--out={out}", *_flags(**BASE), "--seed=0-1", "--no-progress", "--workers=1"]
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"sweep {out}: 2 runs, 2 to train",
        "  train   seed=0",
        "  train   seed=1",
    ]
    assert not out.exists()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 runs in" in printed and "2 done (0 already were), 0 failed" in printed
    assert main(argv) == 0
    assert "2 done (2 already were)" in capsys.readouterr().out
    assert main(["sweep", f"--out={out}", "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sweep {out}: 2 runs (2 done)"
    assert lines[1].startswith("  done     seed=0: 40 epochs, test acc ")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed=4-2"], "--seed: the range '4-2' is empty"),
        (["--lr=fast"], "--lr: 'fast' is not a value of this field (it takes numbers)"),
        (["--p=2,17"], "sweep run p=2: p must be an integer >= 3"),
        (["--workers=0"], "workers must be a positive integer, got 0"),
        (["--spec=missing.toml"], "missing.toml"),
    ],
)
def test_command_errors_are_one_line_naming_the_flag(tmp_path, capsys, flags, message):
    assert main(["sweep", f"--out={tmp_path / 's'}", *flags, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tl-grokking sweep: error: ") and message in err and "\n" not in err


def test_failed_runs_make_the_command_exit_2_after_the_others_finish(tmp_path, capsys):
    out = tmp_path / "sweep"
    _begin(_spec(seed=[0, 1]), out)
    run_path(out, "seed=1").write_text("in the way")
    argv = ["sweep", f"--out={out}", *_flags(**BASE), "--seed=0,1", "--no-progress", "--workers=1"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "failed seed=1: " in captured.out and "is a file, not a directory" in captured.out
    assert "1 of 2 runs failed" in captured.err and "--retry-failed" in captured.err
    assert read_manifest(out).runs["seed=0"].status == "done"


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    argv = ["sweep", f"--out={tmp_path / 's'}", *_flags(**BASE), "--executor=ray", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tl-grokking sweep: error: the ray executor needs Ray, an optional extra")
    assert "pip install 'tl_grokking[ray]'" in err and "--executor local" in err
