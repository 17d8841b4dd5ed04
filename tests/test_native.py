"""The compiled kernels of the fast path (tl_grokking.model.native): the same quantities as
float64 torch and as the torch operations they replace, the same bits at any thread count, and a
loader that builds once, atomically, and says why when it cannot."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F

import tl_grokking.model.fastforward as ff
from tl_grokking._resources import using_threads
from tl_grokking.cli import main
from tl_grokking.model import native
from tl_grokking.training.trainer import cross_entropy_final

HAVE_NATIVE = native.status().available
needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason=f"{native.status()}")
TINY = torch.finfo(torch.float32).tiny


def _reference_ce(logits: torch.Tensor, labels: torch.Tensor, scale: float):
    """Row losses and the float32 gradient by float64 torch (the quantities, written out)."""
    x = logits.double()
    rows = F.cross_entropy(x, labels, reduction="none")
    grad = (torch.softmax(x, 1) - F.one_hot(labels, x.shape[1]).double()) * scale
    grad = grad.float()
    return rows, grad.masked_fill(grad.abs() < TINY, 0.0)


@needs_native
def test_cross_entropy_rows_and_gradient_equal_float64_torch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 37, generator=gen) * 20
    logits[::7] -= 900 * torch.rand(43, 37, generator=gen)  # exponents down to -900: underflow
    labels = torch.randint(0, 37, (300,), generator=gen)
    rows, grad = native.cross_entropy64(logits, labels, 1 / 300)
    ref_rows, ref_grad = _reference_ce(logits, labels, 1 / 300)
    assert grad is not None
    torch.testing.assert_close(rows, ref_rows, rtol=4e-16, atol=4e-16)
    torch.testing.assert_close(grad, ref_grad, rtol=2.4e-7, atol=0.0)  # 2 float32 ulp
    assert native.cross_entropy64(logits, labels, None)[1] is None
    wide = torch.randn(3, 2100, generator=gen) * 5  # wider than the kernel's stack buffer
    rows, grad = native.cross_entropy64(wide, labels[:3], 0.5)
    ref_rows, ref_grad = _reference_ce(wide, labels[:3], 0.5)
    torch.testing.assert_close(rows, ref_rows, rtol=4e-16, atol=4e-16)
    torch.testing.assert_close(grad, ref_grad, rtol=2.4e-7, atol=0.0)


@needs_native
def test_the_float64_exponential_against_a_closed_form():
    # a row [0, x] with label 0 has loss log(1 + e^x): the kernel's exp over its whole range
    x = torch.linspace(-760.0, 0.0, 4001)
    logits = torch.stack([torch.zeros_like(x), x], dim=1)
    labels = torch.zeros(len(x), dtype=torch.int64)
    rows, grad = native.cross_entropy64(logits, labels, 1.0)
    exact = torch.log1p(torch.exp(x.double()))
    assert (rows - exact).abs().max().item() <= 4.5e-16  # 2 ulp of the sum, which is in [1, 2]
    # the second class's gradient, the softmax e^x / (1 + e^x), to float32 rounding
    soft = (torch.exp(x.double()) / (1 + torch.exp(x.double()))).float()
    soft = soft.masked_fill(soft < TINY, 0.0)
    assert grad is not None
    torch.testing.assert_close(grad[:, 1], soft, rtol=1.2e-7, atol=0.0)


@needs_native
def test_the_loss_keeps_torchs_answer_for_bad_rows():
    logits = torch.randn(8, 5)
    labels = torch.arange(8) % 5
    rows, _ = native.cross_entropy64(
        torch.where(torch.arange(8)[:, None] == 3, torch.nan, logits), labels, 1.0
    )
    assert torch.isnan(rows[3]) and torch.isfinite(rows[torch.arange(8) != 3]).all()
    bad = labels.clone()
    bad[2] = 5
    assert torch.isnan(native.cross_entropy64(logits, bad, 1.0)[0][2])
    # through the loss function: what the torch path gives (NaN; an index error)
    nan_logits = logits.clone()
    nan_logits[0, 0] = torch.nan
    assert torch.isnan(cross_entropy_final(nan_logits, labels))
    with pytest.raises(RuntimeError, match="out of bounds"):
        cross_entropy_final(logits, bad)


@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_the_loss_gradient_at_any_weight(weight):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(50, 11, generator=gen) * 4).requires_grad_(True)
    labels = torch.randint(0, 11, (50,), generator=gen)
    (cross_entropy_final(logits, labels) * weight).backward()
    ref = logits.detach().double().requires_grad_(True)
    (F.cross_entropy(ref, labels) * weight).backward()
    torch.testing.assert_close(logits.grad, ref.grad.float(), rtol=2.4e-7, atol=1e-12)


def _readout_inputs(p: int = 17, n_heads: int = 5, d_mlp: int = 70, d_out: int = 19, seed=0):
    """Random tables in the read-out's layout; 5 heads (a block of 4 and one more), widths
    that are not multiples of the kernels' 16-float vectors."""
    gen = torch.Generator().manual_seed(seed)
    n_vocab = p + 1
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)
    tokens = tokens[torch.randperm(p * p, generator=gen)[: p * p // 3]].sort(0).values
    tokens[:, 2] = p
    groups = ff.TokenGroups(tokens, n_vocab, n_heads)
    rows = n_heads * 2 * n_vocab
    tensors = (
        torch.randn(rows, d_mlp, generator=gen),  # table_M
        torch.randn(rows, d_out, generator=gen),  # table_L
        torch.randn(d_mlp + d_out, generator=gen),  # c
        torch.randn(d_mlp, d_out, generator=gen) / 8,  # W_L
        torch.randn(2 * n_vocab + 1, n_heads, generator=gen) * 2,  # scores
    )
    return [t.requires_grad_(True) for t in tensors], groups


def _readout_values_and_grads(enabled: bool, rate: float, monkeypatch) -> list[torch.Tensor]:
    monkeypatch.setenv(native.ENV_SWITCH, "1" if enabled else "0")
    tensors, groups = _readout_inputs()
    logits = ff._ReluReadout.apply(*tensors, groups, rate)
    probe = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))
    (logits * probe).sum().backward()
    return [logits.detach(), *(t.grad for t in tensors)]


