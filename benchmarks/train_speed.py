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
    forward vs the trainer's (the algebraic path, :mod:`tl_grokking.model.fastforward`).

FLOPs of our step: what is left batch-sized is the read-out ``relu(pre) @ W_L`` and its two
gradients, three ``[n_train, d_mlp] × [d_mlp, d_vocab_out]`` products (``2·rows·k·n`` FLOPs
each); the per-step tables are small and not counted. ``sgemm`` times ``torch.mm`` on exactly
those three products here; ``readout_gflops`` is what the step's own three products reach
(measured by the profiler), ``step_gflops`` the three products over the whole step.

Thread counts (``--skip-threads`` leaves this out): seconds per epoch of ``train_model`` at
p = 23 (the README tour's setting) and at the ``tl-grokking reproduce --quick`` setting, with
1 thread, 2 threads and the trainer's default, each measured alone and with a second process
busy on one core; ``default_vs_best`` is the default's time over the best count's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tl_grokking._resources import auto_threads, available_cores, using_threads
from tl_grokking.model.fastforward import groups_for, weights_final_logits
from tl_grokking.model.transformer import (
    BACKEND,
    TL_VERSION,
    init_weights,
    make_model,
    trainable_weight_names,
)
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import step_work, train_model

TOUR = dict(p=23, frac_train=0.6, d_model=32, n_heads=4, d_mlp=128, lr=5e-3)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _busy() -> None:  # pragma: no cover - a child process
    while True:
        pass


def _trainer_s_per_epoch(config: TrainConfig, epochs: int, tmp: Path, tag: str) -> float:
    result = train_model(config.replace(epochs=epochs), tmp / tag, progress=False, overwrite=True)
    return result.wall_time / epochs


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

    weights = init_weights(mc, seed=0)
    names = trainable_weight_names(mc)
    for name in names:
        weights[name].requires_grad_(True)
    opt_fast = torch.optim.AdamW(
        [weights[n] for n in names], lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98), fused=True
    )
    groups = groups_for(x_train, mc.d_vocab, mc.n_heads, mc.act_fn)

    def fast_step():  # what the trainer's step does
        logits = weights_final_logits(weights, x_train, groups=groups)
        loss = F.cross_entropy(logits.to(torch.float64), y_train)
        loss.item()
        loss.backward()
        opt_fast.step()
        opt_fast.zero_grad(set_to_none=True)

    assert mc.d_vocab_out is not None
    n, k, c = len(train_idx), mc.d_mlp, mc.d_vocab_out
    flops = 3 * 2 * n * k * c
    a, b, g = torch.randn(n, k), torch.randn(k, c), torch.randn(n, c)

    def sgemm():
        torch.mm(a, b)  # forward
        torch.mm(g, b.T)  # input gradient
        torch.mm(a.T, g)  # weight gradient

    for _ in range(2):  # warm-up
        plain_epoch()
        fast_step()
        sgemm()
    t_plain_step, t_fast_step, t_sgemm = [], [], []
    for _ in range(args.step_repeats):
        t_plain_step.append(_timed(plain_step))
        t_fast_step.append(_timed(fast_step))
        t_sgemm.append(_timed(sgemm))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(5):
            fast_step()
    readout_us = sum(  # the only matmuls with a batch-sized operand are the three products
        e.self_cpu_time_total
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in ("aten::mm", "aten::addmm") and any(n in s for s in e.input_shapes if s)
    )
    readout_s = readout_us / 1e6 / 5

    t_loop, t_trainer = [], []
    for i in range(args.repeats):
        t_loop.append(statistics.median(_timed(plain_epoch) for _ in range(3)))
        t_trainer.append(_trainer_s_per_epoch(config, args.trainer_epochs, tmp, f"paper{i}"))

    med = statistics.median
    s_loop, s_trainer = med(t_loop), med(t_trainer)
    s_plain, s_fast, s_sgemm = med(t_plain_step), med(t_fast_step), med(t_sgemm)
    print(f"paper configuration, {threads} thread(s) (the trainer's choice)")
    print(f"plain_loop_s_per_epoch: {s_loop:.4f}")
    print(f"trainer_s_per_epoch: {s_trainer:.4f}  (epochs/s {1 / s_trainer:.1f})")
    print(f"plain_step_s: {s_plain:.4f}")
    print(f"fast_step_s: {s_fast:.4f}")
    print(f"readout_gflop: {flops / 1e9:.3f}  (3 products {n}x{k}x{c})")
    print(f"readout_gflops: {flops / readout_s / 1e9:.1f}  (the step's own three products)")
    print(f"sgemm_same_shapes_gflops: {flops / s_sgemm / 1e9:.1f}")
    print(f"readout_share_of_step: {readout_s / s_fast:.2f}")
    print(f"ratio_train_step: {s_plain / s_fast:.2f}")
    print(f"ratio_vs_plain_loop: {s_loop / s_trainer:.2f}")


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
