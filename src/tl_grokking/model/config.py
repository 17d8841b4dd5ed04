""":class:`ModelConfig`, the architecture of a one-layer grokking transformer.

Kept apart from :mod:`tl_grokking.model.transformer` so that it imports neither torch nor
TransformerLens: the ``tl-grokking train`` flags are built from these fields (their defaults
and help texts live here, once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tl_grokking._validation import (
    check_choice,
    check_float,
    check_int,
    config_from_dict,
    option,
)

__all__ = ["ModelConfig", "SUPPORTED_ACT_FNS", "TRAINABLE_BIASES", "MODEL_GROUP"]

SUPPORTED_ACT_FNS = ("relu", "gelu", "gelu_new", "silu")
TRAINABLE_BIASES = ("none", "mlp", "all")
#: The ``--help`` section of the architecture flags.
MODEL_GROUP = "model (one layer, no LayerNorm)"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a one-layer grokking transformer. Defaults are the paper's.

    Construction validates every field (``ValueError`` naming the field) and fills in
    ``d_head`` (``d_model // n_heads``) and ``d_vocab_out`` (``p``) when they are ``None``.
    """

    p: int = option(113, "modulus, an integer >= 3", group=MODEL_GROUP)
    d_model: int = option(128, "residual stream width", group=MODEL_GROUP)
    n_heads: int = option(4, "attention heads", group=MODEL_GROUP)
    d_head: int | None = option(
        None, "width of each head", group=MODEL_GROUP, none="d_model / n_heads"
    )
    d_mlp: int = option(512, "MLP neurons", group=MODEL_GROUP)
    act_fn: str = option("relu", "MLP activation", group=MODEL_GROUP, choices=SUPPORTED_ACT_FNS)
    d_vocab_out: int | None = option(
        None,
        "output logits: p (the residues) or p + 1 (the authors' code)",
        group=MODEL_GROUP,
        none="p",
    )
    n_layers: int = option(1, "layers (the analysis tools need 1)", group=MODEL_GROUP)
    trainable_biases: str = option(
        "none",
        "which biases train: none (all zero and frozen, the TransformerLens demo), mlp "
        "(b_in/b_out, the authors' code) or all",
        group=MODEL_GROUP,
        choices=TRAINABLE_BIASES,
    )
    attn_rate: float = option(
        1.0,
        "attention rate: pattern = rate*softmax + (1-rate)*uniform; 1 = ordinary attention",
        group=MODEL_GROUP,
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "p", check_int(self.p, "p", minimum=3))
        for name in ("d_model", "n_heads", "d_mlp", "n_layers"):
            set_(self, name, check_int(getattr(self, name), name))
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                    "when d_head is not given"
                )
            set_(self, "d_head", self.d_model // self.n_heads)
        else:
            set_(self, "d_head", check_int(self.d_head, "d_head"))
        if self.d_vocab_out is None:
            set_(self, "d_vocab_out", self.p)
        else:
            set_(self, "d_vocab_out", check_int(self.d_vocab_out, "d_vocab_out"))
            if self.d_vocab_out not in (self.p, self.p + 1):
                raise ValueError(
                    f"d_vocab_out must be p ({self.p}) or p + 1 ({self.p + 1}), "
                    f"got {self.d_vocab_out}"
                )
        check_choice(self.act_fn, "act_fn", SUPPORTED_ACT_FNS)
        check_choice(self.trainable_biases, "trainable_biases", TRAINABLE_BIASES)
        set_(self, "attn_rate", check_float(self.attn_rate, "attn_rate", 0.0, 1.0))

    @property
    def d_vocab(self) -> int:
        return self.p + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return config_from_dict(cls, data)
