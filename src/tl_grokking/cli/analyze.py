"""``tl-grokking analyze RUN_DIR``: progress measures and phase boundaries of a training run.

Writes ``RUN_DIR/measures.csv`` (one row per checkpoint epoch, one column per measure) and
``RUN_DIR/phases.json`` (the boundaries of :func:`tl_grokking.phases.detect_phases`, the key
frequencies used and the rule that chose them), both atomically, and prints a short summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

MEASURES_FILE = "measures.csv"
PHASES_FILE = "phases.json"


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
    parser.add_argument(
        "--key-freqs",
        type=int,
        nargs="+",
        metavar="K",
        default=None,
        help="key frequencies for the restricted/excluded losses (default: from the final "
        "checkpoint's neuron clusters, falling back to the W_E Fourier norms)",
    )
    parser.add_argument("--device", default="cpu", help="device for the forward passes")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import load_run
    from ..phases import detect_phases
    from ..progress import progress_measures
    from ..runs import RunDirError, is_run_dir, list_checkpoints, write_json

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"RUN_DIR {str(run_dir)!r} does not exist or is not a directory")
    if not is_run_dir(run_dir):
        raise RunDirError(
            f"{run_dir} is not a run directory (no config.json); "
            "expected the output directory of 'tl-grokking train'"
        )
    if not list_checkpoints(run_dir):
        raise RunDirError(f"{run_dir} has no checkpoints (checkpoints/epoch_<N>.safetensors)")

    run_obj = load_run(run_dir)
    measures = progress_measures(
        run_obj, key_freqs=args.key_freqs, device=args.device, progress=not args.no_progress
    )
    try:
        phases = detect_phases(measures)
        record = phases.to_dict()
        summary = str(phases)
    except ValueError as err:  # e.g. fewer than 3 checkpoints: the measures are still useful
        record = {"phases": None, "reason": str(err)}
        summary = f"phases not detected: {err}"
    measures.to_csv(run_dir / MEASURES_FILE)
    record.update(
        key_freqs=measures.key_freqs,
        key_freq_rule=measures.key_freq_rule,
        n_checkpoints=len(measures),
    )
    write_json(run_dir / PHASES_FILE, record)
    print(f"run: {run_dir}  ({len(measures)} checkpoints, p = {measures.p})")
    print(f"key frequencies: {measures.key_freqs}  (rule: {measures.key_freq_rule})")
    print(summary)
    print(f"wrote {run_dir / MEASURES_FILE} and {run_dir / PHASES_FILE}")
    return 0
