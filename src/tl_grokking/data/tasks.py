"""Algorithmic tasks: token layout, the input grid, labels and the seeded train/test split.

Every task uses the layout of Nanda et al. (2023): three input tokens ``[a, b, =]`` with
``a, b`` in ``{0 .. p-1}`` and the ``=`` token at id ``p`` (input vocabulary ``p + 1``, context
3).  The label is ``task.label(a, b)`` in ``{0 .. p-1}``, read at the final position only.

The canonical ordering of inputs is lexicographic, row ``a * p + b``.  For tasks defined on the
whole grid (``task.is_full_grid``) the input set is all ``p**2`` pairs, and grid-shaped
analysis (2-D Fourier transforms over ``(a, b)``) relies on that ordering.

To add a task, subclass :class:`Task`, implement :meth:`Task.label` (vectorised over int64
tensors) and register it with :func:`register_task`, or wrap any ``(a, b) -> c`` function with
:func:`make_custom_task`.

Registered tasks (``docs/tasks.md`` has the full table):

========== ====================== =========== ================== ==========================
name       label                  commutative fourier_structure  inputs
========== ====================== =========== ================== ==========================
add        a + b                  yes         additive           all p² pairs
sub        a - b                  no          additive           all p² pairs
mul        a · b                  yes         multiplicative     all p² pairs (p prime)
div        a · b⁻¹                no          multiplicative     b ≠ 0: p(p-1) pairs (prime)
x2+y2      a² + b²                yes         None               all p² pairs
x2+xy+y2   a² + ab + b²           yes         None               all p² pairs
x3+xy      a³ + ab                no          None               all p² pairs
========== ====================== =========== ================== ==========================

``Task.fourier_structure`` says which Fourier analyses are meaningful:

* ``"additive"``: the answer is ``a ± b`` in the cyclic group Z_p, so the analysis of Nanda et
  al. applies with the Fourier basis over Z_p indexed by the token itself.
* ``"multiplicative"``: the answer is ``a · b^{±1}`` in Z_p^*, which is cyclic of order
  ``p - 1``; writing every non-zero token as a power of a generator g (its discrete logarithm)
  turns the operation into ``i ± j`` in Z_{p-1}. The Fourier analysis applies to the tokens in
  that order (:meth:`Task.fourier_tokens`), with basis size ``p - 1``; token 0 is left out.
* ``None``: no group structure is known; only the structure-free measures (losses, accuracy,
  weight norm) are meaningful.

:attr:`Task.meaningful_analyses` names what applies, and :meth:`Task.require` is the gate every
analysis calls: it raises ``ValueError`` naming the analysis, the task and what to use instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Int
from torch import Tensor

from tl_grokking._validation import check_int
from tl_grokking.data.discrete_log import discrete_log_table, is_prime

__all__ = [
    "Task",
    "ModularAddition",
    "ModularSubtraction",
    "ModularMultiplication",
    "ModularDivision",
    "SumOfSquares",
    "QuadraticForm",
    "CubicPlusProduct",
    "CustomTask",
    "make_custom_task",
    "FOURIER_STRUCTURES",
    "TASKS",
    "register_task",
    "make_task",
    "validate_p",
    "validate_frac_train",
    "SPLIT_METHODS",
    "authors_split",
    "is_prime",
    "CAPABILITIES",
]

FOURIER_STRUCTURES = ("additive", "multiplicative", None)

#: The train/test split procedures of :meth:`Task.split`: ``"tl_grokking"`` (``torch.randperm``
#: with a seeded generator; what ``tl-grokking train`` uses) and ``"authors"`` (the original
#: code of Nanda et al.: Python's ``random.shuffle``; :func:`authors_split`).
SPLIT_METHODS = ("tl_grokking", "authors")

#: The capabilities of :attr:`Task.meaningful_analyses` and what each needs (for the messages of
#: :meth:`Task.require`).
CAPABILITIES: dict[str, str] = {
    "training": "nothing beyond the task",
    "group_fourier": "a task with a known group structure (fourier_structure 'additive' or "
    "'multiplicative')",
    "token_fourier": "an additive task on the full p² grid (Fourier basis indexed by the tokens: "
    "'add', 'sub')",
    "sum_directions": "the a + b sum directions cos/sin(w_k(a + b)), i.e. the task 'add'",
    "clock_pizza": "a commutative group task ('add', 'mul')",
}


def validate_p(p: object, *, field: str = "p", min_value: int = 3) -> int:
    """Return ``p`` as an int, or raise ``ValueError`` naming the field and accepted range.

    Integral floats and numpy integers (from JSON or argparse) pass; bools and strings do not.
    """
    return check_int(p, field, minimum=min_value)


def validate_frac_train(frac_train: object) -> float:
    """Return ``frac_train`` as a float in the open interval (0, 1), or raise ``ValueError``."""
    try:
        value = float(frac_train)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"frac_train must be a number in (0, 1), got {frac_train!r}") from None
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise ValueError(f"frac_train must be in the open interval (0, 1), got {frac_train!r}")
    return value


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
    #: Which Fourier analyses are meaningful: "additive", "multiplicative" or None (module doc).
    fourier_structure: ClassVar[str | None] = None
    #: For a group task, the answer in group coordinates is ``s_a * i + s_b * j`` (mod n):
    #: ``(1, 1)`` for + and ×, ``(1, -1)`` for - and ÷.
    operand_signs: ClassVar[tuple[int, int]] = (1, 1)

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
        """All operand pairs ``(a, b)``, lexicographic (row ``a * p + b`` on the full grid)."""
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
        self, frac_train: float, seed: int, method: str = "tl_grokking"
    ) -> tuple[Int[Tensor, " n_train"], Int[Tensor, " n_test"]]:
        """Seeded random split of the input rows: ``int(frac_train * n)`` train rows, rest test.

        Returns sorted row indices into :meth:`pairs`. For p = 113 and 0.3 this is 3830 train
        pairs out of 12769, as in the paper. ``method`` (one of :data:`SPLIT_METHODS`) picks
        the procedure, and the same seed gives different pairs under each:

        * ``"tl_grokking"`` (the default; what ``tl-grokking train`` uses): the first
          ``n_train`` entries of ``torch.randperm(n)`` drawn from a generator seeded with
          ``seed``.
        * ``"authors"``: the procedure of the authors' original code,
          :func:`authors_split` (Python's ``random.shuffle``).

        Either way a private generator is used: no global RNG is touched.
        """
        if method == "authors":
            return authors_split(self, frac_train, seed)
        if method != "tl_grokking":
            raise ValueError(f"method must be one of {SPLIT_METHODS}, got {method!r}")
        n, n_train = self._split_sizes(frac_train)
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=gen)
        return perm[:n_train].sort().values, perm[n_train:].sort().values

    def _split_sizes(self, frac_train: float) -> tuple[int, int]:
        """``(n, n_train)``: the number of inputs and ``int(frac_train * n)``, checked."""
        frac_train = validate_frac_train(frac_train)
        n = self.pairs().shape[0]
        n_train = int(frac_train * n)
        if n_train < 1 or n_train >= n:
            raise ValueError(
                f"frac_train={frac_train} leaves an empty train or test set for {n} inputs"
            )
        return n, n_train

    def to_dict(self) -> dict:
        return {"name": self.name, "p": self.p}

    # ---- which analyses are meaningful -----------------------------------------------------
    @property
    def fourier_size(self) -> int | None:
        """Size n of the group the Fourier analysis runs over: p (additive), p - 1
        (multiplicative, after the discrete-log re-indexing), None (no group structure)."""
        if self.fourier_structure == "additive":
            return self.p
        if self.fourier_structure == "multiplicative":
            return self.p - 1
        return None

    def fourier_tokens(self) -> Int[Tensor, " n"]:
        """Token ids in group order: row ``i`` of every Fourier analysis is token ``out[i]``.

        Additive tasks: ``[0, 1, ..., p-1]`` (the identity). Multiplicative tasks:
        ``[g^0, g^1, ..., g^(p-2)] mod p`` for the smallest primitive root g of p, i.e. the
        discrete-log re-indexing (token 0 has no logarithm and is left out). Raises
        ``ValueError`` for tasks without a group structure.
        """
        self.require("group_fourier", "the Fourier re-indexing (task.fourier_tokens)")
        if self.fourier_structure == "additive":
            return torch.arange(self.p)
        return discrete_log_table(self.p)[0]

    @property
    def meaningful_analyses(self) -> frozenset[str]:
        """Names of the analyses that are meaningful for this task (see ``docs/tasks.md``).

        * ``"training"``: losses, accuracy, weight norms — every task.
        * ``"group_fourier"``: Fourier analysis in the task's group coordinates (key
          frequencies, neuron clusters, Fourier norms of W_E / W_L; the discrete-log order for
          × and ÷) — additive and multiplicative tasks.
        * ``"token_fourier"``: Fourier analysis indexed by the tokens over the full p² grid
          (``hooks.fourier_ablate``, ``ablations``, the W_E / W_L figures) — additive tasks.
        * ``"sum_directions"``: the ``a + b`` sum directions, so the restricted / excluded
          losses and the trig logit decomposition ``cos(w(a + b - c))`` — addition only.
        * ``"clock_pizza"``: gradient symmetricity and distance irrelevance
          (:mod:`tl_grokking.analysis.clock_pizza`) — commutative group tasks (add, mul).
        """
        out = {"training"}
        if self.fourier_structure in ("additive", "multiplicative"):
            out.add("group_fourier")
            if self.commutative and self.operand_signs == (1, 1):
                out.add("clock_pizza")
        if self.fourier_structure == "additive" and self.is_full_grid:
            out.add("token_fourier")
            if self.operand_signs == (1, 1):
                out.add("sum_directions")
        return frozenset(out)

    def require(self, capability: str, analysis: str) -> None:
        """Raise ``ValueError`` unless ``capability`` is in :attr:`meaningful_analyses`.

        The one gate every analysis of the library goes through: ``capability`` is a key of
        :data:`CAPABILITIES` (``"group_fourier"``, ``"token_fourier"``, ``"sum_directions"``,
        ...), ``analysis`` names the analysis for the message, which also names the task, what
        the analysis needs and what to use instead. E.g.
        ``task.require("sum_directions", "the restricted loss")``.
        """
        if capability not in CAPABILITIES:
            raise ValueError(
                f"capability must be one of {sorted(CAPABILITIES)}, got {capability!r}"
            )
        if capability not in self.meaningful_analyses:
            raise ValueError(
                f"cannot compute {analysis} for task {self.name!r} (p = {self.p}, "
                f"fourier_structure {self.fourier_structure!r}): not meaningful, it needs "
                f"{CAPABILITIES[capability]}; {self._instead(capability)}"
            )

    def _instead(self, capability: str) -> str:
        """What to use instead of an analysis that needs ``capability`` (for :meth:`require`)."""
        if self.fourier_structure == "multiplicative":
            return (
                "in the task's group coordinates (the discrete-log order over Z_p-1 of "
                "tl_grokking.data.discrete_log) the analyses key_frequencies, neuron_clusters, "
                "embed_fourier_norms and unembed_fourier_norms apply (their default reindex=None)"
            )
        if self.fourier_structure == "additive":
            return (
                "the token-order Fourier analyses still apply (key_frequencies, neuron_clusters, "
                "fourier_ablate on 'embed' or with basis='block'); the restricted / excluded "
                "losses, the trig logit decomposition and the clock/pizza metrics need a + b"
            )
        return "only the structure-free measures apply (losses, accuracy, weight norm, Gini)"


@dataclass(frozen=True)
class ModularAddition(Task):
    """``c = (a + b) mod p`` — the task of the paper."""

    name: ClassVar[str] = "add"
    symbol: ClassVar[str] = "+"
    commutative: ClassVar[bool] = True

    fourier_structure: ClassVar[str | None] = "additive"

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        return (a + b) % self.p


@dataclass(frozen=True)
class ModularSubtraction(Task):
    """``c = (a - b) mod p``."""

    name: ClassVar[str] = "sub"
    symbol: ClassVar[str] = "-"
    fourier_structure: ClassVar[str | None] = "additive"
    operand_signs: ClassVar[tuple[int, int]] = (1, -1)

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        return (a - b) % self.p


@dataclass(frozen=True)
class ModularMultiplication(Task):
    """``c = (a * b) mod p`` for prime p, on all p² pairs (a or b = 0 gives 0).

    The non-zero residues form the cyclic group Z_p^*; the discrete logarithm turns the
    product into a sum mod ``p - 1`` (``fourier_structure = "multiplicative"``).
    """

    name: ClassVar[str] = "mul"
    symbol: ClassVar[str] = "*"
    commutative: ClassVar[bool] = True
    requires_prime: ClassVar[bool] = True
    fourier_structure: ClassVar[str | None] = "multiplicative"

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        return (a * b) % self.p


@dataclass(frozen=True)
class ModularDivision(Task):
    """``c = a * b^(-1) mod p`` for prime p, defined for ``b != 0`` only.

    The input set is the ``p (p - 1)`` pairs with ``b != 0`` (lexicographic order), so
    ``is_full_grid`` is False. Under the discrete logarithm it is subtraction mod ``p - 1``.
    """

    name: ClassVar[str] = "div"
    symbol: ClassVar[str] = "/"
    requires_prime: ClassVar[bool] = True
    fourier_structure: ClassVar[str | None] = "multiplicative"
    operand_signs: ClassVar[tuple[int, int]] = (1, -1)

    def valid(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> torch.Tensor:
        return (b % self.p) != 0

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        if bool(((b % self.p) == 0).any()):
            raise ValueError(f"division is undefined for b = 0 (mod {self.p}); see valid()")
        # Fermat: b^(p-2) is the inverse of b mod prime p. Table lookup keeps it exact.
        inverse = torch.tensor([pow(x, self.p - 2, self.p) for x in range(self.p)])
        return (a * inverse.to(b.device)[b % self.p]) % self.p


@dataclass(frozen=True)
class SumOfSquares(Task):
    """``c = (a² + b²) mod p`` (no group structure known)."""

    name: ClassVar[str] = "x2+y2"
    symbol: ClassVar[str] = "x²+y²"
    commutative: ClassVar[bool] = True

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        return (a * a + b * b) % self.p


@dataclass(frozen=True)
class QuadraticForm(Task):
    """``c = (a² + ab + b²) mod p`` (no group structure known)."""

    name: ClassVar[str] = "x2+xy+y2"
    symbol: ClassVar[str] = "x²+xy+y²"
    commutative: ClassVar[bool] = True

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        return (a * a + a * b + b * b) % self.p


@dataclass(frozen=True)
class CubicPlusProduct(Task):
    """``c = (a³ + ab) mod p`` (no group structure known; not commutative)."""

    name: ClassVar[str] = "x3+xy"
    symbol: ClassVar[str] = "x³+xy"

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        a = a % self.p  # keep a³ far from int64 overflow
        return (a * a * a + a * b) % self.p


@dataclass(frozen=True)
class CustomTask(Task):
    """Base of the tasks built by :func:`make_custom_task`: the labels are a p×p lookup table.

    Subclasses carry the table (``label_table[a, b]``) and the p it was computed for as
    class attributes, so instances stay hashable, frozen and comparable like every task.
    """

    label_table: ClassVar[Tensor | None] = None
    defined_for_p: ClassVar[int | None] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.defined_for_p is not None and self.p != self.defined_for_p:
            raise ValueError(
                f"custom task {self.name!r} was defined for p = {self.defined_for_p}, got p = "
                f"{self.p}; call make_custom_task again for another p"
            )

    def label(self, a: Int[Tensor, " n"], b: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        if self.label_table is None:
            raise NotImplementedError("CustomTask is a base class; use make_custom_task")
        table = self.label_table.to(a.device)
        return table[a % self.p, b % self.p]


def _labels_of_fn(
    fn: Callable, a: Int[Tensor, " n"], b: Int[Tensor, " n"], name: str
) -> Int[Tensor, " n"]:
    """Evaluate a user ``(a, b) -> c`` on every pair: vectorised if it can, else per pair."""
    out = None
    try:
        result = fn(a, b)
        result = torch.as_tensor(result)
        if result.shape == a.shape:
            out = result
    except Exception:  # noqa: BLE001 - any failure means "not vectorisable": fall back
        out = None
    if out is None:
        try:
            pairs = zip(a.tolist(), b.tolist(), strict=True)
            out = torch.tensor([fn(x, y) for x, y in pairs])
        except Exception as err:
            raise ValueError(
                f"custom task {name!r}: fn(a, b) failed on integer operands: {err}"
            ) from err
    if out.is_floating_point() or out.is_complex() or out.dtype == torch.bool:
        if out.is_floating_point() and bool((out == out.round()).all()):
            out = out.round()
        else:
            raise ValueError(
                f"custom task {name!r}: fn must return integers, got dtype {out.dtype}"
            )
    return out.to(torch.long)


def _check_group_law(
    table: Int[Tensor, "p p"], p: int, structure: str, signs: tuple[int, int], name: str
) -> None:
    """``ValueError`` unless ``table[a, b]`` is ``s_a a + s_b b`` (additive) or
    ``a^s_a b^s_b`` (multiplicative, non-zero a and b) for every pair of the group grid."""
    if structure == "additive":
        a = torch.arange(p)[:, None]
        b = torch.arange(p)[None, :]
        expected = (signs[0] * a + signs[1] * b) % p
        ok = torch.equal(table, expected)
    else:
        x = torch.arange(1, p)
        inverse = torch.tensor([0] + [pow(int(v), p - 2, p) for v in x])
        a = x if signs[0] == 1 else inverse[x]
        b = x if signs[1] == 1 else inverse[x]
        ok = torch.equal(table[1:, 1:], (a[:, None] * b[None, :]) % p)
    if not ok:
        law = "s_a a + s_b b" if structure == "additive" else "a^s_a b^s_b"
        raise ValueError(
            f"custom task {name!r}: declared fourier_structure={structure!r} with operand_signs="
            f"{signs}, but fn is not {law} on Z_{p}"
        )


def make_custom_task(
    name: str,
    fn: Callable,
    p: int,
    *,
    commutative: bool | None = None,
    fourier_structure: str | None = None,
    operand_signs: tuple[int, int] = (1, 1),
    symbol: str | None = None,
    register: bool = False,
) -> CustomTask:
    """Turn a user function ``fn(a, b) -> c`` into a :class:`Task` on all p² pairs.

    ``fn`` is first called once on the whole grid as int64 tensors (vectorised); if that fails
    or returns the wrong shape it is called per pair with Python ints. Every output must be an
    integer in ``0 .. p-1`` (reduce with ``% p`` yourself) or ``ValueError`` names the first
    offending pair. ``commutative=None`` computes the flag by brute force; a declared flag that
    contradicts the brute force raises ``ValueError``. ``fourier_structure`` (default None)
    may be "additive" (the answer is ``s_a a + s_b b mod p``) or "multiplicative" (p prime, the
    answer is ``a^s_a b^s_b`` on the non-zero residues) with ``operand_signs = (s_a, s_b)``;
    the declaration is checked on every pair of the group grid. ``register=True`` also
    registers the task under ``name`` (for ``make_task(name, p)`` and ``TrainConfig(task=name)``;
    it then builds only for this p).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"custom task name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise ValueError(f"custom task {name!r}: fn must be callable, got {fn!r}")
    if fourier_structure not in FOURIER_STRUCTURES:
        raise ValueError(
            f"fourier_structure must be one of {FOURIER_STRUCTURES}, got {fourier_structure!r}"
        )
    if tuple(operand_signs) not in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        raise ValueError(f"operand_signs must be a pair of ±1, got {operand_signs!r}")
    p = validate_p(p)
    if fourier_structure == "multiplicative" and not is_prime(p):
        raise ValueError(f"p must be prime for a multiplicative custom task, got {p}")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    labels = _labels_of_fn(fn, a, b, name)
    bad = (labels < 0) | (labels >= p)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"custom task {name!r}: fn({int(a[i])}, {int(b[i])}) = {int(labels[i])} is outside "
            f"the output range 0..{p - 1} (reduce it mod p)"
        )
    table = labels.reshape(p, p)
    brute_commutative = bool((table == table.T).all())
    if commutative is None:
        commutative = brute_commutative
    elif bool(commutative) != brute_commutative:
        raise ValueError(
            f"custom task {name!r}: declared commutative={commutative} but fn is "
            f"{'' if brute_commutative else 'not '}commutative on Z_{p}"
        )
    signs = (int(operand_signs[0]), int(operand_signs[1]))
    if fourier_structure is not None:
        _check_group_law(table, p, fourier_structure, signs, name)
    attrs = {
        "operand_signs": signs,
        "name": name,
        "symbol": symbol or name,
        "commutative": bool(commutative),
        "fourier_structure": fourier_structure,
        "label_table": table,
        "defined_for_p": p,
        "__doc__": f"Custom task {name!r} on Z_{p} (from {getattr(fn, '__name__', fn)!r}).",
    }
    cls_name = f"CustomTask[{name}]"
    attrs["__qualname__"] = cls_name
    cls = dataclass(frozen=True)(type(cls_name, (CustomTask,), attrs))
    if register:
        register_task(name, cls)
    return cls(p)


