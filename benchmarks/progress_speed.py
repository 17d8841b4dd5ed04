"""Speed and peak memory of the progress measures over 150 checkpoints at p = 113.

Compares :func:`tl_grokking.analysis.progress.progress_measures` with a straightforward
implementation in the style of the TransformerLens grokking demo: per checkpoint it builds the
model, runs the full HookedTransformer forward over all p² inputs, and for every key frequency k
builds the p³ cubes ``cos(w_k(a+b-c))`` and ``sin(w_k(a+b-c))`` and projects the logits onto
them (for each
output class c the (a, b)-slices of the two cubes span the same plane as ``cos/sin(w_k(a+b))``,
so this is the same ``P_K`` as §7), and recomputes the Fourier basis for the Gini coefficients.

Checkpoints: a real run directory with ≥ 150 checkpoints at p = 113 if one is given
(``--run-dir``), else a synthetic run: 150 copies of the fixture checkpoint (authors' format,
p = 113, ``tests/data/paper_no_wd.safetensors``; a fresh paper-config model if it is
absent) with Gaussian noise whose scale shrinks over the "epochs", written as an ordinary run
directory (``config.json`` + ``checkpoints/epoch_<N>.safetensors``) in a temporary folder.

Each side runs in its own subprocess with ``torch.set_num_threads(--threads)`` (default 2); its
time is the wall time of the whole computation (loading the checkpoints included, imports
excluded) and its peak memory is the subprocess's ``ru_maxrss`` (peak resident set of the whole
process, so the Python + torch baseline, also printed, is included). On a shared machine the wall
time depends on the load (printed); the processes' CPU times are printed as well. The naive side
is timed on the first ``--naive-subset`` checkpoints and extrapolated linearly to all of them (it
has no one-time cost worth separating), which the output says. The last line is
``ratio_vs_naive: X`` (naive time / our time for all checkpoints).

Usage::

    python benchmarks/progress_speed.py [--n-checkpoints 150] [--naive-subset 15] [--run-dir DIR]
    python benchmarks/progress_speed.py --callback-overhead 500   # trainer-callback overhead
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "paper_no_wd.safetensors"


# ---------------------------------------------------------------------------------------------
# Building the checkpoints
# ---------------------------------------------------------------------------------------------


def make_synthetic_run(run_dir: Path, n: int, every: int = 100, seed: int = 0) -> None:
    import torch

    from tl_grokking.model.transformer import make_model
    from tl_grokking.runs.checkpoints import load_checkpoint
    from tl_grokking.runs.rundir import checkpoint_path, save_safetensors, write_json
    from tl_grokking.training.config import TrainConfig

    if FIXTURE.is_file():
        base = load_checkpoint(FIXTURE)
        config = TrainConfig(p=113, d_vocab_out=base.cfg.d_vocab_out, trainable_biases="mlp")
    else:
        config = TrainConfig(p=113)
        base = make_model(config.model_config(), seed=seed)
    write_json(run_dir / "config.json", config.to_dict())
    state = {k: v for k, v in base.state_dict().items() if not k.endswith(("mask", "IGNORE"))}
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        scale = 0.3 * (1 - i / n)  # late checkpoints are closer to the base model
        noisy = {
            k: v + scale * v.std().nan_to_num(0.0) * torch.randn(v.shape, generator=gen)
            if v.is_floating_point() and v.numel() > 1
            else v
            for k, v in state.items()
        }
        save_safetensors(noisy, checkpoint_path(run_dir, i * every))


# ---------------------------------------------------------------------------------------------
# The two sides (each run in a subprocess)
# ---------------------------------------------------------------------------------------------


def side_ours(run_dir: Path, limit: int | None) -> dict:
    from tl_grokking.analysis.progress import progress_measures

    start = time.perf_counter()
    measures = progress_measures(run_dir, progress=False)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "n": len(measures),
        "key_freqs": measures.key_freqs,
        "rows": measures.rows()[: limit or 0],
    }


def side_naive(run_dir: Path, limit: int | None, key_freqs: list[int]) -> dict:
    """Straightforward per-checkpoint computation with p³ trig cubes (TL-demo style)."""
    import torch
    import torch.nn.functional as F

    from tl_grokking.runs.checkpoints import load_run

    start = time.perf_counter()
    run = load_run(run_dir)
    task, p = run.task, run.task.p
    tokens, labels = task.tokens(), task.labels()
    train = run.train_indices
    test = torch.tensor(sorted(set(range(p * p)) - set(train.tolist())))
    epochs = run.epochs[:limit] if limit else run.epochs
    a = torch.arange(p, dtype=torch.float64)[:, None, None]
    b = torch.arange(p, dtype=torch.float64)[None, :, None]
    c = torch.arange(p, dtype=torch.float64)[None, None, :]

    def gini(x):
        x, n = x.sort().values, x.shape[0]
        i = torch.arange(1, n + 1, dtype=x.dtype)
        return float(1 - 2 * ((x / x.sum()) * (n - i + 0.5) / n).sum())

    rows = []
    for epoch in epochs:
        model = run.model(epoch)
        with torch.no_grad():
            logits = model(tokens)[:, -1, :p].to(torch.float64)  # full forward, all positions
        grid = logits.reshape(p, p, p)  # [a, b, c]
        proj = {}
        for k in key_freqs:
            proj[k] = torch.zeros_like(grid)
            for trig in (torch.cos, torch.sin):
                cube = trig(2 * math.pi * k / p * (a + b - c))  # the p³ cube
                cube = cube / cube.norm(dim=(0, 1), keepdim=True)  # unit (a, b)-slice per c
                coeff = (cube * grid).sum(dim=(0, 1), keepdim=True)
                proj[k] += coeff * cube
        total = sum(proj.values())
        restricted = (total + grid.mean(dim=(0, 1), keepdim=True)).reshape(p * p, p)
        excluded = (grid - total).reshape(p * p, p)
        row = {
            "epoch": epoch,
            "train_loss": float(F.cross_entropy(logits[train], labels[train])),
            "test_loss": float(F.cross_entropy(logits[test], labels[test])),
            "restricted_loss": float(F.cross_entropy(restricted, labels)),
            "excluded_loss": float(F.cross_entropy(excluded[train], labels[train])),
        }
        for k in key_freqs:
            ex_k = (grid - proj[k]).reshape(p * p, p)
            row[f"excluded_loss_k{k}"] = float(F.cross_entropy(ex_k[train], labels[train]))
        x = torch.arange(p, dtype=torch.float64)
        basis = [torch.ones(p) / math.sqrt(p)]
        for k in range(1, p // 2 + 1):
            basis += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        basis = torch.stack([v / v.norm() for v in basis]).to(torch.float64)
        w_e = model.W_E.detach()[:p].double()
        w_l = (model.W_out[0].detach() @ model.W_U.detach()[:, :p]).double()
        row["gini_W_E"] = gini((basis @ w_e).norm(dim=1))
        row["gini_W_L"] = gini((w_l @ basis.T).norm(dim=0))
        row["sum_sq_weights"] = float(sum(q.double().pow(2).sum() for q in model.parameters()))
        rows.append(row)
    return {"seconds": time.perf_counter() - start, "n": len(rows), "rows": rows}


def side_baseline(run_dir: Path) -> dict:
    from tl_grokking.runs.checkpoints import load_run

    start = time.perf_counter()
    load_run(run_dir).model()
    return {"seconds": time.perf_counter() - start}


def callback_overhead(epochs: int, threads: int) -> None:
    """Time inside :func:`cheap_measures_callback` vs training time, paper config, p = 113.

    The trainer calls the callback at every log epoch (default ``log_every`` = 100). Measured in
    one training run per variant, the callback's own time against the rest of the run, so the
    ratio is insensitive to the machine's load drifting between runs.
    """
    import torch

    from tl_grokking.analysis.progress import cheap_measures_callback
    from tl_grokking.training.config import TrainConfig
    from tl_grokking.training.trainer import train_model

    torch.set_num_threads(threads)
    config = TrainConfig(p=113, epochs=epochs, log_every=100, checkpoint_every=10**9)
    task = config.make_task()
    train_idx, _ = task.split(config.frac_train, config.seed)
    variants = (("weights only", None), ("with K = {14,35,41,42,52}", [14, 35, 41, 42, 52]))
    for name, freqs in variants:
        inner = cheap_measures_callback(task, freqs, train_indices=train_idx)
        spent = [0.0, 0]

        def timed(epoch, model, inner=inner, spent=spent):
            start = time.perf_counter()
            out = inner(epoch, model)
            spent[0] += time.perf_counter() - start
            spent[1] += 1
            return out

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train_model(config, tmp, progress=False, callbacks=[timed])
            wall = time.perf_counter() - start
        print(
            f"callback {name}: {spent[0]:.2f} s in {spent[1]} calls over {epochs} epochs "
            f"({spent[0] / spent[1] * 1e3:.0f} ms per call); training without it "
            f"{wall - spent[0]:.1f} s; overhead {spent[0] / (wall - spent[0]):.1%}"
        )


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.side == "ours":
        out = side_ours(args.run_dir, args.naive_subset)
    elif args.side == "naive":
        out = side_naive(args.run_dir, args.naive_subset, json.loads(args.key_freqs))
    else:
        out = side_baseline(args.run_dir)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["maxrss_mb"] = usage.ru_maxrss / 1024
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # whole process, imports included
    print("RESULT " + json.dumps(out))


def run_child(side: str, run_dir: Path, args: argparse.Namespace, **extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--run-dir", str(run_dir)]
    cmd += ["--threads", str(args.threads), "--naive-subset", str(args.naive_subset)]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-checkpoints", type=int, default=150)
    parser.add_argument("--naive-subset", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=None, help="a real run at p = 113")
    parser.add_argument("--child", choices=("ours", "naive", "baseline"), default=None)
    parser.add_argument("--key-freqs", default="[]")
    parser.add_argument(
        "--callback-overhead",
        type=int,
        metavar="EPOCHS",
        default=None,
        help="instead: time cheap_measures_callback during EPOCHS epochs of paper-config training",
    )
    args = parser.parse_args()
    if args.callback_overhead:
        callback_overhead(args.callback_overhead, args.threads)
        return
    if args.child:
        args.side = args.child
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="progress_speed_") as tmp:
        if args.run_dir is None:
            run_dir = Path(tmp) / "run"
            t0 = time.perf_counter()
            make_synthetic_run(run_dir, args.n_checkpoints)
            src = "fixture + noise" if FIXTURE.is_file() else "fresh model + noise"
            print(
                f"built {args.n_checkpoints} synthetic checkpoints at p = 113 ({src}) "
                f"in {time.perf_counter() - t0:.1f} s"
            )
        else:
            run_dir = args.run_dir
        base = run_child("baseline", run_dir, args)
        ours = run_child("ours", run_dir, args)
        naive = run_child("naive", run_dir, args, key_freqs=json.dumps(ours["key_freqs"]))

    n, m = ours["n"], naive["n"]
    naive_total = naive["seconds"] * n / m
    diffs = []
    for a, b in zip(ours["rows"], naive["rows"], strict=False):
        for key, value in b.items():
            if key != "epoch":
                diffs.append(abs(a[key] - value) / max(abs(value), 1e-12))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"threads: {args.threads}; checkpoints: {n}; key frequencies: {ours['key_freqs']}")
    print(f"machine load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} cores")
    print(
        f"CPU time of each process (imports included): baseline {base['cpu_seconds']:.1f} s, "
        f"ours {ours['cpu_seconds']:.1f} s, naive {naive['cpu_seconds']:.1f} s ({m} checkpoints)"
    )
    print(f"baseline process (imports + one model): {base['maxrss_mb']:.0f} MB peak RSS")
    print(
        f"ours : {ours['seconds']:.2f} s for {n} checkpoints "
        f"({ours['seconds'] / n * 1e3:.0f} ms each), peak RSS {ours['maxrss_mb']:.0f} MB"
    )
    print(
        f"naive: {naive['seconds']:.2f} s for {m} checkpoints, extrapolated linearly to "
        f"{naive_total:.1f} s for {n}, peak RSS {naive['maxrss_mb']:.0f} MB"
    )
    print(f"max relative difference ours vs naive over {m} checkpoints: {max(diffs):.2e}")
    print(f"ratio_vs_naive: {naive_total / ours['seconds']:.2f}")


if __name__ == "__main__":
    main()
