"""Tests for tl_grokking.runs.checkpoints: every format, conversions checked against independent
forwards, compatibility / shape / NaN / safety errors."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_compat import edit_weights, tl_state
from tl_grokking.data.tasks import ModularAddition
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import (
    BACKEND,
    IncompatibleModelError,
    check_compatible,
    make_model,
    model_attn_rate,
    weight_shapes,
)
from tl_grokking.runs.checkpoints import (
    CHECKPOINT_FORMATS,
    CheckpointFormatError,
    CheckpointShapeError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    _expected_shapes,
    detect_format,
    load_checkpoint,
    load_run,
)
from tl_grokking.runs.rundir import (
    RunDirError,
    append_metrics,
    checkpoint_path,
    save_safetensors,
    write_json,
)

FIXTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "paper_original_format_no_wd.pth"
)

# Distinct sizes everywhere so that any transposition mistake changes a shape or a number.
CFG = ModelConfig(p=17, d_model=24, n_heads=3, d_head=8, d_mlp=40)
PARAM_KEYS = (
    "embed.W_E",
    "pos_embed.W_pos",
    "blocks.0.attn.W_Q",
    "blocks.0.attn.W_K",
    "blocks.0.attn.W_V",
    "blocks.0.attn.W_O",
    "blocks.0.attn.b_Q",
    "blocks.0.attn.b_K",
    "blocks.0.attn.b_V",
    "blocks.0.attn.b_O",
    "blocks.0.mlp.W_in",
    "blocks.0.mlp.b_in",
    "blocks.0.mlp.W_out",
    "blocks.0.mlp.b_out",
    "unembed.W_U",
    "unembed.b_U",
)


# ---------------------------------------------------------------------------------------------
# Independent references (no TransformerLens, no tl_grokking conversion code)
# ---------------------------------------------------------------------------------------------


def grid_tokens(p: int) -> np.ndarray:
    a, b = np.repeat(np.arange(p), p), np.tile(np.arange(p), p)
    return np.stack([a, b, np.full_like(a, p)], axis=1)


def authors_forward(state: dict[str, torch.Tensor], tokens: np.ndarray) -> np.ndarray:
    """Final-position logits of the authors' model, from their code's equations, in float64.

    Only the final query position is computed (the logits read nowhere else); the masking is
    theirs: ``tril(scores) - 1e10 * (1 - mask)``.
    """
    w = {k: v.double().numpy() for k, v in state.items()}
    x = w["embed.W_E"][:, tokens].transpose(1, 2, 0) + w["pos_embed.W_pos"]  # b p d
    q = np.einsum("ihd,bd->bih", w["blocks.0.attn.W_Q"], x[:, -1])  # final query only
    k = np.einsum("ihd,bpd->biph", w["blocks.0.attn.W_K"], x)
    v = np.einsum("ihd,bpd->biph", w["blocks.0.attn.W_V"], x)
    scores = np.einsum("biph,bih->bip", k, q) / np.sqrt(q.shape[-1])
    scores = scores - 1e10 * (1 - np.tril(np.ones((3, 3)))[-1])  # the last row sees everything
    scores -= scores.max(-1, keepdims=True)
    attn = np.exp(scores)
    attn /= attn.sum(-1, keepdims=True)
    z = np.einsum("biph,bip->bih", v, attn).reshape(len(x), -1)  # b (i h): head-major
    resid = x[:, -1] + z @ w["blocks.0.attn.W_O"].T
    hidden = np.maximum(resid @ w["blocks.0.mlp.W_in"].T + w["blocks.0.mlp.b_in"], 0.0)
    resid = resid + hidden @ w["blocks.0.mlp.W_out"].T + w["blocks.0.mlp.b_out"]
    return resid @ w["unembed.W_U"]


def ce64(logits: np.ndarray | torch.Tensor, labels: np.ndarray) -> float:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def random_authors_state(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m, h, e, f, v = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.p + 1

    def r(*shape):
        return torch.randn(*shape, generator=g) / 3

    return {
        "embed.W_E": r(m, v),
        "pos_embed.W_pos": r(3, m),
        "blocks.0.attn.W_K": r(h, e, m),
        "blocks.0.attn.W_Q": r(h, e, m),
        "blocks.0.attn.W_V": r(h, e, m),
        "blocks.0.attn.W_O": r(m, h * e),
        "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)),
        "blocks.0.mlp.W_in": r(f, m),
        "blocks.0.mlp.b_in": r(f),
        "blocks.0.mlp.W_out": r(m, f),
        "blocks.0.mlp.b_out": r(m),
        "unembed.W_U": r(m, v),
    }


def random_tl_model(cfg: ModelConfig = CFG, seed: int = 0):
    """A TL model with every bias non-zero, so that bias handling is visible."""
    model = make_model(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1000)
    edit_weights(
        model,
        lambda name, value: (
            torch.randn(value.shape, generator=g) / 5
            if name.rsplit(".", 1)[-1].startswith("b_")
            else None
        ),
    )
    return model


def params(model) -> dict[str, torch.Tensor]:
    return tl_state(model)


def assert_same_params(model, expected: dict[str, torch.Tensor]) -> None:
    got = params(model)
    assert set(got) == set(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def final_logits(model, p: int) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(grid_tokens(p)))[:, -1].double().numpy()


# ---------------------------------------------------------------------------------------------
# The real fixture (authors' original format, p = 113)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_raw():
    if not FIXTURE.is_file():
        pytest.skip(f"fixture checkpoint not found at {FIXTURE} (shared/ not checked out)")
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def fixture_model(fixture_raw):
    return load_checkpoint(FIXTURE)


def test_fixture_accuracy_and_loss(fixture_model):
    p = 113
    labels = (grid_tokens(p)[:, 0] + grid_tokens(p)[:, 1]) % p
    logits = final_logits(fixture_model, p)[:, :p]
    assert (logits.argmax(-1) == labels).mean() == 1.0
    loss = ce64(logits, labels)
    assert 5e-8 < loss < 2e-7  # measured 1.111e-7 (the authors report ≈ 1e-7)


def test_fixture_matches_independent_forward(fixture_raw, fixture_model):
    p = 113
    tokens = grid_tokens(p)
    reference = authors_forward(fixture_raw["model"], tokens)
    got = final_logits(fixture_model, p)
    assert got.shape == (p * p, p + 1)  # the authors' p + 1 logits are kept by default
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() < 1e-5 * scale  # float32 model vs float64 reference
    labels = (tokens[:, 0] + tokens[:, 1]) % p
    assert ce64(got[:, :p], labels) == pytest.approx(ce64(reference[:, :p], labels), rel=0.05)


def test_fixture_metadata_and_run(fixture_raw, fixture_model):
    assert detect_format(FIXTURE) == "authors"
    cfg = fixture_model.tl_grokking_config
    assert (cfg.p, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (113, 128, 4, 32, 512)
    assert cfg.d_vocab_out == 114 and cfg.trainable_biases == "mlp"
    check_compatible(fixture_model, ModularAddition(113))
    # the authors' code has no attention/unembed biases: they are loaded as zeros
    for name in ("b_Q", "b_K", "b_V", "b_O"):
        assert not getattr(fixture_model.blocks[0].attn, name).any()
    assert not fixture_model.unembed.b_U.any()
    run = load_run(FIXTURE)
    assert run.epochs == [fixture_raw["epoch"]] == [4999]
    # the authors' split, by their procedure with their default seed (the file has no config)
    train, test = ModularAddition(113).split(0.3, 0, method="authors")
    assert torch.equal(run.train_indices, train) and torch.equal(run.test_indices, test)
    assert len(run.metrics) == len(fixture_raw["train_losses"]) == 5000
    assert run.metrics[-1]["train_loss"] == fixture_raw["train_losses"][-1]
    assert run.metrics[7]["test_loss"] == fixture_raw["test_losses"][7]


def test_fixture_drop_eq_logit_and_p(fixture_model):
    dropped = load_checkpoint(FIXTURE, drop_eq_logit=True, p=113)
    assert dropped.cfg.d_vocab_out == 113
    assert torch.equal(dropped.W_U, fixture_model.W_U[:, :113])
    tokens = torch.as_tensor(grid_tokens(113)[:50])
    with torch.no_grad():
        assert torch.equal(dropped(tokens), fixture_model(tokens)[..., :113])
    with pytest.raises(IncompatibleModelError, match=r"\(p = 113\) but p = 97 was requested"):
        load_checkpoint(FIXTURE, p=97)


def _as_if_saved_on_cuda(src: Path, dst: Path) -> None:
    """Rewrite a torch zip file so that its storages say they live on ``cuda:0``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):  # protocol-2 BINUNICODE location strings
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info.filename, data)
    dst.write_bytes(buffer.getvalue())


