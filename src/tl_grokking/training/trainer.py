"""Full-batch training of the grokking transformer (Nanda et al. 2023; docs/training.md).

One optimiser step per epoch on the whole training split; AdamW (lr 1e-3, weight decay 1.0,
betas (0.9, 0.98)); a linear warm-up ``lr · min(step / warmup_steps, 1)`` as in the authors'
code (``LambdaLR``; the first step therefore has learning rate 0); cross-entropy on the final
position computed in float64.  The forward pass is
:func:`tl_grokking.model.fastforward.weights_final_logits` (only what the final-position loss
needs).

The trainer owns the weights it trains: a TL-3-keyed dict drawn by
:func:`tl_grokking.model.transformer.init_weights`, differentiated through the exact fast path
and stepped by AdamW. The same seed therefore gives the same run, bit for bit, on
TransformerLens 3 and 4. The model object (a HookedTransformer or a TransformerBridge) is
loaded with these weights for the callbacks and at the end.

A run writes its directory as described in :mod:`tl_grokking.runs.rundir`:

* ``config.json`` — :meth:`TrainConfig.to_dict`;
* ``metrics.jsonl`` — one line per logged epoch (every ``log_every`` epochs, every
  ``measure_every`` epochs, epoch 0 and the last epoch) with ``epoch, train_loss, test_loss,
  train_acc, test_acc, lr, elapsed`` plus whatever the callbacks return;
* ``checkpoints/epoch_<N>.safetensors`` — the weights (TL-3 keys) every ``checkpoint_every``
  epochs, at epoch 0 (initialisation) and at the last epoch;
* ``resume.safetensors`` — weights + AdamW state + epoch, written (atomically) with every
  checkpoint; ``resume=True`` continues from it and reaches bit-identical weights on CPU.

Metrics at epoch N describe the model of checkpoint N (after N optimiser steps); ``lr`` is the
learning rate of the step from epoch N to N + 1.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_grokking._autograd import first_order_only
from tl_grokking._resources import auto_threads, available_memory, retained_heap, using_threads
from tl_grokking._validation import worded
from tl_grokking.model import native
from tl_grokking.model.fastforward import TokenGroups, groups_for, weights_final_logits
from tl_grokking.model.transformer import (
    GrokModel,
    init_weights,
    load_weights,
    make_model,
    trainable_weight_names,
    validate_device,
    weight_shapes,
)
from tl_grokking.runs.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DERIVED_FILES,
    GROK_ACC,
    METRICS_FILE,
    RESUME_FILE,
    append_metrics,
    checkpoint_path,
    grok_epoch,
    holds_files,
    list_checkpoints,
    path_kind,
    read_json,
    read_metrics,
    read_safetensors,
    require_file,
    require_out_dir,
    rewrite_metrics,
    run_lock,
    save_safetensors,
    write_json,
)
from tl_grokking.training.config import (
    RESUMABLE_FIELDS,
    TrainConfig,
    config_changes,
)

__all__ = [
    "TrainResult",
    "TrainingDivergedError",
    "Callback",
    "train_model",
    "cross_entropy_final",
    "warmup_factor",
    "step_work",
    "TooLargeError",
    "ResumeStateError",
    "memory_estimate",
    "check_memory",
]

#: A callback receives ``(epoch, model)`` and returns extra metrics for that epoch's line.
Callback = Callable[[int, GrokModel], dict[str, float]]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the checkpoints written so far are intact."""


