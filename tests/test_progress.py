"""Progress measures: every column against an independent brute-force computation, the Gini
coefficient against closed forms, the paper's qualitative facts on a small grokking run, the
sources (run dir / LoadedRun / sequence), the CSV table, the training callback and bad input."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from tl_compat import tl_state
from tl_grokking.analysis.circuits import key_frequencies
from tl_grokking.analysis.progress import (
    ProgressMeasures,
    cheap_measures_callback,
    gini,
    progress_measures,
    read_measures_csv,
)
from tl_grokking.data.tasks import make_task
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import BACKEND, make_model
from tl_grokking.runs.checkpoints import load_run
from tl_grokking.runs.rundir import save_safetensors, write_json


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread avoids OpenMP contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_dir_of(small_run) -> Path:
    return Path(getattr(small_run, "run_dir", small_run))


@pytest.fixture(scope="module")
def small_measures(small_run) -> ProgressMeasures:
    return progress_measures(run_dir_of(small_run), progress=False)


# ---------------------------------------------------------------------------------------------
# Independent reference computations (nothing from tl_grokking beyond the model itself)
# ---------------------------------------------------------------------------------------------


def gini_mean_abs_diff(x: list[float]) -> float:
    """Classical Gini: sum_ij |x_i - x_j| / (2 N sum x) — equal to Hurley & Rickard's form."""
    n, s = len(x), sum(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * n * s)


