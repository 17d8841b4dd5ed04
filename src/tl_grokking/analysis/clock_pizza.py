"""Clock versus pizza: two algorithms for modular addition and the metrics that tell them apart.

Zhong, Liu, Tegmark & Andreas (2023), "The Clock and the Pizza: Two Stories in Mechanistic
Explanation of Neural Networks", show that one-layer transformers trained on ``a + b mod p``
learn one of (at least) two algorithms, depending on the *attention rate* (how far attention
is from uniform; ``ModelConfig.attn_rate`` / ``TrainConfig.attn_rate`` here):

* **Clock** (ordinary attention, attn_rate 1): the algorithm of Nanda et al.: embed a and b
  as angles, multiply the rotations (angle addition via products of cos/sin), read out
  ``cos(w(a + b - c))``. The correct logit does not depend on ``a - b``.
* **Pizza** (uniform attention, attn_rate 0): average the two embeddings (``E_a + E_b``, a point
  *inside* the circle whose direction encodes ``a + b`` and whose length is
  ``|cos(w (a - b) / 2)|``), then fold it with the non-linearity. The correct logit depends on
  the distance ``a - b``, and the network treats its two operands symmetrically.

Two metrics (their Definitions 4.1 and 4.2), computed here from their definitions:

* **Gradient symmetricity** ``s_g``: over a random set S of triples (a, b, c), the mean cosine
  similarity between ``∂Q_abc/∂E_a`` and ``∂Q_abc/∂E_b``, the gradients of the output logit
  ``Q_abc`` (class c at the final position) with respect to the input embedding vectors of the
  two operand tokens. c is any class, not necessarily the answer. Pizza ≈ 1 (the paper's pizza:
  0.9937), clock lower (their clock: 0.3336). With attn_rate 0 exactly, the final position sees
  the operands only through ``E_a + E_b``, so ``s_g = 1`` by construction.
* **Distance irrelevance** ``q``: with ``L[a, b]`` the logit of the correct answer,
  ``q = mean_d std_a L[a, a + d] / std_{a, b} L[a, b]`` (population std): how much of the
  correct logit's spread survives when the distance ``d = b - a`` is held fixed. Clock ≈ 1 (the
  paper's clock: 0.85), pizza small (their pizza: 0.17; the paper's bands are pizza ∈ [0, 0.4],
  clock ∈ [0.4, 1]).

:func:`classify_clock_pizza` applies both thresholds (``s_g ≥ 0.98`` and ``q < 0.4`` → pizza;
``s_g < 0.98`` and ``q ≥ 0.4`` → clock) and reports ``"ambiguous"`` when the two metrics
disagree, which happens for intermediate attention rates and narrow models; the numbers are
always returned.

The metrics are defined for commutative group tasks (``add``; ``mul`` in discrete-log
coordinates, where the "distance" is ``log b - log a``): capability ``"clock_pizza"`` of
:meth:`~tl_grokking.data.tasks.Task.require`; other tasks raise ``ValueError``. Note that a
model with attn_rate 0 is an exactly symmetric function of its two operands and so cannot learn
a non-commutative task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tl_grokking.analysis.grid import resolve_task
from tl_grokking.data.discrete_log import reindexed_tokens
from tl_grokking.data.tasks import Task
from tl_grokking.model.fastforward import final_logits_batched
from tl_grokking.model.transformer import GrokModel, model_attn_rate

__all__ = [
    "gradient_symmetricity",
    "distance_irrelevance",
    "distance_irrelevance_of_grid",
    "correct_logit_grid",
    "classify_clock_pizza",
    "ClockPizzaVerdict",
    "GRADIENT_SYMMETRICITY_THRESHOLD",
    "DISTANCE_IRRELEVANCE_THRESHOLD",
]

#: ``s_g`` at or above this is pizza-like (paper: pizza 0.9937, clock 0.3336).
GRADIENT_SYMMETRICITY_THRESHOLD = 0.98
#: ``q`` below this is pizza-like (the paper's bands: pizza [0, 0.4], clock [0.4, 1]).
DISTANCE_IRRELEVANCE_THRESHOLD = 0.4
EMBED_HOOK = "hook_embed"


def _sample_triples(task: Task, n_samples: int, seed: int) -> Int[Tensor, "n_samples 3"]:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    gen = torch.Generator().manual_seed(int(seed))
    pairs = reindexed_tokens(task)[:, :2]  # the group grid: all pairs for add, a, b != 0 for mul
    rows = torch.randint(pairs.shape[0], (n_samples,), generator=gen)
    classes = torch.randint(task.n_classes, (n_samples,), generator=gen)
    return torch.cat([pairs[rows], classes[:, None]], dim=1)


def gradient_symmetricity(
    model: GrokModel,
    task: Task | None = None,
    *,
    n_samples: int = 100,
    seed: int = 0,
    triples: Int[Tensor, "n 3"] | None = None,
) -> float:
    """Gradient symmetricity ``s_g`` (Zhong et al. 2023, Def. 4.1): the mean over triples
    ``(a, b, c)`` of ``cos(∂Q_abc/∂E_a, ∂Q_abc/∂E_b)``.

    ``triples`` (rows ``[a, b, c]``) overrides the sample of ``n_samples`` triples drawn from
    ``seed``: pairs uniform over the group grid of :func:`reindexed_tokens` (all p² pairs for
    add, the non-zero pairs for mul), c uniform over the classes. The gradients are taken with
    respect to the output of ``hook_embed`` (the token embeddings, before the positional
    embedding is added) at positions 0 and 1; the model's parameters and their ``.grad`` are
    untouched. Works under ``torch.no_grad`` (e.g. in training callbacks).
    """
    task = resolve_task(model, task, needs="clock_pizza", analysis="gradient symmetricity")
    if triples is None:
        triples = _sample_triples(task, n_samples, seed)
    triples = torch.as_tensor(triples, dtype=torch.long)
    if triples.ndim != 2 or triples.shape[1] != 3 or triples.shape[0] == 0:
        raise ValueError(f"triples must have shape [n, 3] with n >= 1, got {tuple(triples.shape)}")
    if bool(((triples < 0) | (triples >= task.p)).any()):
        raise ValueError(f"triples must hold integers in 0..{task.p - 1}")
    device = model.W_E.device
    triples = triples.to(device)
    eq = torch.full_like(triples[:, :1], task.eq_token)
    tokens = torch.cat([triples[:, :2], eq], dim=1)

    captured: list[Tensor] = []

    def make_leaf(embed: Float[Tensor, "batch pos d_model"], hook: object) -> Tensor:
        leaf = embed.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(EMBED_HOOK, make_leaf)])[:, -1, :]
        chosen = logits.gather(1, triples[:, 2:3]).sum()  # samples are independent
        (grad,) = torch.autograd.grad(chosen, captured[0])
    cos = F.cosine_similarity(grad[:, 0].double(), grad[:, 1].double(), dim=-1, eps=1e-30)
    return float(cos.mean())


def correct_logit_grid(
    model: GrokModel, task: Task | None = None, *, fast: bool = False
) -> Float[Tensor, "n n"]:
    """``L[i, j]``: the final-position logit of the correct answer for operands
    ``(order[i], order[j])``, ``order = task.fourier_tokens()`` (the p×p grid (a, b) for add).

    ``fast``: from :func:`tl_grokking.model.fastforward.final_logits_batched` (equal to the
    model's own forward up to float32 rounding, several times faster) instead of the model's
    forward."""
    task = resolve_task(model, task, needs="clock_pizza", analysis="the correct-logit grid")
    tokens = reindexed_tokens(task).to(model.W_E.device)
    labels = task.label(tokens[:, 0], tokens[:, 1])
    with torch.no_grad():
        if fast:
            logits = final_logits_batched(model, tokens).double()
        else:
            logits = model(tokens)[:, -1, :].double()
    n = task.fourier_size
    assert n is not None  # resolve_task required "clock_pizza": a group task
    return logits.gather(1, labels[:, None]).reshape(n, n)


def distance_irrelevance(
    model: GrokModel, task: Task | None = None, *, fast: bool = False
) -> float:
    """Distance irrelevance ``q`` (Zhong et al. 2023, Def. 4.2).

    ``q = mean_d std_i L[i, i + d] / std L`` over the correct-logit grid of
    :func:`correct_logit_grid` (``fast``: its fast forward), population standard deviations, d
    over all n distances.
    """
    return distance_irrelevance_of_grid(correct_logit_grid(model, task, fast=fast))


def distance_irrelevance_of_grid(grid: Float[Tensor, "n n"]) -> float:
    """``q`` of a correct-logit grid ``L[i, j]`` over Z_n × Z_n (see :func:`distance_irrelevance`).

    0 when ``L`` depends on the distance ``j - i`` only; 1 when every fixed-distance diagonal
    is as spread as the whole grid (e.g. ``L`` a function of ``i + j`` for odd n).
    """
    if grid.ndim != 2 or grid.shape[0] != grid.shape[1]:
        raise ValueError(f"grid must be square [n, n], got shape {tuple(grid.shape)}")
    grid = grid.double()
    n = grid.shape[0]
    i = torch.arange(n, device=grid.device)
    d = torch.arange(n, device=grid.device)
    diagonals = grid[i[None, :], (i[None, :] + d[:, None]) % n]  # [d, i]
    spread = grid.std(unbiased=False)
    if float(spread) == 0.0:
        raise ValueError("the correct logit is constant over the grid; q is undefined")
    return float(diagonals.std(dim=1, unbiased=False).mean() / spread)


@dataclass(frozen=True)
class ClockPizzaVerdict:
    """Result of :func:`classify_clock_pizza`. ``label`` is "clock", "pizza" or "ambiguous" (the two
    metrics disagree); ``attn_rate`` is the rate installed on the model."""

    label: str
    gradient_symmetricity: float
    distance_irrelevance: float
    gs_threshold: float
    di_threshold: float
    attn_rate: float

    @property
    def agree(self) -> bool:
        return self.label != "ambiguous"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.label} (gradient symmetricity {self.gradient_symmetricity:.3f} vs "
            f"{self.gs_threshold}, distance irrelevance {self.distance_irrelevance:.3f} vs "
            f"{self.di_threshold}, attn_rate {self.attn_rate:g})"
        )


def classify_clock_pizza(
    model: GrokModel,
    task: Task | None = None,
    *,
    gs_threshold: float = GRADIENT_SYMMETRICITY_THRESHOLD,
    di_threshold: float = DISTANCE_IRRELEVANCE_THRESHOLD,
    n_samples: int = 100,
    seed: int = 0,
    fast: bool = False,
) -> ClockPizzaVerdict:
    """Tell a clock from a pizza: "pizza" if ``s_g ≥ gs_threshold`` and ``q < di_threshold``,
    "clock" if ``s_g < gs_threshold`` and ``q ≥ di_threshold``, else "ambiguous".

    ``fast``: ``q`` from the fast forward (:func:`correct_logit_grid`), equal to float32
    rounding; what ``tl-grokking analyze SWEEP_DIR`` uses for every run.

    Classify only a model that solves the task (the metrics describe the learned algorithm;
    on an untrained model ``s_g ≈ 1`` and ``q ≈ 1`` whatever the attention rate).
    """
    for name, value in (("gs_threshold", gs_threshold), ("di_threshold", di_threshold)):
        if not isinstance(value, int | float) or not (0.0 <= float(value) <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    gs = gradient_symmetricity(model, task, n_samples=n_samples, seed=seed)
    di = distance_irrelevance(model, task, fast=fast)
    pizza_gs, pizza_di = gs >= gs_threshold, di < di_threshold
    label = "ambiguous" if pizza_gs != pizza_di else ("pizza" if pizza_gs else "clock")
    return ClockPizzaVerdict(
        label=label,
        gradient_symmetricity=gs,
        distance_irrelevance=di,
        gs_threshold=float(gs_threshold),
        di_threshold=float(di_threshold),
        attn_rate=model_attn_rate(model),
    )
