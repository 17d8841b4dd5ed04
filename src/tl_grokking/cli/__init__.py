"""The ``tl-grokking`` command. Each subcommand lives in its own module with ``register()``.

Building the parser imports no torch, numpy, TransformerLens or plotly (``--help`` is instant);
a subcommand imports what it needs when it runs.

Exit status: 0 on success; 2 for bad input — a bad flag (argparse's message and usage) or an
expected failure of the work (``ValueError``, ``OSError``, the library's errors such as
``RunDirError``, ``CheckpointFormatError``, ``TrainingDivergedError``, a corrupt safetensors
file; running out of memory), printed as the one line ``tl-grokking COMMAND: error: ...``;
130 after Ctrl-C. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tl_grokking._validation import expected_errors, one_line
from tl_grokking._version import __version__
from tl_grokking.cli._common import ArgumentParser

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# Subcommand modules, in the order ``--help`` lists them. Each defines
# ``register(subparsers)`` which adds a parser and sets ``func(args) -> int``.
SUBCOMMANDS: list[str] = ["train", "sweep", "analyze", "ablate", "report", "reproduce"]


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


def _out_of_memory(err: BaseException) -> bool:
    """A ``MemoryError``, or torch's ``OutOfMemoryError`` (a device's memory)."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return isinstance(err, MemoryError) or (oom is not None and isinstance(err, oom))


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
        if _out_of_memory(err):  # the machine's limit, not a bug
            print(
                f"tl-grokking {args.command}: error: out of memory ({type(err).__name__}"
                f"{': ' + one_line(err) if str(err) else ''}); this needs more memory than "
                "the machine has free: use a smaller p or model, or a larger machine",
                file=sys.stderr,
            )
            return 2
        if not isinstance(err, expected_errors()):
            raise  # a bug: keep the traceback
        print(f"tl-grokking {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
