"""The fast path's matrix products (oneDNN where the CPU has AVX-512) and the retained heap."""

from __future__ import annotations

import ctypes
import json
import platform
import subprocess
import sys

import pytest
import torch

import tl_grokking.model.fastforward as ff
from tl_grokking.data.tasks import make_task
from tl_grokking.model import gemm
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


def test_small_products_go_to_torch_mm():
    """Below ``ONEDNN_MIN_MACS`` multiply-adds (the per-step weight products) ``mm`` is
    ``torch.mm``, bit for bit, whatever the CPU; at and above it oneDNN may take them."""
    a, b = _operands(512, 128, 113, "contiguous")
    assert 512 * 128 * 113 < gemm.ONEDNN_MIN_MACS
    assert not uses_onednn(a, b)
    assert torch.equal(mm(a, b), torch.mm(a, b))
    if onednn_available():  # asked for by name, oneDNN takes a small product as well
        torch.testing.assert_close(mm(a, b, onednn=True), torch.mm(a, b))
    edge_m = -(-gemm.ONEDNN_MIN_MACS // (128 * 113))  # the first row count at the threshold
    big, _ = _operands(edge_m, 128, 113, "contiguous")
    assert uses_onednn(big, b) == onednn_available()
    assert not uses_onednn(big[:-1], b) or (edge_m - 1) * 128 * 113 >= gemm.ONEDNN_MIN_MACS


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
def test_algebraic_path_agrees_with_itself_across_matmul_libraries(mkldnn, monkeypatch):
    """The trainer's step computed with oneDNN and with MKL: the same logits and gradients to
    float32 rounding (each library is checked against the model in test_fastforward.py).
    Every product may go to oneDNN here (this model's are all below ``ONEDNN_MIN_MACS``)."""
    monkeypatch.setattr(gemm, "ONEDNN_MIN_MACS", 1)
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
    # a gradient of these gradients would be silently incomplete: refused at once, by name
    with pytest.raises(RuntimeError, match="_ReluReadout has first-order gradients only"):
        torch.autograd.grad(logits.sum(), [weights["embed.W_E"]], create_graph=True)
    (grad,) = torch.autograd.grad(logits.sum(), [weights["embed.W_E"]])
    assert not grad.requires_grad and bool(grad.abs().sum() > 0)


_HEAP_PROBE = """
import ctypes, json, torch
from tl_grokking._resources import retained_heap

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
info = libc.mallinfo2
size = 64 << 20
out = {}

def probe(tag):
    before = info()
    block = torch.empty(size // 4)
    during = info()
    out[tag + "_mmapped"] = during.hblkhd - before.hblkhd
    out[tag + "_heap"] = during.uordblks - before.uordblks
    del block
    out[tag + "_free_after"] = info().fordblks

probe("before")
with retained_heap() as applies:
    out["applies"] = applies
    with retained_heap():  # nested scopes are one scope
        probe("inside")
    out["free_after_inner_exit"] = info().fordblks
probe("after")
print(json.dumps(out))
"""


def test_retained_heap_keeps_large_blocks_in_the_heap():
    """glibc's own accounting (mallinfo2), in a fresh process (a heap that earlier tests have
    grown can serve a large block from its free space whatever the thresholds): outside the
    scope a 64 MB tensor is mmapped (and unmapped on free, so the next one faults in fresh
    pages); inside it comes from the heap and stays there, free for the next one; after the
    scope, blocks above 32 MiB are mmapped again."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc without mallinfo2 (< 2.33)")
    done = subprocess.run(
        [sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    size = 64 << 20
    assert out["applies"] is True
    assert out["before_mmapped"] >= size  # glibc: mmapped
    assert out["inside_mmapped"] < size and out["inside_heap"] >= size  # from the heap
    assert out["inside_free_after"] >= size  # kept, free for reuse
    assert out["free_after_inner_exit"] >= size  # the inner scope's exit changed nothing
    assert out["after_mmapped"] >= size  # above 32 MiB: mmapped again
