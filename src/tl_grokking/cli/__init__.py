"""The ``tl-grokking`` command. Each subcommand lives in its own module with ``register()``.

Building the parser imports no torch, numpy, TransformerLens or plotly (``--help`` is instant);
a subcommand imports what it needs when it runs.

Exit status: 0 on success; 2 for bad input — a bad flag (argparse's message and usage) or an
expected failure of the work (``ValueError``, ``OSError``, the library's errors such as
``RunDirError``, ``CheckpointFormatError``, ``TrainingDivergedError``, a corrupt safetensors
file), printed as the one line ``tl-grokking COMMAND: error: ...``; 130 after Ctrl-C. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tl_grokking._version import __version__
from tl_grokking.cli._common import ArgumentParser

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# Subcommand modules, in the order ``--help`` lists them. Each defines
# ``register(subparsers)`` which adds a parser and sets ``func(args) -> int``.
SUBCOMMANDS: list[str] = ["train", "analyze", "ablate", "report", "reproduce"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tl-grokking",
        description=(
            "Train and reverse-engineer grokking transformers (Nanda et al. 2023, "
            "'Progress measures for grokking via mechanistic interpretability')."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tl-grokking {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that bad input explains; the classes of modules not loaded cannot occur."""
    kinds: list[type[BaseException]] = [ValueError, OSError]
    trainer = sys.modules.get("tl_grokking.training.trainer")
    if trainer is not None:
        kinds.append(trainer.TrainingDivergedError)
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None:
        kinds.append(safetensors.SafetensorError)
    return tuple(kinds)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"tl-grokking {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, _expected_errors()):
            raise  # a bug: keep the traceback
        message = getattr(err, "cli_message", None) or str(err) or type(err).__name__
        message = " ".join(line.strip() for line in message.splitlines() if line.strip())
        print(f"tl-grokking {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
