"""The task registry: labels, input sets and commutativity against brute force over Z_p."""

from __future__ import annotations

import re

import pytest
import torch

from tl_grokking.data.tasks import (
    CAPABILITIES,
    FOURIER_STRUCTURES,
    TASKS,
    CustomTask,
    Task,
    make_custom_task,
    make_task,
)

P = 11  # prime, small enough for Python loops over every pair


def brute_label(name: str, a: int, b: int, p: int) -> int | None:
    """Independent reference: plain Python integer arithmetic (None where undefined)."""
    if name == "add":
        return (a + b) % p
    if name == "sub":
        return (a - b) % p
    if name == "mul":
        return (a * b) % p
    if name == "div":
        if b == 0:
            return None
        inverse = next(x for x in range(1, p) if (x * b) % p == 1)  # search, not Fermat
        return (a * inverse) % p
    if name == "x2+y2":
        return (a**2 + b**2) % p
    if name == "x2+xy+y2":
        return (a**2 + a * b + b**2) % p
    if name == "x3+xy":
        return (a**3 + a * b) % p
    raise KeyError(name)


EXPECTED_NAMES = {"add", "sub", "mul", "div", "x2+y2", "x2+xy+y2", "x3+xy"}


def test_registry_holds_the_documented_tasks():
    assert EXPECTED_NAMES <= set(TASKS)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_labels_and_inputs_match_brute_force(name):
    task = make_task(name, P)
    expected = [
        (a, b, brute_label(name, a, b, P))
        for a in range(P)
        for b in range(P)
        if brute_label(name, a, b, P) is not None
    ]
    pairs = task.pairs().tolist()
    labels = task.labels().tolist()
    assert [(a, b) for a, b, _ in expected] == [tuple(x) for x in pairs]  # lexicographic
    assert [c for _, _, c in expected] == labels
    tokens = task.tokens()
    assert tokens.shape == (len(expected), 3)
    assert (tokens[:, 2] == P).all()
    assert task.is_full_grid == (len(expected) == P * P)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_commutative_flag_matches_brute_force(name):
    task = make_task(name, P)
    brute = all(
        brute_label(name, a, b, P) == brute_label(name, b, a, P)
        for a in range(P)
        for b in range(P)
        if brute_label(name, a, b, P) is not None and brute_label(name, b, a, P) is not None
    )
    assert task.commutative == brute
    assert task.fourier_structure in FOURIER_STRUCTURES


def test_division_excludes_b_zero_and_has_p_times_p_minus_1_rows():
    for p in (7, 23):
        task = make_task("div", p)
        pairs = task.pairs()
        assert pairs.shape == (p * (p - 1), 2)
        assert not (pairs[:, 1] == 0).any()
        assert not task.is_full_grid
        c = task.labels()
        assert ((c * pairs[:, 1]) % p == pairs[:, 0]).all()  # c · b = a
        train, test = task.split(0.5, seed=0)
        assert len(train) + len(test) == p * (p - 1)
    with pytest.raises(ValueError, match="b = 0"):
        make_task("div", 7).label(torch.tensor([1]), torch.tensor([0]))


@pytest.mark.parametrize("name", ["mul", "div"])
def test_multiplicative_tasks_require_a_prime(name):
    with pytest.raises(ValueError, match="prime"):
        make_task(name, 15)
    make_task("sub", 15)  # additive and polynomial tasks do not


def test_fourier_structure_and_group_sizes():
    expected = {
        "add": ("additive", 13, (1, 1)),
        "sub": ("additive", 13, (1, -1)),
        "mul": ("multiplicative", 12, (1, 1)),
        "div": ("multiplicative", 12, (1, -1)),
        "x2+y2": (None, None, (1, 1)),
        "x2+xy+y2": (None, None, (1, 1)),
        "x3+xy": (None, None, (1, 1)),
    }
    for name, (structure, size, signs) in expected.items():
        task = make_task(name, 13)
        assert task.fourier_structure == structure
        assert task.fourier_size == size
        if structure is not None:
            assert task.operand_signs == signs
            order = task.fourier_tokens()
            assert order.shape == (size,)
            # group law in group coordinates: label(order[i], order[j]) = order[i ± j mod n]
            i = torch.arange(size).repeat_interleave(size)
            j = torch.arange(size).repeat(size)
            got = task.label(order[i], order[j])
            want = order[(signs[0] * i + signs[1] * j) % size]
            assert torch.equal(got, want)
        else:
            with pytest.raises(ValueError, match="fourier_structure"):
                task.fourier_tokens()


