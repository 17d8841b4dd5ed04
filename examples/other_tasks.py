"""Beyond a + b: train small models on modular subtraction and multiplication and read off
their key frequencies.

Subtraction is an additive task: its Fourier analysis runs over Z_p on the tokens themselves.
Multiplication mod a prime p is addition in disguise: writing every non-zero token as a power
of a primitive root g (its discrete logarithm) turns a · b into log a + log b mod (p - 1), so
its Fourier analysis runs over Z_{p-1} on the re-indexed tokens (token 0 left out). The
example prints, for each task, the key frequencies by three rules (W_E norms, W_L norms,
neuron clusters) and how many frequencies hold 90 % of W_E's Fourier energy, and for × also
the same count in the raw token order, where the structure is invisible.

    python examples/other_tasks.py        # about 10-20 s on a laptop CPU
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from tl_grokking.analysis.circuits import key_frequencies
from tl_grokking.analysis.fourier import frequencies
from tl_grokking.analysis.weights import (
    embed_fourier_norms,
    frequency_mass_count,
    norms_by_frequency,
)
from tl_grokking.data.discrete_log import primitive_root
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import train_model

# Settings that grok within a few hundred epochs (seed 0); the same as tests/test_discrete_log.py.
RUNS = {"sub": 31, "mul": 29}
SETTINGS = {
    "frac_train": 0.6,
    "seed": 0,
    "epochs": 1000,
    "lr": 1e-2,
    "weight_decay": 2.0,
    "d_model": 48,
    "n_heads": 4,
    "d_mlp": 192,
    "log_every": 50,
    "checkpoint_every": 1000,
    "early_stop_acc": 0.97,
    "early_stop_patience": 4,
}


def main() -> None:
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="other_tasks_"))
    for name, p in RUNS.items():
        config = TrainConfig(task=name, p=p, **SETTINGS)
        result = train_model(config, out / name, progress=False)
        model, task = result.model.eval(), config.make_task()
        n = task.fourier_size
        print(
            f"\n{name} (a {task.symbol} b mod {p}): {result.epoch} epochs, "
            f"{result.wall_time:.1f} s, test acc {result.metrics['test_acc']:.3f}"
        )
        if task.fourier_structure == "multiplicative":
            print(
                f"  re-indexed by the discrete log base g = {primitive_root(p)}: "
                f"Fourier basis over Z_{n}, tokens {task.fourier_tokens().tolist()}"
            )
        # One call, three rules, in the task's group coordinates (reindex=None: Z_p for -,
        # Z_{p-1} in discrete-log order for ×).
        keys = key_frequencies(model, task)
        for rule, found in keys.by_rule.items():
            print(f"  key frequencies ({rule:8s}): {found}")
        clusters = keys.clusters
        assert clusters is not None  # the cluster rule was computed
        print(
            f"  neuron clusters (FVE >= 0.85): {clusters.sizes}, "
            f"{clusters.n_clustered}/{config.d_mlp}"
        )
        per_freq = norms_by_frequency(embed_fourier_norms(model, task))
        print(
            f"  W_E: {frequency_mass_count(per_freq)} of {len(frequencies(n))} frequencies "
            "hold 90 % of the Fourier energy"
        )
        if task.fourier_structure == "multiplicative":
            raw_per_freq = norms_by_frequency(embed_fourier_norms(model, task, reindex=False))
            print(
                f"  (without re-indexing: {frequency_mass_count(raw_per_freq)} of "
                f"{len(frequencies(p))} frequencies over Z_{p})"
            )
    print(f"\nruns in {out}")


if __name__ == "__main__":
    main()
