"""Automatic phase boundaries of a grokking run (Nanda et al. 2023, §5.2).

The paper splits training into **memorisation** (train loss collapses, test loss rises),
**circuit formation** (test loss stays high while the Fourier circuit grows: excluded loss rises,
restricted loss and weight norm fall) and **cleanup** (test loss falls sharply — the visible
grokking —, the Gini coefficients rise, the memorising components are removed). On the main run
the boundaries are ≈ 1.4k / 9.4k / 14k epochs.

:func:`detect_phases` places the three boundaries deterministically from the progress measures
(:class:`tl_grokking.analysis.progress.ProgressMeasures` or any mapping of columns). All losses
are read on a log10 scale; every rule is a fraction of a curve's own range, so nothing depends
on p, the run length or the checkpoint interval. The rules (constants in :class:`PhaseRule`):

1. **Grokking cliff.** ``τ = log10 test_loss``. ``τ_peak`` is its maximum (located on a 3-point
   running median, so one spiking checkpoint is ignored), ``τ_end`` its minimum after the peak.
   If ``τ_peak - τ_end`` is below ``min_drop_decades`` the run did not grok and only the
   memorisation boundary is given. ``τ_plat`` is the median of ``τ`` from the peak to the first
   epoch at which ``τ`` has fallen half-way from the peak to ``τ_end`` (the plateau).
2. **Circuit formation ends / cleanup starts** where the sharp fall starts: take the epochs
   ``e1`` and ``e2`` at which ``τ`` last crosses ``τ_plat - f·(τ_plat - τ_end)`` downwards for
   ``f = onset_fractions`` (default 0.1 and 0.5) before the fall completes, and extrapolate the
   line through them back to the plateau level: ``e1 - (e2 - e1)·f1/(f2 - f1)``.
3. **Cleanup ends** when a Gini coefficient (of W_E or W_L, whichever is first) has completed
   ``gini_fraction`` of its rise from the cleanup start to its maximum; without Gini columns,
   when ``τ`` has completed ``gini_fraction`` of its fall from ``τ_plat`` to ``τ_end``.
4. **Memorisation ends** when ``ℓ = log10 train_loss`` has completed ``mem_fraction`` of its fall
   from the first checkpoint to its minimum before the cleanup starts (whole run if no grokking),
   or at the test-loss peak if that comes first (memorisation is where test loss *rises*).

Boundaries are checkpoint epochs and, by construction,
``first epoch ≤ memorisation end ≤ circuit-formation end ≤ cleanup end ≤ last epoch`` (the
memorisation floor is taken before the cleanup start; the onset is never before the test-loss
peak; the cleanup end is searched from the cleanup start). See ``docs/progress.md`` for the
rationale.

The same module turns a stored analysis (``phases.json``) into the lines people read:
:func:`analysis_notes` (every caveat), :func:`grok_summary` (the epoch at 99 % test accuracy,
always :func:`tl_grokking.runs.rundir.grok_epoch` of the run's metrics log) and
:func:`summary_lines` (what ``tl-grokking analyze`` and ``reproduce`` print; the report shows
the same texts).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl_grokking._format import fmt_num
from tl_grokking.runs.rundir import (
    CONFIG_FILE,
    GROK_ACC,
    METRICS_FILE,
    RunDirError,
    grok_epoch,
    read_json,
    read_metrics,
)

__all__ = [
    "PhaseRule",
    "Phases",
    "detect_phases",
    "first_epoch_at_or_above",
    "phases_record",
    "analysis_notes",
    "boundaries_text",
    "GROK_LABEL",
    "grok_summary",
    "summary_lines",
    "check_phases_record",
]

#: How the summaries name the epoch at :data:`~tl_grokking.runs.rundir.GROK_ACC` ("test
#: accuracy ≥ 99 %").
GROK_LABEL = f"test accuracy ≥ {100 * GROK_ACC:g} %"


@dataclass(frozen=True)
class PhaseRule:
    """The constants of :func:`detect_phases` (see the module docstring for the rules)."""

    mem_fraction: float = 0.95
    onset_fractions: tuple[float, float] = (0.1, 0.5)
    gini_fraction: float = 0.9
    min_drop_decades: float = 1.0
    grok_acc: float = GROK_ACC

    def __post_init__(self) -> None:
        for name in ("mem_fraction", "gini_fraction"):
            value = getattr(self, name)
            if not (0.0 < value < 1.0):
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        f1, f2 = self.onset_fractions
        if not (0.0 < f1 < f2 < 1.0):
            raise ValueError(f"onset_fractions must satisfy 0 < f1 < f2 < 1, got {(f1, f2)!r}")
        if not self.min_drop_decades > 0:
            raise ValueError(f"min_drop_decades must be > 0, got {self.min_drop_decades!r}")
        if not (0.0 < self.grok_acc <= 1.0):
            raise ValueError(f"grok_acc must be in (0, 1], got {self.grok_acc!r}")


@dataclass(frozen=True)
class Phases:
    """Phase boundaries (checkpoint epochs) of one run.

    ``memorization_end``, ``circuit_formation_end`` (= cleanup start) and ``cleanup_end`` are
    ``None`` when they cannot be placed (e.g. a run that never groks has only the first).
    ``test_acc_99_epoch`` is the first *checkpoint* epoch of the measures with test accuracy
    ≥ ``rule.grok_acc``: checkpoint resolution, so it can be later than the run's epoch at
    99 %, which every summary takes from the finer metrics log (:func:`grok_summary`).
    """

    first_epoch: int
    last_epoch: int
    memorization_end: int | None
    circuit_formation_end: int | None
    cleanup_end: int | None
    grokked: bool
    test_acc_99_epoch: int | None
    rule: PhaseRule = field(default_factory=PhaseRule)
    notes: tuple[str, ...] = ()
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def boundaries(self) -> tuple[int | None, int | None, int | None]:
        return (self.memorization_end, self.circuit_formation_end, self.cleanup_end)

    def phases(self) -> list[dict[str, Any]]:
        """``[{"name", "start", "end"}, ...]`` for the phases that could be placed."""
        out = []
        edges = [self.first_epoch, *self.boundaries]
        names = ("memorization", "circuit_formation", "cleanup")
        for name, start, end in zip(names, edges[:-1], edges[1:], strict=True):
            if start is None or end is None:
                break
            out.append({"name": name, "start": start, "end": end})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_epoch": self.first_epoch,
            "last_epoch": self.last_epoch,
            "memorization_end": self.memorization_end,
            "circuit_formation_end": self.circuit_formation_end,
            "cleanup_start": self.circuit_formation_end,
            "cleanup_end": self.cleanup_end,
            "grokked": self.grokked,
            "test_acc_99_epoch": self.test_acc_99_epoch,
            "phases": self.phases(),
            "rule": {
                k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.rule).items()
            },
            "notes": list(self.notes),
            "diagnostics": self.diagnostics,
        }

    def __str__(self) -> str:
        lines = [
            boundaries_text(self.to_dict()),
            f"first checkpoint with test accuracy ≥ {100 * self.rule.grok_acc:g} %: "
            + ("none" if self.test_acc_99_epoch is None else f"epoch {self.test_acc_99_epoch}")
            + " (checkpoint resolution)",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Curve helpers (plain Python: a run has at most a few thousand checkpoints)
# ---------------------------------------------------------------------------------------------


def _log10(values: Sequence[float]) -> list[float]:
    """log10 of losses; non-positive values are floored at 1e-300, NaN stays NaN."""
    return [math.log10(max(v, 1e-300)) if not math.isnan(v) else math.nan for v in values]


def _interp_epoch(epochs: Sequence[int], y: Sequence[float], i: int, level: float) -> float:
    """Epoch between checkpoints ``i - 1`` and ``i`` where the line through them meets ``level``."""
    if i == 0 or y[i] == y[i - 1]:
        return float(epochs[i])
    t = (y[i - 1] - level) / (y[i - 1] - y[i])
    t = min(max(t, 0.0), 1.0)
    return epochs[i - 1] + t * (epochs[i] - epochs[i - 1])


def _median3(y: Sequence[float]) -> list[float]:
    """Running median over 3 neighbours (the end points keep their value)."""
    inner = [statistics.median(y[i - 1 : i + 2]) for i in range(1, len(y) - 1)]
    return [y[0], *inner, y[-1]]


def _first_at_or_below(y: Sequence[float], level: float, start: int = 0) -> int | None:
    return next((i for i in range(start, len(y)) if y[i] <= level), None)


def _first_at_or_above(y: Sequence[float], level: float, start: int = 0) -> int | None:
    return next((i for i in range(start, len(y)) if y[i] >= level), None)


def _snap(epochs: Sequence[int], x: float) -> int:
    """The checkpoint epoch nearest to ``x`` (ties to the earlier)."""
    return min(epochs, key=lambda e: (abs(e - x), e))


def first_epoch_at_or_above(
    epochs: Sequence[int], values: Sequence[float], level: float
) -> int | None:
    """First epoch whose value is ≥ ``level`` (e.g. test accuracy ≥ 0.99), or ``None``."""
    i = _first_at_or_above(values, level)
    return None if i is None else int(epochs[i])


def _columns(measures: Any) -> Mapping[str, Sequence[float]]:
    columns = getattr(measures, "columns", measures)
    if not isinstance(columns, Mapping):
        raise ValueError(
            "measures must be a ProgressMeasures or a mapping of column name -> values, "
            f"got {type(measures).__name__}"
        )
    return columns


# ---------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------


def detect_phases(measures: Any, rule: PhaseRule | None = None) -> Phases:
    """Memorisation / circuit-formation / cleanup boundaries from the progress measures.

    ``measures`` needs the columns ``epoch``, ``train_loss``, ``test_loss`` and ``test_acc``;
    ``gini_W_E`` / ``gini_W_L`` are used when present. The rules are in the module docstring.
    """
    rule = rule or PhaseRule()
    cols = _columns(measures)
    missing = [c for c in ("epoch", "train_loss", "test_loss", "test_acc") if c not in cols]
    if missing:
        raise ValueError(
            f"measures lack the columns {missing} needed to detect phases "
            "(a run measured without a train/test split has no train/test loss)"
        )
    epochs = [int(e) for e in cols["epoch"]]
    n = len(epochs)
    if n < 3:
        raise ValueError(f"need at least 3 checkpoints to detect phases, got {n}")
    if any(b <= a for a, b in zip(epochs, epochs[1:], strict=False)):
        raise ValueError("epochs must be strictly increasing")
    train = _log10([float(v) for v in cols["train_loss"]])
    test = _log10([float(v) for v in cols["test_loss"]])
    if any(math.isnan(v) for v in train + test):
        raise ValueError("train_loss / test_loss contain NaN; phases need finite losses")
    test_acc = [float(v) for v in cols["test_acc"]]
    notes: list[str] = []
    diag: dict[str, Any] = {}
    acc99 = first_epoch_at_or_above(epochs, test_acc, rule.grok_acc)

    # 1. the grokking cliff of the log test loss; the peak is located on a 3-point running
    # median so that a single-checkpoint spike (a "slingshot") cannot become the peak
    smooth = _median3(test)
    i_peak = max(range(n), key=lambda i: smooth[i])
    tau_peak = smooth[i_peak]
    tau_end = min(test[i_peak:])
    drop = tau_peak - tau_end
    diag.update(test_loss_peak_epoch=epochs[i_peak], test_loss_drop_decades=drop)
    grokked = drop >= rule.min_drop_decades and i_peak < n - 1
    cf_end = cleanup_end = None
    if grokked:
        i_half = _first_at_or_below(test, tau_peak - drop / 2, i_peak)
        assert i_half is not None  # tau_end itself is at or below the level
        tau_plat = statistics.median(test[i_peak : max(i_half, i_peak + 1)])
        span = tau_plat - tau_end
        f1, f2 = rule.onset_fractions
        level1, level2 = tau_plat - f1 * span, tau_plat - f2 * span
        i2 = _first_at_or_below(test, level2, i_peak)
        assert i2 is not None  # tau_end itself is at or below level2
        # the last downward crossing of level1 before the fall reaches level2 (one exists: the
        # peak is above level1 and index i2 is below it)
        i1 = max(i for i in range(i_peak + 1, i2 + 1) if test[i - 1] > level1 >= test[i])
        e1 = _interp_epoch(epochs, test, i1, level1)
        e2 = _interp_epoch(epochs, test, i2, level2)
        onset = e1 - (e2 - e1) * f1 / (f2 - f1)
        onset = max(onset, float(epochs[i_peak]))
        cf_end = _snap(epochs, onset)
        diag.update(
            test_loss_plateau_log10=tau_plat,
            test_loss_end_log10=tau_end,
            onset_crossings=[e1, e2],
            onset_extrapolated=onset,
        )
        cleanup_end = _cleanup_end(epochs, cols, test, cf_end, tau_plat, tau_end, rule, diag, notes)

    # 4. memorisation: the train loss has done most of its log-scale fall. The floor is taken
    # up to the cleanup start, so this boundary is never after it.
    stop = epochs.index(cf_end) + 1 if cf_end is not None else n
    floor = min(train[:stop])
    level = floor + (1 - rule.mem_fraction) * (train[0] - floor)
    i_mem = _first_at_or_below(train, level) if train[0] > floor else 0
    if i_mem is not None and i_mem > i_peak and train[i_peak] < train[0]:
        # The test loss has stopped rising: memorisation (train loss down, test loss up) is
        # over even if the train loss keeps falling slowly (fast-grokking settings).
        i_mem = i_peak
    mem_end = epochs[i_mem] if i_mem is not None else None
    diag.update(train_loss_floor_log10=floor)

    if not grokked:
        notes.append(
            f"test loss falls by only {drop:.2f} decades after its peak "
            f"(< {rule.min_drop_decades}); no grokking detected, so no circuit-formation or "
            "cleanup boundary"
        )
    return Phases(
        first_epoch=epochs[0],
        last_epoch=epochs[-1],
        memorization_end=mem_end,
        circuit_formation_end=cf_end,
        cleanup_end=cleanup_end,
        grokked=grokked,
        test_acc_99_epoch=acc99,
        rule=rule,
        notes=tuple(notes),
        diagnostics=diag,
    )


def _cleanup_end(
    epochs: list[int],
    cols: Mapping[str, Sequence[float]],
    test: list[float],
    start: int,
    tau_plat: float,
    tau_end: float,
    rule: PhaseRule,
    diag: dict[str, Any],
    notes: list[str],
) -> int:
    """Rule 3: Gini curves (or the test loss) have completed ``gini_fraction`` of their change."""
    i0 = epochs.index(start)
    ends: dict[str, int] = {}
    rising: dict[str, bool] = {}
    for name in ("gini_W_E", "gini_W_L"):
        if name not in cols:
            continue
        g = [float(v) for v in cols[name]]
        g0, g_max = g[i0], max(g[i0:])
        if g_max <= g0:
            continue
        i = _first_at_or_above(g, g0 + rule.gini_fraction * (g_max - g0), i0)
        assert i is not None  # g_max itself is at or above the level
        ends[name] = epochs[i]
        diag[f"{name}_end"] = epochs[i]
        rising[name] = g[-1] == g_max and len(g) - i0 > 2 and g[-1] > g[-2]
    if ends:
        # the earlier of the two: a curve that keeps creeping up after the cleanup would
        # otherwise tie the boundary to the length of the run
        name = min(ends, key=lambda k: (ends[k], k))
        if rising[name]:
            notes.append(
                f"{name} still rising at the last checkpoint: the run may end inside cleanup, "
                "so the cleanup end is a lower bound"
            )
        return ends[name]
    i = _first_at_or_below(test, tau_end + (1 - rule.gini_fraction) * (tau_plat - tau_end), i0)
    assert i is not None  # tau_end is reached at or after the cleanup start
    diag["test_loss_end"] = epochs[i]
    return epochs[i]


# ---------------------------------------------------------------------------------------------
# What people read: caveats and summary lines (analyze, reproduce and the report share them)
# ---------------------------------------------------------------------------------------------


def phases_record(
    measures: Any, rule: PhaseRule | None = None
) -> tuple[Phases | None, dict[str, Any]]:
    """:func:`detect_phases` of ``measures`` and the record ``phases.json`` holds.

    The record is :meth:`Phases.to_dict` or, when no phases can be detected (too few
    checkpoints, no train/test split, ...), ``{"phases": None, "reason": ...}``; both with the
    measures' ``key_freqs``, ``key_freq_rule`` and ``n_checkpoints`` added.
    """
    phases: Phases | None = None
    try:
        phases = detect_phases(measures, rule)
        record = phases.to_dict()
    except ValueError as err:  # the measures are still worth storing
        record = {"phases": None, "reason": str(err)}
    record.update(
        key_freqs=list(getattr(measures, "key_freqs", [])),
        key_freq_rule=getattr(measures, "key_freq_rule", "given"),
        n_checkpoints=len(_columns(measures)["epoch"]),
    )
    return phases, record


_EPOCH_FIELDS = (
    "first_epoch", "last_epoch", "memorization_end", "circuit_formation_end", "cleanup_start",
    "cleanup_end", "test_acc_99_epoch",
)  # fmt: skip


def check_phases_record(record: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Validate a stored ``phases.json`` (what :func:`phases_record` writes) field by field;
    :class:`~tl_grokking.runs.rundir.RunDirError` names the file and the field."""

    def bad(field: str, expected: str, value: Any) -> RunDirError:
        return RunDirError(f"{path}: {field} must be {expected}, got {value!r}")

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not isinstance(record, dict):
        raise RunDirError(f"{path} must hold a JSON object, got {type(record).__name__}")
    for name in _EPOCH_FIELDS:
        if record.get(name) is not None and not is_number(record[name]):
            raise bad(name, "a number or null", record[name])
    phases = record.get("phases")
    if phases is not None:
        if not isinstance(phases, list):
            raise bad("phases", "a list of {name, start, end} or null", phases)
        for i, phase in enumerate(phases):
            ok = isinstance(phase, dict) and isinstance(phase.get("name"), str)
            if not (ok and is_number(phase.get("start")) and is_number(phase.get("end"))):
                raise bad(f"phases[{i}]", "an object with a name, a start and an end", phase)
    freqs = record.get("key_freqs")
    if freqs is not None and not (
        isinstance(freqs, list)
        and all(isinstance(k, int) and not isinstance(k, bool) for k in freqs)
    ):
        raise bad("key_freqs", "a list of integers", freqs)
    for name in ("key_freq_rule", "reason", "fingerprint"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise bad(name, "a string", record[name])
    notes = record.get("notes")
    if notes is not None and not (
        isinstance(notes, list) and all(isinstance(n, str) for n in notes)
    ):
        raise bad("notes", "a list of strings", notes)
    return record


#: Key-frequency rules whose answer needs no caveat: the default circuit rule, the paper's
#: neuron-cluster rule, a set given by the user, and a set read back from ``measures.csv`` (its
#: rule is in phases.json).
_PLAIN_KEY_RULES = ("circuit", "clusters", "given", "from csv")


def analysis_notes(record: Mapping[str, Any] | None) -> list[str]:
    """Every caveat of a stored analysis (``phases.json``, or the record of
    :func:`phases_record`), one sentence each, in the order people should read them.

    * no phases: ``"phases not detected: <reason>"``;
    * the notes of :func:`detect_phases` (no grokking detected; a Gini coefficient still rising
      at the last checkpoint, so the cleanup end is a lower bound);
    * the key frequencies of the restricted / excluded losses: none found (and why), or found
      only by a fallback rule.

    ``tl-grokking analyze`` and ``reproduce`` print each as a ``note:`` line; the report lists
    them under *Caveats*.
    """
    if not record:
        return []
    notes = []
    if record.get("phases", []) is None:
        notes.append(f"phases not detected: {record.get('reason') or 'no reason recorded'}")
    notes += [str(n) for n in record.get("notes") or []]
    rule = record.get("key_freq_rule")
    if isinstance(rule, str) and rule not in _PLAIN_KEY_RULES:
        if rule.startswith("none") or not record.get("key_freqs"):
            notes.append(f"no key frequencies, so no restricted / excluded losses ({rule})")
        else:
            notes.append(
                f"key frequencies from the fallback rule {rule!r}: the circuit rule "
                "found no sparse set of frequencies at the last checkpoint"
            )
    return notes


def boundaries_text(record: Mapping[str, Any]) -> str:
    """``"phases over epochs 0–1500: memorisation ends 100, circuit formation ends 450,
    cleanup ends 1050"`` from a :meth:`Phases.to_dict` / ``phases.json`` record (``—`` for a
    boundary that could not be placed)."""
    return (
        f"phases over epochs {fmt_num(record.get('first_epoch'))}–"
        f"{fmt_num(record.get('last_epoch'))}: memorisation ends "
        f"{fmt_num(record.get('memorization_end'))}, circuit formation ends "
        f"{fmt_num(record.get('circuit_formation_end'))}, cleanup ends "
        f"{fmt_num(record.get('cleanup_end'))}"
    )


def grok_summary(metrics: Iterable[Mapping[str, Any]], log_every: Any = None) -> str:
    """The epoch at :data:`~tl_grokking.runs.rundir.GROK_ACC` test accuracy, as every summary
    shows it: :func:`tl_grokking.runs.rundir.grok_epoch` of the run's metrics log, with its
    resolution — ``"first at epoch 675 (metrics.jsonl, logged every 25 epochs)"``, or
    ``"not reached by epoch 100 (...)"``.  ``log_every`` is the run's ``config.json`` value.
    """
    records = [r for r in metrics if "epoch" in r]
    if not records:
        return f"unknown (no {METRICS_FILE} records)"
    every = f", logged every {fmt_num(log_every)} epochs" if log_every else ""
    source = f"({METRICS_FILE}{every})"
    epoch = grok_epoch(records)
    if epoch is None:
        return f"not reached by epoch {fmt_num(max(int(r['epoch']) for r in records))} {source}"
    return f"first at epoch {epoch} {source}"


def summary_lines(run_dir: str | os.PathLike, record: Mapping[str, Any] | None) -> list[str]:
    """What ``tl-grokking analyze`` and ``tl-grokking reproduce`` print about an analysed run.

    The key frequencies of the progress measures and their rule, the epoch at 99 % test
    accuracy (:func:`grok_summary` of the run's metrics log), the phase boundaries
    (:func:`boundaries_text`) and one ``note: ...`` line per caveat (:func:`analysis_notes`).
    ``record`` is the run's ``phases.json`` (or :func:`phases_record`'s); ``None`` when the
    analysis could not be stored: then only the 99 % line is given.
    """
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else {}
    log_every = config.get("log_every") if isinstance(config, Mapping) else None
    lines = []
    if record and "key_freqs" in record:
        lines.append(
            f"key frequencies: {list(record['key_freqs'])}  "
            f"(rule: {record.get('key_freq_rule', 'unknown')})"
        )
    lines.append(f"{GROK_LABEL}: {grok_summary(read_metrics(run_dir), log_every)}")
    if record and record.get("phases") is not None:
        lines.append(boundaries_text(record))
    lines += [f"note: {note}" for note in analysis_notes(record)]
    return lines
