"""Tests for tl_grokking.model (config, transformer) and the field validators: config validation,
make_model, bias policy, attention rate, compatibility checks, config round trip."""

from __future__ import annotations

import math

import pytest
import torch

from tl_compat import foreign_model, tl_state
from tl_grokking.data.tasks import ModularAddition
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import (
    BACKEND,
    TL_VERSION,
    IncompatibleModelError,
    check_compatible,
    config_from_model,
    init_weights,
    legacy_hook_names,
    load_weights,
    make_model,
    model_attn_rate,
    model_weights,
    tl3_state_dict,
    trainable_weight_names,
    validate_device,
    weight_shapes,
)

SMALL = dict(p=17, d_model=24, n_heads=3, d_mlp=40)


# ---- ModelConfig validation -------------------------------------------------------------------


def test_defaults_are_the_papers_model():
    cfg = ModelConfig()
    assert (cfg.p, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (113, 128, 4, 32, 512)
    assert (cfg.act_fn, cfg.d_vocab_out, cfg.d_vocab, cfg.n_layers) == ("relu", 113, 114, 1)
    model = make_model(cfg)
    assert model.cfg.normalization_type is None and model.cfg.n_ctx == 3
    assert (model.cfg.d_vocab, model.cfg.d_vocab_out) == (114, 113)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"p": 2}, r"^p must be an integer >= 3"),
        ({"d_model": 0}, r"^d_model must be a positive integer"),
        ({"n_heads": 2.5}, r"^n_heads must be a positive integer"),
        ({"d_mlp": -4}, r"^d_mlp must be a positive integer"),
        ({"n_layers": True}, r"^n_layers must be a positive integer"),
        ({"d_model": 25, "n_heads": 3}, r"d_model \(25\) must be divisible by n_heads \(3\)"),
        ({"d_head": 0}, r"^d_head must be a positive integer"),
        ({"d_vocab_out": 20}, r"^d_vocab_out must be p \(17\) or p \+ 1 \(18\), got 20"),
        ({"act_fn": "tanh"}, r"^act_fn must be one of .*'relu'.*got 'tanh'"),
        ({"trainable_biases": "some"}, r"^trainable_biases must be one of .*got 'some'"),
        ({"attn_rate": 1.5}, r"^attn_rate must be in \[0, 1\], got 1\.5"),
        ({"attn_rate": float("nan")}, r"^attn_rate must be in \[0, 1\]"),
    ],
)
def test_config_errors_name_the_field(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ModelConfig(**{**SMALL, **kwargs})


def test_config_dict_round_trip_and_unknown_fields():
    cfg = ModelConfig(**SMALL, d_head=5, d_vocab_out=18, attn_rate=0.5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['d_embed'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "d_embed": 3})


def test_validate_device():
    assert validate_device("cpu") == torch.device("cpu")
    assert validate_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "CPU", "cuda:x", "meta", "", None, 3):
        with pytest.raises(ValueError, match=r"^device must be"):
            validate_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"CUDA is not available"):
            validate_device("cuda")


