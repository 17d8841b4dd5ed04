"""Fourier basis, transforms, projections, neuron clusters and key frequencies.

Numbers are checked against brute-force sums written out here, synthetic tensors with planted
Fourier structure, and the fixture checkpoint (p = 113, authors' format).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tl_grokking.analysis.circuits import key_frequencies, neuron_clusters
from tl_grokking.analysis.fourier import (
    basis_frequencies,
    block_fve,
    fourier_basis,
    fourier_transform,
    fourier_transform_2d,
    grid_mask,
    inverse_fourier_transform_2d,
    project_1d,
    project_grid,
    sum_directions,
)
from tl_grokking.data.tasks import ModularAddition
from tl_grokking.model.transformer import ModelConfig, make_model

FIXTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "paper_original_format_no_wd.pth"
)


def brute_basis(n: int) -> torch.Tensor:
    """The cos-first orthonormal basis written out entry by entry."""
    rows = [[1 / math.sqrt(n)] * n]
    for k in range(1, n // 2 + 1):
        nyquist = 2 * k == n
        scale = math.sqrt(1 / n) if nyquist else math.sqrt(2 / n)
        rows.append([scale * math.cos(2 * math.pi * k * x / n) for x in range(n)])
        if not nyquist:
            rows.append([scale * math.sin(2 * math.pi * k * x / n) for x in range(n)])
    return torch.tensor(rows, dtype=torch.float64)


# ---- basis and transforms ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [7, 8, 13, 17, 23])
def test_basis_orthonormal_and_matches_brute_force(n):
    F, names = fourier_basis(n, dtype=torch.float64)
    assert F.shape == (n, n)
    torch.testing.assert_close(F @ F.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(F, brute_basis(n), atol=1e-12, rtol=0)
    assert names[:3] == ["const", "cos 1", "sin 1"]
    assert len(basis_frequencies(n)) == n


def test_transform_matches_brute_force_sum_and_parseval():
    gen = torch.Generator().manual_seed(0)
    p = 13
    x = torch.randn(4, p, 3, generator=gen, dtype=torch.float64)
    coeffs = fourier_transform(x, dim=1)
    B = brute_basis(p)
    for i in range(p):  # coefficient i = sum_t B[i, t] x[:, t, :]
        expected = sum(B[i, t] * x[:, t, :] for t in range(p))
        torch.testing.assert_close(coeffs[:, i, :], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(coeffs.square().sum(), x.square().sum())  # Parseval


def test_2d_transform_matches_double_sum_and_inverts():
    gen = torch.Generator().manual_seed(1)
    p = 7
    grid = torch.randn(p, p, 2, generator=gen, dtype=torch.float64)
    C = fourier_transform_2d(grid)
    B = brute_basis(p)
    for i, j in [(0, 0), (1, 2), (3, 0), (6, 5)]:
        expected = sum(B[i, a] * B[j, b] * grid[a, b] for a in range(p) for b in range(p))
        torch.testing.assert_close(C[i, j], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(inverse_fourier_transform_2d(C), grid, atol=1e-12, rtol=0)
    torch.testing.assert_close(C.square().sum(), grid.square().sum())


def test_cos_of_sum_is_exactly_one_sum_direction():
    p, k = 17, 5
    a = torch.arange(p, dtype=torch.float64)
    f = torch.cos(2 * math.pi * k * (a[:, None] + a[None, :]) / p).reshape(-1)
    dirs = sum_directions(p, [k], dtype=torch.float64)
    torch.testing.assert_close(dirs[0] * f.norm(), f, atol=1e-12, rtol=0)
    assert abs(float(dirs[1] @ f)) < 1e-10  # orthogonal to the sin direction
    torch.testing.assert_close(project_grid(f, p, [k], basis="sum", include_const=False), f)
    assert project_grid(f, p, [k], mode="remove").abs().max() < 1e-12
    assert project_grid(f, p, [k + 1], basis="sum", include_const=False).abs().max() < 1e-12
    # In the 2-D basis it is (cos k ⊗ cos k − sin k ⊗ sin k) · |f| / √2 and nothing else.
    C = fourier_transform_2d(f.reshape(p, p))
    c, s = 2 * k - 1, 2 * k
    expected = torch.zeros(p, p, dtype=torch.float64)
    expected[c, c], expected[s, s] = f.norm() / math.sqrt(2), -f.norm() / math.sqrt(2)
    torch.testing.assert_close(C, expected, atol=1e-10, rtol=0)
    # Orientation (first index a, second b): sin(w_5 a + w_3 b) = sin 5 ⊗ cos 3 + cos 5 ⊗ sin 3.
    g = torch.sin(2 * math.pi * (k * a[:, None] + 3 * a[None, :]) / p)
    C = fourier_transform_2d(g)
    expected = torch.zeros(p, p, dtype=torch.float64)
    expected[s, 5] = expected[c, 6] = g.norm() / math.sqrt(2)  # rows 5, 6 = cos 3, sin 3
    torch.testing.assert_close(C, expected, atol=1e-10, rtol=0)
    # and sin(w_k(a+b)) is the second sum direction.
    g = torch.sin(2 * math.pi * k * (a[:, None] + a[None, :]) / p)
    torch.testing.assert_close(dirs[1] * g.norm(), g.reshape(-1), atol=1e-12, rtol=0)


# ---- projections ------------------------------------------------------------------------------


def test_project_1d_keep_remove_idempotent_and_brute_force():
    gen = torch.Generator().manual_seed(2)
    p = 13
    x = torch.randn(p, 6, generator=gen, dtype=torch.float64)
    keep = project_1d(x, [2, 5], dim=0, mode="keep")  # default: the constant is kept too
    remove = project_1d(x, [2, 5], dim=0, mode="remove", include_const=True)
    torch.testing.assert_close(keep + remove, x)
    # default remove leaves the constant alone: removing from the mean-free part only
    centred_removed = project_1d(x, [2, 5], mode="remove")
    torch.testing.assert_close(centred_removed - remove, x.mean(0, keepdim=True).expand_as(x))
    torch.testing.assert_close(project_1d(keep, [2, 5], mode="keep"), keep)
    B = brute_basis(p)
    rows = [0, 3, 4, 9, 10]  # const, cos 2, sin 2, cos 5, sin 5
    torch.testing.assert_close(keep, B[rows].T @ (B[rows] @ x), atol=1e-12, rtol=0)
    # All frequencies + const is the identity; none + const leaves the mean.
    torch.testing.assert_close(project_1d(x, range(1, 7), mode="keep"), x)
    torch.testing.assert_close(project_1d(x, [], mode="keep"), x.mean(0, keepdim=True).expand_as(x))
    # Along another axis, float32 preserved.
    y = torch.randn(3, p, generator=gen)
    out = project_1d(y, [1], dim=1, mode="remove", include_const=True)
    assert out.dtype == torch.float32
    assert out.sum(dim=1).abs().max() < 1e-5


@pytest.mark.parametrize("basis", ["sum", "block", "product"])
@pytest.mark.parametrize("include_const", [True, False])
def test_project_grid_idempotent_complementary(basis, include_const):
    gen = torch.Generator().manual_seed(3)
    p = 11
    x = torch.randn(p * p, 4, generator=gen, dtype=torch.float64)
    keep = project_grid(x, p, [1, 4], basis=basis, mode="keep", include_const=include_const)
    remove = project_grid(x, p, [1, 4], basis=basis, mode="remove", include_const=include_const)
    torch.testing.assert_close(keep + remove, x)
    again = project_grid(keep, p, [1, 4], basis=basis, mode="keep", include_const=include_const)
    torch.testing.assert_close(again, keep)
    assert abs(float((keep * remove).sum())) < 1e-9  # orthogonal projection


def test_project_grid_block_matches_masked_full_transform():
    gen = torch.Generator().manual_seed(4)
    p = 9  # odd, not prime: the basis does not need a prime
    x = torch.randn(p * p, 3, generator=gen, dtype=torch.float64)
    B = brute_basis(p)
    for basis in ("block", "product"):
        mask = grid_mask(p, [2, 3], basis=basis, include_const=True).double()
        C = torch.einsum("ia,abn,jb->ijn", B, x.reshape(p, p, 3), B) * mask[:, :, None]
        expected = torch.einsum("ia,ijn,jb->abn", B, C, B).reshape(p * p, 3)
        got = project_grid(x, p, [2, 3], basis=basis, mode="keep", include_const=True)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_grid_mask_counts():
    p = 13
    for K in ([1], [2, 5], [1, 2, 3, 4, 5, 6]):
        block = grid_mask(p, K, basis="block", include_const=True)
        assert int(block.sum()) == 1 + 8 * len(K)
        prod = grid_mask(p, K, basis="product", include_const=False)
        assert int(prod.sum()) == (1 + 2 * len(K)) ** 2 - 1
    # keeping all frequencies (+ const) in the product basis is the identity
    assert bool(grid_mask(p, range(1, 7), basis="product").all())
    assert int(grid_mask(8, [4], basis="block").sum()) == 4  # Nyquist: {const, cos 4}²


@pytest.mark.parametrize(
    "call",
    [
        lambda x: project_grid(x, 7, [0]),
        lambda x: project_grid(x, 7, [4]),
        lambda x: project_grid(x, 7, [1], mode="drop"),
        lambda x: project_grid(x, 7, [1], basis="diag"),
        lambda x: project_grid(x[:10], 7, [1]),
        lambda x: project_1d(x, [1], mode="nope"),
    ],
)
def test_projection_bad_input(call):
    with pytest.raises(ValueError):
        call(torch.zeros(49, 2))


# ---- neuron clusters: block FVE against brute force and planted structure -----------------------


def brute_block_fve(col: torch.Tensor, p: int) -> list[float]:
    B = brute_basis(p)
    g = (col - col.mean()).reshape(p, p)
    C = B @ g @ B.T
    out = []
    for k in range(1, p // 2 + 1):
        idx = [0, 2 * k - 1, 2 * k]
        out.append(float(C[idx][:, idx].square().sum() / C.square().sum()))
    return out


def planted_activations(p: int, freqs: list[int], noise: float, seed: int) -> torch.Tensor:
    """Columns = a random mix of the 3×3 block of freqs[n] (incl. a mean offset) + noise."""
    gen = torch.Generator().manual_seed(seed)
    B = brute_basis(p)
    cols = []
    for k in freqs:
        idx = [0, 2 * k - 1, 2 * k]
        coeff = torch.randn(3, 3, generator=gen, dtype=torch.float64)
        grid = B[idx].T @ coeff @ B[idx]
        cols.append(grid.reshape(-1) + noise * torch.randn(p * p, generator=gen).double())
    return torch.stack(cols, dim=1)


def test_block_fve_matches_brute_force_and_recovers_planted_frequencies():
    p = 13
    freqs = [1, 3, 3, 6, 2]
    acts = planted_activations(p, freqs, noise=0.01, seed=5)
    fve = block_fve(acts, p)
    assert fve.shape == (6, len(freqs))
    for n in range(len(freqs)):
        torch.testing.assert_close(
            fve[:, n], torch.tensor(brute_block_fve(acts[:, n], p), dtype=torch.float64)
        )
    assert fve.argmax(dim=0).add(1).tolist() == freqs
    assert float(fve.max(dim=0).values.min()) > 0.99
    assert block_fve(torch.ones(p * p, 2), p).abs().max() == 0  # dead neuron: 0, not NaN


def test_neuron_clusters_on_planted_activations():
    p = 13
    model = make_model(ModelConfig(p=p, d_model=16, n_heads=2, d_mlp=8))
    freqs = [2, 2, 2, 5, 5, 1, 1, 1]
    acts = planted_activations(p, freqs, noise=0.01, seed=6)
    acts[:, 5:] = torch.randn(p * p, 3, generator=torch.Generator().manual_seed(7)).double()
    clusters = neuron_clusters(model, activations=acts)
    assert clusters.freq[:5].tolist() == freqs[:5]
    assert clusters.clustered.tolist() == [True] * 5 + [False] * 3
    assert clusters.sizes == {2: 3, 5: 2}
    assert clusters.n_unclustered == 3
    assert clusters.neurons(5).tolist() == [3, 4]
    assert "5 of 8 neurons clustered" in str(clusters)
    # the key-frequency cluster rule reads the same clusters; min_cluster_size filters
    kf = key_frequencies(model, rule="clusters", clusters=clusters)
    assert kf.keys == [2, 5] and list(kf) == [2, 5]
    assert key_frequencies(model, rule="clusters", clusters=clusters, min_cluster_size=3).keys == [
        2
    ]
    with pytest.raises(ValueError, match="threshold"):
        neuron_clusters(model, threshold=1.5, activations=acts)


def test_key_frequencies_embed_and_unembed_rules_on_planted_weights():
    p = 17
    model = make_model(ModelConfig(p=p, d_model=24, n_heads=2, d_mlp=32), seed=1)
    gen = torch.Generator().manual_seed(8)
    B = brute_basis(p).float()
    with torch.no_grad():
        # W_E[:p]: frequencies 3 and 7 strong, everything else small noise.
        W_E = 3.0 * B[[5, 6, 13, 14]].T @ torch.randn(4, 24, generator=gen)
        model.W_E[:p] = W_E + 0.01 * torch.randn(p, 24, generator=gen)
        # W_L = W_out W_U: make W_U[:, :p] read out frequencies 3 and 4 only.
        W_U = torch.randn(24, 4, generator=gen) @ B[[5, 6, 7, 8]] * 2.0
        model.W_U[:, :p] = W_U + 0.001 * torch.randn(24, p, generator=gen)
    kf = key_frequencies(model, rule="all", clusters=None)
    assert kf.by_rule["embed"] == [3, 7]
    assert kf.by_rule["unembed"] == [3, 4]
    assert not kf.agree
    # evidence: per-frequency norms sqrt(|cos k row|² + |sin k row|²) of F W_E, brute force
    WE = model.W_E[:p].detach().double()
    B64 = brute_basis(p)
    expected = [float((B64[[2 * k - 1, 2 * k]] @ WE).norm()) for k in range(1, 9)]
    torch.testing.assert_close(kf.evidence["embed"], torch.tensor(expected, dtype=torch.float64))
    WL = (model.blocks[0].mlp.W_out @ model.W_U[:, :p]).detach().double()
    expected = [float((WL @ B64[[2 * k - 1, 2 * k]].T).norm()) for k in range(1, 9)]
    torch.testing.assert_close(kf.evidence["unembed"], torch.tensor(expected, dtype=torch.float64))
    assert "rules agree: no" in str(kf)
    with pytest.raises(ValueError, match="rule"):
        key_frequencies(model, rule="biggest")


# ---- the fixture checkpoint (p = 113, authors' format, trained without weight decay) -------------


@pytest.fixture(scope="module")
def paper_model():
    if not FIXTURE.exists():
        pytest.skip(f"fixture checkpoint not found at {FIXTURE}")
    from tl_grokking.runs.checkpoints import load_checkpoint

    return load_checkpoint(FIXTURE)


def test_fixture_key_frequencies_and_clusters(paper_model):
    task = ModularAddition(113)
    kf = key_frequencies(paper_model, task, rule="all")
    assert kf.keys == [36, 52]
    assert kf.by_rule["clusters"] == [36, 52]
    assert kf.by_rule["unembed"] == [36, 52]
    # W_E of this no-weight-decay run is not sparse: the max/4 rule picks up many more
    # frequencies, but 36 and 52 are its two largest.
    embed = kf.by_rule["embed"]
    assert {36, 52} < set(embed)
    assert set(kf.evidence["embed"].topk(2).indices.add(1).tolist()) == {36, 52}
    assert not kf.agree
    assert kf.clusters.sizes == {36: 181, 52: 139}
    assert kf.clusters.n_unclustered == 192


# ---- a small model that really grokked (the session fixture of conftest.py) ----------------


def test_small_grokked_model_rules_agree(small_model, small_task):
    kf = key_frequencies(small_model, small_task, rule="all")
    assert kf.agree, str(kf)
    assert 1 <= len(kf.keys) <= 6
    assert kf.by_rule["embed"] == kf.by_rule["unembed"] == kf.by_rule["clusters"] == kf.keys
    clusters = kf.clusters
    assert clusters.n_unclustered < clusters.freq.shape[0] / 2  # most neurons are clustered
    assert set(clusters.sizes) == set(kf.keys)
