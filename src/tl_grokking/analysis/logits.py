"""Logits over the whole input grid: restricted / excluded logits, trig-identity fit.

``L`` below is the final-position logit matrix for all p² inputs (rows ``a * p + b``) over the
p residue classes, ``[p², p]``, in float64 (:func:`tl_grokking.analysis.grid.all_logits`; that
function and :func:`~tl_grokking.analysis.grid.loss_and_accuracy` are re-exported here).

* **Restricted logits** (Nanda et al. 2023, progress measures): ``P_K(L) + mean_inputs(L)`` —
  every class column projected onto the 2|K| sum directions ``cos/sin(w_k(a+b))`` of the key
  frequencies, the per-class mean added back. Its loss over all inputs is the *restricted loss*.
* **Excluded logits**: ``L - P_K(L)``. Its loss on the training pairs is the *excluded loss*.
  Both are :class:`tl_grokking.analysis.fourier.SumProjection`, the one implementation the
  ablation table and the progress measures use too.
* **Trig-identity decomposition**: ``L ≈ Σ_k α_k cos(w_k(a + b - c))``. The features
  ``f_k(a, b, c) = cos(w_k(a+b-c))`` are orthogonal over the p² × p table (``‖f_k‖² = p³/2`` for
  ``2k ≠ p``) and each sums to zero over c for every input, so the least-squares α has the closed
  form ``α_k = <L, f_k> / ‖f_k‖²`` and fitting to ``L`` or to ``L`` centred per input gives the
  same α. Using ``cos(w(s-c)) = cos(ws)cos(wc) + sin(ws)sin(wc)`` with ``s = a + b``,
  ``<L, f_k> = cos_sᵀ L cos_c + sin_sᵀ L sin_c``: only ``[p², 2|K|]`` and ``[2|K|, p]`` factors are
  ever built, never a p² × p × |K| feature tensor, and the loss of the approximation is computed
  in row chunks.

All of these use the ``a + b`` sum directions and so are meaningful for the task ``add`` only
(``"sum_directions"`` of :attr:`~tl_grokking.data.tasks.Task.meaningful_analyses`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tl_grokking.analysis.circuits import key_frequencies
from tl_grokking.analysis.fourier import (
    SumProjection,
    trig_coefficients,
    trig_features,
    validate_freqs,
)
from tl_grokking.analysis.grid import all_logits, resolve_task
from tl_grokking.data.tasks import ModularAddition, Task
from tl_grokking.model.transformer import GrokModel

__all__ = [
    "restricted_logits",
    "excluded_logits",
    "trig_logit_decomposition",
    "trig_approx_logits",
    "TrigDecomposition",
]

_TRIG_ANALYSIS = "the trig logit decomposition cos(w_k(a + b - c))"

# Rows per chunk when evaluating the approximated logits (keeps extra memory ~ chunk × p).
_CHUNK_ELEMENTS = 1 << 18


def _check_logit_matrix(logits: Float[Tensor, "p_sq n_classes"], p: int) -> None:
    if logits.ndim != 2 or logits.shape[0] != p * p:
        raise ValueError(
            f"logits must be the all-inputs matrix [p², classes] = [{p * p}, ...], "
            f"got shape {tuple(logits.shape)}"
        )


def restricted_logits(
    logits: Float[Tensor, "p_sq n_classes"], p: int, freqs: Iterable[int]
) -> Float[Tensor, "p_sq n_classes"]:
    """``P_K(L) + mean over inputs of L``: only the key x+y components and the class constant."""
    _check_logit_matrix(logits, p)
    return _projection(logits, p, freqs).restricted(logits)


def excluded_logits(
    logits: Float[Tensor, "p_sq n_classes"], p: int, freqs: Iterable[int]
) -> Float[Tensor, "p_sq n_classes"]:
    """``L - P_K(L)``: the logits with the key x+y components removed (no mean correction)."""
    _check_logit_matrix(logits, p)
    return _projection(logits, p, freqs).excluded(logits)


def _projection(
    logits: Float[Tensor, "p_sq n_classes"], p: int, freqs: Iterable[int]
) -> SumProjection:
    dtype = logits.dtype if logits.is_floating_point() else torch.float64
    return SumProjection(p, freqs, dtype=dtype, device=logits.device, field="key frequencies")


@dataclass
class TrigDecomposition:
    """Least-squares fit ``L ≈ Σ_k α_k cos(w_k(a+b-c))`` over all inputs and the p classes.

    ``fve`` is the fraction of the variance of the logits (centred per input: a per-input shift
    does not change predictions) that the fit explains; ``fve_per_freq[k]`` splits it by k.
    ``loss`` / ``accuracy`` are those of the original logits, ``approx_loss`` /
    ``approx_accuracy`` those of the approximation, over all p² inputs.
    """

    p: int
    freqs: list[int]
    alpha: dict[int, float]
    fve: float
    fve_per_freq: dict[int, float] = field(default_factory=dict)
    loss: float = float("nan")
    accuracy: float = float("nan")
    approx_loss: float = float("nan")
    approx_accuracy: float = float("nan")

    def __str__(self) -> str:
        lines = [
            f"trig-identity fit  L ≈ Σ_k α_k cos(w_k(a+b−c))  (p = {self.p}, K = {self.freqs})",
            f"  fraction of logit variance explained: {self.fve:.4f}",
            f"  loss all inputs: original {self.loss:.3e} (acc {self.accuracy:.4f}), "
            f"approximation {self.approx_loss:.3e} (acc {self.approx_accuracy:.4f})",
        ]
        for k in self.freqs:
            lines.append(f"  k = {k:3d}: α = {self.alpha[k]:9.4f}   FVE {self.fve_per_freq[k]:.4f}")
        return "\n".join(lines)


def _chunked_loss(
    chunk_logits: Callable[[slice], Tensor], n_rows: int, n_classes: int, labels: Tensor
) -> tuple[float, float]:
    """Cross-entropy and accuracy of logits produced ``chunk_logits(rows)`` slice by slice.

    Keeps the temporaries of ``log_softmax`` at ``chunk × classes`` instead of ``p² × p``.
    """
    rows = max(1, _CHUNK_ELEMENTS // max(n_classes, 1))
    total, correct = 0.0, 0
    for start in range(0, n_rows, rows):
        sl = slice(start, min(start + rows, n_rows))
        chunk = chunk_logits(sl).double()
        total += F.cross_entropy(chunk, labels[sl], reduction="sum").item()
        correct += int((chunk.argmax(dim=-1) == labels[sl]).sum())
    return total / n_rows, correct / n_rows


@torch.no_grad()
def trig_logit_decomposition(
    model_or_logits: GrokModel | Float[Tensor, "p_sq n_classes"],
    task: Task | None = None,
    freqs: Iterable[int] | None = None,
) -> TrigDecomposition:
    """Least-squares ``α_k`` of ``L ≈ Σ_k α_k cos(w_k(a+b-c))`` (closed form, see module doc).

    ``model_or_logits``: a compatible model (its logits are computed over the whole grid) or an
    all-inputs logit matrix ``[p², ≥p]`` (only the first p classes are used). ``freqs`` defaults
    to the model's key frequencies (:func:`~tl_grokking.analysis.circuits.key_frequencies`).
    Memory beyond ``L`` is ``O(p² |K| + chunk · p)``. The features are those of ``a + b``: a
    ``task`` without ``"sum_directions"`` in ``task.meaningful_analyses`` (anything but
    addition) raises ``ValueError``.
    """
    if isinstance(model_or_logits, Tensor):
        n = model_or_logits.shape[0]
        p = math.isqrt(n)
        if p * p != n or model_or_logits.ndim != 2 or model_or_logits.shape[1] < p:
            raise ValueError(
                "logits must be an all-inputs matrix [p², ≥p], got shape "
                f"{tuple(model_or_logits.shape)}"
            )
        if task is not None and task.p != p:
            raise ValueError(f"logits are for p = {p} but the task has p = {task.p}")
        L = model_or_logits[:, :p].double()
        if freqs is None:
            raise ValueError("freqs is required when passing logits instead of a model")
        if task is not None:
            task.require("sum_directions", _TRIG_ANALYSIS)
    else:
        task = resolve_task(model_or_logits, task, needs="sum_directions", analysis=_TRIG_ANALYSIS)
        L = all_logits(model_or_logits, task)
        p = L.shape[1]
        if freqs is None:
            freqs = key_frequencies(model_or_logits, task).keys
    freqs = validate_freqs(freqs, p, field="freqs")
    alpha, fve_k = trig_coefficients(L, p, freqs)  # closed form, no p² × p feature
    A, B = trig_features(p, freqs, dtype=L.dtype, device=L.device)  # [p², 2K], [2K, p]
    labels = _labels(task, p, L.device)
    loss, acc = _chunked_loss(lambda rows: L[rows], p * p, p, labels)
    weighted_B = B * alpha.repeat_interleave(2)[:, None]
    approx_loss, approx_acc = _chunked_loss(lambda rows: A[rows] @ weighted_B, p * p, p, labels)
    return TrigDecomposition(
        p=p,
        freqs=freqs,
        alpha={k: float(a) for k, a in zip(freqs, alpha, strict=True)},
        fve=float(fve_k.sum()),
        fve_per_freq={k: float(v) for k, v in zip(freqs, fve_k, strict=True)},
        loss=loss,
        accuracy=acc,
        approx_loss=approx_loss,
        approx_accuracy=approx_acc,
    )


def _labels(task: Task | None, p: int, device: torch.device) -> Int[Tensor, " p_sq"]:
    if task is None:
        task = ModularAddition(p)
    return task.labels().to(device)


def trig_approx_logits(
    p: int, alpha: dict[int, float] | TrigDecomposition
) -> Float[Tensor, "p_sq p"]:
    """The approximated logit matrix ``Σ_k α_k cos(w_k(a+b-c))`` as a ``[p², p]`` tensor."""
    if isinstance(alpha, TrigDecomposition):
        alpha = alpha.alpha
    freqs = sorted(alpha)
    A, B = trig_features(p, freqs)
    weights = torch.tensor([alpha[k] for k in freqs], dtype=torch.float64).repeat_interleave(2)
    return A @ (B * weights[:, None])
