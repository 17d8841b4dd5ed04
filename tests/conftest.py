"""Shared fixtures for the whole suite.

``small_run`` trains, once per test session, a small modular-addition model that really groks
(memorises by epoch ~100 with test accuracy ~0.56, then generalises: test accuracy 1.0 from
epoch ~750 on). ``SMALL_RUN_CONFIG`` holds its settings (``TrainConfig`` keyword arguments).

``paper_checkpoint`` / ``paper_model`` and ``shipped_run`` are the data shipped in
``tests/data/`` (see its README): the authors' p = 113 checkpoint as safetensors, and a tiny
p = 23 run directory (copied per test, so a test may write into it).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import jaxtyping
import pytest
import torch

from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import load_weights, make_model
from tl_grokking.runs.rundir import checkpoint_path, load_safetensors
from tl_grokking.training.config import TrainConfig, load_train_config
from tl_grokking.training.trainer import train_model


@pytest.fixture
def unchecked_types():
    """A context manager that switches off the run-time type checker for the calls inside it.

    The suite checks every hint of ``tl_grokking.analysis`` at run time (beartype, set up by
    ``--jaxtyping-packages`` in pyproject.toml). Tests of *deliberately* ill-typed input (a
    string for a frequency, a wrong-shaped grid) wrap just those calls in
    ``with unchecked_types():`` so that the library's own ``ValueError`` naming the field — what
    users get — is what they check, not beartype's rejection of the call.
    """

    @contextmanager
    def off():
        jaxtyping.config.update("jaxtyping_disable", True)
        try:
            yield
        finally:
            jaxtyping.config.update("jaxtyping_disable", False)

    return off


#: Data shipped with the repository (tests/data/README.md).
DATA_DIR = Path(__file__).resolve().parent / "data"
PAPER_CHECKPOINT = DATA_DIR / "paper_no_wd.safetensors"
SHIPPED_RUN = DATA_DIR / "run_p23"

#: Settings of the session-wide small grokking run (``TrainConfig(**SMALL_RUN_CONFIG)``).
#: p = 29, 60 % train: memorised at epoch ~100, test accuracy >= 0.99 from epoch ~750.
SMALL_RUN_CONFIG: dict = {
    "task": "add",
    "p": 29,
    "frac_train": 0.6,
    "seed": 0,
    "epochs": 1000,
    "lr": 3e-3,
    "weight_decay": 1.0,
    "d_model": 64,
    "n_heads": 4,
    "d_mlp": 128,
    "log_every": 50,
    "checkpoint_every": 50,
}


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """Run directory of the small grokking run (21 checkpoints: epochs 0, 50, ..., 1000)."""
    run_dir = tmp_path_factory.mktemp("small_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster and bit-reproducible
    try:
        train_model(TrainConfig(**SMALL_RUN_CONFIG), run_dir, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def p13_model():
    """An untrained p = 13 model (d_model 24, 2 heads, d_mlp 40, seed 5) with a non-zero MLP
    bias, so that its logits have some structure; one per test module."""
    model = make_model(ModelConfig(p=13, d_model=24, n_heads=2, d_mlp=40), seed=5)
    with torch.no_grad():
        model.blocks[0].mlp.b_in.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return model


@pytest.fixture(scope="session")
def small_task(small_run):
    """The :class:`~tl_grokking.data.tasks.Task` of ``small_run`` (modular addition, p = 29)."""
    return load_train_config(small_run).make_task()


@pytest.fixture(scope="session")
def small_model(small_run):
    """The final (epoch 1000) HookedTransformer of ``small_run``, in eval mode."""
    config = load_train_config(small_run)
    model = make_model(config.model_config(), seed=config.seed)
    load_weights(model, load_safetensors(checkpoint_path(small_run, config.epochs)))
    model.eval()
    return model


#: Tasks of ``task_runs``: one per kind of Fourier structure (additive without sum directions,
#: multiplicative on the full grid and off it, none).
TASK_RUN_NAMES = ("sub", "mul", "div", "x2+y2")


@pytest.fixture(scope="session")
def task_runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny run directories (p = 11, 30 epochs, 4 checkpoints) of the tasks in
    :data:`TASK_RUN_NAMES`, keyed by task name; about a second in all on one thread."""
    root = tmp_path_factory.mktemp("task_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    try:
        for i, name in enumerate(TASK_RUN_NAMES):
            config = TrainConfig(
                task=name, p=11, frac_train=0.5, epochs=30, d_model=32, n_heads=2, d_mlp=32,
                log_every=10, checkpoint_every=10,
            )  # fmt: skip
            runs[name] = root / f"run{i}"
            train_model(config, runs[name], progress=False)
    finally:
        torch.set_num_threads(threads)
    return runs


@pytest.fixture(scope="session")
def paper_checkpoint() -> Path:
    """``tests/data/paper_no_wd.safetensors``: the authors' p = 113 model (no weight decay)."""
    return PAPER_CHECKPOINT


@pytest.fixture(scope="session")
def paper_model(paper_checkpoint):
    """The shipped p = 113 checkpoint as a HookedTransformer (114 output logits), in eval mode.
    Shared by the session: do not modify its weights."""
    from tl_grokking.runs.checkpoints import load_checkpoint

    model = load_checkpoint(paper_checkpoint, p=113)
    model.eval()
    return model


@pytest.fixture
def shipped_run(tmp_path) -> Path:
    """A fresh copy of ``tests/data/run_p23`` (p = 23, 600 epochs, groks at epoch 340)."""
    return Path(shutil.copytree(SHIPPED_RUN, tmp_path / "run_p23"))
