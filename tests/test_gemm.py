"""The fast path's matrix products (oneDNN where the CPU has AVX-512) and the retained heap."""

from __future__ import annotations

import ctypes

import pytest
import torch

import tl_grokking.model.fastforward as ff
from tl_grokking._resources import retained_heap
from tl_grokking.data.tasks import make_task
from tl_grokking.model.fastforward import TokenGroups, weights_final_logits
from tl_grokking.model.gemm import mm, onednn_available, uses_onednn
from tl_grokking.model.transformer import init_weights
from tl_grokking.training.config import TrainConfig

needs_onednn = pytest.mark.skipif(
    not onednn_available(), reason="oneDNN's AVX-512 kernels are not available on this CPU"
)

SHAPES = [(317, 128, 23), (3830, 512, 113), (113, 3830, 512), (1, 7, 5), (64, 1, 9)]


def _operands(m: int, k: int, n: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(m * 7 + k * 3 + n)
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    if layout == "transposed":  # strided views of the same values
        a = a.T.contiguous().T
        b = b.T.contiguous().T
    return a, b


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mm_equals_float64_product_to_float32_rounding(shape, layout):
    a, b = _operands(*shape, layout)
    exact = a.double() @ b.double()
    bound = 4 * torch.finfo(torch.float32).eps * (a.abs().double() @ b.abs().double())
    for onednn in (None, False):
        out = mm(a, b, onednn=onednn)
        assert out.dtype == torch.float32 and out.shape == exact.shape
        assert bool(((out.double() - exact).abs() <= bound * shape[1] ** 0.5 + 1e-30).all())
    assert torch.equal(mm(a, b, onednn=False), torch.mm(a, b))


@needs_onednn
def test_onednn_is_used_and_deterministic_on_this_machine():
    a, b = _operands(3830, 512, 113, "contiguous")
    assert uses_onednn(a, b)
    assert torch.equal(mm(a, b), mm(a, b))
    assert torch.equal(mm(a, b), mm(a.clone(), b.T.contiguous().T))  # layout of b is free


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_mm_falls_back_where_onednn_does_not_apply():
    a, b = _operands(64, 32, 16, "contiguous")
    assert not uses_onednn(a.double(), b.double())
    assert torch.equal(mm(a.double(), b.double()), a.double() @ b.double())
    leaf = a.clone().requires_grad_(True)
    assert not uses_onednn(leaf, b)  # autograd needs torch's own product
    out = mm(leaf, b)
    out.sum().backward()
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad, b.sum(1).expand(64, -1))
    with torch.backends.mkldnn.flags(enabled=False):
        assert not uses_onednn(a, b)
    with pytest.raises(ValueError, match="onednn=True needs float32 CPU matrices"):
        mm(a.double(), b.double(), onednn=True)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn", "mkl"])
def test_algebraic_path_agrees_with_itself_across_matmul_libraries(mkldnn):
    """The trainer's step computed with oneDNN and with MKL: the same logits and gradients to
    float32 rounding (each library is checked against the model in test_fastforward.py)."""
    config = TrainConfig(p=31, d_model=32, n_heads=4, d_mlp=64, trainable_biases="all")
    weights = init_weights(config.model_config(), seed=0)
    gen = torch.Generator().manual_seed(5)
    for w in weights.values():
        w.add_(0.1 * torch.randn(w.shape, generator=gen)).requires_grad_(True)
    tokens = make_task("add", 31).tokens()
    groups = TokenGroups(tokens, 32, 4)

    def run(enabled: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.backends.mkldnn.flags(enabled=enabled):
            logits = weights_final_logits(weights, tokens, groups=groups)
            grads = torch.autograd.grad(logits.square().sum(), list(weights.values()))
        return logits.detach(), dict(zip(weights, grads, strict=True))

    logits, grads = run(mkldnn)
    ref_logits, ref_grads = run(True)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    # one scale for all: some gradients (b_K) are zero in exact arithmetic, rounding elsewhere
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_algebraic_path_refuses_double_backward(monkeypatch):
    monkeypatch.setattr(ff, "ALGEBRAIC_MIN_BATCH", 1)
    config = TrainConfig(p=17, d_model=16, n_heads=2, d_mlp=32)
    weights = init_weights(config.model_config(), seed=0)
    weights["embed.W_E"].requires_grad_(True)
    logits = weights_final_logits(weights, make_task("add", 17).tokens())
    (grad,) = torch.autograd.grad(logits.sum(), [weights["embed.W_E"]], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 - ctypes' own declaration
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def _mallinfo() -> _MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2()


def test_retained_heap_keeps_large_blocks_in_the_heap():
    """glibc's own accounting (mallinfo2): outside the scope a 64 MB tensor is mmapped (and
    unmapped on free, so the next one faults in fresh pages); inside it comes from the heap and
    stays there, free for the next one, after it is freed."""
    with retained_heap() as applies:
        if not applies:
            pytest.skip("not glibc")
    try:
        _mallinfo()
    except AttributeError:
        pytest.skip("glibc without mallinfo2 (< 2.33)")
    size = 64 << 20

    before = _mallinfo()
    block = torch.empty(size // 4)
    assert _mallinfo().hblkhd - before.hblkhd >= size  # mmapped
    del block
    with retained_heap():
        with retained_heap():  # nested scopes are one scope
            before = _mallinfo()
            block = torch.empty(size // 4)
            during = _mallinfo()
            assert during.hblkhd - before.hblkhd < size  # not mmapped:
            assert during.uordblks - before.uordblks >= size  # from the heap
            del block
            assert _mallinfo().fordblks >= size  # kept, free for reuse
        assert _mallinfo().fordblks >= size  # the inner scope's exit changed nothing
    before = _mallinfo()
    block = torch.empty(size // 4)
    assert _mallinfo().hblkhd - before.hblkhd >= size  # above 32 MiB: mmapped again
    del block