@pytest.mark.parametrize(
    ("name", "capability", "instead"),
    [
        ("sub", "sum_directions", "token-order Fourier analyses still apply"),
        ("sub", "clock_pizza", "token-order Fourier analyses still apply"),
        ("mul", "token_fourier", "tl_grokking.data.discrete_log"),
        ("div", "sum_directions", "tl_grokking.data.discrete_log"),
        ("x2+y2", "token_fourier", "structure-free measures"),
        ("x3+xy", "group_fourier", "structure-free measures"),
    ],
)
def test_require_names_analysis_task_and_alternative(name, capability, instead):
    """The one gate: Task.require(capability, analysis)."""
    task = make_task(name, 7)
    with pytest.raises(ValueError) as err:
        task.require(capability, "the frobnication")
    msg = str(err.value)
    assert "the frobnication" in msg and repr(name) in msg and instead in msg
    assert f"fourier_structure {task.fourier_structure!r}" in msg
    assert CAPABILITIES[capability] in msg  # what the analysis needs
    task.require("training", "anything")  # always meaningful
    make_task("add", 7).require(capability, "anything")  # add admits everything
    with pytest.raises(ValueError, match="capability must be one of"):
        task.require("no such thing", "x")


def test_require_agrees_with_meaningful_analyses():
    for name in EXPECTED_NAMES:
        task = make_task(name, 7)
        for capability in CAPABILITIES:
            if capability in task.meaningful_analyses:
                task.require(capability, "x")
            else:
                with pytest.raises(
                    ValueError, match=f"cannot compute x for task '{re.escape(name)}'"
                ):
                    task.require(capability, "x")


# ---- custom tasks ----------------------------------------------------------------------------
def test_custom_task_vectorised_and_python_functions_agree_with_brute_force():
    p = 7

    def vectorised(a, b):
        return (a * a * b + 3) % p

    def scalar_only(a, b):  # int-only: fails on tensors (int() of a tensor with many elements)
        return (int(a) ** 2 * int(b) + 3) % p

    t1 = make_custom_task("a2b+3", vectorised, p)
    t2 = make_custom_task("a2b+3 (py)", scalar_only, p)
    expected = [(a * a * b + 3) % p for a in range(p) for b in range(p)]
    assert t1.labels().tolist() == expected
    assert t2.labels().tolist() == expected
    assert isinstance(t1, CustomTask) and isinstance(t1, Task)
    assert t1.commutative is False and t1.fourier_structure is None
    assert t1.is_full_grid and t1.to_dict() == {"name": "a2b+3", "p": 7}
    assert hash(t1) == hash(type(t1)(7)) and t1 == type(t1)(7)


def test_custom_task_commutativity_is_brute_forced_and_checked():
    p = 5
    t = make_custom_task("max", lambda a, b: torch.maximum(a, b), p)
    assert t.commutative is True
    with pytest.raises(ValueError, match="declared commutative=True"):
        make_custom_task("a-2b", lambda a, b: (a - 2 * b) % p, p, commutative=True)
    assert make_custom_task("a+b", lambda a, b: (a + b) % p, p, commutative=True).commutative


def test_custom_task_rejects_out_of_range_and_non_integer_outputs():
    with pytest.raises(ValueError, match=r"fn\(1, 4\) = 5 is outside the output range 0..4"):
        make_custom_task("raw", lambda a, b: a + b, 5)
    with pytest.raises(ValueError, match="integers"):
        make_custom_task("half", lambda a, b: (a + b) / 2.5, 5)
    with pytest.raises(ValueError, match="callable"):
        make_custom_task("x", 3, 5)
    with pytest.raises(ValueError, match="fourier_structure"):
        make_custom_task("x", lambda a, b: a, 5, fourier_structure="cyclic")


