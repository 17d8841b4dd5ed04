"""The ``tl-grokking`` command. Each subcommand lives in its own module with ``register()``."""

from __future__ import annotations

import argparse
import importlib
import sys

from tl_grokking._version import __version__

# Subcommand modules, in the order ``--help`` lists them. Each defines
# ``register(subparsers)`` which adds a parser and sets ``func(args) -> int``.
SUBCOMMANDS: list[str] = ["train", "analyze", "ablate", "report", "reproduce"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input, missing/unwritable paths: no traceback
        print(f"tl-grokking {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tl-grokking {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
