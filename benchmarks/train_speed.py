"""Training speed: our trainer vs a TransformerLens-demo loop, and the thread count, side by side.

Run:  python benchmarks/train_speed.py [--repeats 5] [--trainer-epochs 500] [--skip-threads]

Everything is measured in one process, interleaved repeat by repeat (the machine may be
shared), and medians are reported. On TransformerLens 3 the model is a HookedTransformer, on 4
a TransformerBridge; "plain" below means that model's own forward.

Paper configuration (p = 113, 3830 training pairs), at the trainer's thread count:

(a) ``plain_loop``: seconds per epoch of the TransformerLens grokking demo's loop — the plain
    forward + backward on the training set, float64 cross-entropy on ``logits[:, -1]``, an
    AdamW step, and the test loss every epoch (no grad);
(b) ``trainer``: seconds per epoch of :func:`tl_grokking.training.trainer.train_model` at its
    defaults (log and checkpoint every 100 epochs, progress bar off) for ``--trainer-epochs``
    epochs, set-up, evaluations and checkpoints included;
(c) ``step``: one training step alone — forward, float64 loss, backward, AdamW — with the plain
    forward vs the trainer's (the algebraic path, :mod:`tl_grokking.model.fastforward`), each
    timed in blocks of ``STEP_BLOCK`` consecutive steps, the two kinds' blocks interleaved;
(d) ``step_pieces_ms``: the trainer's step taken apart (:func:`step_pieces`): the weight-only
    tables and the read-out, forward and backward each, the rest, the loss and AdamW.

FLOPs of our step: what is left batch-sized is the read-out ``relu(pre) @ W_L`` and its two
gradients, three ``[n_train, d_mlp] × [d_mlp, d_vocab_out]`` products (``2·rows·k·n`` FLOPs
each); the per-step tables are small and not counted. ``sgemm_mkl`` times ``torch.mm`` (MKL) on
exactly those three products, ``sgemm_onednn`` :func:`tl_grokking.model.gemm.mm` (oneDNN where
the CPU has AVX-512, which is what the step uses; see that module); ``readout_gflops`` is what
the step's own three products reach (measured by the profiler).

Both loops run in this one process with glibc's default allocator settings, except inside
``train_model``, which keeps freed memory for reuse while it trains
(:func:`tl_grokking._resources.retained_heap`). Printed as well: the demo loop given that scope
(``..._retained_heap``), and ``train_model`` without it (``trainer_default_heap``, with the page
faults per epoch of each), so the share of the ratio that is the allocator is on the page. The
two steps alone are both timed inside the scope, so the step-alone ratio compares their own
work.

Thread counts (``--skip-threads`` leaves this out): seconds per epoch of ``train_model`` at
p = 23 (the README tour's setting) and at the ``tl-grokking reproduce --quick`` setting, with
1 thread, 2 threads and the trainer's default, each measured alone and with a second process
busy on one core; ``default_vs_best`` is the default's time over the best count's.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

import tl_grokking.training.trainer as trainer_module
from tl_grokking._resources import auto_threads, available_cores, retained_heap, using_threads
from tl_grokking.model import native
from tl_grokking.model.fastforward import groups_for, weights_final_logits
from tl_grokking.model.gemm import mm, uses_onednn
from tl_grokking.model.transformer import (
    BACKEND,
    TL_VERSION,
    init_weights,
    make_model,
    trainable_weight_names,
)
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import cross_entropy_final, step_work, train_model

#: Steps per timed block in (c): each step is timed as a training loop runs it, after a step
#: of its own kind (a single step timed right after the other kind's pays for the caches that
#: one left behind: 20 ms instead of 16 for ours on this project's machine).
STEP_BLOCK = 5
TOUR = dict(p=23, frac_train=0.6, d_model=32, n_heads=4, d_mlp=128, lr=5e-3)


def _timed(fn, calls: int = 1) -> float:
    """Seconds per call of ``calls`` consecutive calls of ``fn``."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _busy() -> None:  # pragma: no cover - a child process
    while True:
        pass


def _trainer_s_per_epoch(config: TrainConfig, epochs: int, tmp: Path, tag: str) -> float:
    result = train_model(config.replace(epochs=epochs), tmp / tag, progress=False, overwrite=True)
    return result.wall_time / epochs


