""":class:`TrainConfig`, everything that defines a training run, and what may change on resume.

Imports neither torch nor TransformerLens: the ``tl-grokking train`` flags are generated from
these fields (``tl_grokking.cli._flags``), so each default and help text lives here, once.
The architecture fields are :class:`~tl_grokking.model.config.ModelConfig`'s, with its
defaults, help texts and checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tl_grokking._validation import (
    check_device,
    check_float,
    check_int,
    config_from_dict,
    option,
)
from tl_grokking.model.config import MODEL_GROUP, ModelConfig
from tl_grokking.runs.rundir import CONFIG_FILE, RunDirError, path_kind, read_json

if TYPE_CHECKING:
    from tl_grokking.data.tasks import Task

__all__ = [
    "TrainConfig",
    "RESUMABLE_FIELDS",
    "ResumeConfigError",
    "config_changes",
    "load_train_config",
    "resume_config",
    "QUICK_SETTINGS",
    "PRESETS",
]

DATA_GROUP = "task and data"
OPTIM_GROUP = "optimisation (full batch: one AdamW step per epoch)"
LOG_GROUP = "logging, checkpoints, stopping"

#: Fields that may change when a run is resumed: they do not alter the optimisation trajectory.
RESUMABLE_FIELDS = (
    "epochs",
    "log_every",
    "checkpoint_every",
    "measure_every",
    "device",
    "early_stop_acc",
    "early_stop_patience",
    "threads",
)

#: What ``--quick`` changes from the paper's setting: a run that groks in well under a minute
#: on two CPU cores (p = 53, half of the pairs for training, d_mlp 256, lr 3e-3, 1500 epochs).
QUICK_SETTINGS: dict[str, Any] = dict(
    p=53,
    frac_train=0.5,
    d_mlp=256,
    lr=3e-3,
    weight_decay=1.0,
    epochs=1500,
    log_every=25,
    checkpoint_every=50,
)

#: Named starting points for a configuration (``tl-grokking sweep --preset``): ``paper`` is
#: every :class:`TrainConfig` default, ``quick`` is :data:`QUICK_SETTINGS`.
PRESETS: dict[str, dict[str, Any]] = {"paper": {}, "quick": QUICK_SETTINGS}

_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def _model_option(name: str, group: str = MODEL_GROUP) -> Any:
    """The ModelConfig field ``name`` (default, help, choices), in the ``--help`` ``group``."""
    field = _MODEL_FIELDS[name]
    return dataclasses.field(default=field.default, metadata={**field.metadata, "group": group})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are the paper's (docs/training.md).

    Construction validates every field and raises ``ValueError`` naming the field and the
    accepted range; nothing is trained or written before that. The architecture fields are
    checked (and normalised) by :meth:`model_config`.
    """

    task: str = option(
        "add",
        "registered task: add = (a + b) mod p; sub, mul, div, x2+y2, ... (docs/tasks.md)",
        group=DATA_GROUP,
    )
    p: int = _model_option("p", DATA_GROUP)
    frac_train: float = option(0.3, "fraction of the p² pairs to train on", group=DATA_GROUP)
    seed: int = option(0, "seed of the initialisation and of the split", group=DATA_GROUP)

    epochs: int = option(40_000, "number of epochs", group=OPTIM_GROUP)
    lr: float = option(1e-3, "AdamW learning rate", group=OPTIM_GROUP)
    weight_decay: float = option(1.0, "AdamW weight decay; 0 never groks", group=OPTIM_GROUP)
    beta1: float = option(0.9, "AdamW beta1", group=OPTIM_GROUP)
    beta2: float = option(0.98, "AdamW beta2", group=OPTIM_GROUP)
    warmup_steps: int = option(
        10, "linear learning-rate warm-up lr*min(step/N, 1); 0 disables it", group=OPTIM_GROUP
    )

    d_model: int = _model_option("d_model")
    n_heads: int = _model_option("n_heads")
    d_head: int | None = _model_option("d_head")
    d_mlp: int = _model_option("d_mlp")
    act_fn: str = _model_option("act_fn")
    d_vocab_out: int | None = _model_option("d_vocab_out")
    trainable_biases: str = _model_option("trainable_biases")
    attn_rate: float = _model_option("attn_rate")

    log_every: int = option(100, "evaluate and log metrics every N epochs", group=LOG_GROUP)
    checkpoint_every: int = option(100, "save a checkpoint every N epochs", group=LOG_GROUP)
    device: str = option("cpu", "cpu, cuda, cuda:N or mps", group=LOG_GROUP)
    early_stop_acc: float | None = option(
        None,
        "stop once test accuracy has been >= this on early_stop_patience logged epochs in a row",
        group=LOG_GROUP,
        none="off",
    )
    early_stop_patience: int = option(
        3, "consecutive logged epochs for the early stop", group=LOG_GROUP
    )
    measure_every: int | None = option(
        None,
        "also log the cheap progress measures (Gini of W_E/W_L, sum of squared weights) every "
        "N epochs",
        group=LOG_GROUP,
        none="off",
    )
    threads: int | None = option(
        None,
        "CPU threads for torch while training",
        group=LOG_GROUP,
        none="by problem size: 1 for small p, up to one per core",
    )

    def __post_init__(self) -> None:
        from tl_grokking.data.tasks import TASKS, validate_frac_train

        set_ = object.__setattr__
        if not isinstance(self.task, str) or self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        set_(self, "frac_train", validate_frac_train(self.frac_train))
        set_(self, "seed", check_int(self.seed, "seed", minimum=0))
        set_(self, "epochs", check_int(self.epochs, "epochs"))
        set_(self, "lr", check_float(self.lr, "lr", 0, math.inf, low_open=True, high_open=True))
        wd = check_float(self.weight_decay, "weight_decay", 0, math.inf, high_open=True)
        set_(self, "weight_decay", wd)
        for name in ("beta1", "beta2"):
            set_(self, name, check_float(getattr(self, name), name, 0, 1, high_open=True))
        set_(self, "warmup_steps", check_int(self.warmup_steps, "warmup_steps", minimum=0))
        for name in ("log_every", "checkpoint_every", "early_stop_patience"):
            set_(self, name, check_int(getattr(self, name), name))
        if self.measure_every is not None:
            set_(self, "measure_every", check_int(self.measure_every, "measure_every"))
        if self.threads is not None:
            set_(self, "threads", check_int(self.threads, "threads"))
        if self.early_stop_acc is not None:
            acc = check_float(self.early_stop_acc, "early_stop_acc", 0, 1, low_open=True)
            set_(self, "early_stop_acc", acc)
        set_(self, "device", check_device(self.device))
        # The architecture is ModelConfig's to check; keep its normalised values (an int p for
        # 13.0, ...), but not the d_head / d_vocab_out it derives from None.
        model = self.model_config()
        for name in _SHARED_FIELDS:
            if getattr(self, name) is not None:
                set_(self, name, getattr(model, name))

    def model_config(self) -> ModelConfig:
        """The :class:`~tl_grokking.model.config.ModelConfig` of the model this run trains."""
        return ModelConfig(**{name: getattr(self, name) for name in _SHARED_FIELDS})

    def make_task(self) -> Task:
        """The :class:`~tl_grokking.data.tasks.Task` this run trains on."""
        from tl_grokking.data.tasks import make_task

        return make_task(self.task, self.p)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


