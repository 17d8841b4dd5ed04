"""Tests of the trainer (tl_grokking.training.trainer) against independent computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tl_grokking.training.trainer as training
from tl_compat import tl_state
from tl_grokking.data.tasks import make_task
from tl_grokking.model.transformer import load_weights, make_model
from tl_grokking.runs.rundir import (
    checkpoint_path,
    list_checkpoints,
    load_safetensors,
    read_metrics,
)
from tl_grokking.training.config import TrainConfig, load_train_config
from tl_grokking.training.trainer import (
    TrainingDivergedError,
    cross_entropy_final,
    train_model,
    warmup_factor,
)

TINY = dict(
    p=17, frac_train=0.5, d_model=32, n_heads=2, d_mlp=64, lr=3e-3,
    epochs=40, log_every=5, checkpoint_every=10,
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(run_dir, epoch):
    return load_safetensors(checkpoint_path(run_dir, epoch))


def _without_elapsed(records):
    return [{k: v for k, v in r.items() if k != "elapsed"} for r in records]


# ---- the session run -------------------------------------------------------------------------


def test_small_run_groks(small_run, small_model, small_task):
    metrics = read_metrics(small_run)
    assert [m["epoch"] for m in metrics] == list(range(0, 1001, 50))
    assert metrics[-1]["test_acc"] >= 0.99
    assert metrics[-1]["train_acc"] == 1.0
    # It is grokking, not immediate generalisation: memorised with test accuracy far below 0.99.
    memorised = [m for m in metrics if m["train_acc"] == 1.0]
    assert memorised[0]["epoch"] <= 200 and memorised[0]["test_acc"] < 0.8
    assert [e for e, _ in list_checkpoints(small_run)] == list(range(0, 1001, 50))
    assert load_train_config(small_run).p == small_task.p == 29
    with torch.no_grad():  # the loaded final model computes (a + b) mod p on the whole grid
        pred = small_model(small_task.tokens())[:, -1].argmax(-1)
    assert (pred == small_task.labels()).double().mean().item() >= 0.99


# ---- loss, split, schedule -------------------------------------------------------------------


def _ce_float64_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> float:
    total = 0.0
    for row, label in zip(logits.double().tolist(), labels.tolist(), strict=True):
        top = max(row)
        total += top + math.log(sum(math.exp(x - top) for x in row)) - row[label]
    return total / len(labels)


def test_cross_entropy_is_float64_and_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    logits = 30 * torch.randn(50, 17, generator=gen)
    labels = torch.randint(0, 17, (50,), generator=gen)
    loss = cross_entropy_final(logits, labels)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_ce_float64_by_hand(logits, labels), rel=1e-12)
    # float64 keeps a loss of ~2e-10 (a logit gap of 23) that float32 rounds to exactly 0.
    sharp = torch.zeros(1, 3)
    sharp[0, 0] = 23.0
    assert torch.nn.functional.cross_entropy(sharp, torch.tensor([0])).item() == 0.0
    assert cross_entropy_final(sharp, torch.tensor([0])).item() == pytest.approx(
        2 * math.exp(-23.0), rel=1e-5, abs=0.0
    )


@pytest.mark.parametrize("scale", [0.1, 30.0, 3000.0])
def test_cross_entropy_gradient_is_softmax_minus_onehot(scale):
    # The loss's hand-written backward against the closed form (softmax − onehot) / batch in
    # float64, and against autograd through F.cross_entropy in float64; logits far apart
    # (scale 3000) check the log-sum-exp shift.
    gen = torch.Generator().manual_seed(1)
    logits = (scale * torch.randn(64, 23, generator=gen)).requires_grad_()
    labels = torch.randint(0, 23, (64,), generator=gen)
    cross_entropy_final(logits, labels).mul(2.5).backward()
    x = logits.detach().double()
    closed = 2.5 * (torch.softmax(x, 1) - torch.nn.functional.one_hot(labels, 23)) / 64
    assert logits.grad is not None and logits.grad.dtype == torch.float32
    torch.testing.assert_close(logits.grad, closed.float(), rtol=1e-6, atol=1e-12)
    ref = x.clone().requires_grad_()
    torch.nn.functional.cross_entropy(ref, labels).backward()
    torch.testing.assert_close(logits.grad.double(), 2.5 * ref.grad, rtol=1e-6, atol=1e-12)
    loss = cross_entropy_final(logits.detach(), labels)
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(x, labels).item(), rel=1e-13
    )
    with pytest.raises(ValueError, match="labels"):
        cross_entropy_final(logits.detach(), labels[:3])


def test_cross_entropy_refuses_double_backward():
    logits = torch.randn(4, 5, requires_grad=True)
    loss = cross_entropy_final(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match="_CrossEntropy64 has first-order gradients only"):
        torch.autograd.grad(loss, [logits], create_graph=True)


def test_cross_entropy_gradient_has_no_subnormal_floats():
    # A class the model is sure against (a logit gap of 95) has probability e^-95 ≈ 5e-42:
    # in float32 a subnormal, which slows every product it enters ~100× on Intel CPUs. The
    # gradient flushes it to zero (as flush-to-zero mode would) and keeps the normal entries.
    logits = torch.tensor([[0.0, -95.0, -3.0], [10.0, 0.0, 9.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    cross_entropy_final(logits, labels).backward()
    grad = logits.grad
    assert grad is not None
    tiny = torch.finfo(torch.float32).tiny
    assert not bool(((grad != 0) & (grad.abs() < tiny)).any())
    assert grad[0, 1].item() == 0.0
    closed = (torch.softmax(logits.detach().double(), 1) - torch.eye(3)[[0, 0]].double()) / 2
    assert closed[0, 1].item() != 0.0 and closed.float()[0, 1].abs().item() < tiny
    keep = closed.abs() >= tiny
    torch.testing.assert_close(grad[keep].double(), closed[keep], rtol=1e-6, atol=0.0)


def test_logged_metrics_equal_independent_evaluation(tmp_path):
    config = TrainConfig(**TINY)
    train_model(config, tmp_path, progress=False)
    task = make_task("add", 17)
    train_idx, test_idx = task.split(0.5, 0)
    tokens, labels = task.tokens(), task.labels()
    for record in [r for r in read_metrics(tmp_path) if r["epoch"] in (0, 20, 40)]:
        model = make_model(config.model_config(), seed=0)
        load_weights(model, _state(tmp_path, record["epoch"]))
        with torch.no_grad():
            logits = model(tokens)[:, -1]  # the plain HookedTransformer forward
        for split, idx in (("train", train_idx), ("test", test_idx)):
            expected = _ce_float64_by_hand(logits[idx], labels[idx])
            assert record[f"{split}_loss"] == pytest.approx(expected, rel=1e-5)
            acc = (logits[idx].argmax(-1) == labels[idx]).double().mean().item()
            assert record[f"{split}_acc"] == pytest.approx(acc)
    # epoch 0 is the seeded initialisation
    init = tl_state(make_model(config.model_config(), seed=0))
    assert all(torch.equal(init[k], v) for k, v in _state(tmp_path, 0).items())


def test_split_sizes_and_disjointness():
    train_idx, test_idx = make_task("add", 113).split(0.3, 0)
    assert len(train_idx) == 3830 and len(test_idx) == 12769 - 3830
    both = torch.cat([train_idx, test_idx])
    assert torch.equal(both.sort().values, torch.arange(12769))
    other, _ = make_task("add", 113).split(0.3, 1)
    assert not torch.equal(other, train_idx)


def test_warmup_schedule_values(tmp_path):
    assert [warmup_factor(s, 10) for s in (0, 1, 5, 10, 11, 1000)] == [0, 0.1, 0.5, 1, 1, 1]
    assert warmup_factor(0, 0) == 1.0
    config = TrainConfig(**{**TINY, "epochs": 12, "log_every": 1, "checkpoint_every": 1})
    train_model(config, tmp_path, progress=False)
    lrs = {r["epoch"]: r["lr"] for r in read_metrics(tmp_path)}
    assert lrs == {e: pytest.approx(3e-3 * min(e / 10, 1)) for e in range(13)}
    # The first step has learning rate 0 (LambdaLR semantics): AdamW leaves the weights alone.
    assert all(torch.equal(_state(tmp_path, 0)[k], v) for k, v in _state(tmp_path, 1).items())
    assert not torch.equal(_state(tmp_path, 1)["embed.W_E"], _state(tmp_path, 2)["embed.W_E"])


# ---- determinism, resume, early stop, divergence ---------------------------------------------


def test_same_seed_same_run_and_resume_is_bit_identical(tmp_path):
    config = TrainConfig(**TINY)
    a = train_model(config, tmp_path / "a", progress=False)
    b = train_model(config, tmp_path / "b", progress=False)
    for epoch, _ in list_checkpoints(tmp_path / "a"):
        sa, sb = _state(tmp_path / "a", epoch), _state(tmp_path / "b", epoch)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _without_elapsed(read_metrics(tmp_path / "a")) == _without_elapsed(
        read_metrics(tmp_path / "b")
    )
    assert a.metrics["test_loss"] == b.metrics["test_loss"]

    # Crash at epoch 25 (a callback raises); the last checkpoint/resume state is epoch 20.
    def crash(epoch, model):
        if epoch == 25:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        train_model(config, tmp_path / "c", progress=False, callbacks=[crash])
    assert max(r["epoch"] for r in read_metrics(tmp_path / "c")) == 20  # the 25 line never landed
    resumed = train_model(config, tmp_path / "c", resume=True, progress=False)
    assert resumed.epoch == 40
    final_a, final_c = tl_state(a.model), tl_state(resumed.model)
    assert all(torch.equal(final_a[k], final_c[k]) for k in final_a)
    assert _without_elapsed(read_metrics(tmp_path / "c")) == _without_elapsed(
        read_metrics(tmp_path / "a")
    )

    # Resume with more epochs continues the same trajectory as a longer uninterrupted run.
    longer = TrainConfig(**{**TINY, "epochs": 50})
    extended = train_model(longer, tmp_path / "c", resume=True, progress=False)
    straight = train_model(longer, tmp_path / "d", progress=False)
    assert all(
        torch.equal(tl_state(extended.model)[k], v) for k, v in tl_state(straight.model).items()
    )


def test_early_stop_matches_the_full_run(small_run, tmp_path):
    from conftest import SMALL_RUN_CONFIG

    full = read_metrics(small_run)
    threshold, patience = 0.58, 2
    streak, expected = 0, None
    for record in full:
        streak = streak + 1 if record["test_acc"] >= threshold else 0
        if streak >= patience:
            expected = record["epoch"]
            break
    assert expected is not None and expected < SMALL_RUN_CONFIG["epochs"]
    config = TrainConfig(
        **{**SMALL_RUN_CONFIG, "early_stop_acc": threshold, "early_stop_patience": patience}
    )
    result = train_model(config, tmp_path, progress=False)
    assert result.stopped_early and result.epoch == expected
    assert read_metrics(tmp_path)[-1]["epoch"] == expected
    mine, reference = _state(tmp_path, expected), _state(small_run, expected)
    assert all(torch.equal(mine[k], reference[k]) for k in mine)

    # resuming the early-stopped run with the same settings trains nothing more (a sweep
    # resumes every run it finds unfinished); without the early stop it continues
    before = read_metrics(tmp_path)
    again = train_model(config, tmp_path, resume=True, progress=False)
    assert again.stopped_early and again.epoch == expected
    assert read_metrics(tmp_path) == before
    onward = train_model(
        config.replace(early_stop_acc=None, epochs=expected + 10), tmp_path, resume=True,
        progress=False,
    )  # fmt: skip
    assert onward.epoch == expected + 10 and not onward.stopped_early


def test_divergence_raises_and_keeps_checkpoints(tmp_path, monkeypatch):
    config = TrainConfig(**TINY)
    reference = tmp_path / "ref"
    train_model(config, reference, progress=False)
    real = training.cross_entropy_final
    calls = {"n": 0}

    def poisoned(logits, labels):
        loss = real(logits, labels)
        if logits.requires_grad:  # training steps only
            calls["n"] += 1
            if calls["n"] == 24:  # the step from epoch 23 to 24
                return loss * float("nan")
        return loss

    monkeypatch.setattr(training, "cross_entropy_final", poisoned)
    with pytest.raises(TrainingDivergedError, match="epoch 23"):
        train_model(config, tmp_path / "run", progress=False)
    assert isinstance(TrainingDivergedError("x"), RuntimeError)
    assert [e for e, _ in list_checkpoints(tmp_path / "run")] == [0, 10, 20]
    for epoch in (0, 10, 20):
        mine, ref = _state(tmp_path / "run", epoch), _state(reference, epoch)
        assert all(torch.equal(mine[k], ref[k]) for k in mine)
    records = read_metrics(tmp_path / "run")
    assert all(math.isfinite(r["train_loss"]) for r in records)


def test_huge_learning_rate_diverges_cleanly(tmp_path):
    config = TrainConfig(**{**TINY, "lr": 1e30, "warmup_steps": 0, "weight_decay": 0.0})
    with pytest.raises(TrainingDivergedError):
        train_model(config, tmp_path, progress=False)
    assert (tmp_path / "checkpoints" / "epoch_0.safetensors").is_file()


# ---- run directory policy --------------------------------------------------------------------


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 10})
    train_model(config, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match=r"lr: 0\.003 -> 0\.001"):
        train_model(config.replace(lr=1e-3), tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="same|this configuration"):
        train_model(config, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="seed"):
        train_model(config.replace(seed=3), tmp_path, resume=True, progress=False)
    redo = train_model(config.replace(lr=1e-3), tmp_path, overwrite=True, progress=False)
    assert redo.epoch == 10 and load_train_config(tmp_path).lr == 1e-3
    assert json.loads((tmp_path / "config.json").read_text()) == config.replace(lr=1e-3).to_dict()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        train_model(config, tmp_path / "other", progress=False)


def test_callbacks_are_merged_into_metric_lines(tmp_path):
    seen = []

    def weight_norm(epoch, model):
        seen.append(epoch)
        assert not torch.is_grad_enabled()
        return {"w_e_norm": model.embed.W_E.norm().item()}

    config = TrainConfig(**{**TINY, "epochs": 30, "log_every": 10, "measure_every": 15})
    train_model(config, tmp_path, progress=False, callbacks=[weight_norm])
    records = {r["epoch"]: r for r in read_metrics(tmp_path)}
    assert sorted(records) == [0, 10, 15, 20, 30]
    assert seen == [0, 15, 30]
    for epoch in seen:
        norm = _state(tmp_path, epoch)["embed.W_E"].norm().item() if epoch % 10 == 0 else None
        assert "w_e_norm" in records[epoch]
        if norm is not None:
            assert records[epoch]["w_e_norm"] == pytest.approx(norm)
    assert "w_e_norm" not in records[10]


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("p", 2),
        ("p", 7.5),
        ("frac_train", 0.0),
        ("frac_train", 1.0),
        ("epochs", 0),
        ("lr", 0.0),
        ("weight_decay", -1.0),
        ("beta2", 1.0),
        ("warmup_steps", -1),
        ("d_model", 0),
        ("n_heads", 0),
        ("d_mlp", -4),
        ("d_head", 0),
        ("act_fn", "tanh"),
        ("trainable_biases", "some"),
        ("attn_rate", 1.5),
        ("log_every", 0),
        ("checkpoint_every", 0),
        ("measure_every", 0),
        ("early_stop_acc", 1.5),
        ("early_stop_patience", 0),
        ("device", "tpu"),
        ("task", "subtract"),
        ("seed", -1),
    ],
)
def test_bad_config_value_error_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_bad_architecture_and_unavailable_device(tmp_path):
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TrainConfig(d_model=30, n_heads=4)
    assert TrainConfig(d_model=30, n_heads=4, d_head=8).model_config().d_head == 8
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train_model(TrainConfig(**{**TINY, "device": "cuda"}), tmp_path / "x", progress=False)
        assert not (tmp_path / "x").exists()  # nothing written before validation


def test_config_round_trip(tmp_path):
    config = TrainConfig(**{**TINY, "d_head": 8, "early_stop_acc": 0.9, "trainable_biases": "mlp"})
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**config.to_dict(), "batch_size": 3})
    model_config = config.model_config()
    assert (model_config.p, model_config.d_head, model_config.trainable_biases) == (17, 8, "mlp")
    assert config.make_task().p == 17


# ---- resuming with the stored configuration, error wording, one source of defaults ----------


def test_resume_config_changes_only_what_may_change(tmp_path):
    from tl_grokking.training.config import RESUMABLE_FIELDS, ResumeConfigError, resume_config

    config = TrainConfig(**{**TINY, "epochs": 20, "seed": 4, "trainable_biases": "mlp"})
    train_model(config, tmp_path / "run", progress=False)
    assert resume_config(tmp_path / "run") == config
    longer = resume_config(tmp_path / "run", epochs=30, log_every=10, seed=4)  # seed: unchanged
    assert longer == config.replace(epochs=30, log_every=10)
    with pytest.raises(ResumeConfigError, match=r"different lr, p \(lr: 0\.003 -> 0\.01; p") as e:
        resume_config(tmp_path / "run", lr=0.01, p=19, epochs=50)
    assert e.value.changes == {"lr": (0.003, 0.01), "p": (17, 19)}
    assert all(name in str(e.value) for name in RESUMABLE_FIELDS)
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        resume_config(tmp_path / "nothing")
    # the resumed run continues the same trajectory as a straight run to 30 epochs
    resumed = train_model(longer, tmp_path / "run", resume=True, progress=False)
    straight = train_model(longer, tmp_path / "straight", progress=False)
    final_r, final_s = tl_state(resumed.model), tl_state(straight.model)
    assert all(torch.equal(final_r[k], final_s[k]) for k in final_s)


def test_resume_from_the_initial_state_logs_each_epoch_once(tmp_path):
    """A crash before the first checkpoint after epoch 0 leaves the resume state of epoch 0;
    resuming from it must not write epoch 0's line twice."""
    config = TrainConfig(**{**TINY, "epochs": 12, "log_every": 2, "checkpoint_every": 10})

    def crash(epoch, model):
        if epoch == 6:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        train_model(config, tmp_path / "c", progress=False, callbacks=[crash])
    train_model(config, tmp_path / "c", resume=True, progress=False)
    train_model(config, tmp_path / "ref", progress=False)
    assert [r["epoch"] for r in read_metrics(tmp_path / "c")] == [0, 2, 4, 6, 8, 10, 12]
    assert _without_elapsed(read_metrics(tmp_path / "c")) == _without_elapsed(
        read_metrics(tmp_path / "ref")
    )
    for epoch in (0, 10, 12):
        mine, ref = _state(tmp_path / "c", epoch), _state(tmp_path / "ref", epoch)
        assert all(torch.equal(mine[k], ref[k]) for k in mine)


