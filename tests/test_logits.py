"""Logit-level tools: restricted / excluded logits and the trig-identity decomposition."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tl_grokking.analysis.grid import all_logits, loss_and_accuracy
from tl_grokking.analysis.logits import (
    excluded_logits,
    restricted_logits,
    trig_approx_logits,
    trig_logit_decomposition,
)
from tl_grokking.data.tasks import ModularAddition

FIXTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "paper_original_format_no_wd.pth"
)


def cube_features(p: int, freqs) -> torch.Tensor:
    """Explicit features cos(w_k(a+b-c)) over the p² × p table: [p² · p, |K|] (small p only)."""
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    c = torch.arange(p).double()
    s = (a + b)[:, None] - c[None, :]
    return torch.stack([torch.cos(2 * math.pi * k * s / p).reshape(-1) for k in freqs], dim=1)


def synthetic_logits(p: int, alpha: dict[int, float], noise: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    X = cube_features(p, list(alpha))
    L = (X @ torch.tensor(list(alpha.values()), dtype=torch.float64)).reshape(p * p, p)
    L = L + torch.randn(p * p, 1, generator=gen).double() * 3.0  # per-input shifts (irrelevant)
    L = L + torch.randn(1, p, generator=gen).double() * 0.5  # per-class constants
    return L + noise * torch.randn(p * p, p, generator=gen).double()


def test_trig_fit_recovers_known_alpha():
    p = 17
    alpha = {2: 4.0, 5: -1.5, 7: 2.5}
    L = synthetic_logits(p, alpha, noise=0.05, seed=0)
    fit = trig_logit_decomposition(L, freqs=[2, 5, 7])
    for k, v in alpha.items():
        assert fit.alpha[k] == pytest.approx(v, abs=0.01)
    assert fit.fve > 0.9
    # exactly the least-squares solution on explicit features, with an intercept per input
    X = cube_features(p, [2, 5, 7])
    rows = torch.arange(p * p).repeat_interleave(p)
    onehot = F.one_hot(rows, p * p).double()
    design = torch.cat([X, onehot], dim=1)
    sol = torch.linalg.lstsq(design, L.reshape(-1, 1)).solution[:3, 0]
    torch.testing.assert_close(
        torch.tensor([fit.alpha[k] for k in (2, 5, 7)], dtype=torch.float64), sol
    )


def test_trig_fit_fve_and_losses_match_brute_force():
    p = 11
    gen = torch.Generator().manual_seed(1)
    L = torch.randn(p * p, p, generator=gen, dtype=torch.float64) + synthetic_logits(
        p, {1: 2.0, 3: 1.0}, noise=0.0, seed=2
    )
    fit = trig_logit_decomposition(L, freqs=[1, 3, 4])
    X = cube_features(p, [1, 3, 4])
    approx = (X @ torch.tensor([fit.alpha[k] for k in (1, 3, 4)], dtype=torch.float64)).reshape(
        p * p, p
    )
    centred = L - L.mean(dim=1, keepdim=True)
    fve = 1 - (centred - approx).square().sum() / centred.square().sum()
    assert fit.fve == pytest.approx(float(fve), rel=1e-9)
    assert sum(fit.fve_per_freq.values()) == pytest.approx(fit.fve)
    labels = ModularAddition(p).labels()
    assert fit.loss == pytest.approx(F.cross_entropy(L, labels).item(), rel=1e-9)
    assert fit.approx_loss == pytest.approx(F.cross_entropy(approx, labels).item(), rel=1e-9)
    torch.testing.assert_close(trig_approx_logits(p, fit), approx)
    assert "α" in str(fit) and "k =   3" in str(fit)


def test_trig_fit_even_modulus_nyquist():
    p = 10
    L = synthetic_logits(p, {5: 3.0, 2: 1.0}, noise=0.0, seed=3)
    fit = trig_logit_decomposition(L, freqs=[2, 5], task=None)
    assert fit.alpha[5] == pytest.approx(3.0) and fit.alpha[2] == pytest.approx(1.0)


class _AllocationRecorder(TorchDispatchMode):
    """Records the largest tensor storage any op allocates (outputs that alias no input)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def test_decomposition_never_builds_a_p_cubed_tensor():
    p = 113
    gen = torch.Generator().manual_seed(4)
    L = torch.randn(p * p, p, generator=gen, dtype=torch.float64)  # the logits: p³ numbers
    keys = [14, 35, 41, 42, 52]
    with _AllocationRecorder() as rec:
        fit = trig_logit_decomposition(L, freqs=keys)
    cube_bytes = p**3 * 4  # even a float32 p × p × p cube (or a copy of L) is over this
    assert rec.largest < cube_bytes / 2, f"largest allocation {rec.largest} bytes"
    # and the recorder does see a cube when one is built
    with _AllocationRecorder() as rec2:
        (L - L.mean(dim=1, keepdim=True)).sum()
    assert rec2.largest >= cube_bytes
    assert 0 <= fit.fve < 0.01  # random logits: essentially nothing explained