def test_field_checks_without_torch():
    """The one set of field validators (tl_grokking._validation) behind ModelConfig and
    TrainConfig: integers (numpy integers and integral floats from JSON pass, bools do not),
    intervals, choices and the syntax of a device string."""
    import numpy as np

    from tl_grokking._validation import check_choice, check_device, check_float, check_int

    assert check_int(np.int64(5), "n") == 5 and check_int(4.0, "n") == 4
    assert check_int(0, "seed", minimum=0) == 0
    for bad in (0, -1, 2.5, True, "3", None, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^n must be a positive integer"):
            check_int(bad, "n")
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0, got -1"):
        check_int(-1, "seed", minimum=0)
    assert check_float("0.5", "x", 0, 1) == 0.5
    with pytest.raises(ValueError, match=r"^lr must be in \(0, inf\), got 0"):
        check_float(0, "lr", 0, math.inf, low_open=True, high_open=True)
    for bad in (float("nan"), 1.5, -0.1):
        with pytest.raises(ValueError, match=r"^x must be in \[0, 1\]"):
            check_float(bad, "x", 0, 1)
    for bad in ("a", None, True):
        with pytest.raises(ValueError, match=r"^x must be a number"):
            check_float(bad, "x", 0, 1)
    assert check_choice("mlp", "b", ("none", "mlp")) == "mlp"
    with pytest.raises(ValueError, match=r"^b must be one of \('none', 'mlp'\), got 'x'"):
        check_choice("x", "b", ("none", "mlp"))
    for good in ("cpu", "cuda", "cuda:1", "mps", "mps:0"):
        assert check_device(good) == good
    assert check_device(torch.device("cuda:2")) == "cuda:2"


# ---- make_model ---------------------------------------------------------------------------------


def _params(model):
    return tl_state(model)


def test_make_model_is_deterministic_and_keeps_global_rng():
    cfg = ModelConfig(**SMALL)
    torch.manual_seed(99)
    state = torch.random.get_rng_state()
    a, b, c = make_model(cfg, seed=7), make_model(cfg, seed=7), make_model(cfg, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = _params(a), _params(b), _params(c)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["embed.W_E"], pc["embed.W_E"])


def test_make_model_shapes_and_init_scale():
    model = make_model(ModelConfig(p=113), seed=0)
    assert model.W_E.shape == (114, 128) and model.W_U.shape == (128, 113)
    assert model.W_pos.shape == (3, 128) and model.W_in.shape == (1, 128, 512)
    # TransformerLens' default init: std 0.8 / sqrt(d_model)
    std = model.W_in.std().item()
    assert std == pytest.approx(0.8 / math.sqrt(128), rel=0.05)


@pytest.mark.parametrize(
    ("policy", "trainable"),
    [
        ("none", set()),
        ("mlp", {"blocks.0.mlp.b_in", "blocks.0.mlp.b_out"}),
        (
            "all",
            {
                "blocks.0.attn.b_Q",
                "blocks.0.attn.b_K",
                "blocks.0.attn.b_V",
                "blocks.0.attn.b_O",
                "blocks.0.mlp.b_in",
                "blocks.0.mlp.b_out",
                "unembed.b_U",
            },
        ),
    ],
)
def test_bias_policy(policy, trainable):
    model = make_model(ModelConfig(**SMALL, trainable_biases=policy))
    if BACKEND == "TransformerBridge":  # b_U is a buffer on a bridge; it never trains there
        trainable = trainable - {"unembed.b_U"}
    for name, param in model_weights(model).items():
        is_bias = name.rsplit(".", 1)[-1].startswith("b_")
        if is_bias:
            assert not param.any(), f"{name} must start at zero"
            assert param.requires_grad == (name in trainable), name
        else:
            assert param.requires_grad, name


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_attn_rate_hook_matches_manual_computation(rate):
    model = make_model(ModelConfig(**SMALL, attn_rate=rate), seed=1)
    assert model_attn_rate(model) == rate
    tokens = torch.tensor([[3, 5, 17], [16, 0, 17], [7, 7, 17]])
    _, cache = model.run_with_cache(tokens)
    attn = model.blocks[0].attn
    x = cache["blocks.0.hook_resid_pre"]
    q = torch.einsum("bpd,hde->bphe", x, attn.W_Q) + attn.b_Q
    k = torch.einsum("bpd,hde->bphe", x, attn.W_K) + attn.b_K
    v = torch.einsum("bpd,hde->bphe", x, attn.W_V) + attn.b_V
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(attn.cfg.d_head)
    causal = torch.ones(3, 3, dtype=torch.bool).tril()
    softmax = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    uniform = torch.tensor([[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3]])
    expected = rate * softmax + (1 - rate) * uniform
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], expected)
    z = torch.einsum("bhqk,bkhe->bqhe", expected, v)
    torch.testing.assert_close(cache["blocks.0.attn.hook_z"], z)
    # the hook is permanent: reset_hooks() keeps it
    model.reset_hooks()
    assert model_attn_rate(model) == rate


# ---- compatibility -----------------------------------------------------------------------------


def test_check_compatible_accepts_made_models():
    model = make_model(ModelConfig(**SMALL, d_vocab_out=18))
    check_compatible(model)
    check_compatible(model, ModularAddition(17))


def test_check_compatible_names_every_failure():
    model = foreign_model(
        n_layers=2,
        d_model=16,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=18,
        d_vocab_out=30,
        n_ctx=5,
        act_fn="relu",
        normalization_type="LN",
    )
    with pytest.raises(IncompatibleModelError) as info:
        check_compatible(model, ModularAddition(19))
    message = str(info.value)
    for part in (
        "n_layers is 2, must be 1",
        "n_ctx is 5, must be 3",
        "d_vocab is 18 (p = 17) but the task has p = 19",
        "d_vocab_out is 30",
        "normalization_type is 'LN', must be None",
    ):
        assert part in message


def test_check_compatible_attn_only():
    model = foreign_model(
        n_layers=1, d_model=16, d_head=4, n_heads=4, d_vocab=18, n_ctx=3, attn_only=True,
        act_fn="relu", normalization_type=None,
    )  # fmt: skip
    with pytest.raises(IncompatibleModelError, match=r"attn_only is True"):
        check_compatible(model)


