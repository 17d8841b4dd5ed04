"""Start-up time of the ``tl-grokking`` command: ``--help`` and each subcommand's real start-up.

    python benchmarks/startup.py [--repeat 5]

Each command runs in a fresh interpreter; the table gives the fastest and the median of
``--repeat`` interleaved runs, wall clock and CPU time (user + system, which a machine shared
with other jobs disturbs less), next to ``python -c "import transformer_lens"``:

* ``--help`` of the command and of every subcommand: building the parser imports no torch,
  numpy, TransformerLens or plotly, so it should take about as long as ``python -c pass``
  (target: <= 0.5 s);
* a subcommand's *real start-up*: the command given an input it refuses right after importing
  what it needs (a missing run directory, an output path under a file), so the time is the
  imports plus a path check (target: <= 0.3 s above ``import transformer_lens``);
* the same in one process after ``import transformer_lens``: the CPU seconds the subcommand
  adds on top of TransformerLens (its own modules, plotly for ``report``, the failing check),
  which a loaded machine disturbs least.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(argv: list[str], expect: int) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise SystemExit(f"{argv}: exit {done.returncode}, expected {expect}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


_AFTER_TL = """
import sys, time
import transformer_lens
start = time.process_time()
from tl_grokking.cli import main
status = main(sys.argv[1:])
print(time.process_time() - start, file=sys.stderr)
sys.exit(status)
"""


def _after_tl(py: str, argv: list[str]) -> float:
    """CPU seconds of ``tl-grokking ARGV`` in a process that has imported TransformerLens."""
    done = subprocess.run([py, "-c", _AFTER_TL, *argv], capture_output=True, text=True)
    if done.returncode != 2:
        raise SystemExit(f"{argv}: exit {done.returncode}, expected 2\n{done.stderr}")
    return float(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command [5]")
    args = parser.parse_args()

    py = sys.executable
    script = shutil.which("tl-grokking", path=str(Path(py).parent)) or shutil.which("tl-grokking")
    cli = [script] if script else [py, "-m", "tl_grokking"]
    tmp = Path(tempfile.mkdtemp())
    blocker = tmp / "a-file"
    blocker.write_text("not a directory")
    missing = str(tmp / "missing")

    commands: dict[str, tuple[list[str], int]] = {
        "python -c pass": ([py, "-c", "pass"], 0),
        "python -c 'import transformer_lens'": ([py, "-c", "import transformer_lens"], 0),
        "tl-grokking --help": ([*cli, "--help"], 0),
    }
    for sub in ("train", "analyze", "ablate", "report", "reproduce"):
        commands[f"tl-grokking {sub} --help"] = ([*cli, sub, "--help"], 0)
    out_under_file = str(blocker / "run")
    real = {
        "train": ["train", "--out", out_under_file, "--epochs", "1", "--no-progress"],
        "analyze": ["analyze", missing, "--no-progress"],
        "ablate": ["ablate", missing],
        "report": ["report", missing, "--no-progress"],
        "reproduce": ["reproduce", "--quick", "--out", out_under_file, "--no-progress"],
    }
    for sub, argv in real.items():
        commands[f"tl-grokking {sub} (real start-up)"] = ([*cli, *argv], 2)

    env_note = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    after_tl: dict[str, list[float]] = {sub: [] for sub in real}
    for _ in range(args.repeat):  # interleaved, so a busy moment hits every command alike
        for name, (argv, expect) in commands.items():
            w, c = _time(argv, expect)
            wall[name].append(w)
            cpu[name].append(c)
        for sub, argv in real.items():
            after_tl[sub].append(_after_tl(py, argv))
    shutil.rmtree(tmp)

    tl_name = "python -c 'import transformer_lens'"
    tl_wall, tl_cpu = min(wall[tl_name]), min(cpu[tl_name])
    print(f"start-up, {args.repeat} runs each ({env_note}); command: {' '.join(cli)}")
    print("wall = wall-clock seconds, cpu = user + system seconds of the process; min / median")
    header = f"{'command':<40} {'wall min':>8} {'median':>7} {'cpu min':>8} {'median':>7}"
    print(f"{header} {'vs TL import (wall, cpu)':>26}")
    for name in commands:
        w, c = wall[name], cpu[name]
        extra = ""
        if "real start-up" in name:
            extra = f"{min(w) - tl_wall:+.2f}, {min(c) - tl_cpu:+.2f}"
        print(
            f"{name:<40} {min(w):8.2f} {statistics.median(w):7.2f} {min(c):8.2f} "
            f"{statistics.median(c):7.2f} {extra:>26}"
        )
    print("\nCPU seconds a subcommand adds after 'import transformer_lens' (same process):")
    for sub, values in after_tl.items():
        print(f"  {sub:<10} min {min(values):.3f}  median {statistics.median(values):.3f}")


if __name__ == "__main__":
    main()