def explicit_fourier_basis(p: int) -> torch.Tensor:
    """Rows [1/sqrt(p), sqrt(2/p) cos(2 pi k x / p), sqrt(2/p) sin(...), ...] for odd p."""
    rows = [[1 / math.sqrt(p)] * p]
    for k in range(1, (p - 1) // 2 + 1):
        rows.append([math.sqrt(2 / p) * math.cos(2 * math.pi * k * x / p) for x in range(p)])
        rows.append([math.sqrt(2 / p) * math.sin(2 * math.pi * k * x / p) for x in range(p)])
    return torch.tensor(rows, dtype=torch.float64)


def ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy written out: logsumexp(row) - row[label]."""
    picked = logits[torch.arange(len(labels)), labels]
    return float((torch.logsumexp(logits, dim=1) - picked).mean())


def brute_force_row(model, p: int, train: list[int], key_freqs: list[int]) -> dict[str, float]:
    tokens = torch.tensor([[a, b, p] for a in range(p) for b in range(p)])
    labels = torch.tensor([(a + b) % p for a in range(p) for b in range(p)])
    with torch.no_grad():
        L = model(tokens)[:, -1, :p].double()  # the plain HookedTransformer forward
    test = [i for i in range(p * p) if i not in set(train)]
    tr, te = torch.tensor(train), torch.tensor(test)
    row = {
        "train_loss": ce(L[tr], labels[tr]),
        "test_loss": ce(L[te], labels[te]),
        "train_acc": float((L[tr].argmax(1) == labels[tr]).double().mean()),
        "test_acc": float((L[te].argmax(1) == labels[te]).double().mean()),
    }
    proj_k = {}
    for k in key_freqs:
        proj_k[k] = torch.zeros_like(L)
        for trig in (math.cos, math.sin):
            v = torch.tensor(
                [trig(2 * math.pi * k * (a + b) / p) for a in range(p) for b in range(p)],
                dtype=torch.float64,
            )
            v = v / v.norm()
            proj_k[k] += torch.outer(v, v @ L)  # projection of every class column onto v
    proj = sum(proj_k.values())
    row["restricted_loss"] = ce(proj + L.mean(0), labels)
    row["excluded_loss"] = ce((L - proj)[tr], labels[tr])
    for k in key_freqs:
        row[f"excluded_loss_k{k}"] = ce((L - proj_k[k])[tr], labels[tr])
    F = explicit_fourier_basis(p)
    w_e = model.W_E.detach()[:p].double()
    w_l = model.blocks[0].mlp.W_out.detach().double() @ model.W_U.detach()[:, :p].double()
    row["gini_W_E"] = gini_mean_abs_diff((F @ w_e).norm(dim=1).tolist())
    row["gini_W_L"] = gini_mean_abs_diff((w_l @ F.T).norm(dim=0).tolist())
    row["sum_sq_weights"] = sum(float(v.double().pow(2).sum()) for v in tl_state(model).values())
    return row


# ---------------------------------------------------------------------------------------------
# Gini
# ---------------------------------------------------------------------------------------------


def test_gini_closed_forms():
    assert float(gini(torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))) == pytest.approx(
        0.75, abs=1e-15
    )  # one-hot: 1 - 1/N
    assert float(gini(torch.full((7,), 3.0, dtype=torch.float64))) == pytest.approx(0, abs=1e-15)
    # [1, 2, 3, 4]: sum |xi - xj| = 20, 2 N sum = 80 -> 0.25
    assert float(gini(torch.tensor([4.0, 1.0, 3.0, 2.0], dtype=torch.float64))) == pytest.approx(
        0.25, abs=1e-15
    )


def test_gini_matches_mean_abs_difference_batched():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 13, generator=gen, dtype=torch.float64) ** 3
    got = gini(x)
    assert got.shape == (5,)
    for i in range(5):
        assert float(got[i]) == pytest.approx(gini_mean_abs_diff(x[i].tolist()), rel=1e-12)
    # scale and permutation invariant
    assert torch.allclose(gini(7 * x[:, torch.randperm(13, generator=gen)]), got, atol=1e-14)


def test_gini_rejects_bad_vectors():
    with pytest.raises(ValueError, match="nonnegative"):
        gini(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="all-zero"):
        gini(torch.zeros(3))
    with pytest.raises(ValueError, match="non-empty"):
        gini(torch.zeros(0))


# ---------------------------------------------------------------------------------------------
# Every measure against the brute force
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["initial", "final"])
def test_every_measure_equals_brute_force(small_run, which):
    run = load_run(run_dir_of(small_run))
    epoch = run.epochs[0] if which == "initial" else run.epochs[-1]
    model = run.model(epoch)
    p = run.task.p
    keys = key_frequencies(run.model(), run.task, rule="embed").keys[:3]
    train = run.train_indices.tolist()
    measures = progress_measures(
        [(epoch, model)],
        task=run.task,
        key_freqs=keys,
        train_indices=run.train_indices,
        progress=False,
    )
    got = measures.rows()[0]
    want = brute_force_row(model, p, train, keys)
    assert set(got) == {"epoch", *want}
    assert got["epoch"] == epoch
    for name, value in want.items():
        if name.endswith("acc"):
            assert got[name] == pytest.approx(value, abs=1.5 / len(train)), name
        elif "loss" in name:  # fast float32 forward vs plain forward: fp32 rounding of logits
            assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-7), name
        elif name == "gini_W_L":  # weights.W_L forms W_out @ W_U in the weights' float32
            assert got[name] == pytest.approx(value, rel=1e-6), name
        else:  # the other weight measures are exact up to float64 rounding
            assert got[name] == pytest.approx(value, rel=1e-10), name


def test_callback_gives_the_same_measures(small_run):
    run = load_run(run_dir_of(small_run))
    model = run.model()
    keys = key_frequencies(model, run.task, rule="embed").keys[:2]
    full = progress_measures(
        [(run.final_epoch, model)],
        key_freqs=keys,
        train_indices=run.train_indices,
        progress=False,
    ).rows()[0]
    callback = cheap_measures_callback(run.task, keys, train_indices=run.train_indices)
    got = callback(run.final_epoch, model)
    expected = {"gini_W_E", "gini_W_L", "sum_sq_weights", "restricted_loss", "excluded_loss"}
    assert set(got) == expected | {f"excluded_loss_k{k}" for k in keys}
    for name, value in got.items():
        assert value == pytest.approx(full[name], rel=1e-12), name
    weights_only = cheap_measures_callback(run.task, measure_every=10)
    assert set(weights_only(20, model)) == {"gini_W_E", "gini_W_L", "sum_sq_weights"}
    assert weights_only(15, model) == {}
    with pytest.raises(ValueError, match="measure_every"):
        cheap_measures_callback(run.task, measure_every=0)


# ---------------------------------------------------------------------------------------------
# The paper's qualitative facts on the small run
# ---------------------------------------------------------------------------------------------


def test_small_run_shows_the_paper_trends(small_run, small_measures):
    m = small_measures
    run = load_run(run_dir_of(small_run))
    assert m.epochs == run.epochs
    n_train = len(run.train_indices)
    n_all = run.task.p**2
    final = m.rows()[-1]
    full_loss = (n_train * final["train_loss"] + (n_all - n_train) * final["test_loss"]) / n_all
    assert final["restricted_loss"] < full_loss
    assert final["excluded_loss"] > final["train_loss"]
    assert m["gini_W_E"][-1] > m["gini_W_E"][0]
    assert m["gini_W_L"][-1] > m["gini_W_L"][0]
    # the weight norm grows while memorising, then falls through circuit formation and cleanup
    sq = m["sum_sq_weights"]
    peak = max(range(len(sq)), key=sq.__getitem__)
    assert 0 < peak < len(sq) // 2
    assert all(b < a for a, b in zip(sq[peak:], sq[peak + 1 :], strict=False))
    assert sq[-1] < 0.7 * sq[peak]
    # at initialisation nothing is Fourier-structured: excluding K barely changes the loss
    assert m["excluded_loss"][0] == pytest.approx(m["train_loss"][0], rel=0.05)


def test_default_key_freqs_come_from_the_final_checkpoint(small_run, small_measures):
    run = load_run(run_dir_of(small_run))
    rule = small_measures.key_freq_rule
    assert rule in ("circuit", "embed")
    assert small_measures.key_freqs == key_frequencies(run.model(), run.task, rule=rule).keys
    assert small_measures.key_freqs
    for k in small_measures.key_freqs:
        assert f"excluded_loss_k{k}" in small_measures


def test_sources_agree(small_run, small_measures):
    run = load_run(run_dir_of(small_run))
    epochs = run.epochs[:: max(1, len(run.epochs) // 3)]
    keys = small_measures.key_freqs
    seq = [(e, run.state_dict(e)) for e in epochs]
    a = progress_measures(
        seq, task=run.task, key_freqs=keys, train_indices=run.train_indices, progress=False
    )
    b = progress_measures(run, key_freqs=keys, progress=False)
    assert a.key_freq_rule == b.key_freq_rule == "given"
    idx = [run.epochs.index(e) for e in epochs]
    for name in a.names:
        assert a[name] == pytest.approx([b[name][i] for i in idx], rel=1e-12), name
        assert a[name] == pytest.approx([small_measures[name][i] for i in idx], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def test_csv_round_trip_is_exact_and_atomic(small_measures, tmp_path):
    path = small_measures.to_csv(tmp_path / "measures.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["measures.csv"]  # no temp file left
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == small_measures.names
    assert len(lines) == 1 + len(small_measures)
    back = read_measures_csv(path)
    assert back.columns == small_measures.columns  # repr() round-trips floats exactly
    assert back.key_freqs == small_measures.key_freqs
    assert back.rows()[3] == small_measures.rows()[3]


def test_table_validation():
    with pytest.raises(ValueError, match="epoch"):
        ProgressMeasures({"loss": [1.0]})
    with pytest.raises(ValueError, match="same length"):
        ProgressMeasures({"epoch": [0, 1], "loss": [1.0]})
    with pytest.raises(KeyError, match="no column"):
        ProgressMeasures({"epoch": [0]})["nope"]


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_run_dir_without_checkpoints_is_a_clear_error(small_run, tmp_path):
    shutil.copy(run_dir_of(small_run) / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="no checkpoints"):
        progress_measures(tmp_path, progress=False)


def test_checkpoints_of_different_shapes_are_a_clear_error(small_run, tmp_path):
    src = run_dir_of(small_run)
    shutil.copy(src / "config.json", tmp_path / "config.json")
    shutil.copytree(src / "checkpoints", tmp_path / "checkpoints")
    cfg = load_run(src).model_config
    other = make_model(ModelConfig(p=cfg.p, d_model=cfg.d_model, d_mlp=2 * cfg.d_mlp))
    first = sorted((tmp_path / "checkpoints").iterdir())[0]
    state = {k: v for k, v in tl_state(other).items() if not k.endswith(("mask", "IGNORE"))}
    save_safetensors(state, first)
    with pytest.raises(ValueError, match="different shapes"):
        progress_measures(tmp_path, progress=False)


def test_sequence_of_models_of_different_shapes_is_a_clear_error():
    a = make_model(ModelConfig(p=17, d_model=16, n_heads=2, d_mlp=32))
    b = make_model(ModelConfig(p=17, d_model=16, n_heads=2, d_mlp=64))
    with pytest.raises(ValueError, match="different shapes"):
        progress_measures([(0, a), (10, b)], key_freqs=[1], progress=False)


def test_bad_sources_and_arguments(tmp_path):
    model = make_model(ModelConfig(p=17, d_model=16, n_heads=2, d_mlp=32))
    with pytest.raises(ValueError, match="no checkpoints"):
        progress_measures([], progress=False)
    with pytest.raises(ValueError, match=f"{BACKEND} or a state dict"):
        progress_measures([(0, "model.pt")], progress=False)
    with pytest.raises(ValueError, match="distinct"):
        progress_measures([(0, model), (0, model)], key_freqs=[1], progress=False)
    with pytest.raises(ValueError, match="key_freqs"):
        progress_measures([(0, model)], key_freqs=[9], progress=False)  # p = 17: 1..8
    with pytest.raises(ValueError, match="train_indices"):
        progress_measures([(0, model)], key_freqs=[1], train_indices=[0, 289], progress=False)
    with pytest.raises(ValueError, match="p = 19"):
        progress_measures([(0, model)], task=make_task("add", 19), key_freqs=[1], progress=False)
    write_json(tmp_path / "config.json", {"not": "a run"})
    with pytest.raises(ValueError):
        progress_measures(tmp_path, progress=False)


def test_without_a_split_loss_is_over_all_pairs():
    model = make_model(ModelConfig(p=17, d_model=16, n_heads=2, d_mlp=32), seed=3)
    m = progress_measures([(0, model), (5, model)], key_freqs=[2], progress=False)
    assert m.names == [
        "epoch",
        "loss",
        "acc",
        "restricted_loss",
        "gini_W_E",
        "gini_W_L",
        "sum_sq_weights",
    ]
    row = brute_force_row(model, 17, [0], [2])  # train set irrelevant for these columns
    tokens = torch.tensor([[a, b, 17] for a in range(17) for b in range(17)])
    labels = torch.tensor([(a + b) % 17 for a in range(17) for b in range(17)])
    with torch.no_grad():
        L = model(tokens)[:, -1].double()
    assert m["loss"][0] == pytest.approx(ce(L, labels), rel=1e-5)
    assert m["restricted_loss"][1] == pytest.approx(row["restricted_loss"], rel=1e-5)


def test_logit_measures_equal_the_logits_module_definitions():
    """Same numbers as logits.restricted_logits / excluded_logits + a float64 cross-entropy."""
    from tl_grokking.analysis.logits import excluded_logits, restricted_logits
    from tl_grokking.analysis.progress import LogitMeasures

    task = make_task("add", 17)
    train, _ = task.split(0.4, seed=1)
    L = torch.randn(17 * 17, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = task.labels()
    got = LogitMeasures(task, [3, 5], train)(L)
    restricted = restricted_logits(L, 17, [3, 5])
    assert got["restricted_loss"] == pytest.approx(ce(restricted, y), rel=1e-12)
    excl = excluded_logits(L, 17, [3, 5])[train]
    assert got["excluded_loss"] == pytest.approx(ce(excl, y[train]), rel=1e-12)
    excl_3 = excluded_logits(L, 17, [3])[train]
    assert got["excluded_loss_k3"] == pytest.approx(ce(excl_3, y[train]), rel=1e-12)


def test_no_sparse_key_set_means_no_fourier_logit_measures():
    """A random model has no clusters and a dense W_E spectrum: no key set is made up."""
    model = make_model(ModelConfig(p=17, d_model=16, n_heads=2, d_mlp=32), seed=0)
    task = make_task("add", 17)
    train, _ = task.split(0.3, seed=0)
    m = progress_measures([(0, model)], train_indices=train, progress=False)
    assert m.key_freqs == []
    assert m.key_freq_rule.startswith("none found")
    assert "restricted_loss" not in m and "excluded_loss" not in m
    assert "train_loss" in m and "gini_W_E" in m


# ---- tasks without the a + b sum directions ----------------------------------------------------


@pytest.mark.parametrize("name", ["sub", "mul", "div", "x2+y2"])
def test_tasks_without_sum_directions_keep_the_other_measures(task_runs, name):
    import torch.nn.functional as F

    from tl_grokking.analysis.weights import embed_fourier_norms, unembed_fourier_norms

    run = load_run(task_runs[name])
    m = progress_measures(run, progress=False)
    assert m.names == [
        "epoch", "train_loss", "test_loss", "train_acc", "test_acc",
        "gini_W_E", "gini_W_L", "sum_sq_weights",
    ]  # fmt: skip
    assert m.key_freqs == []
    assert m.key_freq_rule.startswith("none: cannot compute the restricted / excluded")
    assert repr(name) in m.key_freq_rule and "'add'" in m.key_freq_rule
    # the final row against a plain forward pass over the task's own (valid) pairs
    model = run.model(run.epochs[-1])
    task = run.task
    with torch.no_grad():
        logits = model(task.tokens())[:, -1, : task.p].double()
    y, train = task.labels(), run.train_indices
    test = torch.ones(len(y), dtype=torch.bool)
    test[train] = False
    assert m["train_loss"][-1] == pytest.approx(float(F.cross_entropy(logits[train], y[train])))
    assert m["test_loss"][-1] == pytest.approx(float(F.cross_entropy(logits[test], y[test])))
    # the Gini coefficients are taken in the task's coordinates (discrete-log order for × ÷)
    assert m["gini_W_E"][-1] == pytest.approx(float(gini(embed_fourier_norms(model, task))))
    assert m["gini_W_L"][-1] == pytest.approx(float(gini(unembed_fourier_norms(model, task))))
    n = task.fourier_size or task.p
    assert embed_fourier_norms(model, task).shape == (n,)
    with pytest.raises(ValueError, match=f"restricted / excluded.*{re.escape(repr(name))}"):
        progress_measures(run, key_freqs=[1], progress=False)
    with pytest.raises(ValueError, match=f"restricted / excluded.*{re.escape(repr(name))}"):
        cheap_measures_callback(task, [1])
    assert set(cheap_measures_callback(task)(0, model)) == {
        "gini_W_E",
        "gini_W_L",
        "sum_sq_weights",
    }


def test_analyze_run_writes_measures_and_phases(task_runs, tmp_path):
    from tl_grokking.analysis.progress import MEASURES_FILE, PHASES_FILE, analyze_run
    from tl_grokking.runs.rundir import read_json, run_fingerprint

    run_dir = tmp_path / "run"
    shutil.copytree(task_runs["mul"], run_dir)
    measures, phases = analyze_run(run_dir, progress=False)
    assert phases is not None  # 4 checkpoints: enough to place the boundaries
    stored = read_measures_csv(run_dir / MEASURES_FILE)
    assert stored.columns == measures.columns
    record = read_json(run_dir / PHASES_FILE)
    assert record["key_freqs"] == [] and record["key_freq_rule"] == measures.key_freq_rule
    assert record["fingerprint"] == run_fingerprint(run_dir)
    added = ("key_freqs", "key_freq_rule", "n_checkpoints", "fingerprint")
    assert record["n_checkpoints"] == 4
    assert record == {**phases.to_dict(), **{k: record[k] for k in added}}
    with pytest.raises(FileNotFoundError):
        analyze_run(tmp_path / "missing")
