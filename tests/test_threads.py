"""The thread count: by problem size, never by load; a scope that restores it; --threads."""

from __future__ import annotations

import pytest
import torch

from tl_grokking._resources import MIN_WORK_PER_THREAD, auto_threads, available_cores, using_threads
from tl_grokking.cli.reproduce import quick_config
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import step_work, train_model


def test_auto_threads_grows_with_the_work_and_stops_at_the_cores():
    assert auto_threads(0, cores=8) == 1
    assert auto_threads(MIN_WORK_PER_THREAD - 1, cores=8) == 1
    assert auto_threads(3 * MIN_WORK_PER_THREAD, cores=8) == 3
    assert auto_threads(100 * MIN_WORK_PER_THREAD, cores=8) == 8
    assert auto_threads(100 * MIN_WORK_PER_THREAD, cores=2) == 2
    assert 1 <= auto_threads(1e12) == available_cores()


def test_step_work_counts_the_readout_and_the_tables():
    config = TrainConfig(p=23, frac_train=0.5, d_model=16, n_heads=2, d_mlp=40)
    n_train = int(0.5 * 23**2)  # 264
    readout = 3 * n_train * 40 * 23
    tables = 3 * (2 * 24 + 1) * 16 * (40 + 23)
    assert step_work(config) == readout + tables
    # the settings of docs/training.md: small problems stay on one thread, the paper's uses more
    assert auto_threads(step_work(TrainConfig(p=23, d_model=32, d_mlp=128)), cores=64) == 1
    assert auto_threads(step_work(quick_config()), cores=64) == 1
    assert auto_threads(step_work(TrainConfig()), cores=64) >= 2


def test_using_threads_restores_and_validates():
    before = torch.get_num_threads()
    with using_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with using_threads(None) as n:
        assert n == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            with using_threads(bad):  # type: ignore[arg-type]
                pass


def test_train_model_runs_at_its_thread_count_and_restores_it(tmp_path):
    seen: list[int] = []
    before = torch.get_num_threads()
    config = TrainConfig(p=13, d_model=16, n_heads=2, d_mlp=32, epochs=3, log_every=1, threads=1)
    train_model(
        config,
        tmp_path / "a",
        progress=False,
        callbacks=[lambda e, m: seen.append(torch.get_num_threads()) or {}],
    )
    assert set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        TrainConfig(threads=0)
