"""Fast final-position forward pass of the one-layer grokking transformer.

Everything the paper measures (loss, accuracy, the Fourier analysis) reads only the logits at the
final position, the ``=`` token (Nanda et al. 2023; ``docs/tasks.md``).  In a one-layer model
without LayerNorm the final position needs:

* the keys and values of positions 0, 1 and 2, each of which is a function of *one* token and
  its position: ``k_j = (W_E[t_j] + W_pos[j]) W_K + b_K``.  They are tabulated once per call for
  every (position, token) pair — ``3 × d_vocab`` rows instead of ``3 × batch`` — and gathered;
* the query of position 2 only (a table over the token at position 2, which is always ``=`` for
  the tasks of :mod:`tl_grokking.data.tasks`);
* the attention pattern of the final query over the three positions, mixed with uniform
  attention when the model carries the attention-rate knob
  (:func:`tl_grokking.model.transformer.model_attn_rate`);
* the MLP and the unembedding of the final position only.

Positions 0 and 1 never need the MLP or the unembedding, which is where almost all the FLOPs of
the plain forward go (``batch × d_model × d_mlp`` per position), so this is about 3× fewer FLOPs
than ``model(tokens)`` and avoids the hook machinery. It is mathematically the same computation
(every bias included), so it agrees with ``model(tokens)[:, -1]`` to float32 rounding, and it is
differentiable with the same gradients.

**Supported family** (:func:`supports_fast_path`): one layer; ``n_ctx`` ≥ 3 and inputs of exactly
three tokens; no normalisation; standard (learned, absolute) positional embeddings; ordinary
multi-head attention (no grouped-query heads, rotary/alibi, soft-caps, QK-norm, clipping or
attention sinks); a non-gated MLP with an activation of
:data:`tl_grokking.model.transformer.SUPPORTED_ACT_FNS`; no output soft-cap; and no hooks other
than the attention-rate hook of :func:`tl_grokking.model.transformer.make_model`.  Anything else
— including a model with user hooks attached, whose hooks the fast path would silently skip —
goes through the plain ``model(tokens)[:, -1]``.

The computation is a function of the weights (a TL-3-keyed dict,
:func:`tl_grokking.model.transformer.model_weights`): :func:`weights_final_logits` is what the
trainer differentiates (it owns its weights, the same on TransformerLens 3 and 4), and
:func:`final_logits` applies it to a model's own weights when :func:`supports_fast_path` holds.

Contractions use ``fancy_einsum.einsum`` (equation first, named axes), the package's one
einsum convention.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from fancy_einsum import einsum
from jaxtyping import Float, Int
from torch import Tensor

from tl_grokking._autograd import first_order_only
from tl_grokking.model import native
from tl_grokking.model.config import SUPPORTED_ACT_FNS
from tl_grokking.model.gemm import mm
from tl_grokking.model.transformer import (
    GrokModel,
    is_plain_block,
    model_attn_rate,
    model_weights,
)

__all__ = [
    "final_logits",
    "supports_fast_path",
    "final_logits_batched",
    "weights_final_logits",
    "activation",
    "TokenGroups",
    "groups_for",
    "ALGEBRAIC_MIN_BATCH",
]

Weights = Mapping[str, Tensor]

#: Below this many rows the per-step tables of the algebraic path cost more than they save.
ALGEBRAIC_MIN_BATCH = 256


def _only_attn_rate_hooks(model: GrokModel) -> bool:
    """True when no hook other than the permanent attention-rate hook is attached."""
    for name, hook_point in model.hook_dict.items():
        if hook_point.bwd_hooks:
            return False
        for handle in hook_point.fwd_hooks:
            fn = getattr(handle, "user_hook", None) or getattr(handle, "hook", None)
            fn = getattr(fn, "func", fn)
            if not (name.endswith("attn.hook_pattern") and hasattr(fn, "attn_rate")):
                return False
    return True


def supports_fast_path(model: GrokModel) -> bool:
    """Whether :func:`final_logits` can use the tabulated path for ``model`` (see module doc)."""
    if not isinstance(model, GrokModel):
        return False
    cfg = model.cfg
    checks = (
        cfg.n_layers == 1,
        cfg.n_ctx >= 3,
        cfg.normalization_type is None,
        not getattr(cfg, "attn_only", False),
        cfg.act_fn in SUPPORTED_ACT_FNS,
        cfg.positional_embedding_type == "standard",
        not getattr(cfg, "gated_mlp", False),
        not getattr(cfg, "parallel_attn_mlp", False),
        getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads),
        not getattr(cfg, "use_attention_sinks", False),
        getattr(cfg, "clip_qkv", None) is None,
        (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) <= 0,
        (getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) <= 0,
        getattr(cfg, "original_architecture", None) is None,
        not getattr(cfg, "use_logn_attn", False),
        getattr(cfg, "num_experts", None) is None,
        getattr(cfg, "use_attn_scale", True),
        (getattr(cfg, "attn_scale", -1.0) or -1.0) <= 0
        or math.isclose(cfg.attn_scale, math.sqrt(cfg.d_head)),
    )
    if not all(checks) or not is_plain_block(model):
        return False
    return _only_attn_rate_hooks(model)


def activation(act_fn: str, x: Tensor) -> Tensor:
    """TransformerLens' MLP activation ``act_fn`` (one of ``SUPPORTED_ACT_FNS``) applied to x."""
    if act_fn == "relu":
        return F.relu(x)
    if act_fn == "gelu":
        return F.gelu(x)
    if act_fn == "gelu_new":  # GPT-2's tanh approximation, as TransformerLens writes it
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    if act_fn == "silu":
        return F.silu(x)
    raise ValueError(f"act_fn must be one of {SUPPORTED_ACT_FNS}, got {act_fn!r}")


