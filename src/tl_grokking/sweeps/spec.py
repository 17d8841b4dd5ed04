"""What a sweep is: a base configuration and the values each swept field takes.

A :class:`SweepSpec` holds a base (:class:`~tl_grokking.training.config.TrainConfig` fields,
on top of a preset) and **axes**: for each swept field, the list of its values. ``grid`` mode
trains every combination (the first axis varies slowest); ``zip`` mode pairs the i-th values
of every axis (all axes of one length). :meth:`SweepSpec.runs` expands it into named
configurations, each validated by ``TrainConfig`` before anything is trained.

Values come from the command line (:func:`parse_values`: a comma list for any field,
``A-B`` inclusive ranges for integer fields, ``off`` / ``none`` for the optional ones) or from
a TOML file (:func:`load_spec`)::

    preset = "quick"          # optional: "paper" (the default) or "quick"
    mode = "grid"             # optional: "grid" (the default) or "zip"

    [base]                    # fields every run shares
    epochs = 3000

    [axes]                    # the swept fields; a list, or a string as on the command line
    seed = "0-4"
    weight_decay = [0.3, 1.0, 3.0]

A run's name is made of its swept values only (``seed=3,weight_decay=0.3``), so extending an
axis keeps the names, and the directories, of the runs already there.

Imports neither torch nor TransformerLens (the ``tl-grokking`` parser is built from it).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_grokking.training.config import PRESETS, TrainConfig

__all__ = [
    "SweepSpec",
    "SweepRun",
    "MODES",
    "SWEEPABLE_FIELDS",
    "parse_values",
    "load_spec",
    "run_name",
]

MODES = ("grid", "zip")

#: Every TrainConfig field may be swept (the device and the thread count included).
SWEEPABLE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))

_HINTS = typing.get_type_hints(TrainConfig)
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
#: Most runs one sweep may define (a typo such as ``--seed 0-100000`` is refused, not run).
MAX_RUNS = 100_000


def _base_type(name: str) -> tuple[type, bool]:
    """The value type of field ``name`` and whether it is optional (``X | None``)."""
    annotation = _HINTS[name]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return annotation, False


def _check_field(name: str) -> None:
    if name not in SWEEPABLE_FIELDS:
        raise ValueError(
            f"{name!r} is not a training-config field; sweepable fields: "
            f"{', '.join(SWEEPABLE_FIELDS)}"
        )


def parse_values(name: str, text: str) -> list[Any]:
    """The values of field ``name`` written as on the command line.

    A comma list (``0.3,1,3``); for an integer field also inclusive ranges (``0-9``, mixed with
    single values: ``0-3,7``); ``off`` or ``none`` for an optional field's "not set". Each value
    is converted to the field's type; ``ValueError`` names the field and the bad item.
    """
    _check_field(name)
    kind, optional = _base_type(name)
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise ValueError(
            f"{name}: expected a comma-separated list of values (e.g. "
            f"{'0-4 or 0,1,2' if kind is int else '0.3,1,3'}), got {text!r}"
        )
    values: list[Any] = []
    for item in items:
        if optional and item.lower() in ("off", "none"):
            values.append(None)
            continue
        match = _RANGE.match(item) if kind is int else None
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if high < low:
                raise ValueError(f"{name}: the range {item!r} is empty (write low-high)")
            if high - low >= MAX_RUNS:
                raise ValueError(f"{name}: the range {item!r} has more than {MAX_RUNS} values")
            values.extend(range(low, high + 1))
            continue
        try:
            values.append(kind(item))
        except ValueError:
            accepted = {int: "integers or ranges A-B", float: "numbers"}.get(kind, "strings")
            raise ValueError(
                f"{name}: {item!r} is not a value of this field (it takes {accepted}"
                f"{', or off' if optional else ''})"
            ) from None
    return values


def _format_value(value: Any) -> str:
    """How a value reads in a run's name: ``0.001``, ``3``, ``off``."""
    if value is None:
        return "off"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def run_name(point: Mapping[str, Any]) -> str:
    """The directory name of the run with swept values ``point``: ``seed=3,weight_decay=0.3``
    (``run`` for a sweep of one run with no axes)."""
    if not point:
        return "run"
    name = ",".join(f"{key}={_format_value(value)}" for key, value in point.items())
    return name.replace(os.sep, "_").replace("\0", "_")


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its name (its directory under ``runs/``), swept values and config."""

    name: str
    point: dict[str, Any]
    config: TrainConfig


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: ``preset`` + ``base`` fields for every run, ``axes`` of values, ``mode``.

    Construction checks the field names, the mode and (in ``zip`` mode) the axis lengths;
    :meth:`runs` builds and validates every configuration.
    """

    axes: dict[str, list[Any]] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    preset: str = "paper"
    mode: str = "grid"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.axes, Mapping) or not isinstance(self.base, Mapping):
            raise ValueError("axes and base must be mappings of training-config fields")
        for name in (*self.axes, *self.base):
            _check_field(name)
        both = sorted(set(self.axes) & set(self.base))
        if both:
            raise ValueError(f"{', '.join(both)}: given both as a fixed value and as an axis")
        for name, values in self.axes.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(
                    f"axis {name}: expected a non-empty list of values, got {values!r}"
                )
        if self.mode == "zip" and len({len(v) for v in self.axes.values()}) > 1:
            lengths = ", ".join(f"{name} {len(v)}" for name, v in self.axes.items())
            raise ValueError(
                f"zip mode pairs the axes value by value; they must have one length, got {lengths}"
            )
        count = self.count()
        if count > MAX_RUNS:
            raise ValueError(f"the sweep defines {count} runs, more than {MAX_RUNS}")

    def count(self) -> int:
        """How many runs the spec defines."""
        lengths = [len(v) for v in self.axes.values()]
        if not lengths:
            return 1
        if self.mode == "zip":
            return lengths[0]
        total = 1
        for n in lengths:
            total *= n
        return total

    def points(self) -> list[dict[str, Any]]:
        """The swept values of each run, in order (the first axis varies slowest)."""
        names = list(self.axes)
        if self.mode == "zip":
            rows = zip(*self.axes.values(), strict=True)
        else:
            rows = itertools.product(*self.axes.values())
        return [dict(zip(names, row, strict=True)) for row in rows]

    def runs(self) -> list[SweepRun]:
        """Every run: its name, swept values and validated :class:`TrainConfig`.

        ``ValueError`` names the run and the field a value is refused for, and two points that
        give the same configuration (``1`` and ``1.0``).
        """
        runs: list[SweepRun] = []
        seen: set[str] = set()
        for point in self.points():
            try:
                config = TrainConfig(**{**PRESETS[self.preset], **self.base, **point})
            except (TypeError, ValueError) as err:
                where = run_name(point) if point else "the base configuration"
                raise ValueError(f"sweep run {where}: {err}") from None
            normalised = {key: getattr(config, key) for key in point}
            name = run_name(normalised)
            if name in seen:
                raise ValueError(f"the sweep lists the run {name} twice")
            seen.add(name)
            runs.append(SweepRun(name=name, point=normalised, config=config))
        return runs

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "mode": self.mode,
            "base": dict(self.base),
            "axes": {k: list(v) for k, v in self.axes.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "sweep spec") -> SweepSpec:
        """A spec from a dict (a TOML file's tables, ``sweep.json``'s ``spec``); axis values
        may be lists or command-line strings (``"0-4"``). Errors name ``source``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a table with base, axes, preset, mode")
        unknown = sorted(set(data) - {"preset", "mode", "base", "axes"})
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {', '.join(unknown)}; a sweep spec has preset, "
                "mode, [base] and [axes]"
            )
        base, axes = data.get("base", {}), data.get("axes", {})
        for key, table in (("base", base), ("axes", axes)):
            if not isinstance(table, Mapping):
                raise ValueError(f"{source}: {key} must be a table of field = value(s)")
        try:
            parsed = {
                name: parse_values(name, values) if isinstance(values, str) else values
                for name, values in axes.items()
            }
            return cls(
                axes=parsed,
                base=dict(base),
                preset=data.get("preset", "paper"),
                mode=data.get("mode", "grid"),
            )
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def with_overrides(
        self,
        *,
        axes: Mapping[str, list[Any]] = {},
        preset: str | None = None,
        mode: str | None = None,
    ) -> SweepSpec:
        """This spec with command-line values on top: a field given one value becomes a base
        field, several an axis (replacing what the file said of that field)."""
        new_axes = {k: v for k, v in self.axes.items() if k not in axes}
        new_base = {k: v for k, v in self.base.items() if k not in axes}
        for name, values in axes.items():
            if len(values) == 1:
                new_base[name] = values[0]
            else:
                new_axes[name] = list(values)
        return SweepSpec(
            axes=new_axes,
            base=new_base,
            preset=preset or self.preset,
            mode=mode or self.mode,
        )


def _toml() -> Any:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ValueError(
                "reading a TOML spec on Python 3.10 needs tomli: pip install tomli"
            ) from None
    return tomllib


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """The :class:`SweepSpec` of a TOML file (format in this module's docstring)."""
    tomllib = _toml()
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    return SweepSpec.from_dict(data, source=str(path))
