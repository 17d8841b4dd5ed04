"""``tl-grokking reproduce``: train the paper's model, analyse it and write its report.

The main job of the library in one command (Nanda et al. 2023):

1. train the paper's configuration — p = 113, 30 % of the pairs for training, one layer,
   d_model 128, 4 heads, d_mlp 512, AdamW lr 1e-3, weight decay 1, 40k full-batch epochs, a
   checkpoint every 100 epochs — into ``--out`` (an existing run there with the same
   configuration is resumed, and a finished one is not retrained);
2. compute the progress measures and phase boundaries (what ``tl-grokking analyze`` does:
   ``measures.csv``, ``phases.json``);
3. write ``report.html`` (what ``tl-grokking report`` does) and print where everything is.

``--quick`` uses a smaller setting that groks in well under a minute on two CPU cores:
p = 53, half of the pairs for training, d_mlp 256, lr 3e-3, 1500 epochs (test accuracy
first reaches 99 % at logged epoch 675 with seed 0; about 45 s of CPU time on one core, all
three steps).  The paper's setting costs about 0.1 s of CPU time per epoch on one core (about
an hour for 40k epochs); ``--device cuda`` trains on a GPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_grokking.cli._common import (
    add_config_flags,
    add_threads_flag,
    config_values,
    path_arg,
    set_analysis_threads,
    show_default,
)
from tl_grokking.runs.rundir import (
    CONFIG_FILE,
    is_run_dir,
    read_json,
    require_dir_path,
    resume_epoch,
)
from tl_grokking.training.config import (
    QUICK_SETTINGS,
    RESUMABLE_FIELDS,
    TrainConfig,
    config_changes,
)

__all__ = ["paper_config", "quick_config", "reproduce", "Reproduction", "QUICK_SETTINGS"]


def paper_config(*, seed: int = 0, device: str = "cpu", **changes: Any) -> TrainConfig:
    """The paper's run: every :class:`~tl_grokking.training.config.TrainConfig` default (p = 113,
    frac 0.3, 40k epochs, checkpoints every 100), with ``seed``, ``device`` and ``changes``."""
    return TrainConfig(seed=seed, device=device, **changes)


def quick_config(*, seed: int = 0, device: str = "cpu", **changes: Any) -> TrainConfig:
    """A small setting that still groks (memorises first, generalises later) in ~1000 epochs:
    :data:`QUICK_SETTINGS` (p = 53, frac 0.5, d_mlp 256, lr 3e-3, weight decay 1, 1500
    epochs), with ``seed``, ``device`` and ``changes``."""
    return TrainConfig(seed=seed, device=device, **{**QUICK_SETTINGS, **changes})


@dataclass
class Reproduction:
    """Where :func:`reproduce` put things and what it found."""

    run_dir: Path
    report: Path
    measures: Path | None  # None when the analysis could not be stored
    phases: Path | None
    epochs_trained: int
    grok_epoch: int | None  # rundir.grok_epoch of metrics.jsonl (the trainer's; None if never)
    final_metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _training_step(config: TrainConfig, out: Path, *, overwrite: bool) -> str:
    """What step 1 does with ``out``: start, resume or reuse the run there."""
    setting = (
        f"p = {config.p}, frac_train = {config.frac_train}, {config.epochs} epochs, seed "
        f"{config.seed}, on {config.device} -> {out}"
    )
    if overwrite or not is_run_dir(out):
        return f"training {setting}"
    changes = config_changes(read_json(out / CONFIG_FILE), config.to_dict())
    done = resume_epoch(out)
    if done is None or any(name not in RESUMABLE_FIELDS for name in changes):
        return f"training {setting}"  # train_model says why it cannot use the stored run
    if done >= config.epochs:
        return f"already trained to epoch {done}: reusing it ({out})"
    return f"resuming at epoch {done}: {setting}"


def reproduce(
    config: TrainConfig,
    out: str | Path,
    *,
    progress: bool = True,
    overwrite: bool = False,
    log: Callable[[str], Any] = print,
) -> Reproduction:
    """Train ``config`` into ``out`` (resuming a run with the same configuration there, reusing
    a finished one; ``overwrite=True`` starts again), compute its progress measures and phases
    (``measures.csv``, ``phases.json``), and write ``report.html``. ``log`` receives one-line
    progress messages (``print`` by default)."""
    from tl_grokking.analysis.progress import MEASURES_FILE, PHASES_FILE, analyze_run
    from tl_grokking.figures.report import write_report
    from tl_grokking.training.trainer import train_model

    out = Path(out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    log(f"[1/3] {_training_step(config, out, overwrite=overwrite)}")
    result = train_model(config, out, resume=True, overwrite=overwrite, progress=progress)
    timings["train"] = time.perf_counter() - start

    log("[2/3] progress measures and phases (as tl-grokking analyze)")
    t0 = time.perf_counter()
    try:
        analyze_run(out, device=config.device, progress=progress)
    except ValueError as err:  # the report computes what it can and says what is missing
        log(f"      measures and phases not stored: {err}")
    timings["analyze"] = time.perf_counter() - t0

    log("[3/3] report")
    t0 = time.perf_counter()
    report = write_report(out, device=config.device)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    def stored(name: str) -> Path | None:
        return out / name if (out / name).is_file() else None

    return Reproduction(
        run_dir=out,
        report=report,
        measures=stored(MEASURES_FILE),
        phases=stored(PHASES_FILE),
        epochs_trained=result.epoch,
        grok_epoch=result.grok_epoch,
        final_metrics={k: v for k, v in result.metrics.items() if isinstance(v, float)},
        timings=timings,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="train the paper's model, compute its progress measures and write its report",
        description=(
            "Reproduce Nanda et al. (2023): train the paper's configuration (p = 113, 40k "
            "epochs), compute the progress measures and phases, and write the HTML report. "
            "--quick runs a smaller setting that groks in well under a minute on a CPU."
        ),
    )
    quick = ", ".join(f"{name} {show_default(value)}" for name, value in QUICK_SETTINGS.items())
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smaller setting that groks in well under a minute on 2 cores: {quick}",
    )
    parser.add_argument(
        "--out",
        default=None,
        type=path_arg,
        metavar="DIR",
        help="run directory [runs/reproduce-paper-seed<N>, or runs/reproduce-quick-seed<N> "
        "with --quick]",
    )
    add_config_flags(
        parser,
        TrainConfig,
        fields=("seed", "device", "epochs"),
        shown={"epochs": f"{TrainConfig.epochs}, or {QUICK_SETTINGS['epochs']} with --quick"},
        groups=False,
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --out and start again"
    )
    add_threads_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    make = quick_config if args.quick else paper_config
    config = make(**config_values(args, TrainConfig))
    name = "quick" if args.quick else "paper"
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{name}-seed{config.seed}"
    require_dir_path(out, "--out")  # a file, a FIFO or a symbolic link loop there: say so
    saved = torch.get_num_threads()
    set_analysis_threads(args.threads, config.model_config())  # training sets its own
    try:
        rep = reproduce(config, out, progress=not args.no_progress, overwrite=args.overwrite)
    finally:
        torch.set_num_threads(saved)
    from tl_grokking._format import fmt_num
    from tl_grokking.analysis.phases import summary_lines

    m = {k: fmt_num(rep.final_metrics.get(k)) for k in ("train_loss", "test_loss", "test_acc")}
    print(
        f"\ndone in {rep.timings['total']:.0f} s (train {rep.timings['train']:.0f} s, "
        f"analysis {rep.timings['analyze']:.0f} s, report {rep.timings['report']:.0f} s)"
    )
    print(
        f"epochs {rep.epochs_trained}; final train loss {m['train_loss']}, test loss "
        f"{m['test_loss']}, test accuracy {m['test_acc']}"
    )
    # the lines of `tl-grokking analyze` (epoch at 99 %, phases, every caveat as "note:")
    for line in summary_lines(rep.run_dir, read_json(rep.phases) if rep.phases else None):
        print(line)
    print(f"run directory: {rep.run_dir}")
    print(f"measures:      {rep.measures}\nphases:        {rep.phases}")
    print(f"report:        {rep.report.resolve()}")
    return 0
