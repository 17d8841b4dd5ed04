"""Training speed: our trainer vs a TransformerLens-demo-style loop, paper configuration.

Run:  python benchmarks/train_speed.py [--repeats 5] [--trainer-epochs 100] [--threads N]

Measures, in one process and interleaved (the machine may be shared, so each comparison is made
side by side, repeat by repeat, and medians are reported):

(a) ``hooked_loop``: seconds per epoch of the loop of the TransformerLens grokking demo —
    HookedTransformer forward + backward on the training set, float64 cross-entropy on
    ``logits[:, -1]``, AdamW step, and the test loss every epoch (no grad);
(b) ``trainer``: seconds per epoch of :func:`tl_grokking.training.trainer.train_model` at its
    defaults (log and checkpoint every 100 epochs, progress bar off), called on a fresh
    temporary directory for ``--trainer-epochs`` epochs; the time includes model construction,
    the epoch-0 and final evaluations and checkpoints (so short calls overstate the steady-state
    cost);
(c) ``step``: the same work on both sides — one training step (forward, float64 loss, backward,
    AdamW step) with the plain HookedTransformer forward vs :func:`final_logits`.

FLOP count of our step (matmuls only; element-wise work is not counted): per forward matmul
``[rows, k] @ [k, n]`` we count ``2·rows·k·n``; backward is counted as 2× forward (the input and
the weight gradient). Forward matmuls: the q/k/v tables (``2·d_vocab + 1`` rows ×
``d_model → 3·n_heads·d_head``); ``z @ W_O`` (batch × n_heads·d_head × d_model); ``W_in``
(batch × d_model × d_mlp); ``W_out`` (batch × d_mlp × d_model); ``W_U`` (batch × d_model ×
d_vocab_out). The sgemm bound is the measured time of ``torch.mm`` on exactly those forward and
backward shapes on this machine; ``sgemm_fraction`` = bound time / step time.

The last two lines are ``ratio_train_step: X`` and ``ratio_vs_hooked_loop: X``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tl_grokking.model.config import ModelConfig
from tl_grokking.model.fastforward import final_logits
from tl_grokking.model.transformer import make_model
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import train_model


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _adamw(model):
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1e-3,
        weight_decay=1.0,
        betas=(0.9, 0.98),
        foreach=True,  # as the trainer does; the same optimiser on both sides
    )


def step_flops(cfg: ModelConfig, batch: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Matmul FLOPs of one fast training step, and the forward matmul shapes (rows, k, n)."""
    hd = cfg.n_heads * cfg.d_head
    shapes = [
        (2 * cfg.d_vocab + 1, cfg.d_model, 3 * hd),  # q/k/v tables: positions 0, 1 and "="
        (batch, hd, cfg.d_model),  # z @ W_O
        (batch, cfg.d_model, cfg.d_mlp),  # W_in
        (batch, cfg.d_mlp, cfg.d_model),  # W_out
        (batch, cfg.d_model, cfg.d_vocab_out),  # W_U
    ]
    forward = sum(2 * r * k * n for r, k, n in shapes)
    return 3 * forward, shapes


def sgemm_seconds(shapes: list[tuple[int, int, int]], repeats: int) -> float:
    """Median time of torch.mm over the forward and both backward products of every shape."""
    mats = []
    for r, k, n in shapes:
        a, b, g = torch.randn(r, k), torch.randn(k, n), torch.randn(r, n)
        mats.append((a, b, g))

    def run():
        for a, b, g in mats:
            torch.mm(a, b)  # forward
            torch.mm(g, b.T)  # input gradient
            torch.mm(a.T, g)  # weight gradient

    run()
    return statistics.median(_timed(run) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trainer-epochs", type=int, default=100)
    parser.add_argument("--step-repeats", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads, both sides [torch default]"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    config = TrainConfig()  # the paper's configuration: p = 113, 30 % train
    task = config.make_task()
    tokens, labels = task.tokens(), task.labels()
    train_idx, test_idx = task.split(config.frac_train, config.seed)
    x_train, y_train = tokens[train_idx], labels[train_idx]
    x_test, y_test = tokens[test_idx], labels[test_idx]

    hooked = make_model(config.model_config(), seed=0)
    fast = make_model(config.model_config(), seed=0)
    opt_hooked, opt_fast = _adamw(hooked), _adamw(fast)

    def hooked_step():
        loss = F.cross_entropy(hooked(x_train)[:, -1].to(torch.float64), y_train)
        loss.backward()
        opt_hooked.step()
        opt_hooked.zero_grad(set_to_none=True)

    def hooked_epoch():  # the TL demo loop: a train step and the test loss every epoch
        hooked_step()
        with torch.inference_mode():
            F.cross_entropy(hooked(x_test)[:, -1].to(torch.float64), y_test).item()

    def fast_step():
        loss = F.cross_entropy(final_logits(fast, x_train).to(torch.float64), y_train)
        loss.backward()
        opt_fast.step()
        opt_fast.zero_grad(set_to_none=True)

    # warm-up
    for _ in range(2):
        hooked_epoch()
        fast_step()

    # (c) step alone, interleaved with the sgemm bound of the same matmul shapes
    flops, shapes = step_flops(config.model_config(), len(train_idx))
    t_hooked_step, t_fast_step, t_sgemm = [], [], []
    for _ in range(args.step_repeats):
        t_hooked_step.append(_timed(hooked_step))
        t_fast_step.append(_timed(fast_step))
        t_sgemm.append(sgemm_seconds(shapes, 1))

    # (a) and (b), interleaved block by block
    t_loop, t_trainer = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            t_loop.append(statistics.median(_timed(hooked_epoch) for _ in range(3)))
            run_cfg = config.replace(epochs=args.trainer_epochs)
            result = train_model(run_cfg, Path(tmp) / f"run{i}", progress=False)
            t_trainer.append(result.wall_time / args.trainer_epochs)

    med = statistics.median
    t_sgemm = med(t_sgemm)
    s_loop, s_trainer = med(t_loop), med(t_trainer)
    s_hooked_step, s_fast_step = med(t_hooked_step), med(t_fast_step)
    print(f"hooked_loop_s_per_epoch: {s_loop:.4f}")
    print(f"trainer_s_per_epoch: {s_trainer:.4f}  (epochs/s {1 / s_trainer:.2f})")
    print(f"hooked_step_s: {s_hooked_step:.4f}")
    print(f"fast_step_s: {s_fast_step:.4f}")
    print(f"step_matmul_gflop: {flops / 1e9:.3f}")
    print(f"fast_step_gflops: {flops / s_fast_step / 1e9:.1f}")
    print(f"sgemm_same_shapes_gflops: {flops / t_sgemm / 1e9:.1f}")
    print(f"sgemm_fraction: {t_sgemm / s_fast_step:.2f}")
    print(f"ratio_train_step: {s_hooked_step / s_fast_step:.2f}")
    print(f"ratio_vs_hooked_loop: {s_loop / s_trainer:.2f}")


if __name__ == "__main__":
    main()
