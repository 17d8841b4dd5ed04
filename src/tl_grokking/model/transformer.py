"""The TransformerLens seam: build the model, read and write its weights, answer questions.

This is the one module of tl_grokking that knows TransformerLens' model classes and which
TransformerLens is installed (docs/transformerlens.md):

* on TransformerLens 3.x the model is a :class:`transformer_lens.HookedTransformer`;
* on TransformerLens 4.x (which removed ``HookedTransformer``) it is a
  :class:`transformer_lens.model_bridge.TransformerBridge` booted natively (no download).

Either way the rest of the package sees the same model: TransformerLens-3 hook names (and hook
functions are handed hook points that carry those names on both), TransformerLens-3 weight
attributes (``model.W_E``, ``model.blocks[0].attn.W_Q`` …, read-only on a bridge), and weights
read and written as a **TL-3-keyed state dict** (``embed.W_E``, ``blocks.0.attn.W_Q`` …) by
:func:`model_weights` and :func:`load_weights`. Our checkpoints stay in that layout, so a run
written on either version loads on the other.

The paper's model (Nanda et al. 2023, §3 and appendix; docs/training.md): one layer, 4 heads
of 32, d_model 128, MLP 512 with ReLU, no LayerNorm, learned positional embeddings, untied
embed/unembed, ``d_vocab = p + 1`` (``=`` is token ``p``), ``d_vocab_out = p``, ``n_ctx = 3``.

**Initial weights** are drawn here (:func:`init_weights`), not by TransformerLens, so a seed
gives the same model on both versions: every ``W_*`` matrix N(0, (0.8/√d_model)²), in
HookedTransformer's parameter order from the torch generator seeded with ``seed`` (exactly what
``HookedTransformer`` itself draws, tested), every bias zero.

**Biases**: by default (``trainable_biases="none"``) every bias is zero and frozen, as in the
TransformerLens grokking demo. ``"mlp"`` trains ``b_in``/``b_out`` (the authors' code), ``"all"``
trains every bias (:func:`trainable_weight_names`). Loaded checkpoints keep whatever biases
they carry.

``attn_rate`` is the attention-rate knob of Zhong et al. (2023): the attention pattern is
replaced by ``attn_rate * softmax + (1 - attn_rate) * uniform`` over the attended positions
(1.0 = ordinary attention, 0.0 = constant uniform attention). It is applied by a permanent hook
on ``blocks.{l}.attn.hook_pattern`` that :func:`make_model` installs and
``model.reset_hooks()`` keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tl_grokking._validation import check_device
from tl_grokking.model.config import SUPPORTED_ACT_FNS, TRAINABLE_BIASES, ModelConfig

__all__ = [
    "GrokModel",
    "TL_VERSION",
    "BACKEND",
    "make_model",
    "init_weights",
    "weight_shapes",
    "model_weights",
    "tl3_state_dict",
    "load_weights",
    "trainable_weight_names",
    "move_model",
    "config_from_model",
    "check_compatible",
    "IncompatibleModelError",
    "model_attn_rate",
    "install_attn_rate",
    "apply_bias_policy",
    "validate_device",
    "legacy_hook_names",
    "is_plain_block",
]


def _installed_version() -> tuple[int, int]:
    raw = metadata.version("transformer-lens")
    parts = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in raw.split(".")[:2]]
    return (parts[0], parts[1] if len(parts) > 1 else 0)


#: (major, minor) of the installed TransformerLens.
TL_VERSION: tuple[int, int] = _installed_version()
#: The TransformerLens class of our models on this installation.
BACKEND: str = "TransformerBridge" if TL_VERSION[0] >= 4 else "HookedTransformer"

if TYPE_CHECKING:  # the TL-3 surface the package uses; a bridge offers the same attributes
    from transformer_lens import HookedTransformer as GrokModel
elif BACKEND == "TransformerBridge":
    from transformer_lens.model_bridge import TransformerBridge as GrokModel
else:
    from transformer_lens import HookedTransformer as GrokModel


# ---------------------------------------------------------------------------------------------
# Weights in TL-3 layout
# ---------------------------------------------------------------------------------------------

_BIAS_LEAVES = ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U")
_MLP_BIASES = ("b_in", "b_out")


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of ``config``'s model, TL-3 key → shape, in HookedTransformer's order.

    The order is that of ``HookedTransformer.named_parameters()`` (attention registers
    ``W_Q, W_O, b_Q, b_O`` before ``W_K, W_V, b_K, b_V``); :func:`init_weights` draws in it.
    """
    assert config.d_head is not None and config.d_vocab_out is not None  # set by __post_init__
    return _shapes(
        config.d_vocab, config.d_model, config.n_heads, config.d_head, config.d_mlp,
        config.d_vocab_out, config.n_layers,
    )  # fmt: skip


