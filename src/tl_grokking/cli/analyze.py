"""``tl-grokking analyze RUN_DIR``: progress measures and phase boundaries of a training run.

Writes ``RUN_DIR/measures.csv`` (one row per checkpoint epoch, one column per measure) and
``RUN_DIR/phases.json`` (the boundaries of :func:`tl_grokking.analysis.phases.detect_phases`,
the key frequencies used and the rule that chose them), both atomically (via
:func:`tl_grokking.analysis.progress.analyze_run`), and prints a short summary: the train split
the train-pair columns are measured on (:meth:`tl_grokking.runs.checkpoints.LoadedRun.split_line`)
and :func:`tl_grokking.analysis.phases.summary_lines` (key frequencies, the epoch at 99 % test
accuracy, the phase boundaries and every caveat as a ``note:`` line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_grokking.cli._common import (
    add_device_flag,
    add_key_freqs_flag,
    add_threads_flag,
    set_analysis_threads,
)

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="progress measures and phase boundaries of a run (writes measures.csv, phases.json)",
        description=(
            "Compute the progress measures of Nanda et al. (2023) — train/test loss and "
            "accuracy, restricted and excluded loss, Gini coefficients of W_E and W_L, sum of "
            "squared weights — at every checkpoint of RUN_DIR, detect the memorisation / "
            "circuit-formation / cleanup boundaries, and write RUN_DIR/measures.csv and "
            "RUN_DIR/phases.json."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train")
    add_key_freqs_flag(
        parser,
        "for the restricted/excluded losses",
        "from the final checkpoint by the circuit rule, falling back to the W_E Fourier norms",
    )
    add_device_flag(parser, "device for the forward passes")
    add_threads_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tl_grokking.analysis.phases import summary_lines
    from tl_grokking.analysis.progress import MEASURES_FILE, PHASES_FILE, analyze_run
    from tl_grokking.runs.checkpoints import load_run
    from tl_grokking.runs.rundir import read_json

    run_dir = Path(args.run_dir)
    set_analysis_threads(args.threads, load_run(run_dir).model_config)
    measures, _ = analyze_run(
        run_dir, key_freqs=args.key_freqs, device=args.device, progress=not args.no_progress
    )
    print(f"run: {run_dir}  ({len(measures)} checkpoints, p = {measures.p})")
    print(load_run(run_dir).split_line())  # the pairs the train / excluded columns are on
    # key frequencies, the epoch at 99 %, phases, every caveat as "note:" (as reproduce)
    for line in summary_lines(run_dir, read_json(run_dir / PHASES_FILE)):
        print(line)
    print(f"wrote {run_dir / MEASURES_FILE} and {run_dir / PHASES_FILE}")
    return 0
