"""Progress measures over a training run (Nanda et al. 2023, "progress measures").

For every checkpoint of a run this computes, in float64:

* ``train_loss`` / ``test_loss`` / ``train_acc`` / ``test_acc`` — cross-entropy and accuracy of
  the final-position logits on the train / test pairs;
* ``restricted_loss`` — cross-entropy over **all** p² pairs of the logits ``P_K(L) + mean_x L``,
  where ``P_K`` projects every output column of ``L`` onto the 2|K| sum directions
  ``cos(w_k(a+b))``, ``sin(w_k(a+b))`` of the key frequencies K (the mean over inputs restores
  each class's constant term);
* ``excluded_loss`` — cross-entropy over the **training** pairs of ``L - P_K(L)`` (no mean
  correction), and ``excluded_loss_k<k>`` with only frequency k removed;
* ``gini_W_E`` / ``gini_W_L`` — Gini coefficients (Hurley & Rickard 2009) of the norms of the
  Fourier components of the embedding (``F W_E``, norm over d_model) and of the
  neuron-to-logit map ``W_L = W_out W_U`` (transformed along its class axis, norm over
  neurons), in the task's coordinates (the tokens 0 .. p-1 for + and − and for tasks without a
  group structure, the discrete-log order over Z_{p-1} for × and ÷; see
  :func:`tl_grokking.analysis.weights.embed_fourier_norms`). The constant component is
  included in both;
* ``sum_sq_weights`` — the total sum of squared weights over all parameters.

The key frequencies are fixed from the final checkpoint and reused for every earlier one,
unless they are given explicitly.

The logit measures are those of :class:`tl_grokking.analysis.fourier.SumProjection` (the one
implementation of the restricted / excluded logits, also behind
:func:`tl_grokking.analysis.logits.restricted_logits` / ``excluded_logits``) followed by a
float64 cross-entropy; :class:`LogitMeasures` computes them for many checkpoints without redoing
per-run work.

Speed: each checkpoint's logits on all p² inputs come from the fast final-position forward
(:func:`tl_grokking.model.fastforward.final_logits_batched`, float32, then cast to float64); the
projection is a ``[2|K|, p²] @ [p², p]`` matmul against sum directions built once per run (never a
p³ cube); the excluded losses touch only the training rows; one model is reloaded with each
checkpoint's state dict; the Gini coefficients of all checkpoints are computed in one batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tl_grokking.analysis.circuits import MLP_POST, key_frequencies, neuron_clusters
from tl_grokking.analysis.fourier import SumProjection, validate_freqs
from tl_grokking.analysis.grid import grid_tokens
from tl_grokking.analysis.weights import embed_fourier_norms, unembed_fourier_norms
from tl_grokking.data.tasks import Task, make_task
from tl_grokking.model.fastforward import (
    TokenGroups,
    final_logits_batched,
    groups_for,
    supports_fast_path,
    weights_final_logits,
)
from tl_grokking.model.transformer import (
    BACKEND,
    GrokModel,
    check_compatible,
    config_from_model,
    load_weights,
    model_attn_rate,
    model_weights,
    move_model,
    validate_device,
)
from tl_grokking.runs.rundir import atomic_write_text, require_file, run_fingerprint, write_json

if TYPE_CHECKING:
    from tl_grokking.analysis.phases import Phases

__all__ = [
    "ProgressMeasures",
    "progress_measures",
    "analyze_run",
    "MEASURES_FILE",
    "PHASES_FILE",
    "gini",
    "sum_squared_weights",
    "LogitMeasures",
    "cheap_measures_callback",
    "config_callbacks",
    "read_measures_csv",
    "KEY_FREQ_FALLBACK_RULES",
    "MAX_KEY_FRACTION",
]

#: Rules tried, in order, to fix the key frequencies from the final checkpoint when none are
#: given: the circuit rule (neuron groups, the logits' trig fit, W_E and W_L together; see
#: :func:`tl_grokking.analysis.circuits.key_frequencies`), then W_E Fourier norms (the TL
#: demo's).
KEY_FREQ_FALLBACK_RULES = ("circuit", "embed")

#: A rule's answer is used only if it names at most this fraction of all frequencies: a model
#: that has not formed a sparse Fourier circuit passes the W_E "max/4" test at almost every k,
#: which is no key set at all (the paper's runs have 3–6 keys out of 56).
MAX_KEY_FRACTION = 0.25

#: Files :func:`analyze_run` writes into the run directory.
MEASURES_FILE = "measures.csv"
PHASES_FILE = "phases.json"

#: Rows :func:`~tl_grokking.model.fastforward.final_logits_batched` takes in one call (its
#: default batch); grids up to this size reuse the fast path's token layout across checkpoints.
_FAST_BATCH = 16384

#: The analysis name used when the restricted / excluded losses are refused for a task.
_SUM_ANALYSIS = "the restricted / excluded losses (progress measures)"


# ---------------------------------------------------------------------------------------------
# Weight-based measures
# ---------------------------------------------------------------------------------------------


def gini(x: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Gini coefficient (Hurley & Rickard 2009) of nonnegative vectors along the last axis.

    With ``c`` sorted ascending and ``i = 1..N``:
    ``G = 1 - 2 * sum_i (c_i / ||c||_1) * (N - i + 1/2) / N``. ``G = 0`` for a constant vector,
    ``1 - 1/N`` for a one-hot one. Batched over leading axes; computed in ``x``'s dtype.
    """
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"gini needs a non-empty last axis, got shape {tuple(x.shape)}")
    if (x < 0).any():
        raise ValueError("gini is defined for nonnegative vectors (norms); got negative entries")
    n = x.shape[-1]
    c = x.sort(dim=-1).values
    total = c.sum(dim=-1, keepdim=True)
    if (total == 0).any():
        raise ValueError("gini is undefined for an all-zero vector")
    i = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    weights = (n - i + 0.5) / n
    return 1.0 - 2.0 * ((c / total) * weights).sum(dim=-1)


