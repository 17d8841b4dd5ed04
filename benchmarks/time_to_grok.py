"""Wall-clock time to grok: the paper's configuration until test accuracy first reaches 99 %.

Run:  python benchmarks/time_to_grok.py [--seeds 0 1 2 3 4] [--max-epochs 15000]

For each seed, ``train_model`` runs the paper's configuration (p = 113, 30 % of the pairs,
AdamW lr 1e-3, weight decay 1) with the trainer's defaults (log and checkpoint every 100
epochs, its own thread count) and stops at the first logged epoch with test accuracy ≥ 99 %
(``early_stop_acc=0.99, early_stop_patience=1``). Printed per seed: that epoch and the
seconds of the whole call (set-up, evaluations and checkpoints included); then the median.
The same seed gives the same run, so the epochs are reproducible exactly; the seconds depend
on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from tl_grokking.model.transformer import BACKEND
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--max-epochs", type=int, default=15_000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {BACKEND}")
    seconds, epochs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            config = TrainConfig(
                seed=seed, epochs=args.max_epochs, early_stop_acc=0.99, early_stop_patience=1
            )
            result = train_model(config, Path(tmp) / f"seed{seed}", progress=False)
            grokked = result.grok_epoch is not None
            seconds.append(result.wall_time if grokked else float("inf"))
            epochs.append(result.grok_epoch)
            per_epoch = result.wall_time / result.epoch * 1000
            if grokked:
                line = f"test accuracy >= 99 % at epoch {result.grok_epoch}"
            else:
                line = f"not grokked in {result.epoch} epochs"
            print(f"seed {seed}: {line} in {result.wall_time:.0f} s ({per_epoch:.1f} ms/epoch)")
    print(f"median_seconds_to_grok: {statistics.median(seconds):.0f}")
    known = sorted(e for e in epochs if e is not None)
    if known:
        print(f"median_epoch: {statistics.median(known):.0f}")


if __name__ == "__main__":
    main()
