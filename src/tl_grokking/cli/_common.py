"""What the subcommands share: the parser class, flags generated from config dataclasses, the
``--key-freqs`` and ``--device`` flags.

Nothing here (or in any module the parser is built from) imports torch, numpy, TransformerLens
or plotly: ``tl-grokking --help`` must be instant. Subcommands import those in ``run``.

**Config flags.** :func:`add_config_flags` adds one ``--flag`` per field of a config dataclass
(``frac_train`` → ``--frac-train``) with the type of its annotation, the help text, section and
choices of its :func:`tl_grokking._validation.option` metadata, and its default shown as
``[default]``. The flags default to "not given" (``argparse.SUPPRESS``), so
:func:`config_values` returns exactly the fields given on the command line and the dataclass
supplies the rest: every default lives in the dataclass, once.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ArgumentParser",
    "HelpFormatter",
    "add_config_flags",
    "config_values",
    "flag_name",
    "show_default",
    "add_key_freqs_flag",
    "add_device_flag",
    "int_list",
]


def flag_name(field: str) -> str:
    """The flag of a config field: ``frac_train`` → ``--frac-train``."""
    return "--" + field.replace("_", "-")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions and epilogs paragraph by paragraph, keeping paragraphs with indented
    lines (examples) as written, and ends the help of every flag that takes a value with its
    default, ``[default]``, unless the help text already shows it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.strip("\n").split("\n\n")
        return "\n\n".join(
            "\n".join(indent + line for line in para.splitlines())
            if any(line.startswith(" ") for line in para.splitlines())
            else super(HelpFormatter, self)._fill_text(para, width, indent)
            for para in paragraphs
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        takes_value = action.option_strings and action.nargs != 0
        if not takes_value or "[" in text or action.default in (None, argparse.SUPPRESS):
            return text
        return f"{text} [%(default)s]"


# ---------------------------------------------------------------------------------------------
# Integer lists: ``--key-freqs 14 19``, ``--key-freqs 14,19``, ``--key-freqs 14, 19``

_INT_LIST_TOKEN = re.compile(r"^[\d,\s]+$")


def int_list(text: str) -> list[int]:
    """An integer-list argument: integers separated by commas and/or spaces (``14,35``)."""
    parts = text.replace(",", " ").split()
    if not parts:
        raise argparse.ArgumentTypeError(f"needs at least one integer (e.g. 14 35), got {text!r}")
    try:
        return [int(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes integers (e.g. 14 35 or 14,35), got {text!r}"
        ) from None


def _join_int_lists(args: list[str], flags: Iterable[str]) -> list[str]:
    """Rewrite ``FLAG 14 19`` / ``FLAG 14, 19`` / ``FLAG=14 19`` as ``FLAG=14,19``.

    Only tokens made of digits, commas and spaces join the list, so a positional argument that
    follows (``--key-freqs 2 5 RUN_DIR``) stays positional. An empty value is left alone for
    :func:`int_list` to refuse.
    """
    flags = set(flags)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            out += [arg, *args[i:]]
            break
        name, eq, value = arg.partition("=")
        parts = [value] if eq else []
        if name not in flags:
            out.append(arg)
            continue
        while i < len(args) and _INT_LIST_TOKEN.match(args[i]):
            parts.append(args[i])
            i += 1
        out += [f"{name}={','.join(parts)}"] if parts else [arg]
    return out


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def path_arg(text: str) -> str:
    """A path flag's value: anything but the empty string (which would mean '.')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a path, got an empty string")
    return text


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose integer-list flags (:func:`add_key_freqs_flag`) take
    ``14 19``, ``14,19`` or ``14, 19`` in any position; the help uses :class:`HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.int_list_flags: set[str] = set()
        # argparse takes '-1e-3' for a flag (its negative-number pattern has no exponent), so
        # `--lr -1e-3` said "expected one argument"; the value now reaches the validators.
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[Any, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        if self.int_list_flags:
            args = _join_int_lists(args, self.int_list_flags)
        return super().parse_known_args(args, namespace)


def add_key_freqs_flag(parser: ArgumentParser, purpose: str, default: str) -> None:
    """``--key-freqs``: key frequencies as ``14 19``, ``14,19`` or ``14, 19`` (default None)."""
    parser.add_argument(
        "--key-freqs",
        type=int_list,
        default=None,
        metavar="K[,K...]",
        help=f"key frequencies {purpose}, as '14 19' or '14,19' [{default}]",
    )
    parser.int_list_flags.add("--key-freqs")


def add_device_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--device", default="cpu", help=f"{what}: cpu, cuda, cuda:N or mps")


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads (default: by problem size, docs/training.md)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch [by problem size: 1 for small p, up to one per core]",
    )


def set_analysis_threads(threads: int | None, model_config: Any) -> int:
    """Set torch's threads for this command's analysis: ``threads``, or by the size of the
    grid forward pass of ``model_config`` (p² inputs, three positions). Returns the count."""
    import torch

    from tl_grokking._resources import auto_threads

    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise ValueError(f"--threads must be a positive integer, got {threads}")
    cfg = model_config
    work = 3 * cfg.p**2 * 2 * cfg.d_model * cfg.d_mlp
    count = threads if threads is not None else auto_threads(work)
    torch.set_num_threads(count)
    return count


# ---------------------------------------------------------------------------------------------
# Flags generated from config dataclasses


def show_default(value: Any, none: str | None = None) -> str:
    """How ``--help`` shows a default: ``None`` as ``none`` (what it means), 0.001 as 1e-3."""
    if value is None:
        return none or "none"
    if isinstance(value, float) and value and not 1e-2 <= abs(value) < 1e5:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"  # 0.001 -> 1e-3
    return str(value)


def _value_type(annotation: Any) -> Callable[[str], Any]:
    """The argparse ``type`` of a field annotated ``int``, ``float``, ``str`` or ``X | None``."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if optional and len(args) == 2 and type(None) in args:
        (annotation,) = [a for a in args if a is not type(None)]
    if annotation not in (int, float, str):
        raise TypeError(f"no flag type for a field annotated {annotation!r}")
    if not optional:
        return annotation

    def parse(text: str) -> Any:  # 'none' / 'off' give None, the field's "not set"
        return None if text.lower() in ("none", "off") else annotation(text)

    parse.__name__ = annotation.__name__  # argparse names it in "invalid int value"
    return parse


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_cls: type,
    *,
    fields: Sequence[str] | None = None,
    shown: Mapping[str, str] | None = None,
    groups: bool = True,
) -> None:
    """Add a flag for each field of the dataclass ``config_cls`` (or each of ``fields``).

    Each field's metadata (:func:`tl_grokking._validation.option`) gives the help text, the
    ``--help`` section (``groups=False`` puts every flag in the parser's own list) and the
    choices; the help ends with the default (``shown[name]`` overrides how it reads).
    """
    hints = typing.get_type_hints(config_cls)
    sections: dict[str, Any] = {}
    chosen = {f.name: f for f in dataclasses.fields(config_cls)}
    for name in fields if fields is not None else list(chosen):
        field = chosen[name]
        meta = field.metadata
        default = (shown or {}).get(name) or show_default(field.default, meta.get("none"))
        help_text = f"{meta['help']} [{default}]".replace("%", "%%")
        target: Any = parser
        if groups and meta.get("group"):
            if meta["group"] not in sections:
                sections[meta["group"]] = parser.add_argument_group(meta["group"])
            target = sections[meta["group"]]
        target.add_argument(
            flag_name(name),
            dest=name,
            type=_value_type(hints[name]),
            choices=meta.get("choices"),
            default=argparse.SUPPRESS,
            help=help_text,
        )


def config_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The config fields given on the command line (flags of :func:`add_config_flags`)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if f.name in args}