def test_cuda_saved_file_loads_on_cpu(tmp_path):
    state = random_authors_state(CFG, seed=7)
    torch.save({"model": state}, tmp_path / "cpu.pth")
    _as_if_saved_on_cuda(tmp_path / "cpu.pth", tmp_path / "cuda.pth")
    if not torch.cuda.is_available():  # the file really needs a map_location on this machine
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "cuda.pth", weights_only=True)
    model = load_checkpoint(tmp_path / "cuda.pth")
    assert model.W_E.device.type == "cpu"
    assert torch.equal(model.W_E, state["embed.W_E"].T)


# ---------------------------------------------------------------------------------------------
# Authors' layout on a small random model
# ---------------------------------------------------------------------------------------------


def test_authors_layout_matches_independent_forward():
    state = random_authors_state(CFG, seed=1)
    model = load_checkpoint({"model": state, "epoch": 9})
    reference = authors_forward(state, grid_tokens(CFG.p))
    assert model.cfg.d_vocab_out == CFG.p + 1
    np.testing.assert_allclose(final_logits(model, CFG.p), reference, rtol=0, atol=2e-5)
    # A bare authors' state dict (no wrapper) is recognised too.
    bare = load_checkpoint(state)
    assert torch.equal(bare.blocks[0].attn.W_O, model.blocks[0].attn.W_O)


