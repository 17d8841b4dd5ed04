"""Sweep throughput: the default executor against a shell loop of ``tl-grokking train``.

Run:  python benchmarks/sweep_speed.py [--seeds 16] [--workers N] [--epochs 1500]

Both sides train the same runs: the ``tl-grokking reproduce --quick`` setting (p = 53, half
of the pairs, d_mlp 256, lr 3e-3, 1500 epochs) for seeds 0 … N-1, each to its last epoch.

* **loop**: ``for seed in ...; do tl-grokking train --out DIR/seed$seed ... ; done``, one
  command after another, as a user would script it (each pays its interpreter start-up and
  uses the trainer's own thread count);
* **sweep**: ``tl-grokking sweep --preset quick --seed 0-(N-1)``, the default executor (a pool
  of one worker per core, one torch thread per run).

Printed: seconds and runs per hour of each, their ratio, and whether every run's final weights
are the same on both sides (they are when both use one thread: the loop's thread count for
this p is one, ``tl_grokking._resources``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tl_grokking._resources import available_cores
from tl_grokking.runs.rundir import list_checkpoints, load_safetensors
from tl_grokking.runs.sweepdir import run_path
from tl_grokking.training.config import QUICK_SETTINGS

CLI = [sys.executable, "-m", "tl_grokking"]


def _flags(settings: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(list_checkpoints(run_dir)[-1][1])


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=16, help="runs on each side [16]")
    parser.add_argument("--workers", type=int, default=None, help="sweep workers [one per core]")
    parser.add_argument("--epochs", type=int, default=QUICK_SETTINGS["epochs"])
    args = parser.parse_args()
    settings = {**QUICK_SETTINGS, "epochs": args.epochs}
    seeds = list(range(args.seeds))
    print(
        f"{len(seeds)} runs of the quick setting ({args.epochs} epochs), "
        f"{available_cores()} cores, torch {torch.__version__}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="sweep_speed_"))
    try:
        started = time.perf_counter()
        for seed in seeds:
            subprocess.run(
                [*CLI, "train", f"--out={tmp / 'loop' / f'seed{seed}'}", f"--seed={seed}",
                 *_flags(settings), "--no-progress"],
                check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        loop = time.perf_counter() - started

        workers = [f"--workers={args.workers}"] if args.workers else []
        started = time.perf_counter()
        subprocess.run(
            [*CLI, "sweep", f"--out={tmp / 'sweep'}", "--preset=quick", f"--seed=0-{seeds[-1]}",
             f"--epochs={args.epochs}", "--no-progress", *workers],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        sweep = time.perf_counter() - started

        differ = [
            seed
            for seed in seeds
            if not _same(
                _final(tmp / "loop" / f"seed{seed}"),
                _final(run_path(tmp / "sweep", f"seed={seed}")),
            )
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_hour = 3600 * len(seeds)
    print(f"loop of tl-grokking train: {loop:7.1f} s  ({per_hour / loop:6.0f} runs/hour)")
    print(f"tl-grokking sweep:         {sweep:7.1f} s  ({per_hour / sweep:6.0f} runs/hour)")
    print(f"sweep_vs_loop: {loop / sweep:.2f}x")
    print(f"same final weights on both sides: {'every run' if not differ else differ}")


if __name__ == "__main__":
    main()
