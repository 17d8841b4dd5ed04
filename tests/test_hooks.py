"""Fourier-ablation hooks and the canonical-grid guard (the model over the grid, evaluate_model
and the task gates are tested in ``test_grid.py`` and ``test_task_registry.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from brute_force import brute_sum_projection, logits_of
from tl_compat import tl_state
from tl_grokking.analysis.grid import SITES, evaluate_model, grid_activations
from tl_grokking.analysis.hooks import fourier_ablate
from tl_grokking.analysis.logits import restricted_logits
from tl_grokking.data.tasks import ModularAddition
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import load_weights, make_model

P = 13


@pytest.fixture(scope="module")
def model(p13_model):
    return p13_model


@pytest.fixture(scope="module")
def task(p13_model):
    return ModularAddition(p13_model.cfg.d_vocab - 1)


# ---- token-wise: the embedding ----------------------------------------------------------------


def test_embed_keep_all_is_identity_and_keep_none_leaves_the_mean(model, task):
    tokens = task.tokens()
    base = logits_of(model, tokens)
    all_freqs = range(1, P // 2 + 1)
    kept = logits_of(model, tokens, fourier_ablate(model, all_freqs, "embed", mode="keep"))
    torch.testing.assert_close(kept, base, atol=1e-5, rtol=1e-5)
    none = fourier_ablate(model, [], "embed", mode="keep")
    acts = grid_activations(model, task, ["hook_embed"], fwd_hooks=none)
    # final position: '=' untouched; cache positions 0, 1 via a second hook
    torch.testing.assert_close(acts["hook_embed"], model.W_E[P].detach().expand(P * P, -1))
    seen = {}

    def grab(act, hook):
        seen["embed"] = act.detach().clone()

    model.run_with_hooks(tokens, fwd_hooks=none + [("hook_embed", grab)])
    mean = model.W_E[:P].detach().mean(dim=0)
    torch.testing.assert_close(seen["embed"][:, :2], mean.expand(P * P, 2, -1))
    out = logits_of(model, tokens, none)  # every input now looks the same
    torch.testing.assert_close(out, out[:1].expand_as(out))


def test_embed_remove_equals_editing_W_E(model, task):
    tokens = task.tokens()
    hooked = logits_of(model, tokens, fourier_ablate(model, [2, 5], "embed", mode="remove"))
    edited = make_model(ModelConfig(p=P, d_model=24, n_heads=2, d_mlp=40), seed=5)
    load_weights(edited, tl_state(model))
    with torch.no_grad():
        W = edited.W_E[:P].double()
        t = torch.arange(P).double()
        for k in (2, 5):
            for fn in (torch.cos, torch.sin):
                v = fn(2 * math.pi * k * t / P)
                v = v / v.norm()
                W = W - v[:, None] * (v @ W)[None, :]
        edited.W_E[:P] = W.float()
    torch.testing.assert_close(hooked, logits_of(edited, tokens), atol=1e-5, rtol=1e-5)
    # the embed ablation is token-wise, so it also works on any batch
    sub = tokens[[5, 3, 100]]
    hooks = fourier_ablate(model, [2, 5], "embed", mode="remove")
    torch.testing.assert_close(logits_of(model, sub, hooks), hooked[[5, 3, 100]])


# ---- grid-wise sites ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["attn_out", "resid_mid", "mlp_pre", "mlp_post", "resid_post"])
def test_grid_keep_all_products_is_identity(model, task, where):
    tokens = task.tokens()
    hooks = fourier_ablate(model, range(1, P // 2 + 1), where, mode="keep", basis="product")
    torch.testing.assert_close(logits_of(model, tokens, hooks), logits_of(model, tokens))


def test_grid_keep_none_leaves_only_the_mean(model, task):
    name = SITES["mlp_post"]
    plain = grid_activations(model, task, [name])[name]
    hooks = fourier_ablate(model, [], "mlp_post", mode="keep")
    ablated = grid_activations(model, task, [name], fwd_hooks=hooks)[name]
    torch.testing.assert_close(ablated, plain.mean(dim=0, keepdim=True).expand_as(plain))


@pytest.mark.parametrize("where", ["resid_mid", "blocks.0.mlp.hook_pre", "attn_out"])
def test_grid_remove_sum_directions_matches_brute_force(model, task, where):
    name = SITES.get(where, where)
    plain = grid_activations(model, task, [name])[name]
    hooks = fourier_ablate(model, [1, 4], where, mode="remove")
    ablated = grid_activations(model, task, [name], fwd_hooks=hooks)[name]
    expected = plain.double() - brute_sum_projection(plain, P, [1, 4])
    torch.testing.assert_close(ablated.double(), expected, atol=1e-5, rtol=1e-5)


def test_logits_keep_sum_is_the_restricted_logits(model, task):
    tokens = task.tokens()
    plain = logits_of(model, tokens).double()
    hooked = logits_of(model, tokens, fourier_ablate(model, [3, 6], "logits", mode="keep"))
    torch.testing.assert_close(
        hooked.double(), restricted_logits(plain, P, [3, 6]), atol=1e-5, rtol=1e-5
    )


def test_block_basis_on_a_grid_site(model, task):
    """Keeping one 3×3 block of mlp_post: each neuron's 2-D spectrum is confined to it."""
    name = SITES["mlp_post"]
    hooks = fourier_ablate(model, [4], "mlp_post", mode="keep", basis="block")
    ablated = grid_activations(model, task, [name], fwd_hooks=hooks)[name].double()
    from tl_grokking.analysis.fourier import fourier_basis

    F = fourier_basis(P, dtype=torch.float64)[0]
    C = torch.einsum("ia,abn,jb->ijn", F, ablated.reshape(P, P, -1), F)
    inside = torch.zeros(P, P, dtype=torch.bool)
    rows = torch.tensor([0, 7, 8])  # const, cos 4, sin 4
    inside[rows[:, None], rows] = True
    assert C[~inside].abs().max() < 1e-5
    assert C[inside].abs().max() > 1e-3