def test_authors_conversion_is_the_documented_rearrangement():
    """Check each converted tensor against an explicit loop over heads (not einops)."""
    state = random_authors_state(CFG, seed=2)
    model = load_checkpoint(state)
    e = CFG.d_head
    for h in range(CFG.n_heads):
        assert torch.equal(model.blocks[0].attn.W_Q[h], state["blocks.0.attn.W_Q"][h].T)
        assert torch.equal(
            model.blocks[0].attn.W_O[h], state["blocks.0.attn.W_O"][:, h * e : (h + 1) * e].T
        )
    assert torch.equal(model.W_E, state["embed.W_E"].T)
    assert torch.equal(model.W_in[0], state["blocks.0.mlp.W_in"].T)
    assert torch.equal(model.W_out[0], state["blocks.0.mlp.W_out"].T)
    assert torch.equal(model.W_U, state["unembed.W_U"])


def test_authors_full_run(tmp_path):
    states = [random_authors_state(CFG, seed=s) for s in range(3)]
    final = random_authors_state(CFG, seed=10)
    blob = {
        "model": final,
        "state_dicts": states,
        "epochs": [0, 100, 200],
        "train_losses": [3.0 - 0.01 * i for i in range(250)],
        "test_losses": [3.5] * 250,
        "epoch": 249,
    }
    torch.save(blob, tmp_path / "full_run.pth")
    run = load_run(tmp_path / "full_run.pth")
    assert run.format == "authors"
    assert run.epochs == [0, 100, 200, 249]
    # no config: the authors' procedure with their defaults; a random model does not reproduce
    # the stored loss, and no other seed does either, so the default stays, and the line says so
    assert torch.equal(run.train_indices, ModularAddition(17).split(0.3, 0, method="authors")[0])
    assert run.split.method == "authors" and run.split.seed == 0 and run.split.assumed
    assert run.split_check.stored == pytest.approx(0.51) and not run.split_check.matches
    assert "none of seeds 0–99 reproduces the stored final train loss" in run.split.source
    assert "does NOT reproduce the stored final train loss 0.51" in run.split_line()
    assert len(run.metrics) == 250 and run.metrics[10]["train_loss"] == pytest.approx(2.9)
    model_100 = run.model(100)
    assert torch.equal(model_100.W_E, states[1]["embed.W_E"].T)
    assert torch.equal(run.model().W_E, final["embed.W_E"].T)
    assert [e for e, _ in run.iter_models([0, 249])] == [0, 249]
    with pytest.raises(ValueError, match=r"epoch must be one of the checkpoint epochs"):
        run.model(150)
    # final model identical to the last checkpoint: not listed twice
    blob["model"] = states[-1]
    del blob["epoch"], blob["train_losses"]
    assert load_run(blob).epochs == [0, 100, 200]


def test_a_sparser_loss_history_is_placed_at_its_epochs():
    """The authors log the test loss every 10 epochs: entry i of a history 10× shorter is
    epoch 10 i, not epoch i; a history whose length does not divide the other's is left out."""
    blob = {
        "model": random_authors_state(CFG, seed=4),
        "epoch": 39,
        "train_losses": [float(i) for i in range(40)],
        "test_losses": [100.0 + i for i in range(4)],
    }
    metrics = load_run(blob).metrics
    assert [m["epoch"] for m in metrics] == list(range(40))
    assert [m["train_loss"] for m in metrics] == [float(i) for i in range(40)]
    assert {m["epoch"]: m["test_loss"] for m in metrics if "test_loss" in m} == {
        0: 100.0,
        10: 101.0,
        20: 102.0,
        30: 103.0,
    }
    blob["test_losses"] = [1.0, 2.0, 3.0]  # 40 is no multiple of 3: no epoch can be trusted
    assert all("test_loss" not in m for m in load_run(blob).metrics)