def test_restricted_and_excluded_logits():
    p = 13
    gen = torch.Generator().manual_seed(5)
    L = torch.randn(p * p, p, generator=gen, dtype=torch.float64)
    K = [2, 6]
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    proj = torch.zeros_like(L)
    for k in K:
        for fn in (torch.cos, torch.sin):
            v = fn(2 * math.pi * k * (a + b) / p)
            v = v / v.norm()
            proj += v[:, None] * (v @ L)[None, :]
    torch.testing.assert_close(restricted_logits(L, p, K), proj + L.mean(dim=0, keepdim=True))
    torch.testing.assert_close(excluded_logits(L, p, K), L - proj)
    with pytest.raises(ValueError, match="logits"):
        restricted_logits(L[:-1], p, K)
    with pytest.raises(ValueError, match="key frequencies"):
        excluded_logits(L, p, [7])


def test_loss_and_accuracy_errors(unchecked_types):
    with unchecked_types(), pytest.raises(ValueError, match="labels"):
        loss_and_accuracy(torch.zeros(3, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        loss_and_accuracy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="freqs is required"):
        trig_logit_decomposition(torch.zeros(49, 7))
    with pytest.raises(ValueError, match="p²"):
        trig_logit_decomposition(torch.zeros(50, 7), freqs=[1])


# ---- the fixture checkpoint ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_logits():
    if not FIXTURE.exists():
        pytest.skip(f"fixture checkpoint not found at {FIXTURE}")
    from tl_grokking.runs.checkpoints import load_checkpoint

    model = load_checkpoint(FIXTURE)
    assert model.cfg.d_vocab_out == 114  # the authors' extra '=' logit, dropped by all_logits
    return all_logits(model, ModularAddition(113))


def test_fixture_loss_restricted_and_trig_fit(paper_logits):
    L = paper_logits
    assert L.shape == (113 * 113, 113) and L.dtype == torch.float64
    labels = ModularAddition(113).labels()
    loss, acc = loss_and_accuracy(L, labels)
    assert 5e-8 < loss < 5e-7 and acc == 1.0  # the fixture: full loss ≈ 1e-7, 100 % accuracy
    restricted, r_acc = loss_and_accuracy(restricted_logits(L, 113, [36, 52]), labels)
    assert restricted < loss and r_acc == 1.0
    excluded, _ = loss_and_accuracy(excluded_logits(L, 113, [36, 52]), labels)
    assert excluded > 10.0  # without its two frequencies the model is far worse than chance
    fit = trig_logit_decomposition(L, freqs=[36, 52])
    assert fit.loss == pytest.approx(loss, rel=1e-9)
    assert 0.9 < fit.fve < 1.0
    assert fit.alpha[36] > fit.alpha[52] > 0
    assert fit.approx_loss < loss and fit.approx_accuracy == 1.0


@pytest.mark.parametrize("name", ["sub", "mul", "x2+y2"])
def test_trig_decomposition_refuses_tasks_without_sum_directions(name):
    from tl_grokking.data.tasks import make_task
    from tl_grokking.model.config import ModelConfig
    from tl_grokking.model.transformer import make_model

    p = 7
    task = make_task(name, p)
    model = make_model(ModelConfig(p=p, d_model=16, n_heads=2, d_mlp=16), seed=0)
    for source in (model, torch.zeros(p * p, p)):
        with pytest.raises(ValueError, match=f"trig logit decomposition.*'{re.escape(name)}'"):
            trig_logit_decomposition(source, task, [1])
