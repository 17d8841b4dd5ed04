"""Model configuration → :class:`transformer_lens.HookedTransformer`, and compatibility checks.

The paper's model (Nanda et al. 2023, §2 of PAPER_NOTES): one layer, 4 heads of 32, d_model
128, MLP 512 with ReLU, no LayerNorm, learned positional embeddings, untied embed/unembed,
``d_vocab = p + 1`` (``=`` is token ``p``), ``d_vocab_out = p``, ``n_ctx = 3``.

Biases: by default (``trainable_biases="none"``) every bias is zero and frozen, as in the
TransformerLens grokking demo. ``"mlp"`` trains ``b_in``/``b_out`` (the authors' code), ``"all"``
trains every bias. Loaded checkpoints keep whatever biases they carry.

``attn_rate`` is the attention-rate knob of Zhong et al. (2023): the attention pattern is
replaced by ``attn_rate * softmax + (1 - attn_rate) * uniform`` over the attended positions
(1.0 = ordinary attention, 0.0 = constant uniform attention). It is applied by a permanent hook
on ``blocks.{l}.attn.hook_pattern`` that :func:`make_model` installs and
``model.reset_hooks()`` keeps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = [
    "ModelConfig",
    "make_model",
    "config_from_model",
    "check_compatible",
    "IncompatibleModelError",
    "SUPPORTED_ACT_FNS",
    "TRAINABLE_BIASES",
    "model_attn_rate",
    "install_attn_rate",
    "apply_bias_policy",
    "validate_device",
]

SUPPORTED_ACT_FNS = ("relu", "gelu", "gelu_new", "silu")
TRAINABLE_BIASES = ("none", "mlp", "all")
_MLP_BIASES = ("b_in", "b_out")


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    if int(value) <= 0:
        raise ValueError(f"{field} must be a positive integer (> 0), got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a one-layer grokking transformer. Defaults are the paper's."""

    p: int = 113
    d_model: int = 128
    n_heads: int = 4
    d_head: int | None = None  # None → d_model // n_heads (d_model must then be divisible)
    d_mlp: int = 512
    act_fn: str = "relu"
    d_vocab_out: int | None = None  # None → p (the p residues); p + 1 matches the authors' code
    n_layers: int = 1
    trainable_biases: str = "none"
    attn_rate: float = 1.0

    def __post_init__(self) -> None:
        from tl_grokking.data.tasks import validate_p

        object.__setattr__(self, "p", validate_p(self.p))
        for field in ("d_model", "n_heads", "d_mlp", "n_layers"):
            object.__setattr__(self, field, _positive_int(getattr(self, field), field))
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                    "when d_head is not given"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        else:
            object.__setattr__(self, "d_head", _positive_int(self.d_head, "d_head"))
        if self.d_vocab_out is None:
            object.__setattr__(self, "d_vocab_out", self.p)
        elif self.d_vocab_out not in (self.p, self.p + 1):
            raise ValueError(
                f"d_vocab_out must be p ({self.p}) or p + 1 ({self.p + 1}), got {self.d_vocab_out}"
            )
        if self.act_fn not in SUPPORTED_ACT_FNS:
            raise ValueError(f"act_fn must be one of {SUPPORTED_ACT_FNS}, got {self.act_fn!r}")
        if self.trainable_biases not in TRAINABLE_BIASES:
            raise ValueError(
                f"trainable_biases must be one of {TRAINABLE_BIASES}, got {self.trainable_biases!r}"
            )
        rate = float(self.attn_rate)
        if not (0.0 <= rate <= 1.0) or math.isnan(rate):
            raise ValueError(f"attn_rate must be in [0, 1], got {self.attn_rate!r}")
        object.__setattr__(self, "attn_rate", rate)

    @property
    def d_vocab(self) -> int:
        return self.p + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return config_from_dict(cls, data)

    def hooked_config(self, device: str | torch.device = "cpu") -> HookedTransformerConfig:
        """The equivalent :class:`HookedTransformerConfig` (no seed: see :func:`make_model`)."""
        return HookedTransformerConfig(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            d_head=self.d_head,
            d_mlp=self.d_mlp,
            act_fn=self.act_fn,
            normalization_type=None,
            d_vocab=self.d_vocab,
            d_vocab_out=self.d_vocab_out,
            n_ctx=3,
            init_weights=True,
            device=str(device),
            default_prepend_bos=False,
        )