# ---------------------------------------------------------------------------------------------
# HookedTransformer state dicts: in memory, .pt, our safetensors, run directories
# ---------------------------------------------------------------------------------------------


def test_authors_split_from_stored_config_and_given_values():
    """A stored ``config`` gives the seed and fraction; arguments override it, per value."""
    blob = {"model": random_authors_state(CFG, seed=4), "epoch": 9}
    task = ModularAddition(17)
    run = load_run({**blob, "config": {"seed": 7, "frac_train": 0.5}})
    assert torch.equal(run.train_indices, task.split(0.5, 7, method="authors")[0])
    assert torch.equal(run.test_indices, task.split(0.5, 7, method="authors")[1])
    split = run.split
    assert (split.method, split.seed, split.frac_train) == ("authors", 7, 0.5)
    assert (split.seed_origin, split.frac_origin, split.assumed) == ("file", "file", False)
    assert run.split_check is None  # no stored train loss
    assert run.split_line() == (
        "train split: authors' procedure, seed 7, frac_train 0.5: 144 of 289 pairs (from the "
        "file's config); the file stores no train loss to check it against"
    )
    run = load_run({**blob, "config": {"seed": 7, "frac_train": 0.5}}, seed=2)
    assert torch.equal(run.train_indices, task.split(0.5, 2, method="authors")[0])
    assert run.split.source == "seed given, frac_train from the file's config"
    run = load_run({**blob, "config": {"frac_train": 0.5}})  # a config without the seed
    assert (run.split.seed, run.split.seed_origin) == (0, "default")
    assert run.split.source == (
        "seed assumed, frac_train from the file's config: the file's config does not say"
    )
    run = load_run(blob, frac_train=0.4)
    assert torch.equal(run.train_indices, task.split(0.4, 0, method="authors")[0])
    assert run.split.source == "seed assumed, frac_train given: the file stores no config"
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match=r"seed must be a nonnegative integer"):
            load_run(blob, seed=bad)
    with pytest.raises(ValueError, match=r"frac_train must be in the open interval"):
        load_run(blob, frac_train=1.0)
    with pytest.raises(CheckpointFormatError, match=r"stored split: frac_train"):
        load_run({**blob, "config": {"frac_train": 2}})
    with pytest.raises(CheckpointFormatError, match=r"stored split: seed must be an integer >= 0"):
        load_run({**blob, "config": {"seed": 2.5}})


def test_split_of_other_formats(tmp_path):
    """Our runs: our procedure with config.json's values; given values override them."""
    models = {e: random_tl_model(CFG, seed=e) for e in (0, 5)}
    _write_run(tmp_path, models)  # frac_train 0.4, seed 3
    task = ModularAddition(CFG.p)
    run = load_run(tmp_path)
    assert run.split_line() == (
        "train split: tl_grokking's procedure, seed 3, frac_train 0.4: 115 of 289 pairs "
        "(from config.json)"
    )
    assert run.split_check is None  # only the authors' format is checked
    run = load_run(tmp_path, seed=4)
    assert torch.equal(run.train_indices, task.split(0.4, 4)[0])
    assert run.split.source == "seed given, frac_train from config.json"
    # a lone safetensors checkpoint records no split, unless one is asked for
    save_safetensors(tl_state(models[5]), tmp_path / "epoch_5.safetensors")
    assert load_run(tmp_path / "epoch_5.safetensors").split is None
    assert "none recorded" in load_run(tmp_path / "epoch_5.safetensors").split_line()
    run = load_run(tmp_path / "epoch_5.safetensors", frac_train=0.5)
    assert torch.equal(run.train_indices, task.split(0.5, 0)[0])
    assert run.split.source == "seed assumed, frac_train given: the file records no split"