_SHARED_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name in _MODEL_FIELDS)


def load_train_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` stored in ``run_dir/config.json``."""
    path = Path(run_dir) / CONFIG_FILE
    if path_kind(path) is None:  # a directory, a FIFO, ... there: read_json says what it is
        raise FileNotFoundError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    data = read_json(path)
    if not isinstance(data, dict):
        raise RunDirError(f"{path} must hold a JSON object, got {type(data).__name__}")
    try:
        return TrainConfig.from_dict(data)
    except RunDirError:
        raise
    except ValueError as err:  # a field the trainer refuses: name the file it came from
        raise RunDirError(f"{path}: {err}") from None


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (old value, new value)}`` for every field that differs between two config
    dicts (``config.json``, :meth:`TrainConfig.to_dict`); a missing field reads ``'<absent>'``."""
    return {
        key: (old.get(key, "<absent>"), new.get(key, "<absent>"))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    }


class ResumeConfigError(ValueError):
    """Resuming a run with a change that alters its trajectory (not in RESUMABLE_FIELDS).

    ``changes`` maps each such field to ``(stored value, requested value)``.
    """

    def __init__(self, message: str, changes: dict[str, tuple[Any, Any]]) -> None:
        super().__init__(message)
        self.changes = changes


def resume_config(run_dir: str | os.PathLike, **changes: Any) -> TrainConfig:
    """The configuration stored in ``run_dir`` with ``changes`` applied, for resuming it:
    ``train_model(resume_config(run_dir, epochs=50_000), run_dir, resume=True)``.

    Only :data:`RESUMABLE_FIELDS` may change (:class:`ResumeConfigError` names the others);
    passing a field with its stored value is fine.
    """
    stored = load_train_config(run_dir).to_dict()
    frozen = {
        name: (stored[name], value)
        for name, value in changes.items()
        if name in stored and name not in RESUMABLE_FIELDS and value != stored[name]
    }
    if frozen:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in frozen.items())
        raise ResumeConfigError(
            f"cannot resume {run_dir} with a different {', '.join(frozen)} ({listed}); only "
            f"{', '.join(RESUMABLE_FIELDS)} may change when a run is resumed",
            frozen,
        )
    return TrainConfig.from_dict(stored).replace(**changes)
