"""The model over the input grid: coordinates (reindex), grid tokens and activations, logits,
loss and evaluate_model(), each against a plain forward pass or a brute-force computation."""

from __future__ import annotations

import pytest
import torch

from brute_force import logits_of
from tl_grokking.analysis.grid import (
    SITES,
    all_logits,
    evaluate_model,
    fourier_order,
    grid_activations,
    grid_tokens,
    loss_and_accuracy,
    resolve_task,
)
from tl_grokking.analysis.hooks import zero_ablate
from tl_grokking.data.discrete_log import primitive_root
from tl_grokking.data.tasks import ModularAddition, make_task
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import make_model

P = 13


@pytest.fixture(scope="module")
def model(p13_model):
    return p13_model


@pytest.fixture(scope="module")
def task(p13_model):
    return ModularAddition(p13_model.cfg.d_vocab - 1)


def brute_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    logits = logits.double()
    total = 0.0
    for row, y in zip(logits, labels.tolist(), strict=True):
        total += float(torch.logsumexp(row, 0) - row[y])
    return total / len(labels)


# ---- coordinates ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "x2+y2"])
def test_fourier_order_of_every_kind_of_task(name, unchecked_types):
    task = make_task(name, P)
    g = primitive_root(P)
    logs = [pow(g, i, P) for i in range(P - 1)]  # g^0, g^1, ...: the discrete-log order
    group = logs if name in ("mul", "div") else list(range(P))
    assert fourier_order(task, False).tolist() == list(range(P))
    if task.fourier_structure is None:
        assert fourier_order(task).tolist() == list(range(P))  # natural = token order
        with pytest.raises(ValueError, match="'x2\\+y2'.*structure-free"):
            fourier_order(task, True, analysis="the frobnication")
    else:
        assert fourier_order(task).tolist() == group
        assert fourier_order(task, True).tolist() == group
    with unchecked_types(), pytest.raises(ValueError, match="reindex must be"):
        fourier_order(task, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["add", "mul", "div"])
def test_grid_tokens_in_each_coordinate_system(model, name):
    task = make_task(name, P)
    order = fourier_order(task).tolist()
    n = len(order)
    tokens = grid_tokens(model, task, reindex=None)
    assert tokens.shape == (n * n, 3)
    expected = [[order[i], order[j], P] for i in range(n) for j in range(n)]
    assert tokens.tolist() == expected
    if task.is_full_grid:  # default: the canonical lexicographic p² grid
        assert torch.equal(grid_tokens(model, task), task.tokens())
    else:
        with pytest.raises(ValueError, match="every pair.*'div'"):
            grid_tokens(model, task)
    # activations in group order are the plain forward pass on those tokens
    acts = grid_activations(model, task, "mlp_post", reindex=None)[SITES["mlp_post"]]
    _, cache = model.run_with_cache(tokens, names_filter=SITES["mlp_post"])
    torch.testing.assert_close(acts, cache[SITES["mlp_post"]][:, -1])


# ---- activations, logits, evaluation ----------------------------------------------------------


def test_grid_activations_match_run_with_cache(model, task):
    names = ["mlp_post", "blocks.0.hook_resid_mid", "logits"]
    acts = grid_activations(model, task, names)
    _, cache = model.run_with_cache(task.tokens())
    for n in names:
        name = SITES.get(n, n)
        torch.testing.assert_close(acts[name], cache[name][:, -1])
    with pytest.raises(ValueError, match="where"):
        grid_activations(model, task, ["nope"])
    L = all_logits(model, task)
    assert L.dtype == torch.float64
    torch.testing.assert_close(L, acts[SITES["logits"]][:, :P].double())


def test_evaluate_matches_brute_force(model, task):
    train, test = task.split(0.3, seed=0)
    out = evaluate_model(model, task, train_indices=train)
    logits = logits_of(model, task.tokens())[:, :P]
    labels = task.labels()
    assert out["all_loss"] == pytest.approx(brute_ce(logits, labels), rel=1e-9)
    assert out["train_loss"] == pytest.approx(brute_ce(logits[train], labels[train]), rel=1e-9)
    assert out["test_loss"] == pytest.approx(brute_ce(logits[test], labels[test]), rel=1e-9)
    acc = (logits.argmax(-1) == labels).double()
    assert out["all_acc"] == pytest.approx(float(acc.mean()))
    assert out["test_acc"] == pytest.approx(float(acc[test].mean()))
    assert loss_and_accuracy(logits, labels) == (
        pytest.approx(out["all_loss"]),
        pytest.approx(out["all_acc"]),
    )
    # under hooks: zero attention makes every input's logits equal → accuracy 1/p
    zeroed = evaluate_model(model, task, fwd_hooks=zero_ablate(model, "attn_z"))
    assert zeroed["all_acc"] == pytest.approx(1 / P)
    assert set(zeroed) == {"all_loss", "all_acc"}


def test_token_fourier_gates_the_token_grid_analyses_but_not_evaluate(unchecked_types):
    from tl_grokking.analysis.ablations import ablation_table
    from tl_grokking.analysis.circuits import key_frequencies, neuron_clusters

    model = make_model(ModelConfig(p=7, d_model=16, n_heads=2, d_mlp=16), seed=0)
    mul, div = make_task("mul", 7), make_task("div", 7)
    # the group-coordinate analyses apply to × and ÷ (discrete-log order over Z_6) ...
    for task in (mul, div):
        assert key_frequencies(model, task).n == 6
        assert neuron_clusters(model, task).fve_all.shape == (3, 16)
    # ... the token-grid ones do not, and say what to use instead
    with pytest.raises(ValueError, match="ablation table.*'mul'.*discrete_log"):
        ablation_table(model, mul)
    assert resolve_task(model, div, needs=None) is div
    with unchecked_types(), pytest.raises(ValueError, match="task must be a tl_grokking Task"):
        resolve_task(model, "div")  # type: ignore[arg-type]
    # evaluate needs no structure: div's p(p-1) valid pairs, checked against a plain forward
    out = evaluate_model(model, div)
    with torch.no_grad():
        logits = model(div.tokens())[:, -1, :7].double()
    expected = torch.nn.functional.cross_entropy(logits, div.labels())
    assert out["all_loss"] == pytest.approx(float(expected), rel=1e-9)
    with pytest.raises(ValueError, match="every pair.*'div'"):
        grid_activations(model, div)