def _fourier_norms(model: GrokModel, task: Task) -> Float[Tensor, "2 n"]:
    """Fourier-component norms of W_E (row 0) and W_L (row 1) in the task's coordinates,
    constant included, float64."""
    return torch.stack([embed_fourier_norms(model, task), unembed_fourier_norms(model, task)])


def sum_squared_weights(model: GrokModel) -> float:
    """Total sum of squared weights over all parameters (frozen zero biases included), float64."""
    weights = model_weights(model).values()
    return float(sum(w.detach().to(torch.float64).pow(2).sum() for w in weights))


# ---------------------------------------------------------------------------------------------
# Logit-based measures
# ---------------------------------------------------------------------------------------------


class LogitMeasures:
    """Loss, accuracy, restricted and excluded loss of final-position logits, for one task.

    Built once per run: it holds the labels, the split and the
    :class:`~tl_grokking.analysis.fourier.SumProjection` of the key frequencies (the 2|K| unit
    sum directions over the lexicographic p² grid, float64, with their training rows), so each
    checkpoint costs one ``[2|K|, p²] @ [p², p]`` matmul plus the cross-entropies.

    ``train_indices`` are row indices into ``task.pairs()``; without them only the all-pairs
    ``loss``/``acc`` and the restricted loss are computed (the excluded loss is defined on the
    training pairs).
    """

    def __init__(
        self,
        task: Task,
        key_freqs: Sequence[int] = (),
        train_indices: Int[Tensor, " n_train"] | Sequence[int] | None = None,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        self.task = task
        self.p = task.p
        self.device = torch.device(device)
        n = task.pairs().shape[0]
        self.labels = task.labels().to(self.device)
        self.key_freqs = validate_freqs(key_freqs, self.p, field="key_freqs")
        if self.key_freqs:
            task.require("sum_directions", _SUM_ANALYSIS)
        if train_indices is None:
            self.train_idx = self.test_idx = None
        else:
            train_idx = torch.as_tensor(train_indices, dtype=torch.long).reshape(-1)
            if train_idx.numel() == 0 or train_idx.min() < 0 or train_idx.max() >= n:
                raise ValueError(
                    f"train_indices must be non-empty row indices into task.pairs() (0..{n - 1})"
                )
            if train_idx.unique().numel() != train_idx.numel():
                raise ValueError("train_indices must not contain duplicates")
            if train_idx.numel() == n:
                raise ValueError(f"train_indices cover all {n} inputs; the test set is empty")
            mask = torch.ones(n, dtype=torch.bool)
            mask[train_idx] = False
            self.train_idx = train_idx.to(self.device)
            self.test_idx = mask.nonzero().reshape(-1).to(self.device)
        # P_K of the key frequencies; its excluded logits are on the training rows.
        self.projection = (
            SumProjection(self.p, self.key_freqs, rows=self.train_idx, device=self.device)
            if self.key_freqs
            else None
        )

    @property
    def column_names(self) -> list[str]:
        names = []
        if self.train_idx is None:
            names += ["loss", "acc"]
        else:
            names += ["train_loss", "test_loss", "train_acc", "test_acc"]
        if self.key_freqs:
            names.append("restricted_loss")
            if self.train_idx is not None:
                names.append("excluded_loss")
                names += [f"excluded_loss_k{k}" for k in self.key_freqs]
        return names

    def __call__(self, logits: Float[Tensor, "n_inputs p"]) -> dict[str, float]:
        """All logit measures of one checkpoint; ``logits`` are cast to float64."""
        n = self.labels.shape[0]
        if logits.shape != (n, self.p):
            raise ValueError(
                f"logits must have shape (n_inputs, p) = ({n}, {self.p}), got {tuple(logits.shape)}"
            )
        L = logits.to(device=self.device, dtype=torch.float64)
        # per-input loss and correctness once, then averaged over each split
        row_loss = F.cross_entropy(L, self.labels, reduction="none")
        correct = (L.argmax(dim=-1) == self.labels).to(torch.float64)
        out: dict[str, float] = {}
        if self.train_idx is None:
            out["loss"], out["acc"] = float(row_loss.mean()), float(correct.mean())
        else:
            for split, idx in (("train", self.train_idx), ("test", self.test_idx)):
                out[f"{split}_loss"] = float(row_loss[idx].mean())
                out[f"{split}_acc"] = float(correct[idx].mean())
        if self.projection is None:
            return out
        proj = self.projection
        coeffs = proj.coefficients(L)  # [2|K|, p]: each output column's sum-direction components
        out["restricted_loss"] = _ce(proj.restricted(L, coeffs), self.labels)
        if self.train_idx is not None:
            y_train, L_train = self.labels[self.train_idx], proj.on_rows(L)
            out["excluded_loss"] = _ce(proj.excluded(L, coeffs, x_rows=L_train), y_train)
            for k in self.key_freqs:
                excluded_k = proj.excluded(L, coeffs, freq=k, x_rows=L_train)
                out[f"excluded_loss_k{k}"] = _ce(excluded_k, y_train)
        return out


def _refusal(task: Task) -> str:
    """The message of ``task.require`` refusing the restricted / excluded losses."""
    try:
        task.require("sum_directions", _SUM_ANALYSIS)
    except ValueError as err:
        return str(err)
    raise AssertionError(f"the sum directions are meaningful for task {task.name!r}")


def _ce(logits: Float[Tensor, "n c"], labels: Int[Tensor, " n"]) -> float:
    return float(F.cross_entropy(logits, labels))


def _final_logits_p(
    model: GrokModel, tokens: Int[Tensor, "n 3"], p: int, groups: TokenGroups | None = None
) -> Float[Tensor, "n p"]:
    """Final-position logits of the p residue classes (an extra ``=`` logit is dropped).

    ``groups`` (:func:`~tl_grokking.model.fastforward.groups_for` of ``tokens``, built once per
    run) spare the fast path rebuilding its token layout at every checkpoint; the logits are
    the same either way."""
    if groups is None or tokens.shape[0] > _FAST_BATCH or not supports_fast_path(model):
        return final_logits_batched(model, tokens)[:, :p]
    with torch.no_grad():
        weights = model_weights(model)
        logits = weights_final_logits(
            weights,
            tokens,
            act_fn=model.cfg.act_fn,
            attn_rate=model_attn_rate(model),
            groups=groups,
        )
    return logits[:, :p]


def _run_groups(model: GrokModel, tokens: Int[Tensor, "n 3"]) -> TokenGroups | None:
    """The fast path's token layout of ``tokens`` for the models of a run (same shapes)."""
    if tokens.shape[0] > _FAST_BATCH or not supports_fast_path(model):
        return None
    return groups_for(tokens, model.cfg.d_vocab, model.cfg.n_heads, model.cfg.act_fn)


# ---------------------------------------------------------------------------------------------
# Key frequencies
# ---------------------------------------------------------------------------------------------


def _final_evidence(model: GrokModel, task: Task) -> dict[str, Any]:
    """The MLP activations (as :func:`~tl_grokking.analysis.circuits.neuron_clusters`) and the
    logits (as :func:`~tl_grokking.analysis.grid.all_logits`) the circuit rule of
    :func:`~tl_grokking.analysis.circuits.key_frequencies` reads, from **one** forward pass when
    both are over the same grid (addition: the group grid is the canonical one); else nothing
    (``key_frequencies`` then runs its own forward passes). The same numbers either way."""
    if "sum_directions" not in task.meaningful_analyses:
        return {}
    tokens = grid_tokens(model, task)
    if not torch.equal(grid_tokens(model, task, reindex=None), tokens):
        return {}
    cache: dict[str, Tensor] = {}

    def record(act: Tensor, hook: Any) -> None:
        cache["post"] = act[:, -1].detach().clone()

    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[(MLP_POST, record)])
    logits = out[:, -1, : model.cfg.d_vocab - 1].to(torch.float64)
    return {"clusters": neuron_clusters(model, task, activations=cache["post"]), "logits": logits}