def test_api_errors_name_keyword_arguments(tmp_path):
    """The library says ``resume=True`` / ``overwrite=True``; the flags are the CLI's words
    (kept on the exception as ``cli_message``)."""
    config = TrainConfig(**{**TINY, "epochs": 4})
    train_model(config, tmp_path, progress=False)
    for attempt in (config, config.replace(lr=0.01)):
        with pytest.raises(FileExistsError) as err:
            train_model(attempt, tmp_path, progress=False)
        assert "resume=True" in str(err.value) and "overwrite=True" in str(err.value)
        assert "--" not in str(err.value)
        assert "--resume" in err.value.cli_message and "=True" not in err.value.cli_message
    with pytest.raises(FileExistsError, match="overwrite=True") as err:
        train_model(config.replace(seed=2), tmp_path, resume=True, progress=False)
    assert "--" not in str(err.value)
    with pytest.raises(NotADirectoryError, match=r"^run_dir .*config\.json is a file") as err:
        train_model(config, tmp_path / "config.json" / "run", progress=False)
    assert err.value.cli_message.startswith("--out ")


def test_train_config_fields_declare_help_and_share_the_model_defaults():
    import dataclasses

    from tl_grokking.model.config import ModelConfig

    model_fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for field in dataclasses.fields(TrainConfig):
        assert field.metadata["help"] and field.metadata["group"], field.name
        if field.name in model_fields:  # the architecture: ModelConfig's default and help
            assert field.default == model_fields[field.name].default, field.name
            assert field.metadata["help"] == model_fields[field.name].metadata["help"]
    assert TrainConfig().model_config() == ModelConfig()
    # ModelConfig checks (and normalises) the architecture once, for both
    config = TrainConfig(p=13.0, d_model=16.0, n_heads=2, d_head=None)
    assert type(config.p) is int and type(config.d_model) is int and config.d_head is None
    with pytest.raises(ValueError, match=r"^d_mlp must be a positive integer"):
        TrainConfig(d_mlp=0)


def test_config_modules_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tl_grokking.training.config, tl_grokking.model.config, tl_grokking.runs.rundir\n"
        "from tl_grokking.model.config import ModelConfig\n"
        "ModelConfig(p=7, d_model=8, n_heads=2)\n"
        "print(sorted(m for m in ('torch', 'numpy', 'transformer_lens') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_helpers_return_what_they_say():
    config = TrainConfig(**{**TINY, "measure_every": 3})
    assert [training._is_log_epoch(config, e) for e in (3, 4, 5, 6)] == [True, False, True, True]
    plain = TrainConfig(**TINY)
    assert all(type(training._is_log_epoch(plain, e)) is bool for e in range(7))
    assert training._is_measure_epoch(plain, 7) is True
    assert training._is_measure_epoch(config, 4) is False
    assert training._is_measure_epoch(config, config.epochs) is True