def test_plain_state_dict_round_trip(tmp_path):
    source = random_tl_model(CFG, seed=3)
    expected = params(source)
    assert_same_params(load_checkpoint(tl_state(source)), expected)
    torch.save(tl_state(source), tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert detect_format(tmp_path / "model.pt") == "state_dict"
    assert_same_params(loaded, expected)
    np.testing.assert_array_equal(final_logits(loaded, CFG.p), final_logits(source, CFG.p))
    # legacy (non-zip) torch serialisation
    torch.save(tl_state(source), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert_same_params(load_checkpoint(tmp_path / "legacy.pth"), expected)


def test_absent_biases_are_zero():
    source = random_tl_model(CFG, seed=4)
    state = {k: v for k, v in tl_state(source).items() if ".b_" not in k and "b_U" not in k}
    model = load_checkpoint(state)
    for name, param in tl_state(model).items():
        if name.rsplit(".", 1)[-1].startswith("b_"):
            assert not param.any(), name
        else:
            assert torch.equal(param, tl_state(source)[name]), name


def test_expected_shape_table_matches_transformer_lens():
    model = make_model(CFG)
    table = _expected_shapes(CFG, "tl")
    assert table == {k: tuple(v.shape) for k, v in tl_state(model).items()}
    assert table == weight_shapes(CFG)


def test_loads_old_transformer_lens_buffers():
    """TransformerLens 1.x/2.x saved a (n_ctx, n_ctx) bool mask and IGNORE = -1e5."""
    source = random_tl_model(CFG, seed=5)
    state = dict(tl_state(source))
    state["blocks.0.attn.mask"] = torch.ones(3, 3, dtype=torch.bool).tril()
    state["blocks.0.attn.IGNORE"] = torch.tensor(-1e5)
    assert_same_params(load_checkpoint(state), params(source))
    state["blocks.0.attn.mask"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(IncompatibleModelError, match=r"blocks\.0\.attn\.mask is not the causal"):
        load_checkpoint(state)


def _write_run(run_dir: Path, models: dict[int, object], **config) -> dict:
    cfg = {
        "task": "add",
        "p": CFG.p,
        "frac_train": 0.4,
        "seed": 3,
        "d_model": CFG.d_model,
        "n_heads": CFG.n_heads,
        "d_head": CFG.d_head,
        "d_mlp": CFG.d_mlp,
        "act_fn": "relu",
        "trainable_biases": "none",
        "attn_rate": 1.0,
        **config,
    }
    write_json(run_dir / "config.json", cfg)
    for epoch, model in models.items():
        save_safetensors(
            tl_state(model), checkpoint_path(run_dir, epoch), metadata={"epoch": str(epoch)}
        )
        append_metrics(run_dir, {"epoch": epoch, "train_loss": 1.0 / (epoch + 1)})
    return cfg


def test_run_directory(tmp_path):
    models = {e: random_tl_model(CFG, seed=e) for e in (0, 5, 10)}
    cfg = _write_run(tmp_path, models, act_fn="gelu", attn_rate=0.5)
    # a crash-left temp file must not be mistaken for a checkpoint
    (tmp_path / "checkpoints" / ".epoch_15.safetensors.abc.tmp").write_bytes(b"partial")
    run = load_run(tmp_path)
    assert run.format == "run_dir" and run.epochs == [0, 5, 10]
    assert run.model_config.act_fn == "gelu" and run.model_config.attn_rate == 0.5
    task = ModularAddition(CFG.p)
    train, test = task.split(cfg["frac_train"], cfg["seed"])
    assert torch.equal(run.train_indices, train) and torch.equal(run.test_indices, test)
    assert [m["epoch"] for m in run.metrics] == [0, 5, 10]
    for epoch, model in run.iter_models():
        assert_same_params(model, params(models[epoch]))
        assert model.cfg.act_fn == "gelu" and model_attn_rate(model) == 0.5
    assert_same_params(load_checkpoint(tmp_path), params(models[10]))  # default: last
    assert_same_params(load_checkpoint(tmp_path, epoch=5), params(models[5]))
    with pytest.raises(ValueError, match=r"\[0, 5, 10\], got 7"):
        load_checkpoint(tmp_path, epoch=7)
    # a single checkpoint file uses the run's config.json two levels up
    single = load_checkpoint(checkpoint_path(tmp_path, 5))
    assert single.cfg.act_fn == "gelu" and model_attn_rate(single) == 0.5
    assert detect_format(checkpoint_path(tmp_path, 5)) == "safetensors"
    assert load_run(checkpoint_path(tmp_path, 5)).epochs == [5]


def test_run_config_disagreeing_with_tensors(tmp_path):
    _write_run(tmp_path, {0: random_tl_model(CFG)}, d_mlp=64)
    with pytest.raises(CheckpointShapeError, match=r"d_mlp=64 .* d_mlp=40"):
        load_run(tmp_path)


def test_safetensors_outside_a_run(tmp_path):
    source = random_tl_model(CFG, seed=6)
    save_safetensors(tl_state(source), tmp_path / "epoch_42.safetensors")
    model = load_checkpoint(tmp_path / "epoch_42.safetensors")
    assert_same_params(model, params(source))
    assert model.cfg.act_fn == "relu"  # nothing says otherwise: the paper's activation
    assert load_run(tmp_path / "epoch_42.safetensors").epochs == [42]


def test_trained_run_end_to_end(tmp_path):
    """A real (tiny) training run: the loaded split and model reproduce the logged metrics."""
    from tl_grokking.training.config import TrainConfig
    from tl_grokking.training.trainer import train_model

    config = TrainConfig(
        p=17, d_model=24, n_heads=3, d_mlp=40, epochs=12, log_every=4, checkpoint_every=4,
        frac_train=0.5, seed=1, weight_decay=1.0,
    )  # fmt: skip
    result = train_model(config, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.epochs == [0, 4, 8, 12]
    assert_same_params(run.model(), params(result.model))
    task = ModularAddition(17)
    labels = task.labels().numpy()
    for record in run.metrics:
        logits = final_logits(run.model(record["epoch"]), 17)[:, :17]
        for split, idx in (("train", run.train_indices), ("test", run.test_indices)):
            idx = idx.numpy()
            acc = (logits[idx].argmax(-1) == labels[idx]).mean()
            assert acc == pytest.approx(record[f"{split}_acc"], abs=1e-9)
            assert ce64(logits[idx], labels[idx]) == pytest.approx(
                record[f"{split}_loss"], rel=1e-4
            )
    # the resume file holds the final model too
    assert_same_params(
        load_checkpoint(tmp_path / "run" / "resume.safetensors"), params(result.model)
    )


# ---------------------------------------------------------------------------------------------
# TransformerLens demo format
# ---------------------------------------------------------------------------------------------


def _demo_blob(config_as_object: bool = True) -> tuple[dict, dict[int, dict]]:
    models = {e: random_tl_model(CFG, seed=20 + e) for e in (99, 199, 299)}
    final = models[299]
    perm = torch.randperm(CFG.p**2, generator=torch.Generator().manual_seed(0))
    blob = {
        "model": tl_state(final),
        "config": final.cfg if config_as_object else final.cfg.to_dict(),
        "checkpoints": [tl_state(m) for m in models.values()],
        "checkpoint_epochs": list(models),
        "train_losses": [1.0] * 300,
        "test_losses": [2.0] * 300,
        "train_indices": perm[:86],
        "test_indices": perm[86:],
    }
    return blob, {e: params(m) for e, m in models.items()}


@pytest.mark.parametrize("config_as_object", [True, False])
def test_demo_file(tmp_path, config_as_object):
    blob, expected = _demo_blob(config_as_object)
    torch.save(blob, tmp_path / "grokking_demo.pth")
    before = set(torch.serialization.get_safe_globals())
    run = load_run(tmp_path / "grokking_demo.pth")
    assert set(torch.serialization.get_safe_globals()) == before  # allowlist not left behind
    assert run.format == "tl_demo" and run.epochs == [99, 199, 299]
    assert run.model_config == CFG
    assert torch.equal(run.train_indices, blob["train_indices"].sort().values)
    assert torch.equal(run.test_indices, blob["test_indices"].sort().values)
    assert run.split_line() == "train split: the file's train_indices: 86 of 289 pairs"
    assert len(run.metrics) == 300 and run.metrics[5] == {
        "epoch": 5,
        "train_loss": 1.0,
        "test_loss": 2.0,
    }
    for epoch in run.epochs:
        assert_same_params(run.model(epoch), expected[epoch])
    assert_same_params(load_checkpoint(tmp_path / "grokking_demo.pth"), expected[299])


def test_demo_load_keeps_a_callers_allowlist(tmp_path):
    blob, _ = _demo_blob()
    torch.save(blob, tmp_path / "demo.pth")
    with torch.serialization.safe_globals([np.dtype]):  # the caller trusts np.dtype already
        load_run(tmp_path / "demo.pth")
        assert np.dtype in torch.serialization.get_safe_globals()


def test_demo_config_with_layernorm_is_refused():
    blob, _ = _demo_blob(config_as_object=False)
    blob["config"]["normalization_type"] = "LN"
    with pytest.raises(IncompatibleModelError, match=r"normalization_type is 'LN'"):
        load_run(blob)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_unknown_format_lists_known_formats(tmp_path):
    for bad in ({"foo": torch.zeros(2)}, {"weights": [1, 2]}, {}):
        with pytest.raises(CheckpointFormatError) as info:
            load_checkpoint(bad)
        assert all(name in str(info.value) for name in CHECKPOINT_FORMATS)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointFormatError, match=r"not a safetensors or torch file"):
        load_checkpoint(tmp_path / "notes.txt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointFormatError, match=r"expected a dict, got list"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointFormatError, match=r"expected a path or a dict"):
        load_checkpoint(42)


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy"])
def test_corrupt_or_truncated_file(tmp_path, kind):
    state = tl_state(random_tl_model(CFG))
    path = tmp_path / f"model.{kind}"
    if kind == "safetensors":
        save_safetensors(state, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match=r"corrupt or truncated|not a safetensors"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointFormatError):
        load_checkpoint(path)
    if kind == "safetensors":  # cut inside the 8-byte header length: still named as such
        path.write_bytes(data[:5])
        with pytest.raises(CheckpointFormatError, match=r"corrupt or truncated safetensors"):
            load_checkpoint(path)


class _Exploit:
    """Pickles to a call of ``exec`` that would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("serialisation", ["zip", "legacy"])
def test_malicious_pickle_never_runs(tmp_path, serialisation):
    marker = tmp_path / "marker"
    blob = {"model": random_authors_state(CFG), "payload": _Exploit(marker)}
    path = tmp_path / "evil.pth"
    torch.save(blob, path, _use_new_zipfile_serialization=serialisation == "zip")
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load.*exec.*weights_only=True"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        load_run(path)
    assert not marker.exists()
    # The file really is dangerous: a plain unpickler would have run the payload.
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.read_text() == "pwned"


def test_pickled_module_is_refused_not_run(tmp_path):
    """`torch.save(model)` pickles the class: loading it would import and run library code.

    (A TransformerBridge cannot be pickled at all; a HookedTransformer and any other module can.)
    """
    modules = [(torch.nn.Linear(2, 2), r"torch\.nn\.modules\.linear\.Linear")]
    if BACKEND == "HookedTransformer":
        modules.append((make_model(CFG), r"HookedTransformer"))
    for module, name in modules:
        torch.save(module, tmp_path / "whole_model.pt")
        with pytest.raises(UnsafeCheckpointError, match=name):
            load_checkpoint(tmp_path / "whole_model.pt")


def test_incompatible_state_dict_names_every_failure():
    two_layers = make_model(ModelConfig(p=17, d_model=24, n_heads=3, d_mlp=40, n_layers=2))
    state = dict(tl_state(two_layers))
    state["ln_final.w"] = torch.ones(24)
    state["ln_final.b"] = torch.zeros(24)
    state["pos_embed.W_pos"] = torch.zeros(4, 24)
    state["unembed.W_U"] = torch.zeros(24, 20)
    state["unembed.b_U"] = torch.zeros(20)
    with pytest.raises(IncompatibleModelError) as info:
        load_checkpoint(state)
    message = str(info.value)
    assert "n_layers is 2, must be 1" in message
    assert "LayerNorm weights present (ln_final.b, ln_final.w" in message
    assert "n_ctx is 4" in message
    assert "d_vocab_out is 20" in message


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            {
                "blocks.0.attn.W_O": torch.zeros(3, 8, 24),
                "blocks.0.attn.W_Q": torch.zeros(3, 24, 8),
            },
            None,
        ),  # fmt: skip
        (
            {"blocks.0.mlp.W_out": torch.zeros(41, 24)},
            r"blocks\.0\.mlp\.W_out .*\(40, 24\), got \(41, 24\)",
        ),
        (
            {"blocks.0.attn.b_K": torch.zeros(3, 7)},
            r"blocks\.0\.attn\.b_K .*\(3, 8\), got \(3, 7\)",
        ),
        ({"unembed.b_U": torch.zeros(5)}, r"unembed\.b_U .*\(17,\), got \(5,\)"),
    ],
)
def test_wrong_shapes_name_the_key(change, pattern):
    state = {**tl_state(random_tl_model(CFG)), **change}
    if pattern is None:  # a well-formed replacement loads fine
        load_checkpoint(state)
        return
    with pytest.raises(CheckpointShapeError, match=pattern):
        load_checkpoint(state)


def test_wrong_shapes_authors_layout():
    state = random_authors_state(CFG)
    state["blocks.0.attn.W_V"] = torch.zeros(3, 24, 8)  # TL orientation in an authors' file
    with pytest.raises(
        CheckpointShapeError, match=r"W_V \(authors layout\): expected shape \(3, 8, 24\)"
    ):
        load_checkpoint(state)


def test_missing_and_unexpected_keys():
    state = dict(tl_state(random_tl_model(CFG)))
    del state["blocks.0.mlp.W_out"]
    with pytest.raises(CheckpointFormatError, match=r"missing keys \['blocks\.0\.mlp\.W_out'\]"):
        load_checkpoint(state)
    state = {**tl_state(random_tl_model(CFG)), "blocks.0.attn.W_extra": torch.zeros(2)}
    with pytest.raises(
        CheckpointFormatError, match=r"unexpected keys \['blocks\.0\.attn\.W_extra'\]"
    ):
        load_checkpoint(state)


def test_p_mismatch():
    state = tl_state(random_tl_model(CFG))
    with pytest.raises(IncompatibleModelError, match=r"d_vocab is 18 \(p = 17\) but p = 19"):
        load_checkpoint(state, p=19)
    model = load_checkpoint(state, p=17)
    with pytest.raises(IncompatibleModelError, match=r"the task has p = 19"):
        check_compatible(model, ModularAddition(19))


def test_nonfinite_weights(tmp_path):
    state = dict(tl_state(random_tl_model(CFG)))
    state["blocks.0.mlp.W_out"] = state["blocks.0.mlp.W_out"].clone()
    state["blocks.0.mlp.W_out"][3, 4] = float("nan")
    state["unembed.b_U"] = state["unembed.b_U"].clone()
    state["unembed.b_U"][0] = float("inf")
    with pytest.raises(
        NonFiniteWeightsError,
        match=r"blocks\.0\.mlp\.W_out \(1 of 960 values\), unembed\.b_U \(1 of 17",
    ):
        load_checkpoint(state)
    model = load_checkpoint(state, allow_nonfinite=True)
    assert torch.isnan(model.W_out[0, 3, 4])
    # the same check inside a run: the error names the epoch
    save_safetensors(state, checkpoint_path(tmp_path, 3))
    write_json(tmp_path / "config.json", {"p": 17, "frac_train": 0.3, "seed": 0})
    with pytest.raises(NonFiniteWeightsError, match=r"epoch 3"):
        load_run(tmp_path).model(3)


def test_empty_run_directory(tmp_path):
    with pytest.raises(RunDirError, match=r"no config\.json"):
        load_checkpoint(tmp_path)
    write_json(tmp_path / "config.json", {"p": 17, "frac_train": 0.3, "seed": 0})
    with pytest.raises(RunDirError, match=r"no checkpoints"):
        load_run(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".epoch_5.safetensors.x1.tmp").write_bytes(b"half")
    with pytest.raises(RunDirError, match=r"no checkpoints"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"p": 17, "frac_tr')  # cut off mid-write
    with pytest.raises(RunDirError, match=r"config\.json is not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match=r"must hold a JSON object"):
        load_run(tmp_path)


def test_single_state_dict_is_not_a_run():
    with pytest.raises(CheckpointFormatError, match=r"not a run; use load_checkpoint"):
        load_run(tl_state(random_tl_model(CFG)))


def test_bad_device():
    with pytest.raises(ValueError, match=r"device"):
        load_checkpoint(tl_state(random_tl_model(CFG)), device="tpu")


def test_errors_are_value_errors():
    """Every error class is a ValueError, which the CLI prints as a clean error."""
    for cls in (CheckpointFormatError, CheckpointShapeError, UnsafeCheckpointError,
                NonFiniteWeightsError, IncompatibleModelError, RunDirError):  # fmt: skip
        assert issubclass(cls, ValueError)


def test_a_bridge_state_dict_is_refused_by_name():
    """A TransformerBridge's own state_dict() does not record the number of heads."""
    bridge_like = {
        "embed.weight": torch.zeros(18, 24),
        "pos_embed.weight": torch.zeros(3, 24),
        "blocks.0.attn.q.weight": torch.zeros(24, 24),
        "blocks.0.attn.o.weight": torch.zeros(24, 24),
        "unembed.weight": torch.zeros(17, 24),
    }
    states = [bridge_like]
    if BACKEND == "TransformerBridge":
        states.append(make_model(CFG).state_dict())
    for state in states:
        with pytest.raises(
            CheckpointFormatError, match=r"TransformerBridge state dict.*tl3_state_dict"
        ):
            load_checkpoint(state)