def _key_freqs_of(model: GrokModel, task: Task) -> tuple[list[int], str]:
    """Key frequencies of ``model`` by the first rule of :data:`KEY_FREQ_FALLBACK_RULES` that
    finds a sparse set (1 to :data:`MAX_KEY_FRACTION` of all frequencies), and its name."""
    limit = max(1, int(MAX_KEY_FRACTION * (task.p // 2)))
    tried = []
    evidence = _final_evidence(model, task)
    for rule in KEY_FREQ_FALLBACK_RULES:
        given = evidence if rule == "circuit" else {}
        freqs = key_frequencies(model, task, rule=rule, **given).keys
        if 1 <= len(freqs) <= limit:
            return validate_freqs(freqs, task.p, field="key_freqs"), rule
        tried.append(f"{rule}: {len(freqs)}")
    return [], f"none found ({', '.join(tried)} frequencies; need 1..{limit})"


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass
class ProgressMeasures:
    """Per-checkpoint progress measures: a table with one row per epoch.

    ``columns`` maps a column name (``"epoch"`` first) to its values; ``key_freqs`` are the
    frequencies K used for the restricted / excluded losses and ``key_freq_rule`` says where
    they came from (``"given"``, ``"clusters"``, ``"embed"``, ...).
    """

    columns: dict[str, list[float]]
    key_freqs: list[int] = field(default_factory=list)
    key_freq_rule: str = "given"
    p: int | None = None

    def __post_init__(self) -> None:
        if "epoch" not in self.columns:
            raise ValueError("columns must contain an 'epoch' column")
        lengths = {name: len(values) for name, values in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all columns must have the same length, got {lengths}")

    @property
    def epochs(self) -> list[int]:
        return [int(e) for e in self.columns["epoch"]]

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(self.columns["epoch"])

    def __getitem__(self, name: str) -> list[float]:
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {self.names}")
        return self.columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def column(self, name: str) -> Float[Tensor, " n_epochs"]:
        """One column as a float64 tensor."""
        return torch.tensor(self[name], dtype=torch.float64)

    def rows(self) -> list[dict[str, float]]:
        """The table as one dict per checkpoint."""
        names = self.names
        table = zip(*self.columns.values(), strict=True)
        return [dict(zip(names, values, strict=True)) for values in table]

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the table as CSV (header row, then one row per epoch), atomically."""
        lines = [",".join(self.names)]
        for row in zip(*self.columns.values(), strict=True):
            lines.append(",".join(_fmt(v) for v in row))
        path = Path(path)
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_freqs": list(self.key_freqs),
            "key_freq_rule": self.key_freq_rule,
            "p": self.p,
            "columns": {k: list(v) for k, v in self.columns.items()},
        }


def _fmt(value: float) -> str:
    """Integers as integers, floats with full (round-trip) precision."""
    return str(value) if isinstance(value, int) else repr(float(value))


def read_measures_csv(path: str | os.PathLike) -> ProgressMeasures:
    """Read a table written by :meth:`ProgressMeasures.to_csv` (key frequencies are inferred
    from the ``excluded_loss_k<k>`` column names; the rule is recorded as ``"from csv"``)."""
    require_file(path, "measures table (CSV)")  # a directory, a FIFO: say so, never block
    try:
        text = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text:
        raise ValueError(f"{path} is empty; expected a header row of measure names")
    names = text[0].split(",")
    if names[0] != "epoch" or len(set(names)) != len(names) or not all(names):
        raise ValueError(
            f"{path}: line 1 must name distinct columns, 'epoch' first; got {text[0][:80]!r}"
        )
    columns: dict[str, list[float]] = {name: [] for name in names}
    for line_no, line in enumerate(text[1:], start=2):
        values = line.split(",")
        if len(values) != len(names):
            raise ValueError(
                f"{path}: line {line_no} has {len(values)} fields, expected {len(names)}"
            )
        for name, value in zip(names, values, strict=True):
            try:
                number = int(value) if name == "epoch" else float(value)
            except ValueError:
                kind = "an integer" if name == "epoch" else "a number"
                raise ValueError(
                    f"{path}: line {line_no}: {name} must be {kind}, got {value!r}"
                ) from None
            columns[name].append(number)
    freqs = sorted(
        int(n[len("excluded_loss_k") :]) for n in names if n.startswith("excluded_loss_k")
    )
    return ProgressMeasures(columns, key_freqs=freqs, key_freq_rule="from csv")


# ---------------------------------------------------------------------------------------------
# Sources of checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """Normalised checkpoint source: epochs, a task, the split and a model iterator."""

    epochs: list[int]
    task: Task
    train_indices: Int[Tensor, " n_train"] | Sequence[int] | None
    final_model: Callable[[], GrokModel]
    iter_models: Callable[[], Iterator[tuple[int, GrokModel]]]


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _check_same_shapes(
    reference: Mapping[str, tuple[int, ...]], state: Mapping[str, Tensor], epoch: int, first: int
) -> None:
    shapes = _shapes(state)
    diffs = [
        f"{k}: {reference.get(k)} vs {shapes.get(k)}"
        for k in sorted(set(reference) | set(shapes))
        if reference.get(k) != shapes.get(k)
    ]
    if diffs:
        raise ValueError(
            f"checkpoints of different shapes: epoch {epoch} differs from epoch {first} in "
            + "; ".join(diffs[:5])
            + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else "")
        )


def _from_loaded_run(run: Any, device: torch.device) -> _Source:
    from tl_grokking.runs.checkpoints import CheckpointShapeError

    epochs = [int(e) for e in run.epochs]
    if not epochs:
        raise ValueError(
            "the run has no checkpoints to measure (checkpoints/epoch_<N>.safetensors)"
        )

    built: list[GrokModel] = []

    def final_model() -> GrokModel:
        if not built:
            built.append(run.model(epochs[-1], device=device))
        return built[0]

    def iter_models() -> Iterator[tuple[int, GrokModel]]:
        # one model, reloaded per checkpoint: building a model costs more than loading
        # weights into it
        skeleton = final_model()
        skeleton.eval()
        reference = _shapes(model_weights(skeleton))
        for epoch in epochs:
            try:
                state = run.state_dict(epoch)
            except CheckpointShapeError as err:
                raise CheckpointShapeError(
                    f"checkpoints of different shapes (the run's shapes come from its final "
                    f"checkpoint, epoch {epochs[-1]}): {err}"
                ) from err
            full = {k: v.detach() for k, v in model_weights(skeleton).items()}
            unknown = set(state) - set(full)
            if unknown:
                raise ValueError(
                    f"checkpoints of different shapes: epoch {epoch} has parameters "
                    f"{sorted(unknown)[:5]} that epoch {epochs[-1]} lacks"
                )
            full.update(state)
            _check_same_shapes(reference, full, epoch, epochs[-1])
            load_weights(skeleton, full)
            yield epoch, skeleton

    task = getattr(run, "task", None) or make_task("add", run.model_config.p)
    return _Source(epochs, task, run.train_indices, final_model, iter_models)


def _from_sequence(
    items: Sequence[tuple[int, Any]],
    task: Task | None,
    train_indices: Int[Tensor, " n_train"] | Sequence[int] | None,
    device: torch.device,
) -> _Source:
    pairs = []
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(
                "source must be a run directory, a LoadedRun or a sequence of "
                f"(epoch, model or state dict) pairs; got an item {type(item).__name__}"
            )
        epoch, obj = item
        if isinstance(epoch, bool) or int(epoch) != epoch or int(epoch) < 0:
            raise ValueError(f"epoch must be a nonnegative integer, got {epoch!r}")
        if not isinstance(obj, GrokModel | Mapping):
            raise ValueError(
                f"checkpoint for epoch {epoch} must be a {BACKEND} or a state dict, "
                f"got {type(obj).__name__}"
            )
        pairs.append((int(epoch), obj))
    if not pairs:
        raise ValueError("source holds no checkpoints to measure")
    pairs.sort(key=lambda item: item[0])
    epochs = [e for e, _ in pairs]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"epochs must be distinct, got {epochs}")

    def as_model(epoch: int, obj: Any) -> GrokModel:
        if isinstance(obj, GrokModel):
            return move_model(obj, device)
        from tl_grokking.runs.checkpoints import load_checkpoint

        return load_checkpoint(obj, device=str(device))  # any known state-dict layout

    def iter_models() -> Iterator[tuple[int, GrokModel]]:
        reference = None
        for epoch, obj in pairs:
            model = as_model(epoch, obj)
            params = model_weights(model)
            if reference is None:
                reference = _shapes(params)
            else:
                _check_same_shapes(reference, params, epoch, epochs[0])
            yield epoch, model

    final = as_model(*pairs[-1])
    if task is None:
        task = make_task("add", config_from_model(final).p)
    return _Source(epochs, task, train_indices, lambda: final, iter_models)


def _normalise_source(
    source: Any,
    task: Task | None,
    train_indices: Int[Tensor, " n_train"] | Sequence[int] | None,
    device: torch.device,
) -> _Source:
    if isinstance(source, str | os.PathLike):
        from tl_grokking.runs.checkpoints import load_run

        source = load_run(source)
    if hasattr(source, "epochs") and hasattr(source, "state_dict") and hasattr(source, "model"):
        src = _from_loaded_run(source, device)
        if task is not None:
            if task.p != src.task.p:
                raise ValueError(f"task has p = {task.p} but the run has p = {src.task.p}")
            src.task = task
        if train_indices is not None:
            src.train_indices = train_indices
        return src
    if isinstance(source, Iterable) and not isinstance(source, Mapping):
        return _from_sequence(list(source), task, train_indices, device)
    raise ValueError(
        "source must be a run directory path, a LoadedRun or a sequence of "
        f"(epoch, model or state dict) pairs; got {type(source).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def progress_measures(
    source: Any,
    *,
    task: Task | None = None,
    key_freqs: Sequence[int] | None = None,
    train_indices: Int[Tensor, " n_train"] | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ProgressMeasures:
    """Progress measures of Nanda et al. (2023) at every checkpoint of a run.

    Args:
        source: a run directory, a :class:`tl_grokking.runs.checkpoints.LoadedRun`, or a sequence of
            ``(epoch, GrokModel or state dict)``.
        task: the task (default: the run's, or modular addition with the model's p).
        key_freqs: the key frequencies K; default: fixed from the final checkpoint by the
            circuit rule of :func:`~tl_grokking.analysis.circuits.key_frequencies`, falling
            back to the W_E rule if it finds no sparse set; a rule's answer counts only if
            sparse (:data:`MAX_KEY_FRACTION`). The rule used is recorded in ``.key_freq_rule``;
            with no sparse set K is empty and the restricted / excluded columns are omitted.
            Those losses use the ``a + b`` sum directions, so they are computed only for tasks
            with ``"sum_directions"`` in ``task.meaningful_analyses`` (addition): for any other
            task the columns are omitted and ``.key_freq_rule`` says why (``"none: ..."``),
            and explicit ``key_freqs`` raise ``ValueError``.
        train_indices: rows of ``task.pairs()`` in the training set (default: the run's split).
            Without a split, ``loss``/``acc`` over all pairs replace the train/test columns and
            the excluded losses are omitted.
        device: where the forward passes run.
        progress: show a tqdm bar over checkpoints.

    Returns:
        :class:`ProgressMeasures` with columns ``epoch``, ``train_loss``, ``test_loss``,
        ``train_acc``, ``test_acc``, ``restricted_loss``, ``excluded_loss``,
        ``excluded_loss_k<k>`` per key frequency, ``gini_W_E``, ``gini_W_L``,
        ``sum_sq_weights``.
    """
    from tqdm.auto import tqdm

    dev = validate_device(device)
    src = _normalise_source(source, task, train_indices, dev)
    task = src.task
    final = src.final_model()
    check_compatible(final, task)
    if key_freqs is not None:
        task.require("sum_directions", _SUM_ANALYSIS)
        freqs, rule = validate_freqs(key_freqs, task.p, field="key_freqs"), "given"
    elif "sum_directions" not in task.meaningful_analyses:
        # recorded instead of raised: the other measures still apply
        freqs, rule = [], f"none: {_refusal(task)}"
    else:
        freqs, rule = _key_freqs_of(final, task)
    tokens = task.tokens().to(dev)
    groups = _run_groups(final, tokens)
    del final

    # Float64 analysis on the device, except MPS (no float64 there).
    analysis_dev = torch.device("cpu") if dev.type == "mps" else dev
    measure = LogitMeasures(task, freqs, src.train_indices, device=analysis_dev)

    rows: list[dict[str, float]] = []
    norms: list[Tensor] = []  # [2, n] per checkpoint: W_E and W_L Fourier-component norms
    bar = tqdm(src.iter_models(), total=len(src.epochs), desc="checkpoints", disable=not progress)
    for epoch, model in bar:
        check_compatible(model, task)
        logits = _final_logits_p(model, tokens, task.p, groups)
        row: dict[str, float] = {"epoch": epoch, **measure(logits)}
        row["sum_sq_weights"] = sum_squared_weights(model)
        norms.append(_fourier_norms(model, task).to(analysis_dev))
        rows.append(row)
    stacked = torch.stack(norms)  # [n_checkpoints, 2, n]
    # An all-zero W_E or W_L (a degenerate checkpoint) has no Gini coefficient: NaN there,
    # and the other checkpoints and measures are still computed.
    zero = stacked.sum(dim=-1) == 0
    ginis = gini(torch.where(zero[..., None], torch.ones_like(stacked), stacked))
    ginis = ginis.masked_fill(zero, float("nan")).cpu()  # [n_checkpoints, 2]

    names = ["epoch", *measure.column_names, "gini_W_E", "gini_W_L", "sum_sq_weights"]
    columns: dict[str, list[float]] = {name: [] for name in names}
    for row, (g_e, g_l) in zip(rows, ginis.tolist(), strict=True):
        row["gini_W_E"], row["gini_W_L"] = g_e, g_l
        for name in names:
            columns[name].append(row[name])
    return ProgressMeasures(columns, key_freqs=freqs, key_freq_rule=rule, p=task.p)


# ---------------------------------------------------------------------------------------------
# During training
# ---------------------------------------------------------------------------------------------


def cheap_measures_callback(
    task: Task,
    key_freqs: Sequence[int] | None = None,
    *,
    train_indices: Int[Tensor, " n_train"] | Sequence[int] | None = None,
    measure_every: int | None = None,
) -> Callable[[int, GrokModel], dict[str, float]]:
    """A trainer callback ``(epoch, model) -> dict`` logging the cheap progress measures.

    Always: ``gini_W_E``, ``gini_W_L``, ``sum_sq_weights`` (weights only, microseconds). With
    ``key_freqs``: also ``restricted_loss`` and, given ``train_indices``, ``excluded_loss`` and
    ``excluded_loss_k<k>`` (one fast forward over all p² inputs; ``key_freqs`` need a task with
    ``"sum_directions"``, i.e. addition, else ``ValueError``). With ``measure_every``, epochs
    that are not a multiple of it return ``{}`` (the trainer may also call it only every
    ``measure_every`` epochs itself).
    """
    if measure_every is not None and (
        isinstance(measure_every, bool) or int(measure_every) != measure_every or measure_every < 1
    ):
        raise ValueError(f"measure_every must be a positive integer or None, got {measure_every!r}")
    freqs = validate_freqs(key_freqs, task.p, field="key_freqs") if key_freqs else []
    if freqs:
        task.require("sum_directions", _SUM_ANALYSIS)
    state: dict[str, Any] = {}

    def callback(epoch: int, model: GrokModel) -> dict[str, float]:
        if measure_every is not None and epoch % int(measure_every):
            return {}
        dev = model.W_E.device
        if state.get("device") != dev:  # built on first use, on the model's device
            analysis_dev = torch.device("cpu") if dev.type == "mps" else dev
            state["device"] = dev
            state["measure"] = (
                LogitMeasures(task, freqs, train_indices, device=analysis_dev) if freqs else None
            )
            state["tokens"] = task.tokens().to(dev)
        g_e, g_l = gini(_fourier_norms(model, task)).tolist()
        out = {"gini_W_E": g_e, "gini_W_L": g_l, "sum_sq_weights": sum_squared_weights(model)}
        if state["measure"] is not None:
            was_training = model.training
            model.eval()
            logits = _final_logits_p(model, state["tokens"], task.p)
            model.train(was_training)
            full = state["measure"](logits)
            out.update({k: v for k, v in full.items() if "restricted" in k or "excluded" in k})
        return out

    return callback


# ---------------------------------------------------------------------------------------------
# One run directory, end to end
# ---------------------------------------------------------------------------------------------


def analyze_run(
    run_dir: str | os.PathLike,
    *,
    key_freqs: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[ProgressMeasures, Phases | None]:
    """Progress measures and phases of a run directory, stored next to its checkpoints.

    Computes :func:`progress_measures` at every checkpoint of ``run_dir`` and
    :func:`tl_grokking.analysis.phases.detect_phases` on them, then writes, each atomically,
    ``run_dir/measures.csv`` (:meth:`ProgressMeasures.to_csv`) and ``run_dir/phases.json`` (the
    phase boundaries plus ``key_freqs``, ``key_freq_rule`` and ``n_checkpoints``; with
    ``"phases": null`` and the ``"reason"`` when no phases can be detected, e.g. fewer than 3
    checkpoints; and the run's ``fingerprint``,
    :func:`tl_grokking.runs.rundir.run_fingerprint`, by which readers tell stale files).
    Returns ``(measures, phases)``, ``phases`` being ``None`` in that case.

    Raises what :func:`tl_grokking.runs.rundir.require_run_dir` raises: a ``RunDirError`` that is
    also a ``FileNotFoundError`` if ``run_dir`` does not exist, a ``RunDirError`` if it is not a
    run directory or has no checkpoint.
    """
    from tl_grokking.analysis.phases import phases_record
    from tl_grokking.runs.checkpoints import load_run
    from tl_grokking.runs.rundir import require_run_dir

    run_dir = Path(run_dir)
    require_run_dir(run_dir)
    measures = progress_measures(
        load_run(run_dir), key_freqs=key_freqs, device=device, progress=progress
    )
    phases, record = phases_record(measures)  # no phases (e.g. < 3 checkpoints): the reason
    record["fingerprint"] = run_fingerprint(run_dir)  # what both files were computed from
    measures.to_csv(run_dir / MEASURES_FILE)
    write_json(run_dir / PHASES_FILE, record)
    return measures, phases


@runtime_checkable
class MeasuredRun(Protocol):
    """What :func:`config_callbacks` reads of a run's configuration (a
    :class:`~tl_grokking.training.config.TrainConfig`; analysis does not import training)."""

    @property
    def measure_every(self) -> int | None: ...

    def make_task(self) -> Task: ...


def config_callbacks(config: MeasuredRun) -> list[Callable[[int, GrokModel], dict[str, float]]]:
    """The trainer callbacks a run of ``config`` asks for: the cheap progress measures
    (:func:`cheap_measures_callback`) when ``config.measure_every`` is set, else none. What
    ``tl-grokking train`` and every run of a sweep pass to the trainer."""
    if config.measure_every is None:
        return []
    return [cheap_measures_callback(config.make_task())]
