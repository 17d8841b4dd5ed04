"""tl_grokking: reverse-engineer grokking in small transformers with TransformerLens.

The curated public API is listed in ``__all__`` below, one line per name, grouped by
subpackage; everything else is reached through its module (``tl_grokking.analysis.fourier``,
``tl_grokking.runs.rundir``, ...). ``docs/architecture.md`` maps the subpackages.

Names are imported on first use (PEP 562), so ``import tl_grokking`` and the ``tl-grokking``
command's ``--help`` load neither torch nor TransformerLens.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tl_grokking._version import __version__

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # data: tasks and the input grid
    "Task": "tl_grokking.data.tasks",
    "ModularAddition": "tl_grokking.data.tasks",
    "make_task": "tl_grokking.data.tasks",
    "make_custom_task": "tl_grokking.data.tasks",
    # model: the TransformerLens seam
    "ModelConfig": "tl_grokking.model.config",
    "make_model": "tl_grokking.model.transformer",
    # runs: run directories and checkpoints of every format
    "load_checkpoint": "tl_grokking.runs.checkpoints",
    "load_run": "tl_grokking.runs.checkpoints",
    # training
    "TrainConfig": "tl_grokking.training.config",
    "train_model": "tl_grokking.training.trainer",
    # analysis
    "fourier_basis": "tl_grokking.analysis.fourier",
    "grid_activations": "tl_grokking.analysis.grid",
    "evaluate_model": "tl_grokking.analysis.grid",
    "fourier_ablate": "tl_grokking.analysis.hooks",
    "zero_ablate": "tl_grokking.analysis.hooks",
    "mean_ablate": "tl_grokking.analysis.hooks",
    "cluster_block_hooks": "tl_grokking.analysis.ablations",
    "neuron_clusters": "tl_grokking.analysis.circuits",
    "key_frequencies": "tl_grokking.analysis.circuits",
    "embed_fourier_norms": "tl_grokking.analysis.weights",
    "unembed_fourier_norms": "tl_grokking.analysis.weights",
    "restricted_logits": "tl_grokking.analysis.logits",
    "excluded_logits": "tl_grokking.analysis.logits",
    "trig_logit_decomposition": "tl_grokking.analysis.logits",
    "ablation_table": "tl_grokking.analysis.ablations",
    "progress_measures": "tl_grokking.analysis.progress",
    "analyze_run": "tl_grokking.analysis.progress",
    "detect_phases": "tl_grokking.analysis.phases",
    "classify_clock_pizza": "tl_grokking.analysis.clock_pizza",
    # sweeps: many runs, and the analysis across them
    "SweepSpec": "tl_grokking.sweeps.spec",
    "run_sweep": "tl_grokking.sweeps.runner",
    "analyze_sweep": "tl_grokking.analysis.sweep",
    # figures
    "write_report": "tl_grokking.figures.report",
    "write_sweep_report": "tl_grokking.figures.sweep_report",
}

__all__ = [
    "__version__",
    "Task",
    "ModularAddition",
    "make_task",
    "make_custom_task",
    "ModelConfig",
    "make_model",
    "load_checkpoint",
    "load_run",
    "TrainConfig",
    "train_model",
    "fourier_basis",
    "grid_activations",
    "evaluate_model",
    "fourier_ablate",
    "zero_ablate",
    "mean_ablate",
    "cluster_block_hooks",
    "neuron_clusters",
    "key_frequencies",
    "embed_fourier_norms",
    "unembed_fourier_norms",
    "restricted_logits",
    "excluded_logits",
    "trig_logit_decomposition",
    "ablation_table",
    "progress_measures",
    "analyze_run",
    "detect_phases",
    "classify_clock_pizza",
    "SweepSpec",
    "run_sweep",
    "analyze_sweep",
    "write_report",
    "write_sweep_report",
]

if TYPE_CHECKING:  # what a type checker and an IDE see; at run time __getattr__ loads these
    from tl_grokking.analysis.ablations import ablation_table, cluster_block_hooks
    from tl_grokking.analysis.circuits import key_frequencies, neuron_clusters
    from tl_grokking.analysis.clock_pizza import classify_clock_pizza
    from tl_grokking.analysis.fourier import fourier_basis
    from tl_grokking.analysis.grid import evaluate_model, grid_activations
    from tl_grokking.analysis.hooks import fourier_ablate, mean_ablate, zero_ablate
    from tl_grokking.analysis.logits import (
        excluded_logits,
        restricted_logits,
        trig_logit_decomposition,
    )
    from tl_grokking.analysis.phases import detect_phases
    from tl_grokking.analysis.progress import analyze_run, progress_measures
    from tl_grokking.analysis.sweep import analyze_sweep
    from tl_grokking.analysis.weights import embed_fourier_norms, unembed_fourier_norms
    from tl_grokking.data.tasks import ModularAddition, Task, make_custom_task, make_task
    from tl_grokking.figures.report import write_report
    from tl_grokking.figures.sweep_report import write_sweep_report
    from tl_grokking.model.config import ModelConfig
    from tl_grokking.model.transformer import make_model
    from tl_grokking.runs.checkpoints import load_checkpoint, load_run
    from tl_grokking.sweeps.runner import run_sweep
    from tl_grokking.sweeps.spec import SweepSpec
    from tl_grokking.training.config import TrainConfig
    from tl_grokking.training.trainer import train_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tl_grokking' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
