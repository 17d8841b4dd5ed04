"""Model configuration → :class:`transformer_lens.HookedTransformer`, and compatibility checks.

:class:`~tl_grokking.model.config.ModelConfig` lives in :mod:`tl_grokking.model.config` (no torch).
The paper's model (Nanda et al. 2023, §3 and appendix; docs/training.md): one layer, 4 heads
of 32, d_model 128, MLP 512 with ReLU, no LayerNorm, learned positional embeddings, untied
embed/unembed, ``d_vocab = p + 1`` (``=`` is token ``p``), ``d_vocab_out = p``, ``n_ctx = 3``.

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

from collections.abc import Callable
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tl_grokking._validation import check_device
from tl_grokking.model.config import SUPPORTED_ACT_FNS, TRAINABLE_BIASES, ModelConfig

__all__ = [
    "make_model",
    "config_from_model",
    "check_compatible",
    "IncompatibleModelError",
    "model_attn_rate",
    "install_attn_rate",
    "apply_bias_policy",
    "validate_device",
]

_MLP_BIASES = ("b_in", "b_out")


def _attn_rate_hook(rate: float) -> Callable[..., torch.Tensor]:
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
    dev = torch.device(check_device(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use 'cpu'")
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


def check_compatible(model: HookedTransformer, task: Any = None) -> None:
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
        d_mlp=int(cfg.d_mlp or 0),  # check_compatible: the model has an MLP
        act_fn=cfg.act_fn,
        d_vocab_out=cfg.d_vocab_out,
        attn_rate=model_attn_rate(model),
    )
