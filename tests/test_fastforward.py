"""The fast final-position forward equals the model's forward (a HookedTransformer on
TransformerLens 3, a TransformerBridge on 4), values and gradients."""

from __future__ import annotations

import pytest
import torch

import tl_grokking.model.fastforward as ff
from tl_compat import edit_weights, foreign_model, tl_grads, tl_state
from tl_grokking.data.tasks import make_task
from tl_grokking.model import native
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.fastforward import (
    TokenGroups,
    final_logits,
    final_logits_batched,
    supports_fast_path,
    weights_final_logits,
)
from tl_grokking.model.transformer import GrokModel, make_model, model_attn_rate

# (p, d_model, n_heads, d_head, d_mlp, act_fn, d_vocab_out, attn_rate)
CONFIGS = [
    (17, 32, 4, None, 64, "relu", None, 1.0),
    (23, 24, 3, 5, 40, "gelu", 24, 1.0),  # d_head != d_model / n_heads, p + 1 outputs
    (19, 16, 2, 12, 48, "gelu_new", None, 0.3),  # attention-rate knob
    (13, 20, 5, 3, 30, "silu", 14, 0.0),  # uniform attention
    (29, 40, 1, 7, 56, "relu", None, 0.75),
]


def _random_model(cfg: tuple, seed: int) -> GrokModel:
    p, d_model, n_heads, d_head, d_mlp, act_fn, d_vocab_out, rate = cfg
    config = ModelConfig(
        p=p,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        act_fn=act_fn,
        d_vocab_out=d_vocab_out,
        trainable_biases="all",
        attn_rate=rate,
    )
    model = make_model(config, seed=seed)
    gen = torch.Generator().manual_seed(1000 + seed)

    def perturb(name: str, value: torch.Tensor) -> torch.Tensor:
        scale = 0.5 if name.rsplit(".", 1)[-1].startswith("b_") else 0.3
        return value + scale * torch.randn(value.shape, generator=gen)  # nonzero biases too

    edit_weights(model, perturb)
    return model


def _grads(model: GrokModel, logits: torch.Tensor, weights: torch.Tensor) -> dict:
    model.zero_grad(set_to_none=True)
    (logits.double() * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"p{c[0]}-{c[5]}-rate{c[7]}")
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("final_token", ["eq", "random"])
def test_matches_hooked_forward_and_gradients(cfg, seed, final_token):
    model = _random_model(cfg, seed)
    assert supports_fast_path(model)
    tokens = make_task("add", cfg[0]).tokens()
    if final_token == "random":  # the general (non-constant query) path
        gen = torch.Generator().manual_seed(seed)
        tokens[:, 2] = torch.randint(0, cfg[0] + 1, (tokens.shape[0],), generator=gen)
    reference = model(tokens)[:, -1]
    fast = final_logits(model, tokens)
    assert fast.shape == reference.shape == (tokens.shape[0], model.cfg.d_vocab_out)
    scale = reference.abs().max().item()
    torch.testing.assert_close(fast, reference, atol=2e-6 * max(scale, 1.0), rtol=1e-5)

    weights = torch.randn(reference.shape, generator=torch.Generator().manual_seed(7)).double()
    g_ref = _grads(model, model(tokens)[:, -1], weights)
    g_fast = _grads(model, final_logits(model, tokens), weights)
    assert set(g_ref) == set(g_fast) == {n for n, _ in model.named_parameters()}
    # One tolerance per model: some gradients are exactly zero in exact arithmetic (b_K: the
    # softmax ignores a shift shared by all keys), so both sides hold only rounding noise there.
    gscale = max(g.abs().max().item() for g in g_ref.values())
    for name in g_ref:
        err = (g_fast[name] - g_ref[name]).abs().max().item()
        assert err <= 1e-6 * gscale + 1e-4 * g_ref[name].abs().max().item(), (name, err, gscale)


@pytest.mark.parametrize("cfg", CONFIGS[1:3], ids=lambda c: f"p{c[0]}-{c[5]}-rate{c[7]}")
def test_weights_path_gradients_equal_the_models(cfg):
    """What the trainer differentiates: TL-3-keyed leaf tensors through weights_final_logits,
    against the model's own forward, gradients read back in TL-3 layout."""
    model = _random_model(cfg, seed=0)
    tokens = make_task("add", cfg[0]).tokens()
    _assert_weights_path_matches(
        model, tokens, lambda w: weights_final_logits(w, tokens, act_fn=cfg[5], attn_rate=cfg[7])
    )


