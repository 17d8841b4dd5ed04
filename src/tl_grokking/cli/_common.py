"""Argument types shared by several subcommands."""

from __future__ import annotations

import argparse


def freq_list(text: str) -> list[int]:
    """One ``--key-freqs`` argument: integers separated by commas and/or spaces (``14,35``)."""
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--key-freqs takes integers (e.g. 14 35 or 14,35), got {text!r}"
        ) from None