def _model_shapes(model: GrokModel) -> dict[str, tuple[int, ...]]:
    cfg = model.cfg
    return _shapes(
        cfg.d_vocab, cfg.d_model, cfg.n_heads, cfg.d_head, int(cfg.d_mlp or 0), cfg.d_vocab_out,
        cfg.n_layers,
    )  # fmt: skip


def _shapes(
    v_in: int, m: int, h: int, e: int, f: int, v_out: int, n_layers: int
) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"embed.W_E": (v_in, m), "pos_embed.W_pos": (3, m)}
    for layer in range(n_layers):
        a, mlp = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        shapes.update({
            a + "W_Q": (h, m, e), a + "W_O": (h, e, m), a + "b_Q": (h, e), a + "b_O": (m,),
            a + "W_K": (h, m, e), a + "W_V": (h, m, e), a + "b_K": (h, e), a + "b_V": (h, e),
            mlp + "W_in": (m, f), mlp + "b_in": (f,), mlp + "W_out": (f, m), mlp + "b_out": (m,),
        })  # fmt: skip
    shapes.update({"unembed.W_U": (m, v_out), "unembed.b_U": (v_out,)})
    return shapes


def init_weights(
    config: ModelConfig | None = None, *, seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Freshly initialised weights of ``config``'s model, TL-3 keyed (not requiring grad).

    Every ``W_*`` matrix is drawn from N(0, (0.8/√d_model)²) — TransformerLens' "gpt2" init —
    in :func:`weight_shapes` order from the default torch generator seeded with ``seed`` inside
    a forked RNG (the global RNG is left untouched); biases are zero. This is bit for bit what
    ``HookedTransformer`` draws for the same seed, and it is drawn here, independently of the
    installed TransformerLens, so a seed gives the same model on 3.x and 4.x.
    """
    config = config or ModelConfig()
    std = 0.8 / math.sqrt(config.d_model)
    out: dict[str, Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name, shape in weight_shapes(config).items():
            tensor = torch.zeros(shape)
            if "W_" in name:
                torch.nn.init.normal_(tensor, std=std)
            out[name] = tensor
    device = validate_device(device)
    return {k: v.to(device) for k, v in out.items()} if device.type != "cpu" else out


def trainable_weight_names(config: ModelConfig) -> list[str]:
    """The TL-3 keys that train under ``config.trainable_biases`` (every weight matrix)."""
    return _trainable(weight_shapes(config), config.trainable_biases)


def _trainable(names: Iterable[str], trainable_biases: str) -> list[str]:
    out = []
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in _BIAS_LEAVES or trainable_biases == "all":
            out.append(name)
        elif trainable_biases == "mlp" and ".mlp." in name and leaf in _MLP_BIASES:
            out.append(name)
    return out


def model_weights(model: GrokModel) -> dict[str, Tensor]:
    """The model's weights as a TL-3-keyed dict of live tensors (autograd reaches the model).

    On a HookedTransformer these are its parameters; on a TransformerBridge, differentiable
    TL-3-shaped views of its ``nn.Linear`` weights (and its ``b_U`` buffer). Read-only: write
    with :func:`load_weights`.
    """
    if BACKEND == "TransformerBridge":
        return dict(model.tl_parameters())  # type: ignore[attr-defined]
    return dict(model.named_parameters())


def tl3_state_dict(model: GrokModel) -> dict[str, Tensor]:
    """Detached CPU copies of the model's weights, TL-3 keyed: what our checkpoints store.

    The portable state dict: it loads on TransformerLens 3 and 4 (``load_checkpoint``,
    ``make_model(config, weights=...)``, :func:`load_weights`), unlike ``model.state_dict()``,
    whose keys differ between a HookedTransformer and a TransformerBridge.
    """
    return {k: v.detach().to("cpu").clone() for k, v in model_weights(model).items()}


def load_weights(model: GrokModel, weights: Mapping[str, Tensor]) -> None:
    """Copy a TL-3-keyed state dict into ``model`` (every weight, nothing else; strict).

    Keys and shapes must be exactly :func:`weight_shapes` of the model's configuration
    (``ValueError`` naming what differs); values are copied in place, so the model's bias
    policy (``requires_grad``) and hooks are kept.
    """
    expected = _model_shapes(model)
    missing, unknown = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unknown:
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {unknown}")
    wrong = [
        f"{k}: expected {expected[k]}, got {tuple(weights[k].shape)}"
        for k in expected
        if tuple(weights[k].shape) != expected[k]
    ]
    if wrong:
        raise ValueError("weights do not match the model's shapes: " + "; ".join(wrong))
    device = next(model.parameters()).device
    clean = {k: weights[k].detach().to(device, torch.float32) for k in expected}
    with torch.no_grad():
        if BACKEND == "TransformerBridge":
            from transformer_lens import conversion_utils  # TransformerLens 4

            convert_tl_checkpoint = conversion_utils.convert_tl_checkpoint  # pyright: ignore

            model.load_state_dict(convert_tl_checkpoint(clean, model.cfg), strict=True)
        else:
            params = dict(model.named_parameters())
            for name, value in clean.items():
                params[name].copy_(value)


def _leaf(tensor: Tensor) -> Tensor:
    """The stored tensor behind a weight: itself, or the base of a view (a bridge)."""
    return tensor if tensor._base is None else tensor._base


# ---------------------------------------------------------------------------------------------
# Building the model
# ---------------------------------------------------------------------------------------------


def _attn_rate_hook(rate: float) -> Callable[..., torch.Tensor]:
    """Mix the attention pattern with uniform attention over the causally visible positions."""

    def hook(pattern: torch.Tensor, hook) -> torch.Tensor:  # [batch, head, q, k]
        n_q, n_k = pattern.shape[-2:]
        visible = torch.ones(n_q, n_k, device=pattern.device, dtype=torch.bool).tril()
        uniform = visible.to(pattern.dtype) / visible.sum(-1, keepdim=True).to(pattern.dtype)
        return rate * pattern + (1.0 - rate) * uniform

    hook.attn_rate = rate  # introspectable by the fast forward path
    return hook


def _bare_model(config: ModelConfig, device: torch.device) -> GrokModel:
    """The installed TransformerLens' model for ``config`` (weights still to be loaded)."""
    assert config.d_head is not None and config.d_vocab_out is not None
    arch: dict[str, Any] = dict(
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        d_model=config.d_model,
        d_head=config.d_head,
        d_mlp=config.d_mlp,
        act_fn=config.act_fn,
        normalization_type=None,
        d_vocab=config.d_vocab,
        d_vocab_out=config.d_vocab_out,
        n_ctx=3,
        positional_embedding_type="standard",
        default_prepend_bos=False,
    )
    with torch.random.fork_rng(devices=[]):  # TL's own init is overwritten; keep the RNG
        if BACKEND == "TransformerBridge":
            from transformer_lens.config import TransformerBridgeConfig
            from transformer_lens.model_bridge import TransformerBridge

            bridge = TransformerBridge.boot_native(
                TransformerBridgeConfig(**arch), device=str(device)
            )
            _name_hooks_legacy(bridge, config.n_layers)
            return bridge  # pyright: ignore[reportReturnType] - GrokModel is the bridge here
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(
            HookedTransformerConfig(**arch, init_weights=False, device="cpu"),
            move_to_device=False,
        )
        return move_model(model, device)


def legacy_hook_names(n_layers: int = 1) -> list[str]:
    """HookedTransformer's hook names for a model without LayerNorm (the names we use)."""
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(n_layers):
        b = f"blocks.{layer}."
        names += [b + "attn." + s for s in ("hook_q", "hook_k", "hook_v", "hook_z")]
        names += [b + "attn.hook_attn_scores", b + "attn.hook_pattern", b + "attn.hook_result"]
        names += [b + "mlp.hook_pre", b + "mlp.hook_post"]
        names += [b + s for s in ("hook_attn_in", "hook_q_input", "hook_k_input")]
        names += [b + s for s in ("hook_v_input", "hook_mlp_in", "hook_attn_out", "hook_mlp_out")]
        names += [b + s for s in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")]
    return names


def _name_hooks_legacy(bridge: Any, n_layers: int) -> None:
    """Give each of a bridge's hook points the TL-3 name it is reached by.

    A bridge registers every hook point under its new name and the legacy alias
    (``blocks.0.mlp.hook_post`` is ``blocks.0.mlp.out.hook_in``); a hook function is handed the
    hook point, whose ``name`` would be the new one. Renaming the shared objects makes hook
    functions see ``blocks.0.mlp.hook_post`` on both versions; both names still reach the point
    and ``run_with_cache`` still stores both.
    """
    points = bridge.hook_dict
    for name in legacy_hook_names(n_layers):
        if name in points:
            points[name].name = name


def make_model(
    config: ModelConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    weights: Mapping[str, Tensor] | None = None,
) -> GrokModel:
    """The model for ``config`` (default: the paper's) on the installed TransformerLens.

    Its weights are ``weights`` (TL-3 keyed, e.g. a checkpoint) or, by default,
    :func:`init_weights` for ``seed`` — the same numbers on TransformerLens 3 and 4. Biases are
    frozen unless ``config.trainable_biases`` says otherwise; the attention-rate hook is
    installed when ``config.attn_rate < 1``.
    """
    config = config or ModelConfig()
    device = validate_device(device)
    model = _bare_model(config, device)
    load_weights(model, weights if weights is not None else init_weights(config, seed=seed))
    apply_bias_policy(model, config.trainable_biases)
    install_attn_rate(model, config.attn_rate)
    model.tl_grokking_config = config  # type: ignore[attr-defined]
    return model


def move_model(model: GrokModel, device: str | torch.device) -> GrokModel:
    """``model`` moved to ``device`` (in place; returned for chaining)."""
    device = validate_device(device)
    if next(model.parameters()).device != device:
        if BACKEND == "TransformerBridge":
            model.to(device)
        else:
            model.to(device, print_details=False)
    return model


def validate_device(device: str | torch.device) -> torch.device:
    """Parse a device string; ``ValueError`` for unknown or unavailable devices."""
    dev = torch.device(check_device(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use 'cpu'")
    return dev


def apply_bias_policy(model: GrokModel, trainable_biases: str) -> None:
    """Freeze (and keep) biases according to the policy; weight matrices stay trainable.

    On a bridge the flags are set on the stored tensors behind the TL-3 views; ``b_U`` is a
    buffer there and never trains through the model (the trainer keeps its own weights).
    """
    if trainable_biases not in TRAINABLE_BIASES:
        raise ValueError(
            f"trainable_biases must be one of {TRAINABLE_BIASES}, got {trainable_biases!r}"
        )
    weights = model_weights(model)
    trainable = set(_trainable(weights, trainable_biases))
    for name, tensor in weights.items():
        leaf = _leaf(tensor)
        if isinstance(leaf, torch.nn.Parameter):
            leaf.requires_grad_(name in trainable)


def install_attn_rate(model: GrokModel, attn_rate: float) -> None:
    """Install (or replace) the permanent attention-rate hook; 1.0 removes it."""
    for block in model.blocks:
        block.attn.hook_pattern.remove_hooks(including_permanent=True)
        if attn_rate < 1.0:
            block.attn.hook_pattern.add_hook(_attn_rate_hook(attn_rate), is_permanent=True)


def model_attn_rate(model: GrokModel) -> float:
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


def is_plain_block(model: GrokModel) -> bool:
    """Whether block 0 is TransformerLens' ordinary attention + MLP (what the fast path knows)."""
    block = model.blocks[0]
    names = (type(block.attn).__name__, type(block.mlp).__name__)
    return names in (("Attention", "MLP"), ("AttentionBridge", "MLPBridge"))


# ---------------------------------------------------------------------------------------------
# Compatibility
# ---------------------------------------------------------------------------------------------


class IncompatibleModelError(ValueError):
    """The model is not a one-layer ``[a, b, =]`` grokking transformer the tools can analyse."""


def check_compatible(model: GrokModel, task: Any = None) -> None:
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
    if getattr(cfg, "attn_only", False):
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


def config_from_model(model: GrokModel) -> ModelConfig:
    """Recover the :class:`ModelConfig` of a compatible model."""
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
