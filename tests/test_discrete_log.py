"""Discrete-log re-indexing and Fourier analysis in group coordinates.

The training-based tests (one small model for - and one for ×, trained once per module) check
that the models grok and that their key frequencies are sparse after re-indexing.
"""

from __future__ import annotations

import math

import pytest
import torch

from tl_grokking.analysis.fourier import fourier_basis, frequencies
from tl_grokking.data.discrete_log import (
    discrete_log_table,
    discrete_logarithm,
    frequency_mass_count,
    frequency_norms,
    primitive_root,
    reindex_grid,
    reindexed_embed_norms,
    reindexed_key_frequencies,
    reindexed_neuron_clusters,
    reindexed_neuron_fve,
    reindexed_tokens,
    reindexed_unembed_norms,
)
from tl_grokking.data.tasks import make_task
from tl_grokking.model.transformer import ModelConfig, make_model

PRIMES = [3, 5, 7, 11, 13, 23, 29, 31, 113]


def brute_order(g: int, p: int) -> int:
    x, k = g % p, 1
    while x != 1:
        x, k = (x * g) % p, k + 1
    return k


@pytest.mark.parametrize("p", PRIMES)
def test_primitive_root_is_the_smallest_generator(p):
    g = primitive_root(p)
    assert brute_order(g, p) == p - 1
    assert all(brute_order(h, p) < p - 1 for h in range(2, g))


def test_known_primitive_roots():
    # OEIS A001918 (least primitive root of the n-th prime) for 3, 5, 7, 11, 13, 23, 41, 113
    for p, g in [(3, 2), (5, 2), (7, 3), (11, 2), (13, 2), (23, 5), (41, 6), (113, 3)]:
        assert primitive_root(p) == g


@pytest.mark.parametrize("bad", [4, 9, 15, 1, 2, "7", 7.5])
def test_non_primes_are_refused(bad):
    with pytest.raises(ValueError, match="p must be"):
        primitive_root(bad)


@pytest.mark.parametrize("p", [7, 23, 31])
def test_discrete_log_is_a_bijection_that_turns_products_into_sums(p):
    exp, log = discrete_log_table(p)
    g = primitive_root(p)
    n = p - 1
    assert exp.tolist() == [pow(g, i, p) for i in range(n)]
    assert sorted(exp.tolist()) == list(range(1, p))  # onto Z_p^*
    assert sorted(log[1:].tolist()) == list(range(n))  # onto Z_{p-1}
    assert log[0] == -1
    assert all(exp[log[x]] == x for x in range(1, p))
    assert all(log[exp[i]] == i for i in range(n))
    # g^(i + j) = g^i g^j, i.e. log(a b) = log a + log b (mod p - 1), for every pair
    for i in range(n):
        for j in range(n):
            assert exp[(i + j) % n] == (int(exp[i]) * int(exp[j])) % p
    a = torch.arange(1, p).repeat_interleave(p - 1)
    b = torch.arange(1, p).repeat(p - 1)
    assert torch.equal(discrete_logarithm(a * b, p), (log[a] + log[b]) % n)
    with pytest.raises(ValueError, match="undefined for 0"):
        discrete_logarithm(torch.tensor([3, 0]), p)


