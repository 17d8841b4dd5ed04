"""Tests for tl_grokking.model (config, transformer) and the field validators: config validation,
make_model, bias policy, attention rate, compatibility checks, config round trip."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tl_grokking.data.tasks import ModularAddition
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import (
    IncompatibleModelError,
    check_compatible,
    config_from_model,
    make_model,
    model_attn_rate,
    validate_device,
)

SMALL = dict(p=17, d_model=24, n_heads=3, d_mlp=40)


# ---- ModelConfig validation -------------------------------------------------------------------


def test_defaults_are_the_papers_model():
    cfg = ModelConfig()
    assert (cfg.p, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (113, 128, 4, 32, 512)
    assert (cfg.act_fn, cfg.d_vocab_out, cfg.d_vocab, cfg.n_layers) == ("relu", 113, 114, 1)
    hooked = cfg.hooked_config()
    assert hooked.normalization_type is None and hooked.n_ctx == 3
    assert (hooked.d_vocab, hooked.d_vocab_out) == (114, 113)


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
    return {k: v.detach().clone() for k, v in model.named_parameters()}


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
    for name, param in model.named_parameters():
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
    cfg = HookedTransformerConfig(
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
    model = HookedTransformer(cfg, move_to_device=False)
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
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, d_head=4, n_heads=4, d_vocab=18, n_ctx=3, attn_only=True,
        act_fn="relu", normalization_type=None,
    )  # fmt: skip
    with pytest.raises(IncompatibleModelError, match=r"attn_only is True"):
        check_compatible(HookedTransformer(cfg, move_to_device=False))


def test_config_from_model_round_trip():
    cfg = ModelConfig(p=19, d_model=20, n_heads=2, d_head=7, d_mlp=30, d_vocab_out=20,
                      act_fn="gelu", attn_rate=0.25)  # fmt: skip
    model = make_model(cfg)
    assert config_from_model(model) == cfg
    # without the attached config, the architecture is read back off model.cfg and the hook
    del model.tl_grokking_config
    assert config_from_model(model) == cfg
    assert issubclass(IncompatibleModelError, ValueError)
