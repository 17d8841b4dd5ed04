"""``tl-grokking sweep``: train many runs over a grid of training-config values.

Every :class:`~tl_grokking.training.config.TrainConfig` field has a flag, generated from the
dataclass as for ``train``, that takes one value or several: a comma list for any field
(``--weight-decay 0.3,1,3``), inclusive ranges for integer fields (``--seed 0-9``). One value
sets that field for every run; several make an axis. ``--spec FILE.toml`` gives the same in a
file (docs/sweeps.md); flags override it. The runs go to ``OUT/runs/<name>``; ``OUT/sweep.json``
records the spec and every run's config, status and result. Rerunning the command continues
the sweep (:mod:`tl_grokking.sweeps.runner`).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from tl_grokking.cli._common import flag_name, path_arg, show_default
from tl_grokking.runs.rundir import GROK_ACC
from tl_grokking.sweeps.executors import EXECUTORS
from tl_grokking.sweeps.spec import MODES, SweepSpec, load_spec, parse_values
from tl_grokking.training.config import PRESETS, TrainConfig

__all__ = ["register", "run"]

EPILOG = """\
examples:
  # 16 seeds of the quick setting (p = 53), two at a time on a 2-core machine
  tl-grokking sweep --out sweeps/seeds --preset quick --seed 0-15

  # a weight decay x training fraction phase diagram at p = 23
  tl-grokking sweep --out sweeps/wd_frac --preset quick --p 23 --d-mlp 128 --epochs 3000 \\
      --weight-decay 0.1,0.3,1,3 --frac-train 0.3,0.5,0.7 --early-stop-acc 0.99

  # the same from a file, on a Ray cluster
  tl-grokking sweep --out /shared/sweeps/wd_frac --spec wd_frac.toml --executor ray \\
      --ray-address auto

  # rerun: finished runs are skipped, interrupted ones resumed; failed ones retried with
  tl-grokking sweep --out sweeps/seeds --preset quick --seed 0-15 --retry-failed

