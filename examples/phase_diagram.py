"""Where does the model grok, and how late? A weight decay × training fraction phase diagram
at a small p (the paper's Figure of training fractions; Liu et al. 2022's phase diagrams).

Trains one run per cell (early stop at 99 % test accuracy), prints the grok epoch of every
cell (``—``: never within the epochs) and writes ``sweep_report.html`` with the diagram::

    python examples/phase_diagram.py --out sweeps/wd_frac              # p = 23: a few minutes
    python examples/phase_diagram.py --out sweeps/wd_frac --p 31 --epochs 5000
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
    parser.add_argument("--p", type=int, default=23)
    parser.add_argument("--epochs", type=int, default=3000)
    parser.add_argument("--weight-decay", default="0.1,0.3,1,3")
    parser.add_argument("--frac-train", default="0.3,0.5,0.7")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="[one per core]")
    args = parser.parse_args()

    decays = parse_values("weight_decay", args.weight_decay)
    fracs = parse_values("frac_train", args.frac_train)
    spec = SweepSpec(
        axes={"weight_decay": decays, "frac_train": fracs},
        base=dict(p=args.p, d_mlp=128, seed=args.seed, epochs=args.epochs, log_every=25,
                  checkpoint_every=100, early_stop_acc=0.99, early_stop_patience=2),
        preset="quick",
    )  # fmt: skip
    run_sweep(spec, args.out, executor=LocalExecutor(args.workers))
    table = analyze_sweep(args.out, workers=args.workers).table

    grok = {(r["weight_decay"], r["frac_train"]): r["grok_epoch"] for r in table.rows}
    print(f"epoch at 99 % test accuracy, p = {args.p} ('—': not within {args.epochs} epochs)")
    print("wd \\ frac " + "".join(f"{f:>8}" for f in fracs))
    for wd in decays:
        cells = ("—" if grok.get((wd, f)) is None else str(grok[wd, f]) for f in fracs)
        print(f"{wd:<10}" + "".join(f"{c:>8}" for c in cells))
    both = len(decays) > 1 and len(fracs) > 1
    report = write_sweep_report(
        args.out, **(dict(x="frac_train", y="weight_decay") if both else {})
    )
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