def _assert_weights_path_matches(model, tokens, logits_of) -> None:
    """``logits_of(weights)`` on TL-3-keyed leaf copies of the model's weights equals the
    model's own forward, values and every weight's gradient (read back in TL-3 layout)."""
    weights = {k: v.requires_grad_(True) for k, v in tl_state(model).items()}
    logits = logits_of(weights)
    reference = model(tokens)[:, -1]
    scale = reference.abs().max().item()
    torch.testing.assert_close(logits, reference, atol=2e-6 * max(scale, 1.0), rtol=1e-5)
    probe = torch.randn(reference.shape, generator=torch.Generator().manual_seed(3)).double()
    (logits.double() * probe).sum().backward()
    model.zero_grad(set_to_none=True)
    (reference.double() * probe).sum().backward()
    g_ref = tl_grads(model)
    gscale = max(g.abs().max().item() for g in g_ref.values())
    for name, g in g_ref.items():
        err = (weights[name].grad - g).abs().max().item()
        assert err <= 1e-6 * gscale + 1e-4 * g.abs().max().item(), (name, err, gscale)


def test_attention_rate_extremes_have_closed_forms():
    """rate 0: every head attends 1/3 to each position, so the head output is the mean value."""
    model = _random_model((13, 20, 5, 3, 30, "relu", None, 0.0), seed=3)
    tokens = make_task("add", 13).tokens()[:50]
    _, cache = model.run_with_cache(tokens)
    pattern = cache["blocks.0.attn.hook_pattern"][:, :, -1]  # [batch, head, key]
    torch.testing.assert_close(pattern, torch.full_like(pattern, 1 / 3))
    torch.testing.assert_close(final_logits(model, tokens), cache["unembed.hook_out"][:, -1])
    assert model_attn_rate(model) == 0.0


def test_attention_rate_read_from_hook_without_config_attribute():
    model = _random_model((17, 32, 4, None, 64, "relu", None, 0.4), seed=0)
    del model.tl_grokking_config  # as for a model built elsewhere with the hook installed
    assert model_attn_rate(model) == pytest.approx(0.4)
    tokens = make_task("add", 17).tokens()
    reference = model(tokens)[:, -1]
    atol = 2e-6 * reference.abs().max().item()  # float32 rounding of sums in another order
    torch.testing.assert_close(final_logits(model, tokens), reference, atol=atol, rtol=1e-5)


def test_user_hooks_fall_back_to_plain_forward():
    model = _random_model((17, 32, 4, None, 64, "relu", None, 1.0), seed=0)
    tokens = make_task("add", 17).tokens()

    def kill_neurons(act, hook):
        act[..., :32] = 0.0
        return act

    with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", kill_neurons)]):
        assert not supports_fast_path(model)
        hooked = final_logits(model, tokens)
        expected = model(tokens)[:, -1]
    assert supports_fast_path(model)
    assert torch.equal(hooked, expected)
    assert not torch.allclose(hooked, final_logits(model, tokens))  # the hook did act


def test_outside_family_uses_plain_forward():
    model = foreign_model(
        n_layers=1,
        d_model=16,
        n_ctx=3,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=18,
        d_vocab_out=17,
        act_fn="relu",
        normalization_type="LN",
    )
    assert not supports_fast_path(model)
    tokens = make_task("add", 17).tokens()
    assert torch.equal(final_logits(model, tokens), model(tokens)[:, -1])


def test_batched_evaluation_matches_and_has_no_grad():
    model = _random_model((23, 24, 3, 5, 40, "gelu", 24, 1.0), seed=1)
    tokens = make_task("add", 23).tokens()
    chunked = final_logits_batched(model, tokens, batch_size=100)
    assert not chunked.requires_grad
    torch.testing.assert_close(chunked, final_logits(model, tokens).detach())
    with pytest.raises(ValueError, match="batch_size"):
        final_logits_batched(model, tokens, batch_size=0)
    with pytest.raises(ValueError, match="tokens"):
        final_logits(model, tokens[:, 0])