def test_explicit_generator_and_non_generator():
    exp, _ = discrete_log_table(7, generator=5)
    assert exp.tolist() == [1, 5, 4, 6, 2, 3]
    with pytest.raises(ValueError, match="not a primitive root"):
        discrete_log_table(7, generator=2)  # 2 has order 3 mod 7


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_reindexed_tokens_and_grid(name):
    p = 11
    task = make_task(name, p)
    n = task.fourier_size
    tokens = reindexed_tokens(task)
    order = task.fourier_tokens()
    assert tokens.shape == (n * n, 3)
    for row, (a, b, eq) in enumerate(tokens.tolist()):
        assert (a, b, eq) == (int(order[row // n]), int(order[row % n]), p)
    # reindex_grid takes values in task.pairs() order; use a value that identifies the pair
    pairs = task.pairs()
    code = (pairs[:, 0] * 100 + pairs[:, 1]).double()
    grid = reindex_grid(code, task)
    assert grid.shape == (n, n)
    for i in range(n):
        for j in range(n):
            assert grid[i, j] == int(order[i]) * 100 + int(order[j])
    with pytest.raises(ValueError, match="one row per input"):
        reindex_grid(code[:-1], task)


def test_polynomial_tasks_are_refused_with_a_clear_message():
    model = make_model(ModelConfig(p=7, d_model=8, n_heads=2, d_mlp=8))
    with pytest.raises(ValueError, match="fourier_structure.*'x2\\+y2'.*None"):
        reindexed_key_frequencies(model, make_task("x2+y2", 7))


def _plant_embedding(model, task, k: int, scale: float = 1.0) -> None:
    """Write cos/sin of frequency k (in group coordinates) into W_E's first two dims."""
    n = task.fourier_size
    order = task.fourier_tokens()
    angle = 2 * math.pi * k * torch.arange(n) / n
    with torch.no_grad():
        model.W_E.zero_()
        model.W_E[order, 0] = scale * torch.cos(angle)
        model.W_E[order, 1] = scale * torch.sin(angle)


@pytest.mark.parametrize("name,k", [("mul", 4), ("div", 5), ("add", 3)])
def test_embed_rule_finds_a_planted_frequency_in_group_coordinates(name, k):
    p = 13
    task = make_task(name, p)
    model = make_model(ModelConfig(p=p, d_model=8, n_heads=2, d_mlp=8))
    _plant_embedding(model, task, k)
    n = task.fourier_size
    norms = reindexed_embed_norms(model, task)
    assert norms.shape == (n,)
    # closed form: cos/sin of frequency k have norm sqrt(n/2) along their own basis rows
    basis, names = fourier_basis(n, dtype=torch.float64)
    assert norms[names.index(f"cos {k}")] == pytest.approx(math.sqrt(n / 2), rel=1e-6)
    assert norms[names.index(f"sin {k}")] == pytest.approx(math.sqrt(n / 2), rel=1e-6)
    assert norms.pow(2).sum() == pytest.approx(n, rel=1e-6)  # Parseval: ‖W_E[order]‖² = n
    assert reindexed_key_frequencies(model, task, rule="embed") == [k]
    per_freq = frequency_norms(norms, n)
    assert frequency_mass_count(per_freq) == 1
    if name in ("mul", "div"):
        # in the token (not re-indexed) order the same embedding is spread over many freqs
        raw = torch.fft.rfft(model.W_E[:p, :2].detach().double(), dim=0).abs().pow(2).sum(1)[1:]
        assert int((raw >= 0.25 * raw.max()).sum()) > 1


def test_nyquist_frequency_of_even_group_size():
    p = 13  # n = 12: frequency 6 is the Nyquist cosine (one basis row)
    task = make_task("mul", p)
    model = make_model(ModelConfig(p=p, d_model=8, n_heads=2, d_mlp=8))
    _plant_embedding(model, task, 6)
    norms = reindexed_embed_norms(model, task)
    assert frequency_norms(norms, 12)[-1] == pytest.approx(math.sqrt(12), rel=1e-6)
    assert reindexed_key_frequencies(model, task, rule="embed") == [6]


def test_neuron_fve_matches_a_closed_form_on_a_known_activation():
    """A model whose MLP output we replace by a known function of (log a, log b)."""
    p = 11
    task = make_task("mul", p)
    n = task.fourier_size  # 10
    model = make_model(ModelConfig(p=p, d_model=8, n_heads=2, d_mlp=3))
    i = torch.arange(n).repeat_interleave(n).double()
    j = torch.arange(n).repeat(n).double()
    w = 2 * math.pi / n
    planted = torch.stack(
        [
            torch.cos(w * 2 * (i + j)),  # pure frequency 2: FVE 1 at k = 2
            torch.cos(w * 3 * i) + torch.cos(w * 1 * j),  # half k = 3, half k = 1
            torch.cos(w * 4 * i) * torch.cos(w * 1 * j),  # cross term: in no 3x3 block
        ],
        dim=1,
    ).float()

    def replace(post, hook):  # the analysis runs the batch in group order (reindexed_tokens)
        assert post.shape[0] == n * n
        out = post.clone()
        out[:, -1, :] = planted
        return out

    with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", replace)]):
        fve = reindexed_neuron_fve(model, task)
    assert fve.shape == (3, len(frequencies(n)))
    assert fve[0, 1] == pytest.approx(1.0, abs=1e-6)  # k = 2 is column 1
    assert fve[1, 2] == pytest.approx(0.5, abs=1e-6) and fve[1, 0] == pytest.approx(0.5, abs=1e-6)
    assert fve[2].max() == pytest.approx(0.0, abs=1e-6)


# ---- trained models ---------------------------------------------------------------------------
# Settings found to grok quickly on CPU (seed 0, ~250-450 epochs, then 150 more epochs of
# cleanup before the early stop; a few seconds each):
# subtraction at p = 31 and multiplication at p = 29 (group Z_28 after re-indexing).
TRAINED = {
    "sub": {"p": 31, "epochs": 1000},
    "mul": {"p": 29, "epochs": 1000},
}
COMMON_SETTINGS = {
    "frac_train": 0.6,
    "seed": 0,
    "lr": 1e-2,
    "weight_decay": 2.0,
    "d_model": 48,
    "n_heads": 4,
    "d_mlp": 192,
    "log_every": 50,
    "checkpoint_every": 1000,
    "early_stop_acc": 0.97,
    "early_stop_patience": 4,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small model per task, trained once with the library trainer."""
    from tl_grokking.training.trainer import TrainConfig, train_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, settings in TRAINED.items():
            config = TrainConfig(task=name, **settings, **COMMON_SETTINGS)
            result = train_model(config, tmp_path_factory.mktemp(f"grok_{name}"), progress=False)
            out[name] = (result.model.eval(), config.make_task())
    finally:
        torch.set_num_threads(threads)
    return out


def _accuracy(model, task) -> float:
    with torch.no_grad():
        logits = model(task.tokens())[:, -1, :]
    return float((logits.argmax(-1) == task.labels()).float().mean())


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_small_models_grok_and_their_key_frequencies_are_sparse(trained, name):
    model, task = trained[name]
    _, test_idx = task.split(COMMON_SETTINGS["frac_train"], COMMON_SETTINGS["seed"])
    with torch.no_grad():
        logits = model(task.tokens()[test_idx])[:, -1, :]
    test_acc = float((logits.argmax(-1) == task.labels()[test_idx]).float().mean())
    assert test_acc >= 0.95
    n = task.fourier_size
    per_freq = frequency_norms(reindexed_embed_norms(model, task), n)
    n_freqs = len(frequencies(n))
    # at most a third of the frequencies hold 90 % of W_E's Fourier energy (group coordinates)
    assert frequency_mass_count(per_freq, 0.9) <= n_freqs / 3
    embed_keys = reindexed_key_frequencies(model, task, rule="embed")
    assert 1 <= len(embed_keys) <= n_freqs / 3
    clusters = reindexed_neuron_clusters(model, task)
    assert clusters.n_clustered >= model.cfg.d_mlp // 8
    assert set(clusters.key_freqs) <= set(embed_keys)
    unembed_keys = reindexed_key_frequencies(model, task, rule="unembed")
    assert set(unembed_keys) & set(embed_keys)
    assert reindexed_unembed_norms(model, task).shape == (n,)


def test_multiplication_is_sparse_only_after_reindexing(trained):
    model, task = trained["mul"]
    p = task.p
    # token order (no re-indexing): basis size p over tokens 0..p-1; the energy is spread out
    raw = fourier_basis(p, dtype=torch.float64)[0] @ model.W_E[:p].detach().double()
    raw_per_freq = frequency_norms(raw.norm(dim=1), p)
    reindexed = frequency_norms(reindexed_embed_norms(model, task), task.fourier_size)
    assert frequency_mass_count(raw_per_freq, 0.9) > len(frequencies(p)) / 2
    assert frequency_mass_count(reindexed, 0.9) <= len(frequencies(task.fourier_size)) / 3
    assert _accuracy(model, task) >= 0.95


def test_identity_reindexing_agrees_with_the_token_order_analysis(trained):
    """For an additive task the group coordinates are the tokens: the rules must agree with
    tl_grokking.analysis.circuits.key_frequencies (an independent implementation)."""
    from tl_grokking.analysis.circuits import key_frequencies

    model, task = trained["sub"]
    reference = key_frequencies(model, task, rule="all")
    for rule in ("embed", "unembed", "clusters"):
        assert reindexed_key_frequencies(model, task, rule=rule) == sorted(reference.by_rule[rule])
