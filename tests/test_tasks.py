"""The core of tl_grokking.data.tasks: token layout, labels, grid order, the seeded split."""

from __future__ import annotations

import random

import pytest
import torch

from tl_grokking.data.tasks import (
    ModularAddition,
    Task,
    authors_split,
    make_task,
    register_task,
    validate_frac_train,
    validate_p,
)


@pytest.mark.parametrize("p", [3, 17, 23, 31])
def test_addition_grid_tokens_and_labels_brute_force(p):
    task = ModularAddition(p)
    tokens, labels, pairs = task.tokens(), task.labels(), task.pairs()
    assert tokens.shape == (p * p, 3) and labels.shape == (p * p,)
    assert tokens.dtype == labels.dtype == torch.long
    row = 0
    for a in range(p):  # lexicographic: row a * p + b
        for b in range(p):
            assert tokens[row].tolist() == [a, b, p]
            assert pairs[row].tolist() == [a, b]
            assert labels[row].item() == (a + b) % p
            row += 1
    assert task.eq_token == p and task.d_vocab == p + 1 and task.n_classes == p
    assert task.n_ctx == 3 and task.is_full_grid and task.commutative


def test_label_is_vectorised():
    task = ModularAddition(17)
    a = torch.tensor([0, 16, 9, 16])
    b = torch.tensor([0, 1, 9, 16])
    assert task.label(a, b).tolist() == [0, 0, 1, 15]


@pytest.mark.parametrize(("p", "frac"), [(17, 0.3), (23, 0.5), (113, 0.3)])
def test_split_sizes_disjoint_sorted(p, frac):
    task = ModularAddition(p)
    train, test = task.split(frac, seed=0)
    n = p * p
    assert len(train) == int(frac * n) and len(train) + len(test) == n
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(n))  # disjoint cover
    assert torch.equal(train, train.sort().values) and torch.equal(test, test.sort().values)
    if p == 113:
        assert len(train) == 3830  # the paper's split size


def test_split_is_deterministic_seeded_and_leaves_global_rng_alone():
    task = ModularAddition(23)
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    first = task.split(0.3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    again = task.split(0.3, seed=5)
    other = task.split(0.3, seed=6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    # the documented recipe: a private generator seeded with `seed`, randperm, first n_train
    perm = torch.randperm(23 * 23, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first[0], perm[: int(0.3 * 529)].sort().values)


def _authors_gen_train_test(p: int, frac_train: float, seed: int) -> tuple[list, list]:
    """The authors' ``gen_train_test``, transcribed: their list, the global ``random`` module."""
    pairs = [(i, j, p) for i in range(p) for j in range(p)]
    random.seed(seed)
    random.shuffle(pairs)
    div = int(frac_train * len(pairs))
    return pairs[:div], pairs[div:]


@pytest.mark.parametrize(("p", "frac", "seed"), [(113, 0.3, 0), (113, 0.3, 1), (23, 0.5, 7)])
def test_authors_split_is_their_gen_train_test(p, frac, seed):
    state = random.getstate()
    train_pairs, test_pairs = _authors_gen_train_test(p, frac, seed)
    random.setstate(state)
    task = ModularAddition(p)
    train, test = task.split(frac, seed, method="authors")
    assert random.getstate() == state  # a private generator: the global state is untouched
    rows = task.pairs()
    assert sorted(map(tuple, rows[train].tolist())) == sorted((a, b) for a, b, _ in train_pairs)
    assert sorted(map(tuple, rows[test].tolist())) == sorted((a, b) for a, b, _ in test_pairs)
    assert torch.equal(train, train.sort().values) and torch.equal(test, test.sort().values)
    assert torch.equal(authors_split(task, frac, seed)[0], train)
    assert not torch.equal(train, task.split(frac, seed)[0])  # tl_grokking's differs
    if (p, frac) == (113, 0.3):
        assert len(train) == 3830


def test_split_method_and_seed_are_checked():
    task = ModularAddition(17)
    with pytest.raises(ValueError, match=r"method must be one of \('tl_grokking', 'authors'\)"):
        task.split(0.3, 0, method="numpy")
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
        task.split(0.3, -1, method="authors")
    with pytest.raises(ValueError, match=r"empty train or test set"):
        task.split(0.001, 0, method="authors")


@pytest.mark.parametrize("bad", [2, 0, -5, 3.5, "seven", None, True])
def test_bad_p(bad):
    with pytest.raises(ValueError, match=r"^p must be"):
        ModularAddition(bad)


def test_validate_p_accepts_integral_values():
    assert validate_p(17.0) == 17 and isinstance(validate_p(17.0), int)
    with pytest.raises(ValueError, match=r"^modulus must be an integer >= 3"):
        validate_p(1, field="modulus")


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "x", None])
def test_bad_frac_train(bad):
    with pytest.raises(ValueError, match=r"frac_train"):
        validate_frac_train(bad)
    with pytest.raises(ValueError, match=r"frac_train"):
        ModularAddition(17).split(bad, seed=0)


def test_frac_train_leaving_empty_split():
    with pytest.raises(ValueError, match=r"empty train or test set for 9 inputs"):
        ModularAddition(3).split(0.05, seed=0)
    train, test = ModularAddition(3).split(0.999, seed=0)  # floor(8.99) = 8: one test pair
    assert (len(train), len(test)) == (8, 1)


def test_make_task_and_registry():
    task = make_task("add", 19)
    assert isinstance(task, ModularAddition) and task.p == 19
    assert make_task(task) is task
    with pytest.raises(ValueError, match=r"^task must be one of .*'add'.* got 'nope'"):
        make_task("nope", 19)
    with pytest.raises(ValueError, match=r"task name must be a non-empty string"):
        register_task("", ModularAddition)


def test_custom_task_subclass_uses_base_machinery():
    class Max(Task):
        name = "max_test"

        def label(self, a, b):
            return torch.maximum(a, b)

    task = Max(5)
    assert task.labels().tolist() == [max(a, b) for a in range(5) for b in range(5)]
    assert task.to_dict() == {"name": "max_test", "p": 5}
