"""How numbers are shown to people: the one formatter of the report, the figures and the CLI.

Plain Python (no torch, no plotly), so the command line can import it cheaply.  Machine-readable
files (``measures.csv``, JSON) keep full precision and do not use it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt_num"]

#: Shown for a missing value (``None``).
MISSING = "—"


def fmt_num(value: Any) -> str:
    """A number for display.

    ``None`` → ``"—"``; integers (and floats with an integer value below 10¹⁵, e.g. an epoch
    read back as ``1400.0``) in full; other floats with 4 significant digits, in scientific
    notation (``2.410e-07``) when below 10⁻³ or from 10⁵ on; NaN / inf as ``nan`` / ``inf``;
    anything else (a string, a tensor with one element) as ``str``.
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if not isinstance(value, int | float) and hasattr(value, "item"):
        try:
            value = value.item()  # a one-element tensor or numpy scalar
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)