def authors_split(
    task: Task, frac_train: float, seed: int
) -> tuple[Int[Tensor, " n_train"], Int[Tensor, " n_test"]]:
    """The train/test split of the authors' original code (Nanda et al. 2023, ``gen_train_test``).

    Their procedure: list the inputs lexicographically (``[(i, j, p) for i in range(p) for j in
    range(p)]``), seed Python's ``random`` module with ``seed``, ``random.shuffle`` the list and
    take the first ``int(frac_train * len(pairs))`` as the training set, the rest as the test
    set. Their defaults are seed 0 and frac_train 0.3. Here the shuffle runs on a private
    ``random.Random(seed)``, which draws exactly what ``random.seed(seed)`` followed by
    ``random.shuffle`` draws, without touching the global state. The permutation
    ``random.shuffle`` makes depends only on the list's length, so shuffling the row indices of
    :meth:`Task.pairs` picks the same pairs as shuffling the pairs themselves (for a task not
    on the full grid, ``div``, the same procedure runs on its ``p (p - 1)`` inputs; the authors'
    code had only the full grid).

    Returns sorted row indices into ``task.pairs()``, like :meth:`Task.split`.
    """
    n, n_train = task._split_sizes(frac_train)
    order = list(range(n))
    random.Random(check_int(seed, "seed", minimum=0)).shuffle(order)
    perm = torch.tensor(order, dtype=torch.long)
    return perm[:n_train].sort().values, perm[n_train:].sort().values


TASKS: dict[str, Callable[[int], Task]] = {
    "add": ModularAddition,
    "sub": ModularSubtraction,
    "mul": ModularMultiplication,
    "div": ModularDivision,
    "x2+y2": SumOfSquares,
    "x2+xy+y2": QuadraticForm,
    "x3+xy": CubicPlusProduct,
}


def register_task(name: str, factory: Callable[[int], Task]) -> None:
    """Register a task class (or any ``p -> Task`` factory) under ``name``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"task name must be a non-empty string, got {name!r}")
    TASKS[name] = factory


def make_task(name: str | Task = "add", p: int = 113) -> Task:
    """Build a registered task by name, e.g. ``make_task("add", 113)`` (a Task is returned
    as it is)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](p)
