"""The authors' analysis code as a test oracle.

Nanda et al. (2023) computed the paper's numbers with a handful of functions of their public
code (``transformers.py`` and ``helpers.py`` of the progress-measures repository). This module
re-writes those functions from their description — plain loops and outer products, the way
they are written there, sharing no code with tl_grokking — and checks tl_grokking against them
on the authors' two checkpoints (skipped, with the reason, when ``../shared/fixtures`` is absent)
and on small trained runs (the shipped ``tests/data/run_p23`` and the session's ``small_run``).
Given the same activations, logits and key frequencies, every quantity agrees to float32
rounding or better.

What is transcribed:

* ``make_fourier_basis``: rows ``[const, cos 1, sin 1, cos 2, sin 2, ...]``, cos before sin,
  each divided by its norm;
* ``fft2d``: ``F X Fᵀ`` over the (x, y) grid, batched over trailing axes;
* the loop of ``calculate_key_freqs``: per neuron, centre its activation over the p² inputs,
  2-D transform, and for each frequency the energy of the 3×3 block of rows/columns
  ``[0, 2k − 1, 2k]`` (``extract_freq_2d``) over the total energy; the neuron's frequency is the
  arg-max, and the key frequencies are the **unique arg-maxes over all neurons** (no FVE
  threshold);
* ``get_component_cos_xpy`` / ``get_component_sin_xpy``: projection onto the 2-D basis vectors
  ``(cos k ⊗ cos k − sin k ⊗ sin k)/√2`` and ``(sin k ⊗ cos k + cos k ⊗ sin k)/√2``;
* ``test_logits`` with its bias correction (add the mean over inputs of ``original − new``);
* ``calculate_trig_loss`` (the paper's *restricted loss*: the key components, bias-corrected,
  over all inputs), ``calculate_excluded_loss`` (each key's components removed, training pairs;
  plus all keys at once, the paper's excluded loss), ``calculate_coefficients`` (inner product
  of the logits with the normalised ``cos(w_k(x + y − z))``);
* ``cross_entropy_high_precision``, ``Config.is_train_is_test`` and ``gen_train_test``.

Three defects of the original are kept behind ``as_written=True`` and tested as such; every
comparison with tl_grokking uses the intended quantity (``docs/analysis.md`` lists them):

1. ``calculate_key_freqs`` loops over ``range(1, p // 2)``, so it never considers the last
   frequency p // 2 (56 at p = 113): a neuron of that frequency gets another one.
2. ``cross_entropy_high_precision`` says it casts to float64 but casts to **float32**, the
   underflow it was written to avoid: at the fixtures' losses (1e-7 and below) it is off.
3. ``is_train_is_test`` looks up ``(x, y, 113)`` instead of ``(x, y, p)``: for any other p every
   pair is "test" and the excluded loss on the training set is a mean over nothing (NaN).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_grokking.analysis.circuits import MLP_POST, key_frequencies, neuron_clusters
from tl_grokking.analysis.fourier import SumProjection, fourier_basis, fourier_transform_2d, to_grid
from tl_grokking.analysis.grid import grid_activations, loss_and_accuracy
from tl_grokking.analysis.logits import trig_logit_decomposition
from tl_grokking.analysis.progress import progress_measures
from tl_grokking.data.tasks import ModularAddition

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
NO_WD = FIXTURES / "paper_original_format_no_wd.pth"
LOW_PRECISION = FIXTURES / "paper_original_format_low_precision.pth"


# ---------------------------------------------------------------------------------------------
# The oracle: the authors' functions, re-written (float64 unless a defect says otherwise)
# ---------------------------------------------------------------------------------------------


def authors_fourier_basis(p: int) -> torch.Tensor:
    rows = [torch.ones(p, dtype=torch.float64) / math.sqrt(p)]
    x = torch.arange(p, dtype=torch.float64)
    for k in range(1, p // 2 + 1):
        for fn in (torch.cos, torch.sin):  # cos first, as theirs
            v = fn(2 * math.pi * x * k / p)
            rows.append(v / v.norm())
    return torch.stack(rows)


def authors_fft2d(mat: torch.Tensor, p: int, basis: torch.Tensor) -> torch.Tensor:
    """``(x y) ... -> x y (...)``, then ``F X Fᵀ`` for every trailing index, same shape back."""
    grid = mat.reshape(p, p, -1)
    out = torch.stack([basis @ grid[:, :, z] @ basis.T for z in range(grid.shape[2])], dim=-1)
    return out.reshape(mat.shape)


def authors_block(tensor_2d: torch.Tensor, k: int) -> torch.Tensor:
    """``extract_freq_2d``: the 3×3 block of rows and columns ``[0, 2k - 1, 2k]``."""
    idx = [0, 2 * k - 1, 2 * k]
    return tensor_2d[idx][:, idx]


def authors_neuron_fve(
    neuron_acts: torch.Tensor, p: int, *, as_written: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop of ``calculate_key_freqs``: per neuron, the FVE of each frequency considered, the
    arg-max frequency and its FVE. ``as_written`` stops at p // 2 - 1 (defect 1)."""
    basis = authors_fourier_basis(p)
    acts = neuron_acts.double()
    centred = acts - acts.mean(dim=0, keepdim=True)
    fourier = authors_fft2d(centred, p, basis).reshape(p, p, -1)
    last = p // 2 - 1 if as_written else p // 2
    fve = torch.zeros(last, acts.shape[1], dtype=torch.float64)
    best_freq = torch.full((acts.shape[1],), -1, dtype=torch.long)
    best_fve = torch.full((acts.shape[1],), -1e6, dtype=torch.float64)
    for ni in range(acts.shape[1]):
        denominator = fourier[:, :, ni].pow(2).sum()
        for k in range(1, last + 1):
            frac = authors_block(fourier[:, :, ni], k).pow(2).sum() / denominator
            fve[k - 1, ni] = frac
            if frac > best_fve[ni]:  # strict: the first maximum wins
                best_freq[ni], best_fve[ni] = k, frac
    return fve, best_freq, best_fve


