"""Full-batch training of the grokking transformer (Nanda et al. 2023, PAPER_NOTES §3).

One optimiser step per epoch on the whole training split; AdamW (lr 1e-3, weight decay 1.0,
betas (0.9, 0.98)); a linear warm-up ``lr · min(step / warmup_steps, 1)`` as in the authors'
code (``LambdaLR``; the first step therefore has learning rate 0); cross-entropy on the final
position computed in float64.  The forward pass is :func:`tl_grokking.model.fastforward.final_logits`
(only what the final-position loss needs).

A run writes its directory as described in :mod:`tl_grokking.runs.rundir`:

* ``config.json`` — :meth:`TrainConfig.to_dict`;
* ``metrics.jsonl`` — one line per logged epoch (every ``log_every`` epochs, every
  ``measure_every`` epochs, epoch 0 and the last epoch) with ``epoch, train_loss, test_loss,
  train_acc, test_acc, lr, elapsed`` plus whatever the callbacks return;
* ``checkpoints/epoch_<N>.safetensors`` — the model's state dict every ``checkpoint_every``
  epochs, at epoch 0 (initialisation) and at the last epoch;
* ``resume.safetensors`` — model + AdamW state + epoch, written (atomically) with every
  checkpoint; ``resume=True`` continues from it and reaches bit-identical weights on CPU.

Metrics at epoch N describe the model of checkpoint N (after N optimiser steps); ``lr`` is the
learning rate of the step from epoch N to N + 1.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from tl_grokking.data.tasks import TASKS, Task, make_task, validate_frac_train, validate_p
from tl_grokking.model.fastforward import final_logits, final_logits_batched
from tl_grokking.model.transformer import ModelConfig, config_from_dict, make_model, validate_device
from tl_grokking.runs.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    GROK_ACC,
    METRICS_FILE,
    RESUME_FILE,
    append_metrics,
    checkpoint_path,
    grok_epoch,
    list_checkpoints,
    load_safetensors,
    read_json,
    read_metrics,
    rewrite_metrics,
    save_safetensors,
    write_json,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "Callback",
    "train_model",
    "load_train_config",
    "cross_entropy_final",
    "warmup_factor",
]

#: A callback receives ``(epoch, model)`` and returns extra metrics for that epoch's line.
Callback = Callable[[int, HookedTransformer], dict[str, float]]

# Fields that may change when resuming: they do not alter the optimisation trajectory.
_RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "log_every",
        "checkpoint_every",
        "device",
        "early_stop_acc",
        "early_stop_patience",
        "measure_every",
    }
)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the checkpoints written so far are intact."""