@needs_native
@pytest.mark.parametrize("rate", [1.0, 0.35, 0.0])
def test_the_compiled_readout_equals_its_torch_operations(rate, monkeypatch):
    compiled = _readout_values_and_grads(True, rate, monkeypatch)
    torch_ops = _readout_values_and_grads(False, rate, monkeypatch)
    names = ["logits", "table_M", "table_L", "c", "W_L", "scores"]
    for name, got, want in zip(names, compiled, torch_ops, strict=True):
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 2e-6 * scale, name


@needs_native
def test_the_kernels_give_the_same_bits_at_any_thread_count():
    (table_M, table_L, c, _, scores), groups = _readout_inputs()
    args = [t.detach() for t in (scores, table_M, table_L, c)]
    gen = torch.Generator().manual_seed(3)
    d_logits = torch.randn(groups.tokens.shape[0], table_L.shape[1], generator=gen)
    d_pre = torch.randn(groups.tokens.shape[0], table_M.shape[1], generator=gen)
    labels = torch.randint(0, table_L.shape[1], (groups.tokens.shape[0],), generator=gen)
    results = []
    for threads in (1, 2, 3):
        with using_threads(threads):
            post, direct, pattern, soft = native.readout_forward(
                *args, groups.rows, groups.token_rows, 0.6
            )
            backward = native.readout_backward(
                d_pre.clone(),
                post,
                d_logits,
                *args[1:3],
                soft,
                pattern,
                groups.rows,
                groups.bag_offsets,
                groups.bag_order,
                0.6,
            )
            loss = native.cross_entropy64(direct, labels, 0.01)
            results.append([post, direct, pattern, soft, *backward, *loss])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_the_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native.status() == native.NativeStatus(False, f"{native.ENV_SWITCH}=0")
    assert "off" in str(native.status())
    assert not native.enabled(torch.zeros(2))


