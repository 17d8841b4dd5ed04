"""Tests of the trainer (tl_grokking.training) against independent computations."""

from __future__ import annotations

import pytest

from tl_grokking.runs import list_checkpoints, read_metrics
from tl_grokking.training import load_train_config


def test_small_run_groks(small_run, small_model, small_task):
    metrics = read_metrics(small_run)
    assert [m["epoch"] for m in metrics] == list(range(0, 1001, 50))
    assert metrics[-1]["test_acc"] >= 0.99
    assert metrics[-1]["train_acc"] == 1.0
    # It is grokking, not immediate generalisation: memorised with test accuracy far below 0.99.
    memorised = [m for m in metrics if m["train_acc"] == 1.0]
    assert memorised[0]["epoch"] <= 200 and memorised[0]["test_acc"] < 0.8
    assert len(list_checkpoints(small_run)) >= 10
    assert load_train_config(small_run).p == small_task.p == 29
    # The loaded final model really computes (a + b) mod p on the whole grid.
    import torch

    with torch.no_grad():
        pred = small_model(small_task.tokens())[:, -1].argmax(-1)
    assert (pred == small_task.labels()).double().mean().item() >= 0.99