@pytest.mark.parametrize(
    "where",
    ["attn_z", "attn_out", "resid_mid", "mlp_pre", "mlp_post", "mlp_out", "resid_post", "logits"],
)
def test_grid_site_changes_only_the_final_position(model, task, where):
    """Positions 0 and 1 are untouched; the final position is the brute-force removal; a user
    hook on the same point (added after, under ``with model.hooks``) sees the ablated value."""
    name = SITES[where]
    tokens = task.tokens()
    _, cache = model.run_with_cache(tokens, names_filter=name)
    plain = cache[name]
    seen = {}

    def grab(act, hook):
        seen["act"] = act.detach().clone()

    hooks = fourier_ablate(model, [2, 5], where, mode="remove") + [(name, grab)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens)
    got = seen["act"]
    assert got.shape == plain.shape
    torch.testing.assert_close(got[:, :2], plain[:, :2], atol=0, rtol=0)
    last = plain[:, -1].reshape(P * P, -1)
    expected = last.double() - brute_sum_projection(last, P, [2, 5])
    assert (expected - last.double()).abs().max() > 1e-4  # the ablation is not a no-op
    torch.testing.assert_close(
        got[:, -1].reshape(P * P, -1).double(), expected, atol=1e-5, rtol=1e-5
    )


def test_hooks_compose_and_work_as_context_manager(model, task):
    tokens = task.tokens()
    hooks = fourier_ablate(model, [2], "embed", mode="remove") + fourier_ablate(
        model, [2], "mlp_post", mode="remove"
    )
    a = logits_of(model, tokens, hooks)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        b = model(tokens)[:, -1]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, logits_of(model, tokens))
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())  # cleaned up


# ---- the canonical-grid guard -------------------------------------------------------------------


@pytest.mark.parametrize("order", ["subset", "shuffled", "transposed", "padded"])
def test_grid_hooks_reject_non_canonical_batches(model, task, order):
    tokens = task.tokens()
    if order == "subset":
        bad = tokens[:100]
    elif order == "shuffled":
        bad = tokens[torch.randperm(P * P, generator=torch.Generator().manual_seed(0))]
    elif order == "transposed":  # b-major order
        bad = tokens.reshape(P, P, 3).transpose(0, 1).reshape(-1, 3)
    else:
        bad = torch.cat([tokens, tokens[:1]])
    hooks = fourier_ablate(model, [1], "mlp_post", mode="remove")
    with pytest.raises(ValueError, match="task.tokens"):
        model.run_with_hooks(bad, fwd_hooks=hooks)
    for hp in model.hook_dict.values():  # run_with_hooks removed the hooks despite the error
        assert not hp.fwd_hooks


