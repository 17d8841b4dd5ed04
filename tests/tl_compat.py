"""Test helpers that work the same on TransformerLens 3 (HookedTransformer) and 4 (bridge).

Tests read and write weights in the TL-3 layout through the seam
(:mod:`tl_grokking.model.transformer`), never through ``state_dict()`` / ``named_parameters()``,
whose keys differ between the versions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from tl_grokking.model.transformer import BACKEND, load_weights, model_weights


def tl_state(model) -> dict[str, Tensor]:
    """Detached copies of the model's weights, TL-3 keyed (``embed.W_E``, …)."""
    return {k: v.detach().clone() for k, v in model_weights(model).items()}


def edit_weights(model, fn: Callable[[str, Tensor], Tensor | None]) -> None:
    """Replace each weight ``name`` by ``fn(name, value)`` (``None`` keeps it), in TL-3 layout."""
    state = tl_state(model)
    for name, value in list(state.items()):
        new = fn(name, value)
        if new is not None:
            state[name] = new
    load_weights(model, state)


def tl_grads(model) -> dict[str, Tensor]:
    """The gradients held by the model's stored tensors, in TL-3 layout (zeros where none).

    On a bridge the stored tensors are ``nn.Linear`` weights; their gradients are written into a
    copy of the model and read back through its TL-3 views. ``b_U`` is a buffer there (no
    gradient), so it is absent on TransformerLens 4.
    """
    scratch = copy.deepcopy(model)
    with torch.no_grad():
        pairs = zip(model.parameters(), scratch.parameters(), strict=True)
        for p, q in pairs:
            q.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
        weights = model_weights(scratch)
        if BACKEND == "TransformerBridge":
            weights.pop("unembed.b_U")
    return {k: v.detach().clone() for k, v in weights.items()}


def foreign_model(**arch):
    """A TransformerLens model of any architecture on the installed version (random weights).

    ``arch`` takes HookedTransformerConfig / TransformerBridgeConfig fields; ``n_ctx``,
    ``d_head``, ``act_fn`` and ``normalization_type`` must be given.
    """
    torch.manual_seed(0)
    if BACKEND == "TransformerBridge":
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        arch.setdefault("positional_embedding_type", "standard")
        arch.setdefault("default_prepend_bos", False)
        return TransformerBridge.boot_native(TransformerBridgeConfig(**arch))
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    return HookedTransformer(HookedTransformerConfig(**arch), move_to_device=False)