@contextlib.contextmanager
def _glibc_default_heap() -> Iterator[bool]:
    yield False


def _trainer_default_heap(
    config: TrainConfig, epochs: int, tmp: Path, tag: str
) -> tuple[float, float]:
    """Seconds and page faults per epoch of ``train_model`` with glibc's default heap settings
    (its retained-heap scope replaced by a no-op), to show what the scope saves."""
    saved = trainer_module.retained_heap
    trainer_module.retained_heap = _glibc_default_heap
    try:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = _trainer_s_per_epoch(config, epochs, tmp, tag)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    finally:
        trainer_module.retained_heap = saved
    return seconds, faults / epochs


def fast_state(config: TrainConfig, x_train: torch.Tensor, groups_for=groups_for):
    """What the trainer's step works on: trainable weights (seed 0), fused AdamW, the token
    layout (by ``groups_for``: another revision's, in ``step_vs_revision.py``)."""
    mc = config.model_config()
    weights = init_weights(mc, seed=0)
    names = trainable_weight_names(mc)
    for name in names:
        weights[name].requires_grad_(True)
    opt = torch.optim.AdamW(
        [weights[n] for n in names], lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98), fused=True
    )
    return weights, opt, groups_for(x_train, mc.d_vocab, mc.n_heads, mc.act_fn)


