"""``tl-grokking report RUN_DIR``: the self-contained HTML report of a run.

Writes ``RUN_DIR/report.html`` (or ``--out``) atomically: run status, summary numbers, the
configuration and every figure of :mod:`tl_grokking.figures.plots`, with plotly.js and the
circuitsvis bundle inlined, so the page opens with no network.  Progress measures come from
``measures.csv`` / ``phases.json`` (``tl-grokking analyze``) when present, else are computed.

``tl-grokking report SWEEP_DIR`` (a directory holding ``sweep.json``) writes the sweep report,
``SWEEP_DIR/sweep_report.html`` (:func:`tl_grokking.figures.sweep_report.write_sweep_report`):
``--x`` / ``--y`` choose the phase diagram's axes, ``--run-reports`` writes every run's report
first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_grokking.cli._common import (
    add_device_flag,
    add_threads_flag,
    path_arg,
    set_analysis_threads,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write RUN_DIR/report.html: figures and summary of a run (self-contained HTML)",
        description=(
            "Build the HTML report of a training run: loss curves with the phases, progress "
            "measures, Fourier structure of W_E and W_L, neuron clusters and activations, "
            "attention, the trig-identity read-out and the ablation table. The page inlines "
            "its JavaScript and opens offline."
        ),
    )
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run directory written by train, or a sweep directory written by sweep "
        "(then SWEEP_DIR/sweep_report.html: the cross-run report)",
    )
    parser.add_argument(
        "--out",
        default=None,
        type=path_arg,
        metavar="FILE",
        help="where to write [RUN_DIR/report.html, SWEEP_DIR/sweep_report.html]",
    )
    sweep = parser.add_argument_group("sweep directories")
    sweep.add_argument(
        "--x",
        default=None,
        metavar="FIELD",
        help="swept field across the phase diagram [the axis with most values]",
    )
    sweep.add_argument(
        "--y",
        default=None,
        metavar="FIELD",
        help="swept field up the diagram [the axis with the next most values]",
    )
    sweep.add_argument(
        "--run-reports",
        action="store_true",
        help="also write every finished run's report.html (linked from the table)",
    )
    add_device_flag(parser, "device for the analysis forward passes")
    add_threads_flag(parser)
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (when measures are computed)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tl_grokking.runs.sweepdir import is_sweep_dir

    if is_sweep_dir(args.run_dir):
        return run_sweep(args)
    used = [
        flag
        for flag, on in (("--x", args.x), ("--y", args.y), ("--run-reports", args.run_reports))
        if on
    ]
    if used:
        raise ValueError(
            f"{', '.join(used)}: for sweep directories; {args.run_dir} is not one (no sweep.json)"
        )
    from tl_grokking.figures.report import run_status, write_report

    status = run_status(args.run_dir)  # RunDirError (a ValueError) before any work
    if args.out is not None:  # a bad --out fails now, not after minutes of analysis
        out = Path(args.out)
        if out.is_dir():
            raise IsADirectoryError(f"--out {out} is a directory; give a file path (report.html)")
        blocker = next((d for d in out.parents if d.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise NotADirectoryError(f"--out {out}: {blocker} is a file, not a directory")
    from tl_grokking.runs.checkpoints import load_run

    set_analysis_threads(args.threads, load_run(args.run_dir).model_config)
    path = write_report(args.run_dir, args.out, device=args.device, progress=not args.no_progress)
    print(status.message)
    print(f"wrote {path}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """``report SWEEP_DIR``: the sweep report (``runs.csv`` brought up to date first)."""
    from tl_grokking.figures.sweep_report import write_sweep_report
    from tl_grokking.runs.rundir import require_dir_path
    from tl_grokking.runs.sweepdir import read_manifest

    read_manifest(args.run_dir)  # SweepDirError before any work
    if args.out is not None:  # a bad --out fails now, not after the analysis
        out = Path(args.out)
        if out.is_dir():
            raise IsADirectoryError(
                f"--out {out} is a directory; give a file path (sweep_report.html)"
            )
        require_dir_path(out.parent, "--out")
    path = write_sweep_report(
        args.run_dir,
        args.out,
        x=args.x,
        y=args.y,
        run_reports=args.run_reports,
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"wrote {path}")
    return 0