# ---- the algebraic path (ReLU, constant final token) ---------------------------------------------

ALGEBRAIC = [
    (17, 32, 4, None, 64, "relu", None, 1.0),
    (23, 24, 3, 5, 40, "relu", 24, 0.0),  # p + 1 outputs, uniform attention
    (19, 16, 2, 12, 48, "relu", None, 0.35),
]


@pytest.mark.parametrize("cfg", ALGEBRAIC, ids=lambda c: f"p{c[0]}-rate{c[7]}")
@pytest.mark.parametrize("rows", ["grid", "train"])
@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_algebraic_path_matches_the_model(cfg, rows, kernels, monkeypatch):
    """Values and every weight's gradient against the model's own forward, on the whole grid
    and on a random 30 % subset (uneven group sizes), with random nonzero biases; with the
    compiled kernels (tl_grokking.model.native, where this machine builds them) and without."""
    monkeypatch.setattr(ff, "ALGEBRAIC_MIN_BATCH", 1)
    monkeypatch.setenv(native.ENV_SWITCH, "1" if kernels == "native" else "0")
    model = _random_model(cfg, seed=2)
    task = make_task("add", cfg[0])
    tokens = task.tokens() if rows == "grid" else task.tokens()[task.split(0.3, 1)[0]]
    groups = TokenGroups(tokens, cfg[0] + 1, cfg[2])
    _assert_weights_path_matches(
        model, tokens, lambda w: weights_final_logits(w, tokens, attn_rate=cfg[7], groups=groups)
    )


def test_fused_add_relu_is_the_two_passes_bit_for_bit():
    # The read-out's one-pass relu(x + b) (aten's CPU-only _add_relu_) against add then clamp.
    gen = torch.Generator().manual_seed(0)
    x, b = torch.randn(300, 70, generator=gen), torch.randn(70, generator=gen)
    expected = (x + b).clamp_min(0.0)
    out = x.clone()
    assert ff._add_relu_(out, b) is out
    assert torch.equal(out, expected)


def test_the_algebraic_path_is_taken_only_where_it_applies(monkeypatch):
    calls = []
    real = ff._final_logits_algebraic
    monkeypatch.setattr(ff, "_final_logits_algebraic", lambda *a: calls.append(1) or real(*a))
    weights = tl_state(_random_model((17, 32, 4, None, 64, "relu", None, 1.0), seed=0))
    grid = make_task("add", 17).tokens()  # 289 rows >= ALGEBRAIC_MIN_BATCH
    weights_final_logits(weights, grid)
    assert calls == [1]
    weights_final_logits(weights, grid[:10])  # too few rows
    weights_final_logits(weights, grid, act_fn="gelu")  # not ReLU
    mixed = grid.clone()
    mixed[0, 2] = 3  # not one final token
    weights_final_logits(weights, mixed)
    assert calls == [1]
    with pytest.raises(ValueError, match="groups were built for other tokens"):
        weights_final_logits(weights, grid, groups=TokenGroups(grid[1:], 18, 4))
    with pytest.raises(ValueError, match="another d_vocab"):  # (tables with 19 rows per head)
        weights_final_logits(weights, grid, groups=TokenGroups(grid, 19, 4))


def test_token_groups_layout_by_brute_force():
    task = make_task("add", 11)
    tokens = task.tokens()[task.split(0.4, 3)[0]]
    groups = TokenGroups(tokens, 12, 3)
    for b in range(len(tokens)):
        a_, b_ = int(tokens[b, 0]), int(tokens[b, 1])
        # head-major: 24 rows per head (12 tokens at each of positions 0 and 1; '=' is folded
        # into the constant term)
        expected = [h * 24 + r for h in range(3) for r in (a_, 12 + b_)]
        assert groups.rows[b].tolist() == expected
    # the transposed layout: table row r is used by exactly the samples listed in its bag
    ends = torch.cat([groups.bag_offsets[1:], torch.tensor([groups.bag_samples.numel()])])
    for r in range(2 * 12 * 3):
        users = sorted(groups.bag_samples[groups.bag_offsets[r] : ends[r]].tolist())
        assert users == sorted(b for b in range(len(tokens)) if r in groups.rows[b].tolist())