@dataclass
class TrainResult:
    """What :func:`train_model` returns."""

    model: GrokModel
    metrics: dict[str, Any]  # the last metrics line: epoch (int), losses, accuracies, lr, ...
    epoch: int  # epochs trained (== config.epochs unless stopped early)
    run_dir: Path
    wall_time: float  # seconds, this call only
    grok_epoch: int | None  # first logged epoch with test accuracy >= GROK_ACC
    stopped_early: bool = False


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up multiplier ``min(step / warmup_steps, 1)`` (1 when ``warmup_steps`` is 0)."""
    if warmup_steps <= 0:
        return 1.0
    return min(step / warmup_steps, 1.0)


class _CrossEntropy64(torch.autograd.Function):
    """Mean cross-entropy ``mean_b(log Σ_c exp x[b, c] − x[b, y_b])`` in float64, with the
    softmax kept from the forward for the backward.

    The same quantity and gradient ``(softmax(x) − onehot(y)) / batch`` as
    ``F.cross_entropy(logits.double(), labels)`` (to float64 rounding; the gradient, cast to
    the logits' dtype, has its subnormal entries flushed to zero), in half its time on
    the trainer's ``[batch, d_vocab_out]`` logits: one ``exp`` of the batch instead of three
    (``log_softmax``, its backward, ``nll_loss``'s), and no ``[batch, d_vocab_out]`` float64
    intermediates beyond the one it keeps. Where the compiled kernels are used
    (:mod:`tl_grokking.model.native`), loss and gradient come from one pass per row instead.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        ctx.dtype, batch = logits.dtype, logits.shape[0]
        if native.enabled(logits):
            # one compiled pass: every row's loss and (for a loss of weight 1, the trainer's)
            # its gradient; a non-finite batch goes through torch below, whose NaN and inf
            # the trainer reports
            want_grad = ctx.needs_input_grad[0]
            rows, grad = native.cross_entropy64(
                logits.detach(), labels, 1.0 / batch if want_grad else None
            )
            loss = rows.mean()
            if bool(torch.isfinite(loss)):
                ctx.save_for_backward(logits, labels)
                ctx.native_grad = grad
                return loss
        x = logits.to(torch.float64, copy=True)
        x.sub_(x.amax(1, keepdim=True))  # log-sum-exp shift: every exponent <= 0
        picked = x.gather(1, labels[:, None])
        sums = x.exp_().sum(1, keepdim=True)
        ctx.save_for_backward(x, sums, labels)
        ctx.native_grad = None
        return (sums.log() - picked).mean()

    @staticmethod
    @first_order_only
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if ctx.native_grad is not None:
            logits, labels = ctx.saved_tensors
            if bool(grad == 1.0):
                return ctx.native_grad, None
            scale = float(grad) / logits.shape[0]
            return native.cross_entropy64(logits.detach(), labels, scale)[1], None
        exp, sums, labels = ctx.saved_tensors
        d = exp.div(sums)  # softmax
        d.scatter_add_(1, labels[:, None], d.new_full((d.shape[0], 1), -1.0))
        d.mul_(grad / d.shape[0])
        out = d.to(ctx.dtype)
        if out.dtype != torch.float64:
            # What float32 cannot hold as a normal number (below 1.2e-38: the probabilities
            # of classes the model is sure against, late in training) is flushed to zero, as
            # a CPU's flush-to-zero mode would: left subnormal, every product it enters runs
            # up to 100× slower on Intel CPUs (docs/training.md, "Subnormal gradients").
            out.masked_fill_(out.abs() < torch.finfo(out.dtype).tiny, 0.0)
        return out, None


def cross_entropy_final(
    logits: Float[Tensor, "batch d_vocab_out"], labels: Int[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy of final-position logits, computed in float64 (docs/training.md):
    ``F.cross_entropy(logits.double(), labels)``, to float64 rounding, with a faster backward."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or logits.shape[0] == 0:
        raise ValueError(
            f"logits must be [batch, d_vocab_out] and labels [batch] with batch > 0, got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return _CrossEntropy64.apply(logits, labels)


# ---------------------------------------------------------------------------------------------
# run directory handling


def _describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in changes.items())


def _clear_run(run_dir: Path) -> None:
    """Remove the files a run writes and what analysis derived from it (and nothing else)."""
    for name in (CONFIG_FILE, METRICS_FILE, RESUME_FILE, *DERIVED_FILES):
        (run_dir / name).unlink(missing_ok=True)
    _remove_leftovers(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if ckpt_dir.is_dir():
        for _, path in list_checkpoints(run_dir):
            path.unlink()
        if not any(ckpt_dir.iterdir()):
            shutil.rmtree(ckpt_dir)


def _remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files of writes a crash cut short (the caller holds the lock)."""
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        if folder.is_dir():
            for leftover in folder.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)


def _prepare_run_dir(config: TrainConfig, run_dir: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check ``run_dir`` against the requested run; returns True when resuming from a state.

    Errors name their remedies as the API's arguments (``resume=True``), and as flags in their
    ``cli_message`` (:func:`tl_grokking._validation.worded`).
    """
    require_out_dir(run_dir)
    for name, noun in ((CONFIG_FILE, "run configuration (JSON)"), (RESUME_FILE, "resume state")):
        if path_kind(run_dir / name) not in (None, "a regular file"):  # a directory, a FIFO...
            require_file(run_dir / name, noun)
    if not (run_dir / CONFIG_FILE).is_file():
        if run_dir.is_dir() and holds_files(run_dir) and not overwrite:
            raise worded(
                FileExistsError,
                "{run_dir} exists, is not empty and holds no run ({config} missing); choose "
                "another directory or pass {overwrite}",
                run_dir=run_dir,
                config=CONFIG_FILE,
            )
        return False
    if overwrite:
        _clear_run(run_dir)
        return False
    changes = config_changes(read_json(run_dir / CONFIG_FILE), config.to_dict())
    if not resume:
        if changes:
            raise worded(
                FileExistsError,
                "{run_dir} already holds a run with a different configuration ({diff}); use "
                "another directory, {resume} or {overwrite}",
                run_dir=run_dir,
                diff=_describe(changes),
            )
        raise worded(
            FileExistsError,
            "{run_dir} already holds a run with this configuration; pass {resume} to continue "
            "it or {overwrite} to start again",
            run_dir=run_dir,
        )
    frozen = {name: c for name, c in changes.items() if name not in RESUMABLE_FIELDS}
    if frozen:
        raise worded(
            FileExistsError,
            "cannot resume {run_dir}: the stored run has a different configuration ({diff}); "
            "only {fields} may change on resume. Use another directory or {overwrite}",
            run_dir=run_dir,
            diff=_describe(frozen),
            fields=", ".join(RESUMABLE_FIELDS),
        )
    if (run_dir / RESUME_FILE).is_file():
        return True
    saved = list_checkpoints(run_dir)
    if saved:  # never delete checkpoints because the optimizer state went missing
        raise worded(
            FileNotFoundError,
            "cannot resume {run_dir}: {resume_file} is missing but checkpoints exist (up to "
            "epoch {epoch}); the optimizer state is needed to continue. Use another directory "
            "or {overwrite}",
            run_dir=run_dir,
            resume_file=RESUME_FILE,
            epoch=saved[-1][0],
        )
    _clear_run(run_dir)  # nothing to resume from (crash before the first checkpoint)
    return False


Weights = dict[str, Tensor]
#: Rows per evaluation forward (the whole grid up to p = 128).
EVAL_BATCH = 16384


def _save_resume(
    run_dir: Path,
    weights: Weights,
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    epoch: int,
    elapsed: float,
) -> None:
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in weights.items()}
    state = optimizer.state_dict()["state"]
    for idx, name in enumerate(names):
        for key, value in state.get(idx, {}).items():
            tensors[f"optim.{name}.{key}"] = torch.as_tensor(value)
    meta = {"epoch": str(epoch), "elapsed": repr(elapsed), "scheduler_step": str(epoch)}
    save_safetensors(tensors, run_dir / RESUME_FILE, metadata=meta)


def _load_resume(
    run_dir: Path,
    weights: Weights,
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    device: torch.device,
    epochs: int,
) -> tuple[int, float]:
    """Restore ``weights`` (in place) and AdamW from ``resume.safetensors``, validated.

    The file must name an epoch whose checkpoint is on disk and at most ``epochs``, and hold
    every weight and (after epoch 0) every AdamW tensor of the trained weights, with their
    shapes; otherwise :class:`ResumeStateError` says what is wrong and nothing is changed.
    Files of earlier releases also carry HookedTransformer's attention-mask buffers
    (``model.blocks.0.attn.mask``/``IGNORE``); they are not weights and are skipped.
    """
    from safetensors import SafetensorError

    path = require_file(run_dir / RESUME_FILE, "resume state (safetensors)")
    try:
        tensors, meta = read_safetensors(path)
    except (SafetensorError, ValueError) as err:
        raise ResumeStateError(
            f"cannot resume from {path}: corrupt or truncated safetensors file ({err}); "
            "start again with --overwrite"
        ) from None
    epoch = _resume_epoch_of(meta, path, run_dir, epochs)
    stored = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    problems = [f"weight {k} missing" for k in weights if k not in stored]
    problems += [
        f"weight {k} has shape {tuple(stored[k].shape)}, expected {tuple(v.shape)}"
        for k, v in weights.items()
        if k in stored and stored[k].shape != v.shape
    ]
    state: dict[int, dict[str, Tensor]] = {}
    for idx, name in enumerate(names):
        prefix = f"optim.{name}."
        entry = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if epoch == 0 and not entry:
            continue  # no AdamW step taken yet: no state
        for key, shape in (("exp_avg", weights[name].shape), ("exp_avg_sq", weights[name].shape)):
            if key not in entry:
                problems.append(f"AdamW {key} of {name} missing")
            elif entry[key].shape != shape:
                problems.append(f"AdamW {key} of {name} has shape {tuple(entry[key].shape)}")
        if "step" not in entry or entry["step"].numel() != 1:
            problems.append(f"AdamW step of {name} missing")
        state[idx] = {k: (v if k == "step" else v.to(device)) for k, v in entry.items()}
    if problems:
        raise ResumeStateError(
            f"cannot resume from {path}: "
            + "; ".join(problems[:6])
            + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
            + ". It was not written by this trainer for this configuration; start again with "
            "--overwrite"
        )
    with torch.no_grad():
        for name, value in weights.items():
            value.copy_(stored[name])
    opt_state = optimizer.state_dict()
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    return epoch, float(meta.get("elapsed", "0"))


class ResumeStateError(ValueError):
    """``resume.safetensors`` does not describe a state this run can continue from."""


def _resume_epoch_of(meta: Mapping[str, str], path: Path, run_dir: Path, epochs: int) -> int:
    raw = meta.get("epoch")
    try:
        epoch = int(raw) if raw is not None else -1
    except ValueError:
        epoch = -1
    if epoch < 0:
        raise ResumeStateError(
            f"cannot resume from {path}: its metadata gives epoch {raw!r}, not a nonnegative "
            "integer; start again with --overwrite"
        )
    if not checkpoint_path(run_dir, epoch).is_file():
        raise ResumeStateError(
            f"cannot resume from {path}: it is the state of epoch {epoch}, but "
            f"{checkpoint_path(run_dir, epoch)} (written before it) is missing"
        )
    if epoch > epochs:
        raise ResumeStateError(
            f"cannot resume: the run is already at epoch {epoch}, past the {epochs} epochs "
            f"asked for; ask for at least {epoch} epochs"
        )
    return epoch


def _save_checkpoint(run_dir: Path, weights: Weights, epoch: int) -> None:
    save_safetensors(
        weights,
        checkpoint_path(run_dir, epoch),
        metadata={"epoch": str(epoch), "format": "tl_grokking"},
    )


# ---------------------------------------------------------------------------------------------
# training


@torch.no_grad()
def _evaluate(
    logits_of: Callable[[Tensor, TokenGroups | None], Tensor],
    chunks: Sequence[tuple[Tensor, TokenGroups | None]],
    labels: Int[Tensor, " n"],
    train_idx: Int[Tensor, " n_train"],
    test_idx: Int[Tensor, " n_test"],
) -> dict[str, float]:
    """Loss (float64) and accuracy on the train and test splits, from one pass over all inputs."""
    logits = torch.cat([logits_of(chunk, groups) for chunk, groups in chunks])
    out = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        split_logits, split_labels = logits[idx], labels[idx]
        out[f"{split}_loss"] = cross_entropy_final(split_logits, split_labels).item()
        out[f"{split}_acc"] = (split_logits.argmax(-1) == split_labels).double().mean().item()
    return out


def _is_log_epoch(config: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` gets a metrics line (epoch 0 and the last one always do)."""
    measure = config.measure_every
    return epoch % config.log_every == 0 or (measure is not None and epoch % measure == 0)


def _is_measure_epoch(config: TrainConfig, epoch: int) -> bool:
    """Whether the callbacks run at this logged epoch."""
    measure = config.measure_every
    return measure is None or epoch % measure == 0 or epoch == config.epochs


def _next_streak(streak: int, test_acc: float, threshold: float | None) -> int:
    """Logged epochs in a row with test accuracy >= the early-stop threshold."""
    return streak + 1 if threshold is not None and test_acc >= threshold else 0


class _Run:
    """One run in memory: the data on the device, the weights, AdamW, the epoch and the clock."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        device: torch.device,
        callbacks: Sequence[Callback],
    ) -> None:
        self.started = time.perf_counter()
        self.config, self.run_dir, self.device, self.callbacks = config, run_dir, device, callbacks
        task = config.make_task()
        self.tokens, self.labels = task.tokens().to(device), task.labels().to(device)
        train_idx, test_idx = task.split(config.frac_train, config.seed)
        self.train_idx, self.test_idx = train_idx.to(device), test_idx.to(device)
        self.train_tokens = self.tokens[self.train_idx]
        self.train_labels = self.labels[self.train_idx]
        self.model_config = config.model_config()
        layout = (self.model_config.d_vocab, self.model_config.n_heads, self.model_config.act_fn)
        # the layout of the algebraic forward path, built once for the training set and the grid
        self.train_groups = groups_for(self.train_tokens, *layout)
        self.eval_chunks = [
            (chunk, groups_for(chunk, *layout)) for chunk in self.tokens.split(EVAL_BATCH)
        ]
        self.weights = init_weights(self.model_config, seed=config.seed, device=device)
        self.param_names = trainable_weight_names(self.model_config)
        for name in self.param_names:
            self.weights[name].requires_grad_(True)
        self.model = make_model(self.model_config, weights=self.weights, device=device)
        self.optimizer = torch.optim.AdamW(
            [self.weights[name] for name in self.param_names],
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
            fused=device.type in ("cpu", "cuda"),  # one kernel per step where torch has one
        )
        self.epoch = 0
        self.elapsed_before = 0.0  # training time of earlier calls (resume)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def logits(
        self, tokens: Int[Tensor, "batch 3"], groups: TokenGroups | None
    ) -> Float[Tensor, "batch d_vocab_out"]:
        """Final-position logits of the current weights (differentiable)."""
        cfg = self.model_config
        return weights_final_logits(
            self.weights, tokens, act_fn=cfg.act_fn, attn_rate=cfg.attn_rate, groups=groups
        )

    def sync_model(self) -> GrokModel:
        """The model object, loaded with the current weights."""
        load_weights(self.model, self.weights)
        return self.model

    def lr_at(self, step: int) -> float:
        return self.config.lr * warmup_factor(step, self.config.warmup_steps)

    def restore(self) -> None:
        """Continue from ``resume.safetensors``; drop the metrics and checkpoints after it."""
        self.epoch, self.elapsed_before = _load_resume(
            self.run_dir,
            self.weights,
            self.optimizer,
            self.param_names,
            self.device,
            self.config.epochs,
        )
        _remove_leftovers(self.run_dir)
        kept = read_metrics(self.run_dir, keep=lambda r: r.get("epoch", 0) <= self.epoch)
        rewrite_metrics(self.run_dir, kept)
        for epoch, path in list_checkpoints(self.run_dir):
            if epoch > self.epoch:
                path.unlink()

    def step(self) -> None:
        """One full-batch AdamW step: from epoch N to N + 1."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.epoch)
        logits = self.logits(self.train_tokens, self.train_groups)
        loss = cross_entropy_final(logits, self.train_labels)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"train loss is {value} at epoch {self.epoch}; training diverged (try a smaller "
                f"lr than {self.config.lr}). Checkpoints written so far are intact."
            )
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.epoch += 1

    def log(self, *, measure: bool) -> dict[str, Any]:
        """Evaluate, add the callbacks' metrics if ``measure``, append the line to the log."""
        record: dict[str, Any] = {"epoch": self.epoch}
        record.update(
            _evaluate(self.logits, self.eval_chunks, self.labels, self.train_idx, self.test_idx)
        )
        for key in ("train_loss", "test_loss"):
            if not math.isfinite(record[key]):
                raise TrainingDivergedError(
                    f"{key} is {record[key]} at epoch {self.epoch}; training diverged (try a "
                    f"smaller lr than {self.config.lr}). Checkpoints up to the previous one are "
                    "intact."
                )
        record["lr"] = self.lr_at(self.epoch)
        if measure and self.callbacks:
            model = self.sync_model().eval()
            with torch.no_grad():
                for callback in self.callbacks:
                    record.update(callback(self.epoch, model))
        record["elapsed"] = self.elapsed()
        append_metrics(self.run_dir, record)
        return record

    def save(self) -> None:
        """Checkpoint the model, then the resume state (model + AdamW), at this epoch."""
        _save_checkpoint(self.run_dir, self.weights, self.epoch)
        _save_resume(
            self.run_dir, self.weights, self.optimizer, self.param_names, self.epoch, self.elapsed()
        )


def train_model(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
) -> TrainResult:
    """Train a model for ``config`` and record the run in ``run_dir``.

    ``resume=True`` continues from ``run_dir/resume.safetensors`` (the state at the last
    checkpoint), dropping metrics logged after it; only the epoch count, logging/checkpoint
    intervals, device and early-stop settings may differ from the stored config
    (:func:`~tl_grokking.training.config.resume_config` builds such a config from the stored
    one). Without it, a ``run_dir`` that already holds a run is refused (``FileExistsError``
    naming the differing fields) unless ``overwrite=True``. Each callback
    ``(epoch, model) -> dict`` is called (under ``torch.no_grad``) at every logged epoch, or
    every ``measure_every`` epochs when that is set, and its dict is merged into that epoch's
    metrics line.

    Raises :class:`TrainingDivergedError` if the loss becomes NaN/inf (checkpoints written so
    far are left intact).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    device = validate_device(config.device)
    native.switch_on()  # a bad TL_GROKKING_NATIVE is refused before anything is written
    if device.type == "cpu":
        check_memory(config)  # before anything is allocated or written
    run_dir = Path(run_dir)
    require_out_dir(run_dir)
    threads = config.threads or auto_threads(step_work(config))
    run_dir.mkdir(parents=True, exist_ok=True)
    cpu_threads = threads if device.type == "cpu" else None
    with run_lock(run_dir), using_threads(cpu_threads), retained_heap():
        return _train(config, run_dir, device, resume, overwrite, progress, list(callbacks))


class TooLargeError(ValueError):
    """The run would need more memory than this machine has available."""


def memory_estimate(config: TrainConfig) -> dict[str, float]:
    """Bytes a run of ``config`` allocates at its peak, by part (an estimate, within ~2×):
    the p² input grid and its layouts, the logits of every pair at each evaluation, one
    training step's activations and gradients, the per-step tables, and the weights with
    their gradients and AdamW state."""
    model = config.model_config()
    assert model.d_vocab_out is not None and model.d_head is not None
    grid = config.p**2
    n_train = math.floor(config.frac_train * grid)
    c, m, h, d = model.d_vocab_out, model.d_mlp, model.n_heads, model.d_model
    width = m + c
    n_weights = sum(math.prod(shape) for shape in weight_shapes(model).values())
    return {
        "input grid": grid * 4 * 8 + (grid + n_train) * 3 * h * 44,
        "logits of all p² pairs": grid * c * 4 + min(grid, EVAL_BATCH) * (width + m + c) * 4,
        "training step": n_train * ((2 * width + 2 * m + 3 * c) * 4 + c * 16),
        "tables": 3 * h * (2 * model.d_vocab + 1) * width * 4 + 3 * d * width * 4,
        "weights, gradients, AdamW": 5 * n_weights * 4,
    }


def check_memory(config: TrainConfig, available: int | None = None) -> None:
    """Raise :class:`TooLargeError` (with the estimate) if the run cannot fit in memory."""
    parts = memory_estimate(config)
    need = sum(parts.values())
    available = available_memory() if available is None else available
    if available is not None and need > available:
        detail = ", ".join(f"{name} {value / 1e9:.3g} GB" for name, value in parts.items())
        raise TooLargeError(
            f"training p = {config.p} (d_model {config.d_model}, d_mlp {config.d_mlp}) needs about "
            f"{need / 1e9:.3g} GB of memory ({detail}), but {available / 1e9:.3g} GB are "
            "available; use a smaller p or model, or a machine with more memory"
        )


def step_work(config: TrainConfig) -> float:
    """Multiply-adds of one training step of the algebraic path (what sets the thread count):
    the three ``[n_train, d_mlp] × [d_mlp, d_vocab_out]`` read-out products and the tables."""
    model = config.model_config()
    assert model.d_vocab_out is not None
    n_train = math.floor(config.frac_train * config.p**2)
    readout = 3 * n_train * model.d_mlp * model.d_vocab_out
    tables = 3 * (2 * model.d_vocab + 1) * model.d_model * (model.d_mlp + model.d_vocab_out)
    return float(readout + tables)


def _train(
    config: TrainConfig,
    run_dir: Path,
    device: torch.device,
    resume: bool,
    overwrite: bool,
    progress: bool,
    callbacks: list[Callback],
) -> TrainResult:
    resuming = _prepare_run_dir(config, run_dir, resume=resume, overwrite=overwrite)
    run = _Run(config, run_dir, device, callbacks)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resuming:
        run.restore()
    else:
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    write_json(run_dir / CONFIG_FILE, config.to_dict())

    history = read_metrics(run_dir)
    last = history[-1] if history else {}
    first_grok = grok_epoch(history)
    streak = 0
    for record in history:
        streak = _next_streak(streak, record.get("test_acc", 0.0), config.early_stop_acc)
    if not resuming:  # the initialisation: epoch 0's line, checkpoint and resume state
        last = run.log(measure=True)
        run.save()

    # A run that already stopped early (resumed from its early-stop state) is finished: resuming
    # it with the same settings trains nothing more, as resuming a run at its last epoch.
    stopped_early = resuming and streak >= config.early_stop_patience
    bar = tqdm(
        total=config.epochs,
        initial=run.epoch,
        desc="train",
        unit="epoch",
        dynamic_ncols=True,
        disable=not progress,
    )
    with bar:
        while not stopped_early and run.epoch < config.epochs:
            run.step()
            bar.update(1)
            epoch, final = run.epoch, run.epoch == config.epochs
            if final or _is_log_epoch(config, epoch):
                last = run.log(measure=_is_measure_epoch(config, epoch))
                if first_grok is None and last["test_acc"] >= GROK_ACC:
                    first_grok = epoch
                bar.set_postfix(
                    train_loss=f"{last['train_loss']:.3g}",
                    test_loss=f"{last['test_loss']:.3g}",
                    test_acc=f"{last['test_acc']:.3f}",
                    refresh=False,
                )
                streak = _next_streak(streak, last["test_acc"], config.early_stop_acc)
                stopped_early = streak >= config.early_stop_patience and not final
            if final or stopped_early or epoch % config.checkpoint_every == 0:
                run.save()
            if stopped_early:
                break

    return TrainResult(
        model=run.sync_model().eval(),
        metrics=last,
        epoch=run.epoch,
        run_dir=run_dir,
        wall_time=time.perf_counter() - run.started,
        grok_epoch=first_grok,
        stopped_early=stopped_early,
    )