def _int_field(value: Any, field: str, *, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float_field(value: Any, field: str, lo: float, hi: float, *, lo_open: bool, hi_open: bool):
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or math.isnan(x):
        raise ValueError(f"{field} must be a number, got {value!r}")
    ok_lo = x > lo if lo_open else x >= lo
    ok_hi = x < hi if hi_open else x <= hi
    if not (ok_lo and ok_hi):
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"{field} must be in {left}{lo}, {hi}{right}, got {value!r}")
    return x


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are the paper's (PAPER_NOTES §2–3).

    Construction validates every field and raises ``ValueError`` naming the field and the
    accepted range; nothing is trained or written before that.
    """

    # task and data
    task: str = "add"
    p: int = 113
    frac_train: float = 0.3
    seed: int = 0  # seeds both the initialisation and the train/test split
    # optimisation
    epochs: int = 40_000
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 10
    # model (see tl_grokking.model.transformer.ModelConfig)
    d_model: int = 128
    n_heads: int = 4
    d_head: int | None = None
    d_mlp: int = 512
    act_fn: str = "relu"
    d_vocab_out: int | None = None
    trainable_biases: str = "none"
    attn_rate: float = 1.0
    # bookkeeping
    log_every: int = 100
    checkpoint_every: int = 100
    device: str = "cpu"
    early_stop_acc: float | None = None
    early_stop_patience: int = 3
    measure_every: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        set_(self, "p", validate_p(self.p))
        set_(self, "frac_train", validate_frac_train(self.frac_train))
        set_(self, "seed", _int_field(self.seed, "seed", minimum=0))
        set_(self, "epochs", _int_field(self.epochs, "epochs", minimum=1))
        set_(self, "lr", _float_field(self.lr, "lr", 0.0, math.inf, lo_open=True, hi_open=True))
        set_(
            self,
            "weight_decay",
            _float_field(
                self.weight_decay, "weight_decay", 0.0, math.inf, lo_open=False, hi_open=True
            ),
        )
        for name in ("beta1", "beta2"):
            set_(
                self,
                name,
                _float_field(getattr(self, name), name, 0.0, 1.0, lo_open=False, hi_open=True),
            )
        set_(self, "warmup_steps", _int_field(self.warmup_steps, "warmup_steps", minimum=0))
        for name in ("d_model", "n_heads", "d_mlp"):
            set_(self, name, _int_field(getattr(self, name), name, minimum=1))
        set_(self, "d_head", _int_field(self.d_head, "d_head", minimum=1, allow_none=True))
        set_(
            self,
            "attn_rate",
            _float_field(self.attn_rate, "attn_rate", 0.0, 1.0, lo_open=False, hi_open=False),
        )
        for name in ("log_every", "checkpoint_every"):
            set_(self, name, _int_field(getattr(self, name), name, minimum=1))
        set_(
            self,
            "measure_every",
            _int_field(self.measure_every, "measure_every", minimum=1, allow_none=True),
        )
        if self.early_stop_acc is not None:
            set_(
                self,
                "early_stop_acc",
                _float_field(
                    self.early_stop_acc, "early_stop_acc", 0.0, 1.0, lo_open=True, hi_open=False
                ),
            )
        set_(
            self,
            "early_stop_patience",
            _int_field(self.early_stop_patience, "early_stop_patience", minimum=1),
        )
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(
                f"device must be a string such as 'cpu' or 'cuda', got {self.device!r}"
            )
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(
                f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
            )
        # Architecture checks (act_fn, trainable_biases, d_model divisible by n_heads,
        # d_vocab_out ∈ {p, p+1}, ...) are ModelConfig's.
        self.model_config()

    def model_config(self) -> ModelConfig:
        """The :class:`~tl_grokking.model.transformer.ModelConfig` of the model this run trains."""
        return ModelConfig(
            p=self.p,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_mlp=self.d_mlp,
            act_fn=self.act_fn,
            d_vocab_out=self.d_vocab_out,
            trainable_biases=self.trainable_biases,
            attn_rate=self.attn_rate,
        )

    def make_task(self) -> Task:
        """The :class:`~tl_grokking.data.tasks.Task` this run trains on."""
        return make_task(self.task, self.p)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class TrainResult:
    """What :func:`train_model` returns."""

    model: HookedTransformer
    metrics: dict[str, float]  # the last metrics line
    epoch: int  # epochs trained (== config.epochs unless stopped early)
    run_dir: Path
    wall_time: float  # seconds, this call only
    grok_epoch: int | None  # first logged epoch with test accuracy >= GROK_ACC
    stopped_early: bool = False


def load_train_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` stored in ``run_dir/config.json``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    return TrainConfig.from_dict(read_json(path))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up multiplier ``min(step / warmup_steps, 1)`` (1 when ``warmup_steps`` is 0)."""
    if warmup_steps <= 0:
        return 1.0
    return min(step / warmup_steps, 1.0)