def test_config_from_model_round_trip():
    cfg = ModelConfig(p=19, d_model=20, n_heads=2, d_head=7, d_mlp=30, d_vocab_out=20,
                      act_fn="gelu", attn_rate=0.25)  # fmt: skip
    model = make_model(cfg)
    assert config_from_model(model) == cfg
    # without the attached config, the architecture is read back off model.cfg and the hook
    del model.tl_grokking_config
    assert config_from_model(model) == cfg
    assert issubclass(IncompatibleModelError, ValueError)


# ---- the TransformerLens seam (docs/transformerlens.md) -----------------------------------------


@pytest.mark.skipif(BACKEND != "HookedTransformer", reason="needs TransformerLens 3's own init")
def test_init_weights_are_what_hookedtransformer_draws():
    """Our draw (the same on TL 3 and 4) is bit for bit HookedTransformer's own initialisation."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = ModelConfig(**SMALL, d_vocab_out=18)
    ht_cfg = HookedTransformerConfig(
        n_layers=1, n_heads=3, d_model=24, d_head=8, d_mlp=40, d_vocab=18, d_vocab_out=18,
        n_ctx=3, act_fn="relu", normalization_type=None, seed=11,
    )  # fmt: skip
    theirs = dict(HookedTransformer(ht_cfg, move_to_device=False).named_parameters())
    ours = init_weights(cfg, seed=11)
    assert list(ours) == list(theirs) == list(weight_shapes(cfg))  # the drawing order
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_make_model_carries_init_weights_or_given_weights():
    cfg = ModelConfig(**SMALL)
    assert all(
        torch.equal(v, init_weights(cfg, seed=4)[k])
        for k, v in tl_state(make_model(cfg, seed=4)).items()
    )
    weights = {k: torch.randn(v.shape) for k, v in init_weights(cfg).items()}
    model = make_model(cfg, weights=weights)
    assert all(torch.equal(v, weights[k]) for k, v in tl_state(model).items())
    assert all(torch.equal(v, weights[k]) for k, v in tl3_state_dict(model).items())


def test_load_weights_is_strict():
    model = make_model(ModelConfig(**SMALL))
    state = tl3_state_dict(model)
    with pytest.raises(ValueError, match=r"missing \['unembed.b_U'\], unexpected \[\]"):
        load_weights(model, {k: v for k, v in state.items() if k != "unembed.b_U"})
    with pytest.raises(ValueError, match=r"unexpected \['blocks.0.ln1.w'\]"):
        load_weights(model, {**state, "blocks.0.ln1.w": torch.ones(24)})
    with pytest.raises(ValueError, match=r"embed.W_E: expected \(18, 24\), got \(19, 24\)"):
        load_weights(model, {**state, "embed.W_E": torch.zeros(19, 24)})


def test_trainable_weight_names_follow_the_policy():
    names = trainable_weight_names(ModelConfig(**SMALL, trainable_biases="mlp"))
    assert [n for n in names if ".b_" in n] == ["blocks.0.mlp.b_in", "blocks.0.mlp.b_out"]
    assert len(trainable_weight_names(ModelConfig(**SMALL))) == 9  # the weight matrices
    assert len(trainable_weight_names(ModelConfig(**SMALL, trainable_biases="all"))) == 16


def test_hook_functions_see_the_legacy_names():
    """On a bridge a hook point's own name is new (``mlp.out.hook_in``); ours carry TL-3's."""
    model = make_model(ModelConfig(**SMALL, d_vocab_out=18))
    names = [n for n in legacy_hook_names() if not n.endswith(GATED)]
    seen: list[str] = []
    model.run_with_hooks(
        torch.tensor([[1, 2, 17]]),
        fwd_hooks=[(n, lambda x, hook: seen.append(hook.name)) for n in names],
    )
    assert sorted(seen) == sorted(names)
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 17]]))
    assert set(names) <= set(cache.keys())


# Hook points HookedTransformer only fires when a cfg flag turns them on.
GATED = (
    "hook_result",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "hook_mlp_in",
)


def test_the_backend_matches_the_installed_transformer_lens():
    from importlib.metadata import version

    major = int(version("transformer-lens").split(".")[0])
    assert TL_VERSION[0] == major
    assert BACKEND == ("TransformerBridge" if major >= 4 else "HookedTransformer")
    assert type(make_model(ModelConfig(**SMALL))).__name__ == BACKEND