Then 'tl-grokking analyze OUT' writes OUT/runs.csv (one row per run) and OUT/sweep_report.html.
"""

_HINTS = typing.get_type_hints(TrainConfig)


def _axis_help(field: dataclasses.Field[Any]) -> str:
    meta = field.metadata
    kind = _HINTS[field.name]
    ranges = ", or ranges A-B" if kind is int or kind == (int | None) else ""
    default = show_default(field.default, meta.get("none"))
    return f"{meta['help']}; one value or a comma list{ranges} [{default}]".replace("%", "%%")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="train many runs over a grid of config values (seeds, weight decay, ...)",
        description=(
            "Train one run per combination of the values given (a comma list for any field, "
            "ranges A-B for integers) into OUT/runs/<name>, on this machine (a pool of one "
            "worker per core, one torch thread per run) or on a Ray cluster. OUT/sweep.json "
            "records the spec and every run's status; rerunning the same command continues "
            "the sweep."
        ),
        epilog=EPILOG,
    )
    out = parser.add_argument_group("sweep")
    out.add_argument("--out", required=True, type=path_arg, metavar="DIR", help="sweep directory")
    out.add_argument(
        "--spec",
        type=path_arg,
        metavar="FILE.toml",
        help="the sweep in a TOML file (docs/sweeps.md) [none: the flags alone]",
    )
    out.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="starting configuration: paper (every default: p = 113, ...) or quick "
        "(tl-grokking reproduce --quick's p = 53 setting) [paper, or the spec file's]",
    )
    out.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="grid: every combination of the axes; zip: the i-th values of every axis together "
        "[grid, or the spec file's]",
    )
    out.add_argument(
        "--retry-failed", action="store_true", help="train the runs that failed before again"
    )
    out.add_argument(
        "--dry-run", action="store_true", help="list the runs and what would happen; train nothing"
    )
    out.add_argument("--status", action="store_true", help="show the runs of OUT and their status")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ex = parser.add_argument_group("executor")
    ex.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="where runs train [local]"
    )
    ex.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs at once on this machine (local), or the CPUs of the Ray instance started "
        "for the sweep [one per core]",
    )
    ex.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="times a run whose worker died is resumed before it counts as failed [2]",
    )
    ex.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to use ('auto', 'ray://host:10001') [none: start a local instance]",
    )
    ex.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs per run [1]")
    ex.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs per run [0]")
    axes = parser.add_argument_group("training-config fields (one value, or several: an axis)")
    for field in dataclasses.fields(TrainConfig):
        axes.add_argument(
            flag_name(field.name),
            dest=f"axis_{field.name}",
            default=None,
            metavar="V[,V...]",
            help=_axis_help(field),
        )
    parser.set_defaults(func=run)


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """The sweep the flags (and ``--spec``) describe; errors name the flag."""
    given: dict[str, list[Any]] = {}
    for field in dataclasses.fields(TrainConfig):
        text = getattr(args, f"axis_{field.name}")
        if text is None:
            continue
        try:
            given[field.name] = parse_values(field.name, text)
        except ValueError as err:
            raise ValueError(f"{flag_name(field.name)}: {str(err).split(': ', 1)[-1]}") from None
    spec = load_spec(args.spec) if args.spec else SweepSpec()
    return spec.with_overrides(axes=given, preset=args.preset, mode=args.mode)


def _status_lines(sweep_dir: Path) -> list[str]:
    from tl_grokking.runs.sweepdir import read_manifest

    manifest = read_manifest(sweep_dir)
    counts = ", ".join(f"{n} {status}" for status, n in manifest.counts().items() if n)
    lines = [f"sweep {sweep_dir}: {len(manifest.runs)} runs ({counts or 'none'})"]
    for name, record in manifest.runs.items():
        lines.append(f"  {record.status:8s} {name}{_result_text(record.result, record.error)}")
    return lines


def _result_text(result: dict[str, Any] | None, error: str | None) -> str:
    if error:
        return f": {error}"
    if not result:
        return ""
    grok = result.get("grok_epoch")
    acc = (result.get("final") or {}).get("test_acc")
    acc_text = "" if acc is None else f", test acc {acc:.4f}"
    grok_text = "never" if grok is None else f"epoch {grok}"
    return f": {result.get('epoch')} epochs{acc_text}, test acc >= {GROK_ACC:g} at {grok_text}"


def run(args: argparse.Namespace) -> int:
    from tl_grokking.sweeps.runner import plan_sweep, run_sweep

    out = Path(args.out)
    if args.status:
        for line in _status_lines(out):
            print(line)
        return 0
    spec = spec_from_args(args)
    if args.dry_run:
        plan = plan_sweep(spec, out, retry_failed=args.retry_failed)
        print(f"sweep {out}: {len(plan.runs)} runs, {len(plan.to_run())} to train")
        for sweep_run in plan.runs:
            print(f"  {plan.actions[sweep_run.name]:7s} {sweep_run.name}")
        return 0

    from tl_grokking.sweeps.executors import make_executor

    executor = make_executor(
        args.executor,
        workers=args.workers,
        max_retries=args.max_retries,
        ray_address=args.ray_address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
    )
    result = run_sweep(
        spec, out, executor=executor, retry_failed=args.retry_failed, progress=not args.no_progress
    )
    actions = list(result.actions.values())
    skipped = actions.count("skip")
    kept = actions.count("failed")
    print(
        f"sweep {out}: {len(result.actions)} runs in {result.wall_time:.1f} s: "
        f"{len(result.done)} done ({skipped} already were), {len(result.failed)} failed"
        f"{f' ({kept} from before, not retried)' if kept else ''}"
    )
    for record in result.failed:
        print(f"  failed {record.name}: {record.error}")
    if result.failed:
        raise ValueError(
            f"{len(result.failed)} of {len(result.actions)} runs failed (listed above; "
            f"{out / 'sweep.json'} keeps their errors); rerun with --retry-failed to try them again"
        )
    print(f"analyse them with: tl-grokking analyze {out}")
    return 0