def test_custom_task_registers_for_its_p_only():
    name = "test-registry-custom-a+2b"
    try:
        task = make_custom_task(name, lambda a, b: (a + 2 * b) % 7, 7, register=True)
        again = make_task(name, 7)
        assert again == task
        assert again.labels().tolist() == [(a + 2 * b) % 7 for a in range(7) for b in range(7)]
        with pytest.raises(ValueError, match="defined for p = 7"):
            make_task(name, 11)
    finally:
        TASKS.pop(name, None)


def test_every_registered_task_builds_tokens_the_trainer_can_use():
    from tl_grokking.training.config import TrainConfig

    for name in sorted(EXPECTED_NAMES):
        config = TrainConfig(task=name, p=7, epochs=1)
        task = config.make_task()
        assert task.name == name and task.p == 7
        assert int(task.labels().max()) < task.n_classes


@pytest.mark.parametrize("name", ["div", "x3+xy"])
def test_runs_of_other_tasks_train_and_load_back(tmp_path, name):
    from tl_grokking.runs.checkpoints import load_run
    from tl_grokking.training.config import TrainConfig
    from tl_grokking.training.trainer import train_model

    config = TrainConfig(
        task=name, p=7, epochs=4, d_model=8, n_heads=2, d_mlp=16, log_every=2, checkpoint_every=2
    )
    result = train_model(config, tmp_path / name, progress=False)
    run = load_run(tmp_path / name)
    assert run.task.name == name and run.task.p == 7
    n = 7 * 6 if name == "div" else 49
    assert len(run.train_indices) + len(run.test_indices) == n
    assert sorted(torch.cat([run.train_indices, run.test_indices]).tolist()) == list(range(n))
    with torch.no_grad():
        logits = run.model(run.epochs[-1])(run.task.tokens())[:, -1]
        expected = result.model(run.task.tokens())[:, -1]
    assert torch.allclose(logits, expected, atol=1e-5)


def test_meaningful_analyses():
    expected = {
        "add": {"training", "group_fourier", "token_fourier", "sum_directions", "clock_pizza"},
        "sub": {"training", "group_fourier", "token_fourier"},
        "mul": {"training", "group_fourier", "clock_pizza"},
        "div": {"training", "group_fourier"},
        "x2+y2": {"training"},
        "x2+xy+y2": {"training"},
        "x3+xy": {"training"},
    }
    for name, analyses in expected.items():
        assert make_task(name, 7).meaningful_analyses == analyses
    custom = make_custom_task("c", lambda a, b: (a + b) % 5, 5, fourier_structure="additive")
    assert "sum_directions" in custom.meaningful_analyses


def test_declared_group_structure_of_a_custom_task_is_checked():
    p = 7
    sub = make_custom_task(
        "b-a", lambda a, b: (b - a) % p, p, fourier_structure="additive", operand_signs=(-1, 1)
    )
    assert sub.operand_signs == (-1, 1) and sub.meaningful_analyses == {
        "training",
        "group_fourier",
        "token_fourier",
    }
    order = sub.fourier_tokens()
    assert torch.equal(order, torch.arange(p))
    div = make_custom_task(
        "b/a",
        lambda a, b: (b * pow(a, p - 2, p)) % p if a else 0,  # per-pair Python fallback
        p,
        fourier_structure="multiplicative",
        operand_signs=(-1, 1),
    )
    assert div.fourier_size == p - 1 and not div.commutative
    with pytest.raises(ValueError, match="not s_a a \\+ s_b b"):
        make_custom_task("sq", lambda a, b: (a * a + b) % p, p, fourier_structure="additive")
    with pytest.raises(ValueError, match="not a\\^s_a b\\^s_b"):
        make_custom_task("add?", lambda a, b: (a + b) % p, p, fourier_structure="multiplicative")
    with pytest.raises(ValueError, match="prime"):
        make_custom_task("m", lambda a, b: (a * b) % 9, 9, fourier_structure="multiplicative")
    with pytest.raises(ValueError, match="operand_signs"):
        make_custom_task("s", lambda a, b: a, p, operand_signs=(1, 2))
