"""Field validation and field declarations shared by the config dataclasses.

Imports nothing heavy (no torch, numpy or TransformerLens): the ``tl-grokking`` command builds
its flags from the config dataclasses, and ``--help`` must stay instant.

* :func:`check_int`, :func:`check_float`, :func:`check_choice`, :func:`check_device` validate
  one value and raise ``ValueError`` naming the field and what is accepted;
* :func:`option` declares a config field with its help text (``dataclasses.field`` metadata),
  the single place a flag's default and help live (see ``tl_grokking.cli._flags``);
* :func:`config_from_dict` builds a config dataclass from a dict, naming unknown keys;
* :func:`worded` makes an error whose remedies read as keyword arguments in the API
  (``resume=True``) and as flags on the command line (``--resume``).
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = [
    "DEVICE_TYPES",
    "check_int",
    "check_float",
    "check_choice",
    "check_device",
    "option",
    "config_from_dict",
    "worded",
    "expected_errors",
    "one_line",
    "API_WORDS",
    "CLI_WORDS",
]

#: Device types a run can use (``torch.device(...).type``).
DEVICE_TYPES = ("cpu", "cuda", "mps")
_DEVICE_RE = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")

_E = TypeVar("_E", bound=BaseException)
_C = TypeVar("_C")


def check_int(value: Any, field: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``; integral floats (from JSON) pass, bools do not."""
    number: int | None = None
    if not isinstance(value, bool):
        try:
            number = operator.index(value)  # int, numpy integers
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                number = int(value)
    if number is None or number < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{field} must be {what}, got {value!r}")
    return number


def check_float(
    value: Any,
    field: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float in the interval from ``low`` to ``high`` (open or closed ends)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = None
    if x is None or isinstance(value, bool):
        raise ValueError(f"{field} must be a number, got {value!r}")
    above = x > low if low_open else x >= low
    below = x < high if high_open else x <= high
    if not (above and below):  # NaN is neither
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{field} must be in {left}{low:g}, {high:g}{right}, got {value!r}")
    return x


def check_choice(value: Any, field: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{field} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_device(device: Any) -> str:
    """The device string ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'mps'`` (syntax only; whether
    the device exists is :func:`tl_grokking.model.transformer.validate_device`'s question)."""
    if isinstance(device, str):
        text = device
    elif type(device).__name__ == "device":  # a torch.device, without importing torch
        text = str(device)
    else:
        text = ""
    if not _DEVICE_RE.match(text):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return text


def option(
    default: Any,
    help: str,
    *,
    group: str | None = None,
    choices: Sequence[str] | None = None,
    none: str | None = None,
) -> Any:
    """A config field: its default, its help text and, for the flag, the ``--help`` section
    (``group``), the accepted ``choices`` and what a ``None`` default means (``none``)."""
    metadata = {"help": help, "group": group, "choices": choices, "none": none}
    return dataclasses.field(default=default, metadata=metadata)


def config_from_dict(cls: type[_C], data: Any) -> _C:
    """Build the config dataclass ``cls`` from a dict, naming any unknown fields."""
    if not isinstance(data, dict):
        raise ValueError(f"a {cls.__name__} must be built from a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    return cls(**data)


#: How a message names the remedies: keyword arguments in the API, flags on the command line.
API_WORDS = {"resume": "resume=True", "overwrite": "overwrite=True", "out": "run_dir"}
CLI_WORDS = {"resume": "--resume", "overwrite": "--overwrite", "out": "--out"}


def worded(cls: type[_E], template: str, **values: Any) -> _E:
    """An exception ``cls(message)`` whose remedies name the API's arguments.

    ``template`` names them as ``{resume}``, ``{overwrite}``, ``{out}`` (the other
    ``{placeholders}`` come from ``values``). The message reads ``resume=True``; the
    exception's ``cli_message`` reads ``--resume``, and the ``tl-grokking`` command prints that.
    """
    err = cls(template.format(**API_WORDS, **values))
    err.cli_message = template.format(**CLI_WORDS, **values)  # type: ignore[attr-defined]
    return err


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures bad input explains (the CLI prints them as one line, a sweep records them
    as a run's error): ``ValueError``, ``OSError``, a diverged run, a corrupt safetensors file.
    The classes of modules not loaded cannot have been raised, so they are not imported."""
    import sys

    kinds: list[type[BaseException]] = [ValueError, OSError]
    trainer = sys.modules.get("tl_grokking.training.trainer")
    if trainer is not None:
        kinds.append(trainer.TrainingDivergedError)
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None:
        kinds.append(safetensors.SafetensorError)
    return tuple(kinds)


def one_line(err: BaseException, *, cli: bool = True) -> str:
    """An error's message on one line (its ``cli_message`` when ``cli``, see :func:`worded`)."""
    message = (getattr(err, "cli_message", None) if cli else None) or str(err)
    message = message or type(err).__name__
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
