"""Fourier basis, transforms, projections, neuron clusters and key frequencies (token order and
the group coordinates of the task: discrete-log order for ×, ÷).

Numbers are checked against brute-force sums written out here, synthetic tensors with planted
Fourier structure, and the fixture checkpoint (p = 113, authors' format).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from brute_force import brute_sum_projection
from tl_grokking.analysis.circuits import key_frequencies, neuron_clusters
from tl_grokking.analysis.fourier import (
    SumProjection,
    basis_frequencies,
    block_fve,
    fourier_basis,
    fourier_transform,
    fourier_transform_2d,
    frequencies,
    grid_mask,
    inverse_fourier_transform_2d,
    project_1d,
    project_grid,
    sum_directions,
)
from tl_grokking.analysis.weights import (
    embed_fourier_norms,
    frequency_mass_count,
    norms_by_frequency,
)
from tl_grokking.data.tasks import ModularAddition, make_task
from tl_grokking.model.config import ModelConfig
from tl_grokking.model.transformer import make_model

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


@pytest.mark.parametrize("p", [11, 12])
def test_sum_projection_restricted_and_excluded_match_brute_force(p):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(p * p, 5, generator=gen, dtype=torch.float64)
    K = [2, p // 2]  # p // 2 is the Nyquist frequency for even p (one direction)
    proj_K = brute_sum_projection(x, p, K)
    train = torch.randperm(p * p, generator=gen)[: p * p // 3]
    proj = SumProjection(p, K, rows=train)
    assert proj.dirs.shape == (3 if p % 2 == 0 else 4, p * p)
    coeffs = proj.coefficients(x)
    torch.testing.assert_close(proj.project(x, coeffs), proj_K)
    torch.testing.assert_close(proj.restricted(x), proj_K + x.mean(dim=0, keepdim=True))
    torch.testing.assert_close(proj.excluded(x, coeffs), (x - proj_K)[train])
    torch.testing.assert_close(proj.on_rows(x), x[train])
    for k in K:
        one = brute_sum_projection(x, p, [k])
        torch.testing.assert_close(proj.excluded(x, coeffs, freq=k), (x - one)[train])
        gathered = proj.excluded(x, coeffs, freq=k, x_rows=proj.on_rows(x))
        torch.testing.assert_close(gathered, (x - one)[train])
    everywhere = SumProjection(p, K)
    torch.testing.assert_close(everywhere.excluded(x), x - proj_K)
    # project_grid(basis="sum") is the same projection
    torch.testing.assert_close(project_grid(x, p, K, basis="sum"), everywhere.restricted(x))
    with pytest.raises(ValueError, match="freq must be one of"):
        proj.excluded(x, freq=1)
    with pytest.raises(ValueError, match="grid"):
        proj.coefficients(x[:-1])
    with pytest.raises(ValueError, match="rows"):
        SumProjection(p, K, rows=torch.tensor([p * p]))
    with pytest.raises(ValueError, match="key_freqs"):
        SumProjection(p, [0], field="key_freqs")


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


@pytest.mark.parametrize("n", [10, 12])
def test_block_fve_on_an_even_grid_has_a_nyquist_block(n):
    """Even n (n = p - 1 after the discrete-log re-indexing): frequency n/2 has the 2×2 block
    {const, cos n/2}²; checked against the full 2-D transform with the written-out basis."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n * n, 4, generator=gen, dtype=torch.float64)
    B = brute_basis(n)
    fve = block_fve(x, n)
    assert fve.shape == (n // 2, 4)
    for col in range(4):
        g = (x[:, col] - x[:, col].mean()).reshape(n, n)
        C = B @ g @ B.T
        for k in range(1, n // 2 + 1):
            idx = [0, 2 * k - 1] if 2 * k == n else [0, 2 * k - 1, 2 * k]
            expected = C[idx][:, idx].square().sum() / C.square().sum()
            assert float(fve[k - 1, col]) == pytest.approx(float(expected), abs=1e-12)
    # a pure Nyquist pattern cos(pi (i + j)) lies in that block
    i = torch.arange(n).repeat_interleave(n).double()
    j = torch.arange(n).repeat(n).double()
    assert float(block_fve(torch.cos(math.pi * (i + j)), n)[-1]) == pytest.approx(1.0)


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


def test_norm_rules_keep_norms_strictly_above_max_over_four():
    """The one threshold convention of the norm rules: norm > fraction × max ("max/4")."""
    from tl_grokking.analysis.circuits import _above_max_fraction

    norms = torch.tensor([4.0, 1.0, 1.0 + 1e-12, 0.5, 4.0], dtype=torch.float64)
    keys, cut = _above_max_fraction(norms, 0.25)
    assert cut == 1.0 and keys == [1, 3, 5]  # exactly max/4 (k = 2) is not a key


def test_neuron_clusters_in_discrete_log_coordinates_match_a_closed_form():
    """A × model whose MLP output is replaced by known functions of (log a, log b): the group
    grid is run in discrete-log order, and the FVE of each planted neuron is known exactly."""
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
    batches = []

    def replace(post, hook):  # the analysis runs the batch in group order (reindexed_tokens)
        batches.append(post.shape[0])
        if post.shape[0] != n * n:
            return post
        out = post.clone()
        out[:, -1, :] = planted
        return out

    with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", replace)]):
        clusters = neuron_clusters(model, task)  # reindex=None: the group coordinates of ×
        token_order = neuron_clusters(model, task, reindex=False)
    assert batches == [n * n, p * p]  # the group grid, then (reindex=False) the token grid
    fve = clusters.fve_all
    assert fve.shape == (len(frequencies(n)), 3)
    assert clusters.n == n and clusters.discrete_log and not token_order.discrete_log
    assert fve[1, 0] == pytest.approx(1.0, abs=1e-6)  # k = 2 is row 1
    assert fve[2, 1] == pytest.approx(0.5, abs=1e-6) and fve[0, 1] == pytest.approx(0.5, abs=1e-6)
    assert fve[:, 2].max() == pytest.approx(0.0, abs=1e-6)
    assert clusters.sizes == {2: 1} and clusters.n_clustered == 1
    assert "discrete-log order over Z_10" in str(clusters)
    assert token_order.n == p and token_order.fve_all.shape == (p // 2, 3)
    # the same numbers from activations given in group order, without a forward pass
    given = neuron_clusters(model, task, activations=planted)
    torch.testing.assert_close(given.fve_all, fve)
    with pytest.raises(ValueError, match="activations must be"):
        neuron_clusters(model, task, activations=planted[:-1])
    with pytest.raises(ValueError, match="clusters are for p = 11 over Z_11"):
        key_frequencies(model, task, rule="clusters", clusters=token_order)


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
    norms = embed_fourier_norms(model, task)
    assert norms.shape == (n,)
    # closed form: cos/sin of frequency k have norm sqrt(n/2) along their own basis rows
    _, names = fourier_basis(n, dtype=torch.float64)
    assert norms[names.index(f"cos {k}")] == pytest.approx(math.sqrt(n / 2), rel=1e-6)
    assert norms[names.index(f"sin {k}")] == pytest.approx(math.sqrt(n / 2), rel=1e-6)
    assert norms.pow(2).sum() == pytest.approx(n, rel=1e-6)  # Parseval: ‖W_E[order]‖² = n
    kf = key_frequencies(model, task, rule="embed")
    assert kf.keys == [k] and kf.n == n and kf.discrete_log == (name != "add")
    per_freq = norms_by_frequency(norms)
    torch.testing.assert_close(kf.evidence["embed"], per_freq)
    assert frequency_mass_count(per_freq) == 1
    if name in ("mul", "div"):
        # in the token (not re-indexed) order the same embedding is spread over many freqs
        raw = torch.fft.rfft(model.W_E[:p, :2].detach().double(), dim=0).abs().pow(2).sum(1)[1:]
        assert int((raw >= 0.25 * raw.max()).sum()) > 1
        assert len(key_frequencies(model, task, rule="embed", reindex=False).keys) > 1


def test_nyquist_frequency_of_even_group_size():
    p = 13  # n = 12: frequency 6 is the Nyquist cosine (one basis row)
    task = make_task("mul", p)
    model = make_model(ModelConfig(p=p, d_model=8, n_heads=2, d_mlp=8))
    _plant_embedding(model, task, 6)
    per_freq = norms_by_frequency(embed_fourier_norms(model, task))
    assert per_freq.shape == (6,)
    assert per_freq[-1] == pytest.approx(math.sqrt(12), rel=1e-6)
    assert key_frequencies(model, task, rule="embed").keys == [6]


def test_tasks_without_a_group_are_refused_unless_in_token_order(unchecked_types):
    model = make_model(ModelConfig(p=7, d_model=8, n_heads=2, d_mlp=8))
    task = make_task("x2+y2", 7)
    for fn in (key_frequencies, neuron_clusters):
        with pytest.raises(ValueError, match="'x2\\+y2'.*fourier_structure None.*structure-free"):
            fn(model, task)
        with pytest.raises(ValueError, match="'x2\\+y2'"):
            fn(model, task, reindex=True)
    # token order is explicit and computable for any task on the full grid
    kf = key_frequencies(model, task, reindex=False)
    # x² + y² has no sum directions: the circuit rule runs without the logits rule
    assert kf.n == 7 and set(kf.by_rule) == {"circuit", "clusters", "neurons", "embed", "unembed"}
    with unchecked_types(), pytest.raises(ValueError, match="reindex must be"):
        key_frequencies(model, make_task("add", 7), reindex="yes")


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