def authors_key_freqs(neuron_acts: torch.Tensor, p: int, *, as_written: bool = False) -> list[int]:
    """``calculate_key_freqs``: the unique arg-max frequencies over all neurons."""
    _, freqs, _ = authors_neuron_fve(neuron_acts, p, as_written=as_written)
    return [int(k) for k in np.unique(freqs.numpy())]


def authors_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, as_written: bool = False
) -> float:
    """``cross_entropy_high_precision``; ``as_written`` casts to float32 (defect 2)."""
    dtype = torch.float32 if as_written else torch.float64
    logprobs = torch.log_softmax(logits.to(dtype), dim=-1)
    return float(-logprobs.gather(-1, labels[:, None]).mean())


def authors_gen_train_test(p: int, frac_train: float, seed: int) -> list[tuple[int, int, int]]:
    """``gen_train_test``: Python's ``random`` shuffles the triples; the first part trains."""
    pairs = [(i, j, p) for i in range(p) for j in range(p)]
    random.seed(seed)
    random.shuffle(pairs)
    return pairs[: int(frac_train * len(pairs))]


def authors_is_train_is_test(
    train: list[tuple[int, int, int]], p: int, *, as_written: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``Config.is_train_is_test``; ``as_written`` looks up ``(x, y, 113)`` (defect 3)."""
    eq = 113 if as_written else p
    members = set(train)
    is_train = np.array([(x, y, eq) in members for x in range(p) for y in range(p)])
    return is_train, ~is_train


def authors_test_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    is_train: np.ndarray,
    *,
    bias_correction: bool = False,
    original_logits: torch.Tensor | None = None,
    mode: str = "all",
) -> float:
    if bias_correction:
        assert original_logits is not None
        logits = (original_logits - logits).mean(dim=0) + logits
    if mode == "train":
        mask = torch.as_tensor(is_train)
        return authors_cross_entropy(logits[mask], labels[mask])
    return authors_cross_entropy(logits, labels)


def _basis_term(x_index: int, y_index: int, basis: torch.Tensor) -> torch.Tensor:
    """``fourier_2d_basis_term``: the flattened outer product of two basis rows."""
    return (basis[x_index][:, None] * basis[y_index][None, :]).flatten()


def authors_cos_sin_xpy(logits: torch.Tensor, k: int, basis: torch.Tensor) -> torch.Tensor:
    """``get_component_cos_xpy + get_component_sin_xpy`` of every logit column."""
    c, s = 2 * k - 1, 2 * k
    cos_xpy = (_basis_term(c, c, basis) - _basis_term(s, s, basis)) / math.sqrt(2)
    sin_xpy = (_basis_term(s, c, basis) + _basis_term(c, s, basis)) / math.sqrt(2)
    out = torch.zeros_like(logits)
    for direction in (cos_xpy, sin_xpy):
        out += direction[:, None] @ (direction[None, :] @ logits)
    return out


def authors_trig_loss(
    logits: torch.Tensor, labels: torch.Tensor, freqs: list[int], p: int
) -> float:
    """``calculate_trig_loss``: the key components, bias-corrected, over all inputs (this is the
    paper's restricted loss)."""
    basis = authors_fourier_basis(p)
    trig_logits = sum(authors_cos_sin_xpy(logits, k, basis) for k in freqs)
    assert isinstance(trig_logits, torch.Tensor)
    return authors_test_logits(
        trig_logits, labels, np.ones(p * p, bool), bias_correction=True, original_logits=logits
    )


def authors_excluded_losses(
    logits: torch.Tensor, labels: torch.Tensor, freqs: list[int], p: int, is_train: np.ndarray
) -> tuple[float, dict[int, float]]:
    """All keys removed at once (the paper's excluded loss) and ``calculate_excluded_loss``
    (one key at a time), on the training pairs, no bias correction."""
    basis = authors_fourier_basis(p)
    components = {k: authors_cos_sin_xpy(logits, k, basis) for k in freqs}
    total = logits - sum(components.values())
    assert isinstance(total, torch.Tensor)
    every = authors_test_logits(total, labels, is_train, mode="train")
    per_k = {
        k: authors_test_logits(logits - c, labels, is_train, mode="train")
        for k, c in components.items()
    }
    return every, per_k


def authors_coefficients(logits: torch.Tensor, p: int, freqs: list[int]) -> dict[int, float]:
    """``calculate_coefficients``: ``<normalised cos(w_k(x + y - z)), logits>`` per frequency
    (one p² × p feature at a time rather than all of them in one p³ · p/2 tensor)."""
    x = torch.arange(p, dtype=torch.float64)[:, None, None]
    y = torch.arange(p, dtype=torch.float64)[None, :, None]
    z = torch.arange(p, dtype=torch.float64)[None, None, :]
    out = {}
    for k in freqs:
        coses = torch.cos(2 * math.pi * k / p * (x + y - z)).reshape(p * p, p)
        coses /= coses.pow(2).sum().sqrt()
        out[k] = float((coses * logits).sum())
    return out


# ---------------------------------------------------------------------------------------------
# The models: the authors' two checkpoints and two small trained runs
# ---------------------------------------------------------------------------------------------


def _authors_checkpoint(path: Path):
    """An authors' checkpoint, its task and their training triples. Without the fixture, the
    no-weight-decay one is read from its shipped conversion (bit-identical weights,
    ``tests/test_docs.py``); the low-precision one is skipped."""
    if not path.exists() and path == NO_WD:
        from conftest import PAPER_CHECKPOINT

        path = PAPER_CHECKPOINT
    if not path.exists():
        pytest.skip(f"fixture checkpoint not found at {path} (CI has it in ../shared/fixtures)")
    from tl_grokking.runs.checkpoints import load_checkpoint

    model = load_checkpoint(path)
    model.eval()
    p = model.cfg.d_vocab - 1
    # the authors' own split (their config defaults: seed 0, 30 % of the pairs)
    train = authors_gen_train_test(p, 0.3, 0)
    return model, ModularAddition(p), train


def _run(run_dir: Path):
    from tl_grokking.runs.checkpoints import load_run

    run = load_run(run_dir)
    pairs = run.task.pairs()
    train = [(int(pairs[i, 0]), int(pairs[i, 1]), run.task.p) for i in run.train_indices]
    return run.model(), run.task, train


@pytest.fixture(scope="module", params=["no_wd", "low_precision", "run_p23", "small_run"])
def case(request):
    """(name, model, task, training triples, final-position MLP activations, logits [p², p])."""
    name = request.param
    if name == "no_wd":
        model, task, train = _authors_checkpoint(NO_WD)
    elif name == "low_precision":
        model, task, train = _authors_checkpoint(LOW_PRECISION)
    elif name == "run_p23":
        from conftest import SHIPPED_RUN

        model, task, train = _run(SHIPPED_RUN)
    else:
        model, task, train = _run(request.getfixturevalue("small_run"))
    acts = grid_activations(model, task, [MLP_POST, "unembed.hook_out"])
    post, logits = acts[MLP_POST], acts["unembed.hook_out"][:, : task.p].double()
    return name, model, task, train, post, logits


# ---------------------------------------------------------------------------------------------
# tl_grokking against the oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [7, 23, 113])
def test_fourier_basis_and_2d_transform_are_theirs(p):
    ours, names = fourier_basis(p, dtype=torch.float64)
    torch.testing.assert_close(ours, authors_fourier_basis(p), rtol=0, atol=1e-12)
    assert names[:3] == ["const", "cos 1", "sin 1"]
    x = torch.randn(p * p, 3, generator=torch.Generator().manual_seed(p), dtype=torch.float64)
    theirs = authors_fft2d(x, p, authors_fourier_basis(p))
    torch.testing.assert_close(fourier_transform_2d(to_grid(x, p)).reshape(p * p, 3), theirs)


def test_neuron_fve_and_the_authors_key_frequencies(case):
    name, model, task, _, post, _ = case
    p = task.p
    fve, freq, best = authors_neuron_fve(post, p)
    clusters = neuron_clusters(model, task, activations=post)
    # every neuron's FVE for every frequency: float64 on both sides from the same activations
    torch.testing.assert_close(clusters.fve_all, fve, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(clusters.fve, best, rtol=1e-9, atol=1e-12)
    second = fve.topk(2, dim=0).values
    decided = (second[0] - second[1]) > 1e-9  # ties aside, the same frequency
    assert torch.equal(clusters.freq[decided], freq[decided])
    # their key frequencies: the unique arg-max over all neurons, no threshold — ours with a
    # threshold below every FVE
    theirs = authors_key_freqs(post, p)
    assert theirs == sorted(set(clusters.freq.tolist()))
    tiny = float(clusters.fve.min()) / 2
    assert key_frequencies(model, task, rule="clusters", threshold=tiny).keys == theirs
    expected = {
        "no_wd": [9, 24, 26, 28, 36, 41, 52, 53],  # noise: the circuit uses {36, 52}
        "low_precision": [3, 6, 23, 39],  # ours adds the harmonic 9 (restricted-loss test)
        "run_p23": [6, 10],
    }
    if name in expected:
        assert theirs == expected[name]


def test_losses_and_coefficients_given_the_same_key_frequencies(case):
    name, model, task, train, _, logits = case
    p = task.p
    labels = task.labels()
    keys = key_frequencies(model, task, logits=logits)
    freqs = keys.keys
    assert freqs
    # restricted loss (their "trig loss"): their 2-D components vs our sum directions
    theirs = authors_trig_loss(logits, labels, freqs, p)
    ours, _ = loss_and_accuracy(SumProjection(p, freqs).restricted(logits), labels)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-15)
    assert keys.restricted is not None and keys.restricted.loss == pytest.approx(theirs, rel=1e-9)
    for k in freqs:  # and each key removed (the contested report)
        others = [j for j in freqs if j != k]
        if others:
            want = authors_trig_loss(logits, labels, others, p)
            assert keys.toggled[k].loss == pytest.approx(want, rel=1e-9, abs=1e-15)
    # excluded losses on the same training pairs: all keys, and one key at a time
    is_train, _ = authors_is_train_is_test(train, p)
    rows = torch.from_numpy(np.nonzero(is_train)[0])
    every, per_k = authors_excluded_losses(logits, labels, freqs, p, is_train)
    proj = SumProjection(p, freqs, rows=rows)
    got = loss_and_accuracy(proj.excluded(logits), labels[rows])[0]
    assert got == pytest.approx(every, rel=1e-9)
    for k in freqs:
        got_k = loss_and_accuracy(proj.excluded(logits, freq=k), labels[rows])[0]
        assert got_k == pytest.approx(per_k[k], rel=1e-9)
    # the progress measures (fast float32 forward): float32 rounding of the logits
    measures = progress_measures(
        [(0, model)], task=task, key_freqs=freqs, train_indices=rows, progress=False
    ).rows()[0]
    assert measures["restricted_loss"] == pytest.approx(theirs, rel=1e-4, abs=1e-9)
    assert measures["excluded_loss"] == pytest.approx(every, rel=1e-4)
    for k in freqs:
        assert measures[f"excluded_loss_k{k}"] == pytest.approx(per_k[k], rel=1e-4)
    # the trig-identity coefficients: theirs is α_k · ‖cos(w_k(x + y - z))‖ = α_k √(p³/2)
    coefficients = authors_coefficients(logits, p, freqs)
    trig = trig_logit_decomposition(logits, task, freqs)
    for k in freqs:
        assert trig.alpha[k] * math.sqrt(p**3 / 2) == pytest.approx(coefficients[k], rel=1e-9)


# ---------------------------------------------------------------------------------------------
# The three defects, as written
# ---------------------------------------------------------------------------------------------


def test_defect_1_key_frequency_loop_misses_the_last_frequency():
    """``range(1, p // 2)``: a neuron of frequency p // 2 is given another frequency."""
    p = 23
    x = torch.arange(p, dtype=torch.float64)
    a, b = x[:, None], x[None, :]
    w = 2 * math.pi / p
    # neuron 0 at the last frequency 11 (and a little of 4), neuron 1 at frequency 4
    acts = torch.stack(
        [
            (torch.cos(11 * w * (a + b)) + 0.2 * torch.cos(4 * w * (a + b))).flatten(),
            torch.cos(4 * w * (a + b)).flatten(),
        ],
        dim=1,
    )
    _, intended, _ = authors_neuron_fve(acts, p)
    _, as_written, _ = authors_neuron_fve(acts, p, as_written=True)
    assert intended.tolist() == [11, 4] and as_written.tolist() == [4, 4]
    assert authors_key_freqs(acts, p) == [4, 11]
    assert authors_key_freqs(acts, p, as_written=True) == [4]
    from tl_grokking.model.config import ModelConfig
    from tl_grokking.model.transformer import make_model

    model = make_model(ModelConfig(p=p, d_model=8, n_heads=2, d_mlp=2))
    assert neuron_clusters(model, activations=acts).freq.tolist() == [11, 4]  # the intended


def test_defect_2_the_high_precision_cross_entropy_is_float32():
    """At the fixture's loss levels the float32 cast is visibly off; tl_grokking is float64."""
    model, task, _ = _authors_checkpoint(NO_WD)
    logits = grid_activations(model, task, ["unembed.hook_out"])["unembed.hook_out"][:, :113]
    labels = task.labels()
    keys = key_frequencies(model, task, logits=logits)
    restricted = SumProjection(113, keys.keys).restricted(logits.double())
    exact = authors_cross_entropy(restricted, labels)
    assert loss_and_accuracy(restricted, labels)[0] == pytest.approx(exact, rel=1e-12)
    assert exact == pytest.approx(1.13e-8, rel=0.01)
    as_written = authors_cross_entropy(restricted, labels, as_written=True)
    assert abs(as_written / exact - 1) > 0.05  # float32 log-softmax: steps of ~6e-8 per input


def test_defect_3_the_split_lookup_hard_codes_113(small_run):
    """``(x, y, 113) in train``: right for p = 113 only; at p = 29 nothing is "train"."""
    train_113 = authors_gen_train_test(113, 0.3, 0)
    assert np.array_equal(
        authors_is_train_is_test(train_113, 113, as_written=True)[0],
        authors_is_train_is_test(train_113, 113)[0],
    )
    model, task, train = _run(small_run)
    is_train, _ = authors_is_train_is_test(train, task.p)
    assert is_train.sum() == len(train) > 0
    is_train_as_written, is_test_as_written = authors_is_train_is_test(
        train, task.p, as_written=True
    )
    assert not is_train_as_written.any() and is_test_as_written.all()
    logits = grid_activations(model, task, ["unembed.hook_out"])["unembed.hook_out"][:, : task.p]
    excluded = authors_test_logits(
        logits.double(), task.labels(), is_train_as_written, mode="train"
    )
    assert math.isnan(excluded)  # the mean over an empty training set