def _mix_uniform(pattern: Tensor, rate: float) -> Tensor:
    """``rate · softmax + (1 − rate) · uniform`` over the three visible positions."""
    return pattern if rate >= 1.0 else rate * pattern + (1.0 - rate) / 3.0


def _is_frozen_zero(bias: Tensor) -> bool:
    """A bias that is zero and not trained (the default policy) can be skipped on CPU."""
    return not bias.requires_grad and bias.device.type == "cpu" and not bool(bias.any())


def _affine(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """``x @ W + b`` as one fused ``addmm``, or a plain ``mm`` when ``b`` is a frozen zero."""
    return x @ W if _is_frozen_zero(b) else torch.addmm(b, x, W)


def _gather_rows(table: Tensor, index: Int[Tensor, "..."]) -> Tensor:
    """``table[index]`` for an integer index tensor, via ``index_select``.

    Same values and gradients as advanced indexing, but the backward is an ``index_add`` rather
    than an accumulating ``index_put`` — about 10× faster on CPU for the training-set gathers.
    """
    rows = table.index_select(0, index.reshape(-1))
    return rows.reshape(*index.shape, *table.shape[1:])


class _ReluMlpUnembed(torch.autograd.Function):
    """MLP (ReLU) + unembedding of the final position with a hand-written backward.

    The same arithmetic as autograd's, with fewer ``[batch, d_mlp]`` temporaries: the ReLU is
    applied in place and its backward is one fused masking pass.
    """

    @staticmethod
    def forward(ctx, resid_mid, W_in, b_in, W_out, b_out, W_U, b_U):
        post = _affine(resid_mid, W_in, b_in).relu_()  # [batch, d_mlp]
        skip = resid_mid if _is_frozen_zero(b_out) else resid_mid + b_out
        resid_post = torch.addmm(skip, post, W_out)  # [batch, d_model]
        ctx.save_for_backward(resid_mid, post, resid_post, W_in, W_out, W_U)
        return _affine(resid_post, W_U, b_U)

    @staticmethod
    @first_order_only
    def backward(ctx, d_logits):
        resid_mid, post, resid_post, W_in, W_out, W_U = ctx.saved_tensors
        need = ctx.needs_input_grad
        d_resid_post = d_logits @ W_U.T
        d_post = torch.ops.aten.threshold_backward(d_resid_post @ W_out.T, post, 0.0)  # ReLU
        grads: list[Tensor | None] = [None] * 7
        if need[0]:
            grads[0] = torch.addmm(d_resid_post, d_post, W_in.T)
        if need[1]:
            grads[1] = resid_mid.T @ d_post
        if need[2]:
            grads[2] = d_post.sum(0)
        if need[3]:
            grads[3] = post.T @ d_resid_post
        if need[4]:
            grads[4] = d_resid_post.sum(0)
        if need[5]:
            grads[5] = resid_post.T @ d_logits
        if need[6]:
            grads[6] = d_logits.sum(0)
        return tuple(grads)


def _mlp_unembed(
    w: Weights, act_fn: str, resid_mid: Float[Tensor, "batch d_model"]
) -> Float[Tensor, "batch d_vocab_out"]:
    """MLP and unembedding of the final position (fused ``addmm`` with every bias)."""
    W_in, b_in, W_out, b_out = (w[f"blocks.0.mlp.{k}"] for k in ("W_in", "b_in", "W_out", "b_out"))
    W_U, b_U = w["unembed.W_U"], w["unembed.b_U"]
    if act_fn == "relu":
        return _ReluMlpUnembed.apply(resid_mid, W_in, b_in, W_out, b_out, W_U, b_U)
    post = activation(act_fn, torch.addmm(b_in, resid_mid, W_in))  # [batch, d_mlp]
    resid_post = torch.addmm(resid_mid + b_out, post, W_out)
    return torch.addmm(b_U, resid_post, W_U)


_ATTN_KEYS = tuple(
    f"blocks.0.attn.{k}" for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
)


def _attn(w: Weights) -> tuple[Tensor, ...]:
    """W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O of layer 0."""
    return tuple(w[k] for k in _ATTN_KEYS)


def _final_logits_constant_query(
    w: Weights, act_fn: str, rate: float, tokens: Int[Tensor, "batch 3"], eq_token: int
) -> Float[Tensor, "batch d_vocab_out"]:
    """Fast path when every input has the same final token (``=``): the query is a constant.

    Then the attention score of position j ∈ {0, 1} is a table over the token there,
    ``s_j[t, h] = q_h · k_j[t, h] / √d_head``, and position 2's key/value are constants, so the
    whole attention layer costs one gather of ``[batch, 2, head, 1 + d_head]`` rows from a
    ``2 × d_vocab`` table, a softmax over 3 and the ``W_O`` matmul.
    """
    W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O = _attn(w)
    W_E, W_pos = w["embed.W_E"], w["pos_embed.W_pos"][:3]
    n_vocab, scale = W_E.shape[0], math.sqrt(W_Q.shape[-1])

    x_ab = (W_pos[:2, None, :] + W_E[None, :, :]).flatten(0, 1)  # [pos=2 * vocab, d_model]
    x_eq = W_pos[2] + W_E[eq_token]  # [d_model] — residual stream of the final position
    # q/k/v of every (position, token) row and of the final position in one matmul.
    W_QKV = torch.stack([W_Q, W_K, W_V], dim=1)  # [head, qkv, d_model, d_head]
    W_QKV = W_QKV.permute(2, 0, 1, 3).flatten(1)  # [d_model, head * qkv * d_head]
    b_QKV = torch.stack([b_Q, b_K, b_V], dim=1).flatten()
    qkv = torch.addmm(b_QKV, torch.cat([x_ab, x_eq[None]]), W_QKV)
    qkv = qkv.unflatten(1, (W_Q.shape[0], 3, -1))  # [row, head, qkv, d_head]
    q, k_eq, v_eq = qkv[-1].unbind(1)  # [head, d_head] each
    k_ab, v_ab = qkv[:-1, :, 1], qkv[:-1, :, 2]  # [pos * vocab, head, d_head]
    s_ab = (k_ab * q).sum(-1, keepdim=True) / scale  # [pos * vocab, head, 1]
    s_eq = (k_eq * q).sum(-1) / scale  # [head]

    # One table, one gather: row pos * vocab + token holds [score, value] of every head.
    table = torch.cat([s_ab, v_ab], dim=-1)  # [2 * vocab, head, 1 + d_head]
    offsets = torch.arange(2, device=tokens.device) * n_vocab
    rows = _gather_rows(table, tokens[:, :2] + offsets)  # [batch, pos=2, head, 1+d_head]
    scores = torch.cat([rows[..., 0], s_eq.expand(rows.shape[0], 1, -1)], dim=1)  # [b, 3, head]
    pattern = _mix_uniform(torch.softmax(scores, dim=1), rate)
    z = (pattern[:, :2, :, None] * rows[..., 1:]).sum(1) + pattern[:, 2, :, None] * v_eq
    resid_mid = torch.addmm(x_eq + b_O, z.flatten(1), W_O.flatten(0, 1))
    return _mlp_unembed(w, act_fn, resid_mid)


def _final_logits_general(
    w: Weights, act_fn: str, rate: float, tokens: Int[Tensor, "batch 3"]
) -> Float[Tensor, "batch d_vocab_out"]:
    """Fast path for arbitrary final tokens: per-(position, token) q/k/v tables, gathered."""
    W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O = _attn(w)
    W_E, W_pos = w["embed.W_E"], w["pos_embed.W_pos"][:3]
    n_vocab, scale = W_E.shape[0], math.sqrt(W_Q.shape[-1])

    x_table = (W_pos[:, None, :] + W_E[None, :, :]).flatten(0, 1)  # [pos*vocab, d_model]
    W_QKV = torch.stack([W_Q, W_K, W_V])  # [3, head, d_model, d_head]
    b_QKV = torch.stack([b_Q, b_K, b_V])  # [3, head, d_head]
    qkv_table = einsum("row d, qkv head d d_head -> row qkv head d_head", x_table, W_QKV) + b_QKV
    offsets = torch.arange(3, device=tokens.device) * n_vocab
    qkv = _gather_rows(qkv_table, tokens + offsets)  # [batch, pos, qkv, head, d_head]
    q, k, v = qkv[:, 2, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = einsum("batch head d_head, batch pos head d_head -> batch pos head", q, k)
    pattern = _mix_uniform(torch.softmax(scores / scale, dim=1), rate)
    z = (pattern[..., None] * v).sum(1)  # [batch, head, d_head]
    x_final = _gather_rows(x_table, tokens[:, 2] + 2 * n_vocab)
    resid_mid = x_final + torch.addmm(b_O, z.flatten(1), W_O.flatten(0, 1))
    return _mlp_unembed(w, act_fn, resid_mid)


# ---------------------------------------------------------------------------------------------
# The algebraic path: everything linear moved into per-token tables (ReLU, constant query)
# ---------------------------------------------------------------------------------------------


class TokenGroups:
    """Which table rows each sample of a ``[batch, 3]`` token tensor mixes: the layout of the
    algebraic path (:func:`weights_final_logits`), built once per token tensor and reused.

    The tables have ``n_heads · 2 · d_vocab`` rows: row ``h · 2 · d_vocab + j · d_vocab + t``
    for token t at position j ∈ {0, 1} seen by head h (the final position, ``=``, is folded into
    the constant term; see :func:`_final_logits_algebraic`); sample b mixes the ``2 · n_heads``
    rows of its two tokens (:attr:`rows`). The transposed layout (:attr:`bag_samples`,
    :attr:`bag_offsets`, :attr:`bag_order`: for each table row, the samples that use it) turns
    the table gradients into more ``embedding_bag`` s, and :attr:`pattern` (a CSR matrix with
    the rows' sparsity) the pattern gradient into ``sampled_addmm`` s. The trainer builds it
    once for its training set and once for the grid.
    """

    def __init__(self, tokens: Int[Tensor, "batch 3"], n_vocab: int, n_heads: int) -> None:
        if tokens.ndim != 2 or tokens.shape[1] != 3 or tokens.shape[0] == 0:
            raise ValueError(
                f"tokens must be a non-empty [batch, 3] tensor, got {tuple(tokens.shape)}"
            )
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= n_vocab:  # (the compiled kernels index tables with these rows)
            raise ValueError(f"tokens must lie in [0, {n_vocab}) (d_vocab), got {low}..{high}")
        self.tokens, self.n_vocab, self.n_heads = tokens, n_vocab, n_heads
        batch, device = tokens.shape[0], tokens.device
        per_head = 2 * n_vocab  # table rows per head: the tokens at positions 0 and 1
        #: rows of the per-token score table each sample reads: a, then vocab + b
        own = tokens[:, :2] + torch.tensor([0, n_vocab], device=device)  # [batch, pos]
        self.token_rows = own.flatten()
        base = torch.arange(n_heads, device=device)[:, None] * per_head  # [head, 1]
        self.rows = (base[None] + own[:, None, :]).flatten(1)  # [batch, head * pos], ascending
        n_rows, per_sample = n_heads * per_head, 2 * n_heads
        flat = self.rows.flatten()
        self.bag_order = torch.argsort(flat, stable=True)  # entries grouped by table row
        counts = torch.bincount(flat, minlength=n_rows)
        self.bag_offsets = torch.cumsum(counts, 0) - counts
        self.bag_samples = self.bag_order // per_sample
        crow = torch.arange(0, flat.numel() + 1, per_sample, device=device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            self.pattern = torch.sparse_csr_tensor(
                crow, flat, torch.zeros(flat.numel(), device=device), size=(batch, n_rows)
            )

    def matches(self, tokens: Tensor, n_heads: int, n_vocab: int) -> bool:
        same = tokens is self.tokens or (
            tokens.shape == self.tokens.shape and bool(torch.equal(tokens, self.tokens))
        )
        return same and n_heads == self.n_heads and n_vocab == self.n_vocab


def _add_relu_(x: Tensor, b: Tensor) -> Tensor:
    """``x ← relu(x + b)`` in place: one pass on the CPU (aten's fused ``_add_relu_``, which
    has CPU kernels only; the same bits as the two passes), two elsewhere."""
    if x.device.type == "cpu":
        return torch.ops.aten._add_relu_.Tensor(x, b)
    return x.add_(b).clamp_min_(0.0)


class _ReluReadout(torch.autograd.Function):
    """``logits = Z_L + relu(Z_M) @ W_L`` with ``Z = c + Σ_(j,h) P[j, h] R[j, tok_j, h]``.

    ``R`` holds, per position j ∈ {0, 1}, token and head, the head's value vector (relative to
    the final position's) already pushed through ``W_O W_in`` (``R_M``: the MLP
    pre-activation) and through ``W_O W_U`` (``R_L``: the direct path to the logits), two
    tables; ``P`` is the attention the final query pays to positions 0 and 1: the softmax,
    per head, of the scores of the two tokens (rows of ``scores``) and of ``=`` itself (its
    last row), mixed with uniform attention at ``rate``. The mixing is one ``embedding_bag``
    per table (per-sample weights); the backward is written out: the table gradients are
    ``embedding_bag`` s over the transposed layout, the pattern gradient two
    ``sampled_addmm`` s followed by the softmax's backward in closed form, and the read-out
    costs the three ``[batch, d_mlp] × [d_mlp, d_vocab_out]`` products — the same arithmetic
    as autograd up to float32 rounding. The two tables are kept apart so that the ReLU and its
    backward run in place on ``[batch, d_mlp]`` buffers of their own (no
    ``[batch, d_mlp + d_vocab_out]`` buffer and no copies between the two parts), and the
    pattern is computed here rather than by autograd (a dozen small operations and their
    graph nodes fewer): the step is bound by memory traffic and per-operation overhead.

    Where :func:`tl_grokking.model.native.enabled` holds, everything but the three products
    runs as three compiled passes over the batch instead (the forward; the backward per
    sample, then per table row): the same quantities, to float32 rounding.
    """

    @staticmethod
    def forward(ctx, table_M, table_L, c, W_L, scores, groups, rate):
        d_mlp, n_heads, batch = table_M.shape[1], groups.n_heads, groups.tokens.shape[0]
        ctx.native = native.enabled(table_M, table_L, c, W_L, scores)
        if ctx.native:  # the same passes, compiled (tl_grokking.model.native)
            post, logits, pattern, soft = native.readout_forward(
                scores.detach(),
                table_M.detach(),
                table_L.detach(),
                c.detach(),
                groups.rows,
                groups.token_rows,
                rate,
            )
            soft_ab = soft.view(batch, n_heads, 2)
        else:
            own = scores[:-1].index_select(0, groups.token_rows).view(batch, 2, n_heads)
            full = torch.cat([own, scores[-1].expand(batch, 1, n_heads)], dim=1)  # [b, pos, head]
            soft = torch.softmax(full, dim=1)  # the attention pattern of the final query
            soft_ab = soft[:, :2].transpose(1, 2).contiguous()  # [batch, head, pos<2]
            pattern = _mix_uniform(soft_ab, rate).view(batch, -1)  # [batch, (head, pos)]
            # embedding_bag's forward-only kernel (parallel, nothing kept for autograd's
            # backward, which this Function writes itself): its inputs must not require a
            # gradient
            bag = functools.partial(F.embedding_bag, groups.rows, per_sample_weights=pattern)
            post = bag(table_M.detach(), mode="sum")
            _add_relu_(post, c[:d_mlp])  # relu(pre), in place
            logits = bag(table_L.detach(), mode="sum").add_(c[d_mlp:])
        logits.add_(mm(post, W_L))
        ctx.save_for_backward(post, table_M, table_L, W_L, pattern, soft_ab)
        ctx.groups, ctx.rate, ctx.n_scores = groups, rate, scores.shape[0]
        return logits

    @staticmethod
    @first_order_only
    def backward(ctx, d_logits):
        post, table_M, table_L, W_L, pattern, soft_ab = ctx.saved_tensors
        groups = ctx.groups
        d_pre = mm(d_logits, W_L.T)
        d_W_L = mm(d_logits.T, post).T  # [d_vocab_out, d_mlp] contiguous: oneDNN's fast layout
        if ctx.native:  # (which applies the ReLU's mask to d_pre itself)
            d_table_M, d_table_L, d_c, d_row_score = native.readout_backward(
                d_pre,
                post,
                d_logits,
                table_M.detach(),
                table_L.detach(),
                soft_ab,
                pattern,
                groups.rows,
                groups.bag_offsets,
                groups.bag_order,
                ctx.rate,
            )
            # table row h · 2 · d_vocab + j · d_vocab + t is (j · d_vocab + t, h) of the score
            # table; the final token's row is minus their sum (_softmax3_backward)
            d_scores = table_M.new_empty(ctx.n_scores, groups.n_heads)
            d_scores[:-1] = d_row_score.view(groups.n_heads, -1).T
            d_scores[-1] = d_scores[:-1].sum(0).neg_()
            return d_table_M, d_table_L, d_c, d_W_L, d_scores, None, None
        torch.ops.aten.threshold_backward.grad_input(d_pre, post, 0.0, grad_input=d_pre)  # ReLU
        weights = pattern.flatten().index_select(0, groups.bag_order)
        d_tables = [
            F.embedding_bag(
                groups.bag_samples, dZ, groups.bag_offsets, per_sample_weights=weights, mode="sum"
            )
            for dZ in (d_pre, d_logits)
        ]
        d_pattern = torch.sparse.sampled_addmm(groups.pattern, d_pre, table_M.T, beta=0.0)
        d_pattern = torch.sparse.sampled_addmm(d_pattern, d_logits, table_L.T).values()
        d_c = torch.cat([d_pre.sum(0), d_logits.sum(0)])
        d_scores = _softmax3_backward(
            d_pattern.view_as(soft_ab), soft_ab, ctx.rate, groups, ctx.n_scores
        )
        return *d_tables, d_c, d_W_L, d_scores, None, None


def _softmax3_backward(
    d_pattern: Float[Tensor, "batch head 2"],
    soft_ab: Float[Tensor, "batch head 2"],
    rate: float,
    groups: TokenGroups,
    n_scores: int,
) -> Float[Tensor, "n_scores head"]:
    """Gradient of the score table from that of the pattern on positions 0 and 1.

    The pattern is ``rate · softmax(s_0, s_1, s_=) + (1 − rate) / 3`` per head, and only its
    first two entries reach the logits (the third is folded into the constant term), so with
    ``g = rate · dP`` the softmax's backward is ``dS_j = P_j (g_j − Σ_(k<2) P_k g_k)`` for
    j < 2 and ``dS_= = −(dS_0 + dS_1)`` (a softmax's gradient sums to zero). Row
    ``j · d_vocab + t`` of the table gathers ``dS_j`` of the samples with token t at
    position j; the last row, ``=``'s, gathers every ``dS_=``.
    """
    g = d_pattern if rate == 1.0 else d_pattern * rate
    dot = (soft_ab * g).sum(-1, keepdim=True)  # [batch, head, 1]
    d_own = (g - dot).mul_(soft_ab)  # [batch, head, pos<2]
    d_scores = torch.zeros(n_scores, d_own.shape[1], dtype=d_own.dtype, device=d_own.device)
    d_scores[:-1].index_add_(0, groups.token_rows, d_own.transpose(1, 2).flatten(0, 1))
    d_scores[-1] = d_own.sum((0, 2)).neg_()
    return d_scores


def groups_for(
    tokens: Int[Tensor, "batch 3"], n_vocab: int, n_heads: int, act_fn: str
) -> TokenGroups | None:
    """:class:`TokenGroups` of ``tokens`` when :func:`weights_final_logits` would use them."""
    ok = tokens.ndim == 2 and tokens.shape[1] == 3 and _algebraic_applies(tokens, act_fn)
    return TokenGroups(tokens, n_vocab, n_heads) if ok else None


def _algebraic_applies(tokens: Int[Tensor, "batch 3"], act_fn: str) -> bool:
    """The algebraic path's family: ReLU, enough rows, one final token (the constant query)."""
    if act_fn != "relu" or tokens.shape[0] < ALGEBRAIC_MIN_BATCH:
        return False
    return bool((tokens[:, 2] == tokens[0, 2]).all())


#: The weights the algebraic path reads, in the order :class:`_AlgebraicTables` takes them.
_TABLE_WEIGHTS = (
    "embed.W_E",
    "pos_embed.W_pos",
    *_ATTN_KEYS,
    *(f"blocks.0.mlp.{k}" for k in ("W_in", "b_in", "W_out", "b_out")),
    "unembed.W_U",
    "unembed.b_U",
)


def _outer(a: Float[Tensor, " m"], b: Float[Tensor, " n"]) -> Float[Tensor, "m n"]:
    return a[:, None] * b[None, :]


class _AlgebraicTables(torch.autograd.Function):
    """Everything of the algebraic path that depends on the weights only, with its backward.

    From the weights (:data:`_TABLE_WEIGHTS`) and the final token ``=`` this builds, once per
    step, with ``X`` the residual stream of every (position, token) row (``[2 · d_vocab, d_model]``:
    ``W_pos[j] + W_E[t]`` at row ``j · d_vocab + t``) and ``x_=`` that of the final position:

    * ``table[h] = (X W_V[h] − x_= W_V[h]) W_O[h] W_F``, ``W_F = [W_in | W_U]`` — head h's
      value vector relative to the final position's, pushed to the MLP input and the logits,
      returned as two tables: its ``W_in`` columns (``table_M``) and its ``W_U`` columns
      (``table_L``);
    * ``c = (x_= + b_O) W_F + Σ_h (x_= W_V[h] + b_V[h]) W_O[h] W_F + [b_in | b_out W_U + b_U]``,
      the constant term;
    * ``W_L = W_out W_U`` (the paper's neuron-logit map);
    * ``scores[r, h] = (X_r W_K[h] + b_K[h]) · (x_= W_Q[h] + b_Q[h]) / scale`` for the rows of
      ``X`` and, last, for ``x_=`` itself.

    Autograd would record some forty small operations here (and run its backward through
    einsum's permutes and MKL); the backward below is the same chain rule written out, with
    the products through :func:`tl_grokking.model.gemm.mm`. Weights that do not require a
    gradient get none.
    """

    @staticmethod
    def forward(ctx, eq: int, scale: float, *weights: Tensor):  # type: ignore[override]
        W_E, W_pos, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O = weights[:10]
        W_in, b_in, W_out, b_out, W_U, b_U = weights[10:]
        n_heads, d_model, d_head = W_Q.shape
        d_mlp = W_in.shape[1]
        X = torch.cat([W_pos[0] + W_E, W_pos[1] + W_E, (W_pos[2] + W_E[eq])[None]])
        x_eq = X[-1]
        # keys and values of every row in one product: columns (kv, head, d_head)
        W_KV = torch.stack([W_K, W_V]).permute(2, 0, 1, 3).reshape(d_model, -1)
        KV = mm(X, W_KV).add_(torch.stack([b_K, b_V]).flatten())
        KV = KV.view(X.shape[0], 2, n_heads, d_head)
        K, V = KV[:, 0], KV[:, 1]  # [row, head, d_head]
        q = torch.matmul(x_eq, W_Q) + b_Q  # [head, d_head]: the query of '=', a constant
        scores = (K * q).sum(-1).div_(scale)  # [row, head], the final position last

        W_F = torch.cat([W_in, W_U], dim=1)  # [d_model, width]
        W_OF = mm(W_O.reshape(-1, d_model), W_F).view(n_heads, d_head, -1)  # [head, d_head, width]
        v_eq = V[-1]  # [head, d_head]
        V_rel = (V[:-1] - v_eq).transpose(0, 1).contiguous()  # [head, row, d_head] (bmm: fast)
        W_OF_M, W_OF_L = W_OF[:, :, :d_mlp].contiguous(), W_OF[:, :, d_mlp:].contiguous()
        table_M = torch.bmm(V_rel, W_OF_M).flatten(0, 1)
        table_L = torch.bmm(V_rel, W_OF_L).flatten(0, 1)
        U_eq = mm(v_eq.reshape(1, -1), W_OF.flatten(0, 1))[0]
        c = (x_eq + b_O) @ W_F + U_eq + torch.cat([b_in, b_out @ W_U + b_U])
        W_L = mm(W_out, W_U)
        ctx.save_for_backward(X, K, V_rel, v_eq, q, W_KV, W_F, W_OF, W_OF_M, W_OF_L, *weights)
        ctx.eq, ctx.scale, ctx.d_mlp = eq, scale, d_mlp
        return table_M, table_L, c, W_L, scores

    @staticmethod
    @first_order_only
    def backward(ctx, g_table_M, g_table_L, g_c, g_W_L, g_scores):  # type: ignore[override]
        X, K, V_rel, v_eq, q, W_KV, W_F, W_OF, W_OF_M, W_OF_L, *weights = ctx.saved_tensors
        W_E, W_pos, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O = weights[:10]
        W_in, b_in, W_out, b_out, W_U, b_U = weights[10:]
        n_heads, d_model, d_head = W_Q.shape
        n_vocab, d_mlp, eq = W_E.shape[0], ctx.d_mlp, ctx.eq
        x_eq = X[-1]
        g_c_out = g_c[d_mlp:]

        # c, U_eq and the table, back to W_F, W_OF, x_= and the value vectors
        # the two tables are W_OF's two column blocks (a column-wise cat of the table
        # gradients would cost more than these products)
        g_M, g_L = g_table_M.view(n_heads, -1, d_mlp), g_table_L.view(n_heads, -1, W_U.shape[1])
        V_rel_T = V_rel.transpose(1, 2)
        g_W_OF = torch.cat([torch.bmm(V_rel_T, g_M), torch.bmm(V_rel_T, g_L)], dim=2)
        g_W_OF.add_(v_eq[:, :, None] * g_c)
        g_V_rel = torch.bmm(g_M, W_OF_M.transpose(1, 2))  # [head, row, d_head]
        g_V_rel.baddbmm_(g_L, W_OF_L.transpose(1, 2))
        g_v_eq = (W_OF @ g_c) - g_V_rel.sum(1)  # [head, d_head]
        g_W_OF_flat = g_W_OF.flatten(0, 1)  # [head * d_head, width]
        g_W_O = mm(g_W_OF_flat, W_F.T).view_as(W_O)
        g_W_F = mm(W_O.reshape(-1, d_model).T, g_W_OF_flat).add_(_outer(x_eq + b_O, g_c))
        g_x_eq = W_F @ g_c  # also b_O's gradient

        # scores, back to the keys and the query
        g_s = g_scores / ctx.scale  # [row, head]
        g_K = g_s[:, :, None] * q  # [row, head, d_head]
        g_q = (g_s[:, :, None] * K).sum(0)  # [head, d_head]
        g_V = torch.cat([g_V_rel.transpose(0, 1), g_v_eq[None]])  # [row, head, d_head]
        g_KV = torch.stack([g_K, g_V], dim=1).flatten(1)  # [row, (kv, head, d_head)]
        g_X = mm(g_KV, W_KV.T)  # [row, d_model]
        g_W_KV = mm(X.T, g_KV).view(d_model, 2, n_heads, d_head).permute(1, 2, 0, 3)
        g_b_KV = g_KV.sum(0).view(2, n_heads, d_head)
        g_x_eq = g_x_eq + g_X[-1] + mm(W_Q.transpose(0, 1).flatten(1), g_q.reshape(-1, 1))[:, 0]

        g_W_E = g_X[:n_vocab] + g_X[n_vocab:-1]
        g_W_E[eq] += g_x_eq
        g_W_pos = torch.zeros_like(W_pos)
        g_W_pos[0], g_W_pos[1], g_W_pos[2] = g_X[:n_vocab].sum(0), g_X[n_vocab:-1].sum(0), g_x_eq

        grads = {
            "W_E": g_W_E,
            "W_pos": g_W_pos,
            "W_Q": x_eq[None, :, None] * g_q[:, None, :],  # [head, d_model, d_head]
            "W_K": g_W_KV[0],
            "W_V": g_W_KV[1],
            "W_O": g_W_O,
            "b_Q": g_q,
            "b_K": g_b_KV[0],
            "b_V": g_b_KV[1],
            "b_O": W_F @ g_c,
            "W_in": g_W_F[:, :d_mlp],
            "b_in": g_c[:d_mlp],
            "W_out": mm(g_W_L, W_U.T),
            "b_out": W_U @ g_c_out,
            "W_U": g_W_F[:, d_mlp:] + mm(W_out.T, g_W_L) + _outer(b_out, g_c_out),
            "b_U": g_c_out,
        }
        needed = ctx.needs_input_grad[2:]
        out = [g if need else None for g, need in zip(grads.values(), needed, strict=True)]
        return None, None, *out


def _final_logits_algebraic(
    w: Weights, rate: float, tokens: Int[Tensor, "batch 3"], groups: TokenGroups
) -> Float[Tensor, "batch d_vocab_out"]:
    """The ReLU model with a constant final token, every linear map folded into tables.

    With one layer and no LayerNorm, each value vector depends on one token, so (Nanda et al.'s
    model, written out)::

        resid_mid = x_= + b_O + Σ_h Σ_j P[h, j] · U_j[tok_j, h],   U = (x W_V + b_V) W_O
        pre       = resid_mid W_in + b_in
        logits    = resid_mid W_U + relu(pre) W_out W_U + b_out W_U + b_U

    so ``pre`` and the direct path are pattern-weighted sums of rows of ``U [W_in | W_U]``, and
    the only batch-sized matmul left is the read-out ``relu(pre) @ W_L`` with
    ``W_L = W_out W_U``. Each head's pattern sums to one over the three positions, so
    ``Σ_j P[h, j] U_j = U_= + Σ_(j<2) P[h, j] (U_j − U_=)``: the final position's rows join the
    constant term and each sample mixes ``2 · n_heads`` rows of the tables
    ``(v_j − v_=) W_O W_in`` and ``(v_j − v_=) W_O W_U`` (``[n_heads · 2 · d_vocab, d_mlp]`` and
    ``[n_heads · 2 · d_vocab, d_vocab_out]``, built per step by :class:`_AlgebraicTables`)
    instead of ``3 · n_heads``.
    """
    W_Q = w["blocks.0.attn.W_Q"]
    weights = [w[name] for name in _TABLE_WEIGHTS]
    table_M, table_L, c, W_L, scores_table = _AlgebraicTables.apply(
        int(tokens[0, 2]), math.sqrt(W_Q.shape[-1]), *weights
    )
    return _ReluReadout.apply(table_M, table_L, c, W_L, scores_table, groups, rate)


def weights_final_logits(
    weights: Weights,
    tokens: Int[Tensor, "batch 3"],
    *,
    act_fn: str = "relu",
    attn_rate: float = 1.0,
    groups: TokenGroups | None = None,
) -> Float[Tensor, "batch d_vocab_out"]:
    """Final-position logits of the one-layer model with these (TL-3-keyed) weights.

    Equal to ``model(tokens)[:, -1]`` of a model carrying ``weights`` (to float32 rounding),
    and differentiable in every weight. ``tokens`` must be ``[batch, 3]``.

    A ReLU model on inputs with one final token (``=``) and at least ``ALGEBRAIC_MIN_BATCH``
    rows takes the algebraic path (:func:`_final_logits_algebraic`); pass ``groups``
    (:class:`TokenGroups` of these tokens) to reuse its layout across calls. Other inputs take
    the tabulated paths.
    """
    if tokens.ndim != 2 or tokens.shape[1] != 3:
        raise ValueError(f"tokens must be a [batch, 3] tensor, got shape {tuple(tokens.shape)}")
    if act_fn not in SUPPORTED_ACT_FNS:
        raise ValueError(f"act_fn must be one of {SUPPORTED_ACT_FNS}, got {act_fn!r}")
    if _algebraic_applies(tokens, act_fn):
        n_vocab, n_heads = weights["embed.W_E"].shape[0], weights["blocks.0.attn.W_Q"].shape[0]
        if groups is None:
            groups = TokenGroups(tokens, n_vocab, n_heads)
        elif not groups.matches(tokens, n_heads, n_vocab):
            raise ValueError(
                "groups were built for other tokens (or another d_vocab or n_heads) than the "
                "ones given"
            )
        return _final_logits_algebraic(weights, attn_rate, tokens, groups)
    last = tokens[:, 2]
    first = int(last[0]) if tokens.shape[0] else 0
    if tokens.shape[0] and bool((last == first).all()):
        return _final_logits_constant_query(weights, act_fn, attn_rate, tokens, first)
    return _final_logits_general(weights, act_fn, attn_rate, tokens)


def final_logits(
    model: GrokModel, tokens: Int[Tensor, "batch 3"]
) -> Float[Tensor, "batch d_vocab_out"]:
    """Logits at the final position (the ``=`` token), i.e. ``model(tokens)[:, -1]``.

    Uses the tabulated fast path on the model's own weights when :func:`supports_fast_path`
    holds and ``tokens`` has three columns; otherwise the model's forward (with its hooks).
    Differentiable either way.
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be a [batch, 3] tensor, got shape {tuple(tokens.shape)}")
    if tokens.shape[1] == 3 and tokens.shape[0] > 0 and supports_fast_path(model):
        return weights_final_logits(
            model_weights(model), tokens, act_fn=model.cfg.act_fn, attn_rate=model_attn_rate(model)
        )
    return model(tokens)[:, -1]


@torch.no_grad()
def final_logits_batched(
    model: GrokModel, tokens: Int[Tensor, "batch 3"], *, batch_size: int = 16384
) -> Float[Tensor, "batch d_vocab_out"]:
    """:func:`final_logits` without gradients, in chunks of ``batch_size`` rows (evaluation)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    if tokens.shape[0] <= batch_size:
        return final_logits(model, tokens)
    return torch.cat(
        [final_logits(model, chunk) for chunk in tokens.split(batch_size)],
        dim=0,
    )