def config_from_dict(cls: type, data: dict[str, Any]):
    """Build the config dataclass ``cls`` from a dict, naming any unknown fields."""
    if not isinstance(data, dict):
        raise ValueError(f"a {cls.__name__} must be built from a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    return cls(**data)


def _attn_rate_hook(rate: float):
    """Mix the attention pattern with uniform attention over the causally visible positions."""

    def hook(pattern: torch.Tensor, hook) -> torch.Tensor:  # [batch, head, q, k]
        n_q, n_k = pattern.shape[-2:]
        visible = torch.ones(n_q, n_k, device=pattern.device, dtype=torch.bool).tril()
        uniform = visible.to(pattern.dtype) / visible.sum(-1, keepdim=True).to(pattern.dtype)
        return rate * pattern + (1.0 - rate) * uniform

    hook.attn_rate = rate  # introspectable by the fast forward path
    return hook


def make_model(
    config: ModelConfig | None = None, *, seed: int = 0, device: str | torch.device = "cpu"
) -> HookedTransformer:
    """Build a freshly initialised HookedTransformer for ``config`` (default: the paper's).

    Initialisation is TransformerLens' default (weights N(0, 0.8/sqrt(d_model)) truncated as TL
    does, biases zero) drawn from ``seed`` inside a forked RNG, so the global torch RNG is left
    untouched. Biases are frozen unless ``config.trainable_biases`` says otherwise.
    """
    config = config or ModelConfig()
    device = validate_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = HookedTransformer(config.hooked_config("cpu"), move_to_device=False)
    if device.type != "cpu":
        model.to(device, print_details=False)
    apply_bias_policy(model, config.trainable_biases)
    install_attn_rate(model, config.attn_rate)
    model.tl_grokking_config = config  # type: ignore[attr-defined]
    return model


def validate_device(device: str | torch.device) -> torch.device:
    """Parse a device string; ``ValueError`` for unknown or unavailable devices."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return dev


def apply_bias_policy(model: HookedTransformer, trainable_biases: str) -> None:
    """Freeze (and keep) biases according to the policy; weights stay trainable."""
    if trainable_biases not in TRAINABLE_BIASES:
        raise ValueError(
            f"trainable_biases must be one of {TRAINABLE_BIASES}, got {trainable_biases!r}"
        )
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if not leaf.startswith("b_"):
            continue
        if trainable_biases == "all":
            param.requires_grad_(True)
        elif trainable_biases == "mlp":
            param.requires_grad_(".mlp." in name and leaf in _MLP_BIASES)
        else:
            param.requires_grad_(False)


def install_attn_rate(model: HookedTransformer, attn_rate: float) -> None:
    """Install (or replace) the permanent attention-rate hook; 1.0 removes it."""
    for block in model.blocks:
        block.attn.hook_pattern.remove_hooks(including_permanent=True)
        if attn_rate < 1.0:
            block.attn.hook_pattern.add_hook(_attn_rate_hook(attn_rate), is_permanent=True)


def model_attn_rate(model: HookedTransformer) -> float:
    """The attention rate in force on ``model``: that of its attention-rate hook, else 1.0.

    The hook is the single source of truth (a config saying otherwise does not change what the
    forward pass computes, so it is not consulted).
    """
    for hook in model.blocks[0].attn.hook_pattern.fwd_hooks:
        fn = getattr(hook, "user_hook", None)  # LensHandle.hook is the torch handle
        rate = getattr(getattr(fn, "func", fn), "attn_rate", None)
        if rate is not None:
            return float(rate)
    return 1.0


class IncompatibleModelError(ValueError):
    """The model is not a one-layer ``[a, b, =]`` grokking transformer the tools can analyse."""


def check_compatible(model: HookedTransformer, task=None) -> None:
    """Raise :class:`IncompatibleModelError` naming every property that fails.

    Compatible: one layer, ``n_ctx`` 3, ``d_vocab = p + 1``, ``d_vocab_out`` p or p + 1, no
    LayerNorm, a supported activation, standard positional embeddings, attention + MLP. If a
    ``task`` is given, its p must match the model's.
    """
    cfg = model.cfg
    problems: list[str] = []
    if cfg.n_layers != 1:
        problems.append(f"n_layers is {cfg.n_layers}, must be 1")
    if cfg.n_ctx != 3:
        problems.append(f"n_ctx is {cfg.n_ctx}, must be 3 (tokens [a, b, =])")
    p = cfg.d_vocab - 1
    if task is not None and task.p != p:
        problems.append(f"d_vocab is {cfg.d_vocab} (p = {p}) but the task has p = {task.p}")
    if cfg.d_vocab_out not in (p, p + 1):
        problems.append(f"d_vocab_out is {cfg.d_vocab_out}, must be p ({p}) or p + 1 ({p + 1})")
    if p < 3:
        problems.append(f"d_vocab is {cfg.d_vocab}, must be p + 1 with p >= 3")
    if cfg.normalization_type is not None:
        problems.append(f"normalization_type is {cfg.normalization_type!r}, must be None")
    if cfg.attn_only:
        problems.append("attn_only is True, the model must have an MLP")
    if cfg.act_fn not in SUPPORTED_ACT_FNS:
        problems.append(f"act_fn is {cfg.act_fn!r}, must be one of {SUPPORTED_ACT_FNS}")
    if cfg.positional_embedding_type != "standard":
        problems.append(
            f"positional_embedding_type is {cfg.positional_embedding_type!r}, must be 'standard'"
        )
    if getattr(cfg, "gated_mlp", False):
        problems.append("gated_mlp is True, must be False")
    if problems:
        raise IncompatibleModelError(
            "model is not a compatible one-layer grokking transformer: " + "; ".join(problems)
        )


def config_from_model(model: HookedTransformer) -> ModelConfig:
    """Recover the :class:`ModelConfig` of a compatible HookedTransformer."""
    check_compatible(model)
    known = getattr(model, "tl_grokking_config", None)
    if known is not None:
        return known
    cfg = model.cfg
    return ModelConfig(
        p=cfg.d_vocab - 1,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        act_fn=cfg.act_fn,
        d_vocab_out=cfg.d_vocab_out,
        attn_rate=model_attn_rate(model),
    )