def test_a_switch_other_than_0_or_1_is_refused_before_a_run_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(native.ENV_SWITCH, "off")
    with pytest.raises(ValueError, match=r"TL_GROKKING_NATIVE must be 0 \(torch .*got 'off'"):
        native.status()
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--p", "23", "--frac-train", "0.6", "--epochs", "2"]
    assert main([*argv, "--d-model", "16", "--n-heads", "2", "--d-mlp", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: TL_GROKKING_NATIVE must be 0" in err
    assert not out.exists()  # nothing written
    monkeypatch.setenv(native.ENV_SWITCH, "")
    assert native.switch_on()


def test_only_float32_cpu_tensors_take_the_kernels():
    assert not native.enabled(torch.zeros(2, dtype=torch.float64))
    assert native.enabled(torch.zeros(2)) == native.status().available


@needs_native
def test_builds_once_into_the_cache_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    compiler = native._compiler()
    assert compiler is not None
    gomp = native._torch_openmp()
    path = native._build(*compiler, gomp)
    assert path.parent == tmp_path / "cache" and path.name.startswith("native-")
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == [path.name, path.name + ".sha256"]  # no temporary left
    stamp = path.stat().st_mtime_ns
    assert native._build(*compiler, gomp) == path and path.stat().st_mtime_ns == stamp


@needs_native
def test_a_cache_that_cannot_be_created_builds_in_a_temporary_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    monkeypatch.setenv(native.ENV_CACHE, str(blocker / "cache"))
    compiler = native._compiler()
    assert compiler is not None
    path = native._build(*compiler, native._torch_openmp())
    assert path.exists() and blocker not in path.parents


@needs_native
def test_a_failing_compile_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    monkeypatch.setattr(native, "_FLAGS", (*native._FLAGS, "-fno-such-option"))
    compiler = native._compiler()
    assert compiler is not None
    with pytest.raises(RuntimeError, match="compiling native.c failed.*no-such-option"):
        native._build(*compiler, native._torch_openmp())
    assert list(tmp_path.iterdir()) == []


def test_without_gcc_the_fast_path_runs_on_torch(monkeypatch):
    tensors, groups = _readout_inputs(seed=4)
    expected = ff._ReluReadout.apply(*tensors, groups, 1.0).detach()
    monkeypatch.setattr(native, "_compiler", lambda: None)
    native._library.cache_clear()
    try:
        if os.environ.get(native.ENV_SWITCH, "1") != "0":
            assert native.status() == native.NativeStatus(
                False, "no GCC found (set CC to a GCC, or install gcc)"
            )
        assert not native.enabled(expected)
        got = ff._ReluReadout.apply(*tensors, groups, 1.0).detach()
        torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-6)
    finally:
        monkeypatch.undo()
        native._library.cache_clear()
    assert native.status().available == HAVE_NATIVE


def test_tokens_outside_the_vocabulary_are_refused_before_any_kernel_runs():
    tokens = torch.tensor([[0, 3, 5], [1, 6, 5]])
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 6\) \(d_vocab\), got 0..6"):
        ff.TokenGroups(tokens, 6, 2)
    with pytest.raises(ValueError, match="got -1..5"):
        ff.TokenGroups(torch.tensor([[0, -1, 5]]), 6, 2)


@needs_native
def test_a_damaged_cached_library_is_built_again_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    compiler, gomp = native._compiler(), native._torch_openmp()
    assert compiler is not None and gomp is not None
    path = native._build(*compiler, gomp)
    whole = path.read_bytes()
    path.write_bytes(whole[:1000])  # truncated, as by a full disk: loading it could crash
    assert native._build(*compiler, gomp) == path and path.read_bytes() == whole
    native._digest_path(path).unlink()  # a library without its digest is not trusted either
    stamp = path.stat().st_mtime_ns
    assert native._build(*compiler, gomp) == path and path.stat().st_mtime_ns != stamp


@needs_native
def test_a_killed_builds_directory_is_cleared_by_a_later_build(tmp_path, monkeypatch):
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    compiler, gomp = native._compiler(), native._torch_openmp()
    assert compiler is not None and gomp is not None
    stale, fresh = tmp_path / ".build-killed", tmp_path / ".build-running"
    for leftover in (stale, fresh):
        leftover.mkdir()
        (leftover / "native.o").write_bytes(b"partial")
    old = time.time() - 2 * native._STALE_BUILD_S
    os.utime(stale, (old, old))
    path = native._build(*compiler, gomp)
    assert not stale.exists() and fresh.exists()  # another process's build is left alone
    assert path.exists()
