"""``tl-grokking analyze RUN_DIR``: progress measures and phase boundaries of a training run.
``tl-grokking analyze SWEEP_DIR``: the same for every run of a sweep, and the cross-run table.

Writes ``RUN_DIR/measures.csv`` (one row per checkpoint epoch, one column per measure) and
``RUN_DIR/phases.json`` (the boundaries of :func:`tl_grokking.analysis.phases.detect_phases`,
the key frequencies used and the rule that chose them), both atomically (via
:func:`tl_grokking.analysis.progress.analyze_run`), and prints a short summary: the train split
the train-pair columns are measured on (:meth:`tl_grokking.runs.checkpoints.LoadedRun.split_line`)
and :func:`tl_grokking.analysis.phases.summary_lines` (key frequencies, the epoch at 99 % test
accuracy, the phase boundaries and every caveat as a ``note:`` line).

A sweep directory (one holding ``sweep.json``, :func:`tl_grokking.runs.sweepdir.is_sweep_dir`)
is analysed by :func:`tl_grokking.analysis.sweep.analyze_sweep` (``--workers`` processes), which
writes ``SWEEP_DIR/runs.csv``; then ``SWEEP_DIR/sweep_report.html`` is written
(:func:`tl_grokking.figures.sweep_report.write_sweep_report`) and a short summary printed.
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

__all__ = ["register", "run", "run_sweep"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="progress measures and phase boundaries of a run (writes measures.csv, phases.json)",
        description=(
            "Compute the progress measures of Nanda et al. (2023) — train/test loss and "
            "accuracy, restricted and excluded loss, Gini coefficients of W_E and W_L, sum of "
            "squared weights — at every checkpoint of RUN_DIR, detect the memorisation / "
            "circuit-formation / cleanup boundaries, and write RUN_DIR/measures.csv and "
            "RUN_DIR/phases.json. Given a sweep directory (tl-grokking sweep --out DIR), do "
            "that for every finished run whose analysis is missing or out of date, write "
            "DIR/runs.csv (one row per run) and DIR/sweep_report.html, and print a summary."
        ),
    )
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run directory written by train, or a sweep directory written by sweep",
    )
    add_key_freqs_flag(
        parser,
        "for the restricted/excluded losses",
        "from the final checkpoint by the circuit rule, falling back to the W_E Fourier norms",
    )
    add_device_flag(parser, "device for the forward passes")
    add_threads_flag(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="sweep directories only: analysis processes, one torch thread each [one per core "
        "when the work is worth starting them, else 1]",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tl_grokking.runs.sweepdir import is_sweep_dir

    run_dir = Path(args.run_dir)
    if is_sweep_dir(run_dir):
        return run_sweep(args)
    if args.workers is not None:
        raise ValueError(
            f"--workers is for sweep directories; {run_dir} is not one (no sweep.json)"
        )
    from tl_grokking.analysis.phases import summary_lines
    from tl_grokking.analysis.progress import MEASURES_FILE, PHASES_FILE, analyze_run
    from tl_grokking.runs.checkpoints import load_run
    from tl_grokking.runs.rundir import read_json, require_run_dir

    require_run_dir(run_dir)  # "is a file, not a directory", before any checkpoint is read
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


def run_sweep(args: argparse.Namespace) -> int:
    """``analyze SWEEP_DIR``: :func:`~tl_grokking.analysis.sweep.analyze_sweep`, the sweep
    report, the summary."""
    from tl_grokking.analysis.sweep import analyze_sweep, sweep_summary_lines
    from tl_grokking.figures.sweep_report import write_sweep_report

    if args.key_freqs is not None:
        raise ValueError(
            "--key-freqs is for one run; each run of a sweep fixes its own key frequencies "
            "(analyse a run on its own: tl-grokking analyze SWEEP_DIR/runs/NAME --key-freqs ...)"
        )
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    analysis = analyze_sweep(
        args.run_dir,
        workers=args.workers,
        threads=1 if args.threads is None else args.threads,
        device=args.device,
        progress=not args.no_progress,
    )
    for line in sweep_summary_lines(analysis):
        print(line)
    report = write_sweep_report(args.run_dir, device=args.device)
    print(f"wrote {analysis.path} and {report}")
    return 0
