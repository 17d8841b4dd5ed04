"""From clock to pizza: sweep the attention rate and classify each model's algorithm
(Zhong, Liu, Tegmark & Andreas 2023; ``examples/clock_vs_pizza.py`` trains just the two ends).

attn_rate 1 is ordinary attention (the "clock" of Nanda et al.), 0 constant uniform attention
(the "pizza"). For every rate and seed the script prints the gradient symmetricity (pizza ≈ 1),
the distance irrelevance (clock ≈ 1) and the verdict, from the sweep's ``runs.csv``::

    python examples/attention_rate_sweep.py --out sweeps/attn_rate          # p = 31, 2 seeds
    python examples/attention_rate_sweep.py --out sweeps/attn_rate --seeds 0-4 --rates 0,0.1,0.5,1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_grokking.analysis.sweep import analyze_sweep
from tl_grokking.figures.sweep_report import write_sweep_report
from tl_grokking.sweeps.executors import LocalExecutor
from tl_grokking.sweeps.runner import run_sweep
from tl_grokking.sweeps.spec import SweepSpec, parse_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the sweep directory")
    parser.add_argument("--rates", default="0,0.25,0.5,0.75,1", help="attention rates")
    parser.add_argument("--seeds", default="0-1")
    parser.add_argument("--p", type=int, default=31)
    parser.add_argument("--epochs", type=int, default=600)
    parser.add_argument("--workers", type=int, default=None, help="[one per core]")
    args = parser.parse_args()

    rates, seeds = parse_values("attn_rate", args.rates), parse_values("seed", args.seeds)
    spec = SweepSpec(
        axes={"attn_rate": rates, "seed": seeds},
        # clock_vs_pizza.py's settings: both algorithms are learned within a few hundred epochs
        base=dict(p=args.p, frac_train=0.8, epochs=args.epochs, lr=3e-3, weight_decay=2.0,
                  d_model=48, n_heads=4, d_mlp=192, log_every=100, checkpoint_every=100),
    )  # fmt: skip
    run_sweep(spec, args.out, executor=LocalExecutor(args.workers))
    table = analyze_sweep(args.out, workers=args.workers).table
    header = ("attn_rate", "seed", "test acc", "grad. sym.", "dist. irr.")
    print("{:>9} {:>4} {:>8} {:>10} {:>10}  verdict".format(*header))
    for row in table.rows:
        if row["error"]:
            print(f"{row['attn_rate']:>9} {row['seed']:>4}  {row['error']}")
            continue
        # the verdict needs a model that solves the task (no verdict: '—')
        gs, di = row["gradient_symmetricity"], row["distance_irrelevance"]
        print(
            f"{row['attn_rate']:>9} {row['seed']:>4} {row['final_test_acc']:>8.3f} "
            f"{'—' if gs is None else f'{gs:.3f}':>10} {'—' if di is None else f'{di:.3f}':>10}  "
            f"{row['clock_pizza'] or '— (not solved)'}"
        )
    axes = dict(x="attn_rate", y="seed") if len(rates) > 1 and len(seeds) > 1 else {}
    print(f"wrote {write_sweep_report(args.out, **axes)}")


if __name__ == "__main__":
    main()