def cross_entropy_final(
    logits: Float[Tensor, "batch d_vocab_out"], labels: Int[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy of final-position logits, computed in float64 (PAPER_NOTES §3)."""
    return F.cross_entropy(logits.to(torch.float64), labels)


# ---------------------------------------------------------------------------------------------
# run directory handling


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
        for k in keys
        if old.get(k) != new.get(k)
    ]


def _clear_run(run_dir: Path) -> None:
    """Remove the files a run writes (and nothing else)."""
    for name in (CONFIG_FILE, METRICS_FILE, RESUME_FILE):
        (run_dir / name).unlink(missing_ok=True)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if ckpt_dir.is_dir():
        for _, path in list_checkpoints(run_dir):
            path.unlink()
        for leftover in ckpt_dir.glob(".*.tmp"):
            leftover.unlink()
        if not any(ckpt_dir.iterdir()):
            shutil.rmtree(ckpt_dir)


def _prepare_run_dir(config: TrainConfig, run_dir: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check ``run_dir`` against the requested run; returns True when resuming from a state."""
    existing = next((d for d in (run_dir, *run_dir.parents) if d.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(
            f"run_dir {run_dir}: {existing} is a file, not a directory; choose a directory path"
        )
    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{run_dir} exists, is not empty and holds no run ({CONFIG_FILE} missing); "
                "choose another directory or pass overwrite=True (--overwrite)"
            )
        return False
    old = read_json(config_file)
    diff = _config_diff(old, config.to_dict())
    if overwrite:
        _clear_run(run_dir)
        return False
    if resume:
        blocking = [d for d in diff if d.split(":", 1)[0] not in _RESUMABLE_FIELDS]
        if blocking:
            raise FileExistsError(
                f"cannot resume {run_dir}: the stored run has a different configuration "
                f"({'; '.join(blocking)}); only {sorted(_RESUMABLE_FIELDS)} may change on resume. "
                "Use another directory or overwrite=True (--overwrite)"
            )
        if (run_dir / RESUME_FILE).is_file():
            return True
        saved = list_checkpoints(run_dir)
        if saved:  # never delete checkpoints because the optimizer state went missing
            raise FileNotFoundError(
                f"cannot resume {run_dir}: {RESUME_FILE} is missing but checkpoints exist (up to "
                f"epoch {saved[-1][0]}); the optimizer state is needed to continue. Use another "
                "directory or overwrite=True (--overwrite)"
            )
        _clear_run(run_dir)  # nothing to resume from (crash before the first checkpoint)
        return False
    if diff:
        raise FileExistsError(
            f"{run_dir} already holds a run with a different configuration ({'; '.join(diff)}); "
            "use another directory, resume=True (--resume) or overwrite=True (--overwrite)"
        )
    raise FileExistsError(
        f"{run_dir} already holds a run with this configuration; pass resume=True (--resume) to "
        "continue it or overwrite=True (--overwrite) to start again"
    )


def _save_resume(
    run_dir: Path,
    model: HookedTransformer,
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    epoch: int,
    elapsed: float,
) -> None:
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = optimizer.state_dict()["state"]
    for idx, name in enumerate(names):
        for key, value in state.get(idx, {}).items():
            tensors[f"optim.{name}.{key}"] = torch.as_tensor(value)
    meta = {"epoch": str(epoch), "elapsed": repr(elapsed), "scheduler_step": str(epoch)}
    save_safetensors(tensors, run_dir / RESUME_FILE, metadata=meta)


def _load_resume(
    run_dir: Path,
    model: HookedTransformer,
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    device: torch.device,
) -> tuple[int, float]:
    from safetensors import safe_open

    path = run_dir / RESUME_FILE
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    tensors = load_safetensors(path)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_state, strict=True)
    opt_state = optimizer.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for idx, name in enumerate(names):
        prefix = f"optim.{name}."
        entry = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            state[idx] = {k: (v if k == "step" else v.to(device)) for k, v in entry.items()}
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    return int(meta["epoch"]), float(meta.get("elapsed", "0"))


def _save_checkpoint(run_dir: Path, model: HookedTransformer, epoch: int) -> None:
    save_safetensors(
        model.state_dict(),
        checkpoint_path(run_dir, epoch),
        metadata={"epoch": str(epoch), "format": "tl_grokking"},
    )


# ---------------------------------------------------------------------------------------------
# training


@torch.no_grad()
def _evaluate(
    model: HookedTransformer,
    tokens: Int[Tensor, "n 3"],
    labels: Int[Tensor, " n"],
    train_idx: Int[Tensor, " n_train"],
    test_idx: Int[Tensor, " n_test"],
) -> dict[str, float]:
    """Loss (float64) and accuracy on the train and test splits, from one pass over all inputs."""
    logits = final_logits_batched(model, tokens)
    out = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        split_logits, split_labels = logits[idx], labels[idx]
        out[f"{split}_loss"] = cross_entropy_final(split_logits, split_labels).item()
        out[f"{split}_acc"] = (split_logits.argmax(-1) == split_labels).double().mean().item()
    return out


def _is_finite(x: float) -> bool:
    return math.isfinite(x)


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
    intervals, device and early-stop settings may differ from the stored config. Without it, a
    ``run_dir`` that already holds a run is refused (``FileExistsError`` naming the differing
    fields) unless ``overwrite=True``. Each callback ``(epoch, model) -> dict`` is called
    (under ``torch.no_grad``) at every logged epoch, or every ``measure_every`` epochs when that
    is set, and its dict is merged into that epoch's metrics line.

    Raises :class:`TrainingDivergedError` if the loss becomes NaN/inf (checkpoints written so
    far are left intact).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    device = validate_device(config.device)
    run_dir = Path(run_dir)
    callbacks = list(callbacks)
    resuming = _prepare_run_dir(config, run_dir, resume=resume, overwrite=overwrite)
    start_time = time.perf_counter()

    task = config.make_task()
    tokens, labels = task.tokens().to(device), task.labels().to(device)
    train_idx, test_idx = (i.to(device) for i in task.split(config.frac_train, config.seed))
    train_tokens, train_labels = tokens[train_idx], labels[train_idx]

    model = make_model(config.model_config(), seed=config.seed, device=device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    optimizer = torch.optim.AdamW(
        [p for _, p in named],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
        foreach=True,
    )

    run_dir.mkdir(parents=True, exist_ok=True)
    epoch, elapsed_before = 0, 0.0
    if resuming:
        epoch, elapsed_before = _load_resume(run_dir, model, optimizer, names, device)
        rewrite_metrics(run_dir, read_metrics(run_dir, keep=lambda r: r.get("epoch", 0) <= epoch))
        for ckpt_epoch, path in list_checkpoints(run_dir):
            if ckpt_epoch > epoch:
                path.unlink()
    else:
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    write_json(run_dir / CONFIG_FILE, config.to_dict())

    history = read_metrics(run_dir)
    first_grok = grok_epoch(history)
    streak = 0
    if config.early_stop_acc is not None:
        for record in history:
            streak = streak + 1 if record.get("test_acc", 0) >= config.early_stop_acc else 0

    def lr_at(step: int) -> float:
        return config.lr * warmup_factor(step, config.warmup_steps)

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start_time

    def log(epoch: int, measure: bool) -> dict[str, Any]:
        model.eval()
        record: dict[str, Any] = {"epoch": epoch}
        record.update(_evaluate(model, tokens, labels, train_idx, test_idx))
        for key in ("train_loss", "test_loss"):
            if not _is_finite(record[key]):
                raise TrainingDivergedError(
                    f"{key} is {record[key]} at epoch {epoch}; training diverged (try a smaller "
                    f"lr than {config.lr}). Checkpoints up to the previous one are intact."
                )
        record["lr"] = lr_at(epoch)
        if measure:
            with torch.no_grad():
                for callback in callbacks:
                    record.update(callback(epoch, model))
        record["elapsed"] = elapsed()
        model.train()
        append_metrics(run_dir, record)
        return record

    def is_log_epoch(e: int) -> bool:
        return e % config.log_every == 0 or (config.measure_every and e % config.measure_every == 0)

    def is_measure_epoch(e: int) -> bool:
        if config.measure_every is None:
            return True
        return e % config.measure_every == 0 or e == config.epochs

    last: dict[str, Any] = history[-1] if history else {}
    if epoch == 0:
        last = log(0, True)
        _save_checkpoint(run_dir, model, 0)
        _save_resume(run_dir, model, optimizer, names, 0, elapsed())

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=config.epochs, initial=epoch, desc="train", unit="epoch", dynamic_ncols=True
        )

    stopped_early = False
    model.train()
    try:
        while epoch < config.epochs:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
            loss = cross_entropy_final(final_logits(model, train_tokens), train_labels)
            loss_value = loss.item()
            if not _is_finite(loss_value):
                raise TrainingDivergedError(
                    f"train loss is {loss_value} at epoch {epoch}; training diverged (try a "
                    f"smaller lr than {config.lr}). Checkpoints written so far are intact."
                )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            epoch += 1
            if bar is not None:
                bar.update(1)

            final = epoch == config.epochs
            if final or is_log_epoch(epoch):
                last = log(epoch, is_measure_epoch(epoch))
                if first_grok is None and last["test_acc"] >= GROK_ACC:
                    first_grok = epoch
                if bar is not None:
                    bar.set_postfix(
                        train_loss=f"{last['train_loss']:.3g}",
                        test_loss=f"{last['test_loss']:.3g}",
                        test_acc=f"{last['test_acc']:.3f}",
                        refresh=False,
                    )
                if config.early_stop_acc is not None:
                    streak = streak + 1 if last["test_acc"] >= config.early_stop_acc else 0
                    stopped_early = streak >= config.early_stop_patience and not final
            if final or stopped_early or epoch % config.checkpoint_every == 0:
                _save_checkpoint(run_dir, model, epoch)
                _save_resume(run_dir, model, optimizer, names, epoch, elapsed())
            if stopped_early:
                break
    finally:
        if bar is not None:
            bar.close()

    model.eval()
    return TrainResult(
        model=model,
        metrics=last,
        epoch=epoch,
        run_dir=run_dir,
        wall_time=time.perf_counter() - start_time,
        grok_epoch=first_grok,
        stopped_early=stopped_early,
    )