def paper(args: argparse.Namespace, tmp: Path) -> None:
    config = TrainConfig()  # the paper's configuration: p = 113, 30 % train
    threads = auto_threads(step_work(config))
    torch.set_num_threads(threads)
    task = config.make_task()
    tokens, labels = task.tokens(), task.labels()
    train_idx, test_idx = task.split(config.frac_train, config.seed)
    x_train, y_train = tokens[train_idx], labels[train_idx]
    x_test, y_test = tokens[test_idx], labels[test_idx]
    mc = config.model_config()

    plain = make_model(mc, seed=0)
    opt_plain = torch.optim.AdamW(
        [p for p in plain.parameters() if p.requires_grad],
        lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98), foreach=True,
    )  # fmt: skip

    def plain_step():
        loss = F.cross_entropy(plain(x_train)[:, -1].to(torch.float64), y_train)
        loss.backward()
        opt_plain.step()
        opt_plain.zero_grad(set_to_none=True)

    def plain_epoch():  # the TL demo loop: a train step and the test loss every epoch
        plain_step()
        with torch.inference_mode():
            F.cross_entropy(plain(x_test)[:, -1].to(torch.float64), y_test).item()

    weights, opt_fast, groups = fast_state(config, x_train)

    def fast_step():  # what the trainer's step does
        logits = weights_final_logits(weights, x_train, groups=groups)
        loss = cross_entropy_final(logits, y_train)
        loss.item()
        loss.backward()
        opt_fast.step()
        opt_fast.zero_grad(set_to_none=True)

    assert mc.d_vocab_out is not None
    n, k, c = len(train_idx), mc.d_mlp, mc.d_vocab_out
    flops = 3 * 2 * n * k * c
    a, b, g = torch.randn(n, k), torch.randn(k, c), torch.randn(n, c)

    def sgemm_mkl():
        torch.mm(a, b)  # forward
        torch.mm(g, b.T)  # input gradient
        torch.mm(a.T, g)  # weight gradient

    def sgemm_onednn():  # the operand layouts the step uses
        mm(a, b)
        mm(g, b.T)
        mm(g.T, a)

    def fast_step_torch_ops():  # the same step without the compiled kernels
        os.environ[native.ENV_SWITCH] = "0"
        try:
            fast_step()
        finally:
            os.environ.pop(native.ENV_SWITCH)

    def fast_step_heap():
        with retained_heap():
            fast_step()

    for _ in range(2):  # warm-up
        plain_epoch()
        fast_step_heap()
        sgemm_mkl()
        sgemm_onednn()
    t_plain_step, t_fast_step, t_torch_ops, t_mkl, t_onednn = [], [], [], [], []
    with retained_heap():  # the fast step's scope (the plain step is timed inside it as well)
        for _ in range(args.step_repeats):  # blocks of consecutive steps, as a loop runs them
            t_plain_step.append(_timed(plain_step, STEP_BLOCK))
            t_fast_step.append(_timed(fast_step, STEP_BLOCK))
            if native.status().available:
                t_torch_ops.append(_timed(fast_step_torch_ops, STEP_BLOCK))
            t_mkl.append(_timed(sgemm_mkl))
            t_onednn.append(_timed(sgemm_onednn))
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(5):
                fast_step()
    products = ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise")
    readout_us = sum(  # the only matmuls with a batch-sized operand are the three products
        e.self_cpu_time_total
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in products and any(n in s for s in e.input_shapes if s)
    )
    readout_s = readout_us / 1e6 / 5

    t_loop, t_loop_heap, t_trainer, t_default, f_trainer, f_default = [], [], [], [], [], []
    for i in range(args.repeats):
        t_loop.append(statistics.median(_timed(plain_epoch) for _ in range(3)))
        with retained_heap():
            t_loop_heap.append(statistics.median(_timed(plain_epoch) for _ in range(3)))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t_trainer.append(_trainer_s_per_epoch(config, args.trainer_epochs, tmp, f"paper{i}"))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        f_trainer.append(faults / args.trainer_epochs)
        seconds, faults = _trainer_default_heap(config, args.trainer_epochs, tmp, f"heap{i}")
        t_default.append(seconds)
        f_default.append(faults)

    med = statistics.median
    s_loop, s_trainer = med(t_loop), med(t_trainer)
    s_plain, s_fast = med(t_plain_step), med(t_fast_step)
    s_mkl, s_onednn = med(t_mkl), med(t_onednn)
    print(f"paper configuration, {threads} thread(s) (the trainer's choice)")
    print(f"plain_loop_s_per_epoch: {s_loop:.4f}")
    s_loop_heap = med(t_loop_heap)
    print(
        f"plain_loop_s_per_epoch_retained_heap: {s_loop_heap:.4f}  (the demo loop given our heap)"
    )
    print(
        f"trainer_s_per_epoch: {s_trainer:.4f}  (epochs/s {1 / s_trainer:.1f}; "
        f"page faults per epoch {med(f_trainer):.0f})"
    )
    print(
        f"trainer_default_heap_s_per_epoch: {med(t_default):.4f}  (glibc's defaults: page faults "
        f"per epoch {med(f_default):.0f}; per repeat {', '.join(f'{x:.0f}' for x in f_default)})"
    )
    print(f"plain_step_s: {s_plain:.4f}")
    print(f"fast_step_s: {s_fast:.4f}  ({native.status()})")
    if t_torch_ops:
        s_ops = med(t_torch_ops)
        print(
            f"fast_step_torch_ops_s: {s_ops:.4f}  (the same step without the compiled kernels: "
            f"they make it {s_ops / s_fast:.2f}x faster)"
        )
    print(f"readout_gflop: {flops / 1e9:.3f}  (3 products {n}x{k}x{c})")
    print(f"readout_gflops: {flops / readout_s / 1e9:.1f}  (the step's own three products)")
    print(f"sgemm_mkl_same_shapes_gflops: {flops / s_mkl / 1e9:.1f}")
    onednn = "oneDNN" if uses_onednn(a, b) else "torch.mm: oneDNN not used on this machine"
    print(f"sgemm_onednn_same_shapes_gflops: {flops / s_onednn / 1e9:.1f}  ({onednn})")
    print(f"readout_share_of_step: {readout_s / s_fast:.2f}")
    print(f"ratio_train_step: {s_plain / s_fast:.2f}")
    print(f"ratio_vs_plain_loop: {s_loop / s_trainer:.2f}")
    print(f"ratio_vs_plain_loop_retained_heap: {s_loop_heap / s_trainer:.2f}")
    pieces = step_pieces()
    keys = ("tables_forward", "tables_backward", "readout_forward", "readout_backward", "rest")
    print("step_pieces_ms: " + ", ".join(f"{k} {pieces[k]:.2f}" for k in (*keys, "loss", "adamw")))
    print(f"step_pieces_total_ms: {pieces['step']:.2f}")


