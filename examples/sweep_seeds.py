"""Several seeds of one configuration: do they grok at the same time, in the same phases, on
the same key frequencies? (Against the paper's single run, Nanda et al. 2023.)

Trains the runs with ``tl-grokking sweep``'s machinery (a pool of one worker per core; rerun
the same command to continue an interrupted sweep), analyses them (``runs.csv``), prints one
line per seed and the paper's run for comparison, and writes ``sweep_report.html``::

    # the paper's setting, seeds 0-4, 20k epochs: about an hour on 2 cores
    python examples/sweep_seeds.py --out sweeps/paper_seeds
    # the quick setting (p = 53): a few minutes
    python examples/sweep_seeds.py --out sweeps/quick_seeds --quick --seeds 0-7
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_grokking.analysis.sweep import analyze_sweep, sweep_summary
from tl_grokking.figures.sweep_report import write_sweep_report
from tl_grokking.sweeps.runner import run_sweep
from tl_grokking.sweeps.spec import SweepSpec, parse_values

#: The paper's main run (PAPER_NOTES; its seed, 40k epochs).
PAPER = "paper's run: grok ≈10k, phases ≈1.4k / 9.4k / 14k, keys 14 35 41 42 52"


def _k(epoch: int | None) -> str:
    return "—" if epoch is None else f"{epoch / 1000:.1f}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the sweep directory")
    parser.add_argument("--seeds", default="0-4", help="seeds, as for --seed [0-4]")
    parser.add_argument("--quick", action="store_true", help="the quick setting (p = 53)")
    parser.add_argument("--epochs", type=int, default=None, help="[20000; quick: 1500]")
    parser.add_argument("--workers", type=int, default=None, help="[one per core]")
    args = parser.parse_args()

    epochs = args.epochs or (1500 if args.quick else 20_000)
    spec = SweepSpec(
        axes={"seed": parse_values("seed", args.seeds)},
        base={"epochs": epochs},
        preset="quick" if args.quick else "paper",
    )
    from tl_grokking.sweeps.executors import LocalExecutor

    run_sweep(spec, args.out, executor=LocalExecutor(args.workers))
    analysis = analyze_sweep(args.out, workers=args.workers)

    print(
        f"{'seed':>5} {'grok':>6} {'memorised':>10} {'circuits':>9} {'cleanup':>8}  key frequencies"
    )
    for row in analysis.table.rows:
        if row["error"]:
            print(f"{row['seed']:>5}  {row['error']}")
            continue
        keys = " ".join(map(str, row["key_freqs"] or []))
        print(
            f"{row['seed']:>5} {_k(row['grok_epoch']):>6} {_k(row['memorization_end']):>10} "
            f"{_k(row['circuit_formation_end']):>9} {_k(row['cleanup_end']):>8}  {keys}"
        )
    summary = sweep_summary(analysis.table)
    median = summary.median_grok_epoch
    print(f"grokked: {summary.n_grokked} of {summary.n_runs}; median grok epoch {_k(median)}")
    shared = ", ".join(f"{k} ({n} runs)" for k, n in summary.key_freq_counts[:6])
    print(f"most common key frequencies: {shared or 'none'}")
    if not args.quick:
        print(PAPER)
    print(f"wrote {analysis.path} and {write_sweep_report(args.out)}")


if __name__ == "__main__":
    main()
