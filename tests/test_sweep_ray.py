"""The Ray executor against a local Ray instance: same results as the default executor, and a
worker killed mid-run is retried by Ray and its run resumed bit-identically.

Needs the ``[ray]`` extra (``pip install -e ".[ray]"``); skipped, saying so, without it.
"""

from __future__ import annotations

import sys

import pytest

from test_sweep import (
    LONG,
    _assert_same,
    _kill_worker_mid_run,
    _metrics,
    _solo,
    _spec,
    _sweep_in_thread,
    _weights,
)
from tl_grokking.runs.rundir import LOCK_FILE
from tl_grokking.runs.sweepdir import run_path
from tl_grokking.sweeps.executors import LocalExecutor, RayExecutor
from tl_grokking.sweeps.runner import run_sweep
from tl_grokking.sweeps.spec import SweepSpec

ray = pytest.importorskip("ray", reason="the Ray executor's tests need the [ray] extra")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module's tests (started once: about 5 s)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_results_equal_the_default_executors_run_for_run(tmp_path, local_ray):
    spec = _spec(seed=[0, 1, 2])
    run_sweep(spec, tmp_path / "local", executor=LocalExecutor(1), progress=False)
    result = run_sweep(spec, tmp_path / "ray", executor=RayExecutor(), progress=False)
    assert len(result.done) == 3 and ray.is_initialized()  # an instance it did not start stays
    for run in spec.runs():
        local, remote = run_path(tmp_path / "local", run.name), run_path(tmp_path / "ray", run.name)
        _assert_same(_weights(remote), _weights(local))
        assert _metrics(remote) == _metrics(local)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_a_killed_ray_worker_is_retried_and_its_run_resumed_bit_identically(tmp_path, local_ray):
    spec = SweepSpec(axes={"seed": [5]}, base=dict(LONG))
    sweep = tmp_path / "sweep"
    thread, out = _sweep_in_thread(spec, sweep, RayExecutor(max_retries=2))
    killed = _kill_worker_mid_run(sweep, "seed=5", after_epoch=200)
    thread.join(timeout=300)
    assert "error" not in out, out.get("error")
    assert not out["result"].failed
    assert int((run_path(sweep, "seed=5") / LOCK_FILE).read_text()) != killed  # Ray's retry
    (run,) = spec.runs()
    solo = _solo(run.config, tmp_path / "solo")
    _assert_same(_weights(run_path(sweep, run.name)), solo)
    assert _metrics(run_path(sweep, run.name)) == _metrics(tmp_path / "solo")
