"""What the package's hand-written ``torch.autograd.Function`` s share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["first_order_only"]

F = TypeVar("F", bound=Callable[..., Any])


def first_order_only(backward: F) -> F:
    """Mark a hand-written ``backward`` as first-order: it refuses ``create_graph=True``.

    The package's written-out backwards (the trainer's loss, the fast path's read-out and
    tables) compute gradients without recording them, so a gradient of those gradients
    would be silently incomplete. ``torch.autograd.function.once_differentiable`` only
    errors where an incoming gradient itself requires grad, which depends on what surrounds
    the Function; this refuses every double backward, at once, by name.
    """

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        if torch.is_grad_enabled():  # the engine enables grad mode only for create_graph=True
            raise RuntimeError(
                f"{type(ctx).__name__.removesuffix('Backward')} has first-order gradients only "
                "(create_graph=True / double backward is not supported); for higher-order "
                "gradients run the model's own forward, model(tokens)[:, -1], and "
                "F.cross_entropy"
            )
        return backward(ctx, *grads)

    return wrapper  # type: ignore[return-value]
