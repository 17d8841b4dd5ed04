"""Clock or pizza? Train two small modular-addition models that differ only in the attention
rate and tell their algorithms apart (Zhong, Liu, Tegmark & Andreas 2023).

* attn_rate 1.0: ordinary attention → the "clock" algorithm of Nanda et al.
* attn_rate 0.0: constant, uniform attention → the "pizza" algorithm.

For each model it prints the gradient symmetricity (pizza ≈ 1, clock low) and the distance
irrelevance (clock ≈ 1, pizza lower) and the verdict of ``classify_clock_pizza``. Small
settings, a few seconds per model on a laptop CPU::

    python examples/clock_vs_pizza.py            # p = 31
    python examples/clock_vs_pizza.py --p 59 --d-model 128 --d-mlp 512   # the paper's p (slower)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from tl_grokking.analysis.clock_pizza import classify_clock_pizza
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=31)
    parser.add_argument("--epochs", type=int, default=600)
    parser.add_argument("--d-model", type=int, default=48)
    parser.add_argument("--d-mlp", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest

    out = args.out or Path(tempfile.mkdtemp(prefix="clock_vs_pizza_"))
    for kind, rate in (("clock", 1.0), ("pizza", 0.0)):
        config = TrainConfig(
            task="add",
            p=args.p,
            frac_train=0.8,
            seed=args.seed,
            epochs=args.epochs,
            lr=3e-3,
            weight_decay=2.0,
            d_model=args.d_model,
            n_heads=4,
            d_mlp=args.d_mlp,
            attn_rate=rate,
            log_every=100,
            checkpoint_every=args.epochs,
        )
        result = train_model(config, out / kind, overwrite=True, progress=False)
        verdict = classify_clock_pizza(result.model, config.make_task())
        print(
            f"attn_rate {rate:.1f} (expected {kind}): trained {result.epoch} epochs in "
            f"{result.wall_time:.1f} s, test acc {result.metrics['test_acc']:.3f}\n"
            f"  gradient symmetricity {verdict.gradient_symmetricity:.3f} "
            f"(pizza if >= {verdict.gs_threshold})\n"
            f"  distance irrelevance  {verdict.distance_irrelevance:.3f} "
            f"(pizza if <  {verdict.di_threshold})\n"
            f"  verdict: {verdict.label}"
        )
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
