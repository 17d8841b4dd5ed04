"""Algorithmic tasks: token layout, the input grid, labels and the seeded train/test split.

Every task uses the layout of Nanda et al. (2023): three input tokens ``[a, b, =]`` with
``a, b`` in ``{0 .. p-1}`` and the ``=`` token at id ``p`` (input vocabulary ``p + 1``, context
3).  The label is ``task.label(a, b)`` in ``{0 .. p-1}``, read at the final position only.

The canonical ordering of inputs is lexicographic, row ``a * p + b``.  For tasks defined on the
whole grid (``task.is_full_grid``) the input set is all ``p**2`` pairs, and grid-shaped
analysis (2-D Fourier transforms over ``(a, b)``) relies on that ordering.

To add a task, subclass :class:`Task`, implement :meth:`Task.label` (vectorised over int64
tensors) and register it with :func:`register_task`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = [
    "Task",
    "ModularAddition",
    "TASKS",
    "register_task",
    "make_task",
    "validate_p",
    "validate_frac_train",
]


def validate_p(p: object, *, field: str = "p", min_value: int = 3) -> int:
    """Return ``p`` as an int, or raise ``ValueError`` naming the field and accepted range."""
    if isinstance(p, bool) or not isinstance(p, int):
        # Allow integral floats/numpy ints coming from JSON or argparse, nothing else.
        try:
            as_int = int(p)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{field} must be an integer >= {min_value}, got {p!r}") from None
        if as_int != p:
            raise ValueError(f"{field} must be an integer >= {min_value}, got {p!r}")
        p = as_int
    if p < min_value:
        raise ValueError(f"{field} must be an integer >= {min_value}, got {p}")
    return p


def validate_frac_train(frac_train: object) -> float:
    """Return ``frac_train`` as a float in the open interval (0, 1), or raise ``ValueError``."""
    try:
        value = float(frac_train)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"frac_train must be a number in (0, 1), got {frac_train!r}") from None
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise ValueError(f"frac_train must be in the open interval (0, 1), got {frac_train!r}")
    return value


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(math.isqrt(n)) + 1))


@dataclass(frozen=True)
class Task:
    """A binary operation on ``Z_p`` presented as ``[a, b, =] -> label``.

    Subclasses set ``name``, ``commutative`` and implement :meth:`label`.  Tasks whose inputs are
    not the full grid (division excludes ``b = 0``) override :meth:`valid`.
    """

    p: int

    name: ClassVar[str] = "task"
    symbol: ClassVar[str] = "?"
    commutative: ClassVar[bool] = False
    requires_prime: ClassVar[bool] = False

    def __post_init__(self) -> None:
        p = validate_p(self.p)
        object.__setattr__(self, "p", p)
        if self.requires_prime and not is_prime(p):
            raise ValueError(f"p must be prime for task {self.name!r}, got {p}")

    # ---- token layout -------------------------------------------------------------------
    @property
    def eq_token(self) -> int:
        """Token id of ``=`` (``p``)."""
        return self.p

    @property
    def d_vocab(self) -> int:
        """Input vocabulary: the p number tokens and ``=``."""
        return self.p + 1

    @property
    def n_classes(self) -> int:
        """Number of output classes (the p residues)."""
        return self.p

    n_ctx: ClassVar[int] = 3

    # ---- the operation ------------------------------------------------------------------
    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        """The answer ``c`` for operands ``a, b`` (vectorised, int64)."""
        raise NotImplementedError

    def valid(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> torch.Tensor:
        """Boolean mask of operand pairs on which the task is defined (default: all)."""
        return torch.ones_like(a, dtype=torch.bool)

    @property
    def is_full_grid(self) -> bool:
        """True when the input set is all ``p**2`` pairs in lexicographic order."""
        return type(self).valid is Task.valid

    # ---- data -----------------------------------------------------------------------------
    def pairs(self) -> Int[Tensor, "n 2"]:
        """All operand pairs ``(a, b)`` in lexicographic order (row ``a * p + b`` on the full grid)."""
        a = torch.arange(self.p).repeat_interleave(self.p)
        b = torch.arange(self.p).repeat(self.p)
        keep = self.valid(a, b)
        return torch.stack([a[keep], b[keep]], dim=1)

    def tokens(self) -> Int[Tensor, "n 3"]:
        """Input tokens ``[a, b, =]`` for every pair of :meth:`pairs`."""
        pairs = self.pairs()
        eq = torch.full((pairs.shape[0], 1), self.eq_token, dtype=torch.long)
        return torch.cat([pairs, eq], dim=1)

    def labels(self) -> Int[Tensor, " n"]:
        """Labels for every pair of :meth:`pairs`."""
        pairs = self.pairs()
        return self.label(pairs[:, 0], pairs[:, 1])

    def split(
        self, frac_train: float, seed: int
    ) -> tuple[Int[Tensor, " n_train"], Int[Tensor, " n_test"]]:
        """Seeded random split of the input rows: ``floor(frac_train * n)`` train rows, rest test.

        Returns sorted row indices into :meth:`pairs`. For p = 113 and 0.3 this is 3830 train
        pairs out of 12769, as in the paper. Uses a private generator: no global RNG is touched.
        """
        frac_train = validate_frac_train(frac_train)
        n = self.pairs().shape[0]
        n_train = int(frac_train * n)
        if n_train < 1 or n_train >= n:
            raise ValueError(
                f"frac_train={frac_train} leaves an empty train or test set for {n} inputs"
            )
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=gen)
        return perm[:n_train].sort().values, perm[n_train:].sort().values

    def to_dict(self) -> dict:
        return {"name": self.name, "p": self.p}


@dataclass(frozen=True)
class ModularAddition(Task):
    """``c = (a + b) mod p`` — the task of the paper."""

    name: ClassVar[str] = "add"
    symbol: ClassVar[str] = "+"
    commutative: ClassVar[bool] = True

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        return (a + b) % self.p


TASKS: dict[str, Callable[[int], Task]] = {"add": ModularAddition}


def register_task(name: str, factory: Callable[[int], Task]) -> None:
    """Register a task class (or any ``p -> Task`` factory) under ``name``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"task name must be a non-empty string, got {name!r}")
    TASKS[name] = factory


def make_task(name: str = "add", p: int = 113) -> Task:
    """Build a registered task by name, e.g. ``make_task("add", 113)``."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](p)
