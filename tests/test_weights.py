"""Effective weights: checked against forward passes of the model with controlled attention."""

from __future__ import annotations

import math

import pytest
import torch

from tl_grokking.analysis.weights import (
    W_E,
    W_L,
    W_U,
    W_attn,
    W_neur,
    embed_fourier_norms,
    fourier_norms,
    frequency_mass_count,
    norms_by_frequency,
    unembed_fourier_norms,
)
from tl_grokking.data.discrete_log import discrete_log_table
from tl_grokking.data.tasks import ModularAddition, make_task
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import BACKEND, IncompatibleModelError, make_model

P = 11


@pytest.fixture(scope="module")
def model():
    # d_vocab_out = p + 1 as in the authors' checkpoints: every map must drop the extra class.
    cfg = ModelConfig(p=P, d_model=20, n_heads=2, d_head=6, d_mlp=24, d_vocab_out=P + 1)
    m = make_model(cfg, seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero biases, so that leaving them out is visible
        for name in ("b_Q", "b_K", "b_V", "b_O"):
            param = getattr(m.blocks[0].attn, name)
            param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    return m


def test_shapes_and_restriction_to_p_classes(model):
    assert W_E(model).shape == (P, 20)
    torch.testing.assert_close(W_E(model), model.W_E[:P].detach())
    assert W_U(model).shape == (20, P)
    assert W_L(model).shape == (24, P)
    expected = torch.stack(
        [
            torch.stack([model.blocks[0].mlp.W_out[n] @ model.W_U[:, c] for c in range(P)])
            for n in range(24)
        ]
    ).detach()
    torch.testing.assert_close(W_L(model), expected)
    assert W_neur(model).shape == (2, P, 24)
    assert W_attn(model).shape == (2, P)


def test_W_neur_is_the_neuron_input_when_one_head_attends_to_one_token(model):
    """Force head h to attend only to position 0, silence the others; zero every other path."""
    task = ModularAddition(P)
    tokens = task.tokens()
    a = tokens[:, 0]
    for h in range(2):

        def pattern_hook(pattern, hook, h=h):
            out = torch.zeros_like(pattern)
            out[:, :, :, 0] = 1.0  # every query attends to position 0
            return out

        def z_hook(z, hook, h=h):
            out = torch.zeros_like(z)
            out[:, :, h] = z[:, :, h]
            return out

        def zero_pos(act, hook):
            return torch.zeros_like(act)

        def eq_free_embed(embed, hook):  # remove the '=' token's own embedding
            out = embed.clone()
            out[:, 2] = 0.0
            return out

        captured = {}

        def grab(act, hook, captured=captured):
            captured["pre"] = act[:, -1].detach()

        attn = model.blocks[0].attn
        bias_free = {"b_V": attn.b_V.detach().clone(), "b_O": attn.b_O.detach().clone()}
        with torch.no_grad():
            attn.b_V.zero_()
            attn.b_O.zero_()
        try:
            model.run_with_hooks(
                tokens,
                fwd_hooks=[
                    ("hook_embed", eq_free_embed),
                    ("hook_pos_embed", zero_pos),
                    ("blocks.0.attn.hook_pattern", pattern_hook),
                    ("blocks.0.attn.hook_z", z_hook),
                    ("blocks.0.mlp.hook_pre", grab),
                ],
            )
        finally:
            with torch.no_grad():
                attn.b_V.copy_(bias_free["b_V"])
                attn.b_O.copy_(bias_free["b_O"])
        expected = W_neur(model)[h][a] + model.blocks[0].mlp.b_in.detach()
        # without the '=' path the residual at the final position is only the head's output
        torch.testing.assert_close(captured["pre"], expected, atol=1e-5, rtol=1e-5)


def test_W_attn_matches_attention_scores_up_to_a_token_independent_shift(model):
    task = ModularAddition(P)
    names = ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_attn_scores")
    _, cache = model.run_with_cache(task.tokens(), names_filter=list(names))
    q, k = cache[names[0]][:, 2], cache[names[1]][:, 0]  # query '=', key position 0
    scores = (q * k).sum(-1) / math.sqrt(q.shape[-1])  # [p², heads]
    if BACKEND == "HookedTransformer":  # a bridge fires hook_attn_scores after the softmax
        torch.testing.assert_close(scores, cache[names[2]][:, :, 2, 0])
    a = task.tokens()[:, 0]
    diff = scores - W_attn(model).T[a]  # [p², heads]
    # what W_attn leaves out (W_pos[0] and b_K on the key side) shifts all tokens equally
    torch.testing.assert_close(diff, diff[:1].expand_as(diff), atol=1e-4, rtol=1e-4)
    attn = model.blocks[0].attn
    q = (model.W_E[P] + model.W_pos[2]) @ attn.W_Q[0] + attn.b_Q[0]
    shift = (model.W_pos[0] @ attn.W_K[0] + attn.b_K[0]) @ q / math.sqrt(6)
    torch.testing.assert_close(diff[0, 0], shift.detach(), atol=1e-4, rtol=1e-4)


def test_fourier_norms_brute_force_and_frequency_combination():
    gen = torch.Generator().manual_seed(1)
    for n in (9, 10):  # odd and even (Nyquist row has no sine)
        x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
        norms = fourier_norms(x, dim=0)
        rows = []
        for k in range(n // 2 + 1):
            for fn in (math.cos, math.sin):
                if (k == 0 and fn is math.sin) or (2 * k == n and fn is math.sin):
                    continue
                v = torch.tensor([fn(2 * math.pi * k * t / n) for t in range(n)]).double()
                rows.append(v / v.norm())
        expected = torch.stack([(r @ x).norm() for r in rows])
        torch.testing.assert_close(norms, expected)
        per_freq = norms_by_frequency(norms)
        assert per_freq.shape == (n // 2,)
        torch.testing.assert_close(per_freq[0], (norms[1] ** 2 + norms[2] ** 2).sqrt())
        if n % 2 == 0:
            torch.testing.assert_close(per_freq[-1], norms[-1])


def test_model_fourier_norms(model):
    torch.testing.assert_close(embed_fourier_norms(model), fourier_norms(model.W_E[:P], dim=0))
    torch.testing.assert_close(unembed_fourier_norms(model), fourier_norms(W_L(model), dim=1))
    # Parseval: the norms carry all of W_E's energy
    torch.testing.assert_close(
        embed_fourier_norms(model).square().sum(), W_E(model).double().square().sum()
    )


def brute_norms(x: torch.Tensor, n: int) -> torch.Tensor:
    """Norm of each cos-first basis row's coefficients of ``x`` ([n, ...]), written out."""
    rows = []
    for k in range(n // 2 + 1):
        for fn in (math.cos, math.sin):
            if fn is math.sin and (k == 0 or 2 * k == n):
                continue
            v = torch.tensor([fn(2 * math.pi * k * t / n) for t in range(n)]).double()
            rows.append(v / v.norm())
    return torch.stack([(r @ x.double().reshape(n, -1)).norm() for r in rows])


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "x2+y2"])
def test_fourier_norms_in_the_coordinates_of_the_task(model, name):
    """reindex=None: the task's group order (discrete-log order over Z_10 for × and ÷, token 0
    dropped); False: token order over Z_11; True: the group order, refused without a group."""
    task = make_task(name, P)
    WE, WL = W_E(model), W_L(model)
    exp, _ = discrete_log_table(P)
    group = exp if name in ("mul", "div") else torch.arange(P)
    natural = group if task.fourier_structure is not None else torch.arange(P)
    n = natural.shape[0]
    torch.testing.assert_close(embed_fourier_norms(model, task), brute_norms(WE[natural], n))
    torch.testing.assert_close(unembed_fourier_norms(model, task), brute_norms(WL[:, natural].T, n))
    torch.testing.assert_close(embed_fourier_norms(model, task, reindex=False), brute_norms(WE, P))
    torch.testing.assert_close(
        unembed_fourier_norms(model, task, reindex=False), brute_norms(WL.T, P)
    )
    if task.fourier_structure is None:
        with pytest.raises(ValueError, match="Fourier norms of W_E.*'x2\\+y2'"):
            embed_fourier_norms(model, task, reindex=True)
    else:
        torch.testing.assert_close(
            embed_fourier_norms(model, task, reindex=True), embed_fourier_norms(model, task)
        )


def test_frequency_mass_count_closed_form(unchecked_types):
    norms = torch.tensor([3.0, 4.0, 0.0, 0.0])  # energies 9, 16: 64 % in one, 100 % in two
    assert frequency_mass_count(norms, 0.6) == 1
    assert frequency_mass_count(norms, 0.64) == 1
    assert frequency_mass_count(norms, 0.9) == 2
    assert frequency_mass_count(torch.ones(5), 1.0) == 5
    for bad in (0.0, 1.5, "0.9", True):
        with unchecked_types(), pytest.raises(ValueError, match="mass"):
            frequency_mass_count(norms, bad)


def test_incompatible_model_is_rejected():
    from tl_compat import foreign_model

    model = foreign_model(
        n_layers=2, d_model=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=8, d_vocab_out=7, n_ctx=3,
        act_fn="relu", normalization_type=None,
    )  # fmt: skip
    with pytest.raises(IncompatibleModelError, match="n_layers"):
        W_L(model)
