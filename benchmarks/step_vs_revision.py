"""The trainer's step as it is now vs as it was at another git revision, side by side.

Run:  python benchmarks/step_vs_revision.py REV [--blocks 60]

On a shared machine the speed of the same code drifts by ±20 % from minute to minute, so a
change of a few per cent in the step cannot be read off two runs of ``train_speed.py``. This
loads ``tl_grokking/model/fastforward.py`` and ``tl_grokking/model/gemm.py`` as they were at
``REV`` (``git show``), with the compiled kernels of ``REV`` (``native.py`` and ``native.c``),
next to the working tree's, and times the paper configuration's
training step (forward, float64 loss, backward, fused AdamW; p = 113, 3830 training pairs, the
trainer's thread count) with each, in alternating blocks of ``STEP_BLOCK`` consecutive steps
after two untimed ones, inside the trainer's retained heap. Both use the working tree's loss
and optimizer; each has its own weights (the same initial ones) and AdamW state. Printed: the
median and fastest block of each, the ratio of the medians, and how far apart the two
revisions' logits and gradients are from the same weights (float32 rounding: the same
arithmetic in another order).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from train_speed import fast_state  # this directory: the same state as train_speed.py

import tl_grokking.model.fastforward as current_ff
from tl_grokking._resources import auto_threads, retained_heap, using_threads
from tl_grokking.training.config import TrainConfig
from tl_grokking.training.trainer import cross_entropy_final, step_work

STEP_BLOCK = 5
ROOT = Path(__file__).resolve().parents[1]


class RevisionError(RuntimeError):
    """A file of the package that ``git show`` cannot give at the revision asked for."""


def _source_at(rev: str, path: str) -> str:
    """The text of ``src/tl_grokking/<path>`` as of ``rev``."""
    done = subprocess.run(
        ["git", "show", f"{rev}:src/tl_grokking/{path}"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["git show failed"])[-1]
        raise RevisionError(f"src/tl_grokking/{path} at {rev!r}: {reason}")
    return done.stdout


def _module_at(rev: str, path: str, name: str, folder: Path) -> ModuleType:
    """The module at ``src/tl_grokking/<path>`` as of ``rev``, imported under ``name``."""
    file = folder / f"{name}.py"
    file.write_text(_source_at(rev, path))
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def _revision_fastforward(rev: str, folder: Path) -> ModuleType:
    """fastforward.py of ``rev``, its products through gemm.py of ``rev`` and its compiled
    passes from native.py and native.c of ``rev`` (where ``rev`` has them; built here, into
    the kernels' cache, under the hash of that source)."""
    gemm = _module_at(rev, "model/gemm.py", "_rev_gemm", folder)
    ff = _module_at(rev, "model/fastforward.py", "_rev_fastforward", folder)
    for name in getattr(gemm, "__all__", ["mm"]):
        if hasattr(ff, name):
            setattr(ff, name, getattr(gemm, name))
    if hasattr(ff, "native"):
        # native.c beside the module (its _SOURCE); built now, while the folder exists
        (folder / "native.c").write_text(_source_at(rev, "model/native.c"))
        ff.native = _module_at(rev, "model/native.py", "_rev_native", folder)
        print(f"{rev}: {ff.native.status()}")
    return ff


def _agreement(modules: dict[str, ModuleType], config: TrainConfig, x, y) -> float:
    """Largest difference between the modules' logits and weight gradients from the same
    weights, relative to each tensor's largest entry (float32 rounding: the same arithmetic
    in another order)."""
    results = []
    for ff in modules.values():
        weights, _, groups = fast_state(config, x, ff.groups_for)
        logits = ff.weights_final_logits(weights, x, groups=groups)
        cross_entropy_final(logits, y).backward()
        results.append([logits.detach(), *(w.grad for w in weights.values() if w.requires_grad)])
    return max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        for a, b in zip(*results, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="a git revision of this repository, e.g. HEAD~1")
    parser.add_argument("--blocks", type=int, default=60)
    args = parser.parse_args()

    config = TrainConfig()  # the paper's configuration
    task = config.make_task()
    train_idx, _ = task.split(config.frac_train, config.seed)
    x, y = task.tokens()[train_idx], task.labels()[train_idx]
    print(f"now: {current_ff.native.status()}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            modules = {"now": current_ff, args.rev: _revision_fastforward(args.rev, Path(tmp))}
        except RevisionError as err:
            parser.exit(2, f"step_vs_revision.py: error: {err}\n")
    states = {label: (ff, *fast_state(config, x, ff.groups_for)) for label, ff in modules.items()}

    def step(label: str) -> None:
        ff, weights, opt, groups = states[label]
        loss = cross_entropy_final(ff.weights_final_logits(weights, x, groups=groups), y)
        loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    agreement = _agreement(modules, config, x, y)
    threads = auto_threads(step_work(config))
    times: dict[str, list[float]] = {label: [] for label in states}
    with using_threads(threads), retained_heap():
        for label in states:
            for _ in range(10):
                step(label)
        for _ in range(args.blocks):
            for label in states:
                step(label)
                step(label)
                start = time.perf_counter()
                for _ in range(STEP_BLOCK):
                    step(label)
                times[label].append((time.perf_counter() - start) / STEP_BLOCK)
    print(f"paper configuration, {threads} thread(s), {args.blocks} blocks of {STEP_BLOCK} steps")
    med = {label: statistics.median(t) for label, t in times.items()}
    for label, t in times.items():
        print(f"{label:>12}: median {med[label] * 1e3:.2f} ms, fastest {min(t) * 1e3:.2f} ms")
    print(f"ratio ({args.rev} / now): {med[args.rev] / med['now']:.3f}")
    print(f"one step from the same weights, largest difference: {agreement:.1e} of the scale")


if __name__ == "__main__":
    main()
