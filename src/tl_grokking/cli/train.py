"""``tl-grokking train``: train a grokking transformer and write a run directory.

Every :class:`tl_grokking.training.config.TrainConfig` field has a flag (``--frac-train`` for
``frac_train``, ...), generated from the dataclass: its default and help text are the field's.
``--resume`` continues the run stored in ``--out`` with its stored configuration; only the
fields of :data:`~tl_grokking.training.config.RESUMABLE_FIELDS` may be changed then.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_grokking.cli._common import add_config_flags, config_values, flag_name, path_arg
from tl_grokking.runs.rundir import (
    CONFIG_FILE,
    GROK_ACC,
    RESUME_FILE,
    check_safetensors_file,
    is_run_dir,
    path_kind,
    require_dir_path,
    require_file,
)
from tl_grokking.training.config import (
    RESUMABLE_FIELDS,
    ResumeConfigError,
    TrainConfig,
    resume_config,
)

EPILOG = """\
examples:
  # the paper's run (p = 113, 30% train, weight decay 1), stop once test accuracy >= 99%
  tl-grokking train --out runs/paper --early-stop-acc 0.99

  # a small model that groks in about a thousand epochs (seconds on a laptop CPU)
  tl-grokking train --out runs/small --p 29 --frac-train 0.6 --lr 3e-3 \\
      --d-model 64 --d-mlp 128 --epochs 1000 --log-every 50 --checkpoint-every 50

  # continue an interrupted run, or extend a finished one: its stored configuration is used
  tl-grokking train --out runs/small --resume --epochs 2000

The run directory holds config.json, metrics.jsonl (one line per logged epoch),
checkpoints/epoch_<N>.safetensors and resume.safetensors; analyse it with
'tl-grokking analyze RUN_DIR'.
"""

_RESUMABLE_FLAGS = ", ".join(flag_name(name) for name in RESUMABLE_FIELDS)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on modular addition and write a run directory",
        description=(
            "Train the one-layer transformer of Nanda et al. (2023) on [a, b, =] -> (a + b) mod p "
            "with full-batch AdamW and float64 cross-entropy at the '=' position, logging "
            "train/test loss and accuracy and saving checkpoints into DIR. Defaults reproduce "
            "the paper (shown in brackets)."
        ),
        epilog=EPILOG,
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", required=True, type=path_arg, metavar="DIR", help="run directory to write"
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR from its last checkpoint, with its stored configuration; "
        f"only {_RESUMABLE_FLAGS} may be changed (the result is bit-identical to an "
        "uninterrupted run with the same thread count)",
    )
    out.add_argument(
        "--overwrite", action="store_true", help="delete the run already in DIR and start again"
    )
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_flags(parser, TrainConfig)
    parser.set_defaults(func=run)


def resumed_config(out: Path, given: dict) -> TrainConfig:
    """The stored configuration of the run in ``out`` with the flags ``given``; flags that
    would change its trajectory are refused, named as flags."""
    if path_kind(out / CONFIG_FILE) not in (None, "a regular file"):  # a directory, a FIFO...
        require_file(out / CONFIG_FILE, "run configuration (JSON)")
    if path_kind(out / RESUME_FILE) is not None:  # the trainer's error would not name it
        check_safetensors_file(out / RESUME_FILE, "resume state (safetensors)")
    if not is_run_dir(out):
        # train_model(resume=True) would start a new run; from the shell that is usually a typo
        raise FileNotFoundError(
            f"--resume: {out} holds no run to resume (no {CONFIG_FILE}); "
            "drop --resume to start a new run there"
        )
    try:
        return resume_config(out, **given)
    except ResumeConfigError as err:
        differ = ", ".join(
            f"{flag_name(name)} {new} (stored: {old})" for name, (old, new) in err.changes.items()
        )
        raise ValueError(
            f"--resume continues the run stored in {out}, but "
            f"{differ} {'differs' if len(err.changes) == 1 else 'differ'} from it; with "
            f"--resume only {_RESUMABLE_FLAGS} may change. Drop the other flags to continue "
            "that run, or start a new one with another --out or --overwrite"
        ) from None


def run(args: argparse.Namespace) -> int:
    out = require_dir_path(args.out, "--out")  # a FIFO or a symbolic link loop: say so
    given = config_values(args, TrainConfig)
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pass one of them")
    config = resumed_config(out, given) if args.resume else TrainConfig(**given)

    from tl_grokking.analysis.progress import config_callbacks
    from tl_grokking.training.trainer import train_model

    callbacks = config_callbacks(config)
    result = train_model(
        config,
        out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        callbacks=callbacks,
    )
    m = result.metrics
    grok = "not reached" if result.grok_epoch is None else f"epoch {result.grok_epoch}"
    print(
        f"trained to epoch {result.epoch} in {result.wall_time:.1f} s"
        f"{' (early stop)' if result.stopped_early else ''}: train loss {m['train_loss']:.3g}, "
        f"test loss {m['test_loss']:.3g}, test acc {m['test_acc']:.4f}; "
        f"test acc >= {GROK_ACC:g}: {grok}; run directory {result.run_dir}"
    )
    return 0
