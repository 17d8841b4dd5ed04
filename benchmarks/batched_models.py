"""Does training many small models as one batched computation beat training them one by one?

Run:  python benchmarks/batched_models.py [--models 16] [--repeats 30]

For small p the cost of a training step is mostly fixed overhead (Python, autograd, kernel
launches), so stacking the weights of K same-shaped models and running one batched step
(``[K, ...]`` tensors, batched matmuls, one AdamW over the stacks) might beat K separate steps.
This script measures it on one thread (what a sweep worker uses), side by side:

* **solo**: the trainer's step (the exact algebraic fast path of
  ``tl_grokking.model.fastforward``, fused AdamW), once per model;
* **batched**: one step of all K models through a batched forward of the final position
  (embeddings, attention, MLP, unembedding as ``einsum`` over a model axis) and autograd.

First it checks that the batched forward gives each model's logits (to float32 rounding), so
the comparison is between two ways of computing the same thing. Printed per setting: ms per
model-step of each and their ratio (> 1: batching wins).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from einops import einsum

from tl_grokking.model.fastforward import groups_for, weights_final_logits
from tl_grokking.model.transformer import init_weights, trainable_weight_names
from tl_grokking.training.config import QUICK_SETTINGS, TrainConfig

SETTINGS = {
    "p = 23, frac 0.3": dict(QUICK_SETTINGS, p=23, frac_train=0.3),
    "p = 31, frac 0.5": dict(QUICK_SETTINGS, p=31),
    "quick (p = 53)": dict(QUICK_SETTINGS),
}


def batched_final_logits(w: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Final-position logits of K models at once: every weight has a leading model axis."""
    resid = w["embed.W_E"][:, tokens] + w["pos_embed.W_pos"][:, None]  # [K, n, 3, d]
    q = einsum(resid[:, :, -1], w["blocks.0.attn.W_Q"], "k n d, k h d e -> k n h e")
    q = q + w["blocks.0.attn.b_Q"][:, None]
    key = einsum(resid, w["blocks.0.attn.W_K"], "k n s d, k h d e -> k n s h e")
    key = key + w["blocks.0.attn.b_K"][:, None, None]
    value = einsum(resid, w["blocks.0.attn.W_V"], "k n s d, k h d e -> k n s h e")
    value = value + w["blocks.0.attn.b_V"][:, None, None]
    scores = einsum(q, key, "k n h e, k n s h e -> k n h s") / q.shape[-1] ** 0.5
    z = einsum(scores.softmax(-1), value, "k n h s, k n s h e -> k n h e")
    mid = resid[:, :, -1] + einsum(z, w["blocks.0.attn.W_O"], "k n h e, k h e d -> k n d")
    mid = mid + w["blocks.0.attn.b_O"][:, None]
    pre = torch.baddbmm(w["blocks.0.mlp.b_in"][:, None], mid, w["blocks.0.mlp.W_in"])
    post = torch.baddbmm(w["blocks.0.mlp.b_out"][:, None], pre.relu(), w["blocks.0.mlp.W_out"])
    return torch.baddbmm(w["unembed.b_U"][:, None], mid + post, w["unembed.W_U"])


def _time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(settings: dict, models: int, repeats: int) -> tuple[float, float, float]:
    configs = [TrainConfig(**settings, seed=seed) for seed in range(models)]
    mc = configs[0].model_config()
    task = configs[0].make_task()
    train_idx, _ = task.split(configs[0].frac_train, 0)  # one split for all: same shapes
    x, y = task.tokens()[train_idx], task.labels()[train_idx]
    names = trainable_weight_names(mc)
    solo = [init_weights(mc, seed=c.seed) for c in configs]
    for weights in solo:
        for name in names:
            weights[name].requires_grad_(True)
    stacked = {k: torch.stack([s[k].detach() for s in solo]).requires_grad_(k in names)
               for k in solo[0]}  # fmt: skip

    # the same logits, model by model, to float32 rounding
    with torch.no_grad():
        batched = batched_final_logits(stacked, x)
        for i, weights in enumerate(solo):
            err = (batched[i] - weights_final_logits(weights, x)).abs().max().item()
            assert err < 1e-4, f"model {i}: batched logits differ by {err}"

    adam = dict(lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    solo_opts = [
        torch.optim.AdamW([w[n] for n in names], fused=True, **adam) for w in solo
    ]  # fmt: skip
    groups = groups_for(x, mc.d_vocab, mc.n_heads, mc.act_fn)
    batch_opt = torch.optim.AdamW([stacked[n] for n in names], fused=True, **adam)

    def solo_steps() -> None:
        for weights, opt in zip(solo, solo_opts, strict=True):
            loss = F.cross_entropy(weights_final_logits(weights, x, groups=groups).double(), y)
            loss.item()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    target = y.repeat(models)

    def batched_step() -> None:
        logits = batched_final_logits(stacked, x)
        # the sum over models of each model's mean loss: each model's gradient is its own
        loss = F.cross_entropy(logits.flatten(0, 1).double(), target, reduction="sum") / len(y)
        loss.item()
        loss.backward()
        batch_opt.step()
        batch_opt.zero_grad(set_to_none=True)

    t_solo = _time(solo_steps, repeats) / models
    t_batched = _time(batched_step, repeats) / models
    return t_solo, t_batched, t_solo / t_batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.models} models, one thread, torch {torch.__version__}")
    print(f"{'setting':20s} {'solo ms/model-step':>20s} {'batched':>10s} {'batched speed-up':>18s}")
    for label, settings in SETTINGS.items():
        t_solo, t_batched, ratio = measure(settings, args.models, args.repeats)
        print(f"{label:20s} {t_solo * 1e3:20.2f} {t_batched * 1e3:10.2f} {ratio:17.2f}x")


if __name__ == "__main__":
    main()