def test_guard_falls_back_to_grid_structure_after_an_embed_ablation(model, task):
    # The embed ablation changes the embeddings, so the guard cannot match tokens; a shuffled
    # batch is still caught by the grid-structure check.
    hooks = fourier_ablate(model, [1], "embed", mode="keep") + fourier_ablate(
        model, [1], "mlp_post", mode="remove"
    )
    logits_of(model, task.tokens(), hooks)  # canonical: fine
    bad = task.tokens()[torch.randperm(P * P, generator=torch.Generator().manual_seed(1))]
    with pytest.raises(ValueError, match="grid"):
        model.run_with_hooks(bad, fwd_hooks=hooks)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"freqs": [1], "where": "mlp_middle"}, "where"),
        ({"freqs": [0], "where": "mlp_post"}, "freqs"),
        ({"freqs": [7], "where": "mlp_post"}, "freqs"),
        ({"freqs": [1], "where": "mlp_post", "mode": "zero"}, "mode"),
        ({"freqs": [1], "where": "mlp_post", "basis": "diag"}, "basis"),
        ({"freqs": [1], "where": "embed", "basis": "sum"}, "basis"),
        ({"freqs": [1], "where": "blocks.0.attn.hook_pattern"}, "where"),
    ],
)
def test_fourier_ablate_bad_input(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fourier_ablate(model, **kwargs)


def test_small_grokked_model_depends_on_its_key_frequencies(small_model, small_task):
    from tl_grokking.analysis.circuits import key_frequencies

    keys = key_frequencies(small_model, small_task, rule="unembed").keys
    base = evaluate_model(small_model, small_task)
    assert base["all_acc"] == 1.0
    no_keys = evaluate_model(small_model, small_task, fourier_ablate(small_model, keys, "embed"))
    assert no_keys["all_acc"] < 0.2
    others = [k for k in range(1, small_task.p // 2 + 1) if k not in keys]
    no_others = evaluate_model(
        small_model, small_task, fourier_ablate(small_model, others, "embed")
    )
    assert no_others["all_acc"] > 0.95  # the other frequencies of W_E hardly matter
    only_blocks = fourier_ablate(small_model, keys, "mlp_post", mode="keep", basis="block")
    assert evaluate_model(small_model, small_task, only_blocks)["all_acc"] > 0.95


def test_sum_basis_needs_a_plus_b_and_the_token_grid():
    from tl_grokking.data.tasks import make_task

    model = make_model(ModelConfig(p=7, d_model=16, n_heads=2, d_mlp=16), seed=0)
    mul, sub = make_task("mul", 7), make_task("sub", 7)
    with pytest.raises(ValueError, match="cannot compute Fourier ablation.*'mul'.*discrete_log"):
        fourier_ablate(model, [1], "embed", task=mul)
    with pytest.raises(ValueError, match="basis='sum'.*'sub'"):
        fourier_ablate(model, [1], "mlp_post", task=sub)
    assert fourier_ablate(model, [1], "mlp_post", basis="block", task=sub)


def test_each_public_name_lives_in_one_analysis_module():
    """No re-exports: a name is reached through the one module that defines it."""
    import importlib
    import inspect
    import pkgutil

    import tl_grokking.analysis as analysis

    owners: dict[str, str] = {}
    for info in pkgutil.iter_modules(analysis.__path__):
        module = importlib.import_module(f"tl_grokking.analysis.{info.name}")
        for name in getattr(module, "__all__", ()):
            assert name not in owners, (name, owners.get(name), info.name)
            owners[name] = info.name
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                assert obj.__module__ == module.__name__, (name, obj.__module__, module.__name__)
    assert owners["grid_activations"] == owners["evaluate_model"] == "grid"
    assert owners["fourier_ablate"] == "hooks"