def step_pieces(steps: int = 100) -> dict[str, float]:
    """Median milliseconds of each piece of the trainer's step (paper configuration), timed by
    wrapping the fast path's two autograd functions; ``rest`` is the attention pattern, the
    loss's backward, the autograd engine and whatever else the step does."""
    import tl_grokking.model.fastforward as ff

    config = TrainConfig()
    task = config.make_task()
    train_idx, _ = task.split(config.frac_train, config.seed)
    x, y = task.tokens()[train_idx], task.labels()[train_idx]
    weights, opt, groups = fast_state(config, x)
    times: dict[str, list[float]] = {}

    def timed(fn, key):
        def run(ctx, *args):
            start = time.perf_counter()
            out = fn(ctx, *args)
            times.setdefault(key, []).append(time.perf_counter() - start)
            return out

        return staticmethod(run)

    saved = {cls: (cls.forward, cls.backward) for cls in (ff._AlgebraicTables, ff._ReluReadout)}
    for cls, label in ((ff._AlgebraicTables, "tables"), (ff._ReluReadout, "readout")):
        cls.forward = timed(cls.forward, f"{label}_forward")
        cls.backward = timed(cls.backward, f"{label}_backward")
    try:
        with retained_heap():
            for _ in range(steps + 10):
                t0 = time.perf_counter()
                logits = weights_final_logits(weights, x, groups=groups)
                t1 = time.perf_counter()
                loss = cross_entropy_final(logits, y)
                loss.item()
                t2 = time.perf_counter()
                loss.backward()
                t3 = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                t4 = time.perf_counter()
                for key, seconds in (("forward", t1 - t0), ("loss", t2 - t1), ("backward", t3 - t2),
                                     ("adamw", t4 - t3), ("step", t4 - t0)):  # fmt: skip
                    times.setdefault(key, []).append(seconds)
    finally:
        for cls, (forward, backward) in saved.items():
            cls.forward, cls.backward = forward, backward  # type: ignore[method-assign]
    med = {key: statistics.median(v[10:]) * 1e3 for key, v in times.items()}
    own = ("tables_forward", "tables_backward", "readout_forward", "readout_backward")
    med["rest"] = med["forward"] + med["backward"] - sum(med[k] for k in own)
    return med


def threads(args: argparse.Namespace, tmp: Path) -> None:
    settings = {
        "p=23 (README tour)": TrainConfig(**TOUR),
        "reproduce --quick (p=53)": _quick(),
    }
    counts = sorted({1, 2, *(auto_threads(step_work(c)) for c in settings.values())})
    print(f"\nthread counts, s/epoch over {args.thread_epochs} epochs (cores: {available_cores()})")
    for name, config in settings.items():
        default = auto_threads(step_work(config))
        for load in ("alone", "one core busy"):
            busy = None
            if load != "alone":
                busy = multiprocessing.get_context("spawn").Process(target=_busy, daemon=True)
                busy.start()
            try:
                times: dict[int, list[float]] = {t: [] for t in counts}
                for i in range(args.repeats):
                    for t in counts:
                        run = config.replace(threads=t)
                        times[t].append(
                            _trainer_s_per_epoch(run, args.thread_epochs, tmp, f"t{t}-{i}")
                        )
            finally:
                if busy is not None:
                    busy.terminate()
                    busy.join()
            med = {t: statistics.median(v) for t, v in times.items()}
            best = min(med.values())
            cells = "  ".join(f"{t} thread(s) {med[t]:.4f}" for t in counts)
            print(
                f"{name:<26} {load:<14} {cells}  default={default}  "
                f"default_vs_best: {med[default] / best:.2f}"
            )


def _quick() -> TrainConfig:
    from tl_grokking.cli.reproduce import quick_config

    return quick_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trainer-epochs", type=int, default=500)
    parser.add_argument("--step-repeats", type=int, default=10)
    parser.add_argument("--thread-epochs", type=int, default=200)
    parser.add_argument("--skip-threads", action="store_true")
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    version = ".".join(map(str, TL_VERSION))
    print(f"torch {torch.__version__}, TransformerLens {version} ({BACKEND})")
    with tempfile.TemporaryDirectory() as tmp, using_threads(torch.get_num_threads()):
        if not args.skip_paper:
            paper(args, Path(tmp))
        if not args.skip_threads:
            threads(args, Path(tmp))


if __name__ == "__main__":
    main()
