"""Wall time and peak memory of ``tl-grokking analyze SWEEP_DIR`` (cross-run analysis).

Builds a sweep (by default 100 runs × 31 checkpoints at p = 53: the ``quick`` preset's model,
d_model 128, d_mlp 256, 450 epochs with a checkpoint every 15, seeds × weight decays 1, 2, 3,
5 — the larger weight decays grok within the run, weight decay 1 does not), then times the
command a user runs::

    tl-grokking analyze SWEEP_DIR --no-progress

twice, each in a fresh process:

* **cold**: every run's ``measures.csv`` / ``phases.json`` and the sweep's ``runs.csv`` /
  ``sweep_report.html`` deleted first, so every run is analysed (``analyze_run`` on each, in a
  pool of one process per core) and the table and the report are written;
* **warm**: again, with every stored analysis current (only ``runs.csv`` and the report are
  rewritten).

Before and after, two processes spin at once to measure how many cores the benchmark actually
gets (``free cores``: their CPU seconds over the wall time; 2.0 on an idle 2-core machine).
The time is the command's wall time (interpreter start and imports included), and its CPU time
(user + system, summed over the command and its analysis processes: what the wall time would
be on one idle core, and a number the load of other jobs does not change). The memory is the
peak, sampled every 20 ms, of the **sum** of the resident set sizes of the command's process and
all its descendants (the analysis workers). The load average is printed before and after: on a
shared machine the wall time depends on what else runs. Targets (2-core machine): cold ≤ 60 s,
peak ≤ 2 GB.

Building the sweep trains every run (about 5 minutes for 100 runs on 2 cores); ``--sweep-dir
DIR`` keeps it there and reuses it on the next call (finished runs are skipped).

Usage::

    python benchmarks/sweep_analysis.py [--runs 100] [--checkpoints 30] [--p 53]
        [--sweep-dir DIR] [--workers N] [--build-workers N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WEIGHT_DECAYS = (1.0, 2.0, 3.0, 5.0)


def build_sweep(sweep_dir: Path, runs: int, checkpoints: int, p: int, workers: int) -> float:
    """Train (or finish) the benchmark sweep; returns the seconds it took."""
    from tl_grokking.sweeps.executors import LocalExecutor
    from tl_grokking.sweeps.runner import run_sweep
    from tl_grokking.sweeps.spec import SweepSpec

    seeds = max(1, runs // len(WEIGHT_DECAYS))
    every = 15
    spec = SweepSpec(
        axes={"seed": list(range(seeds)), "weight_decay": list(WEIGHT_DECAYS)},
        base={
            "p": p,
            "epochs": checkpoints * every,
            "checkpoint_every": every,
            "log_every": 5,
        },
        preset="quick",
    )
    started = time.perf_counter()
    result = run_sweep(spec, sweep_dir, executor=LocalExecutor(workers), progress=True)
    if result.manifest.counts()["done"] != spec.count():
        sys.exit(f"the benchmark sweep did not finish: {result.manifest.counts()}")
    return time.perf_counter() - started


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def timed(cmd: list[str]) -> tuple[float, int, float, str]:
    """Run ``cmd``; its wall time, the peak RSS of its process tree, the CPU seconds of the
    tree (user + system, the analysis workers included), its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return seconds, peak[0], cpu, output


_SPIN = (
    "import time; t = time.perf_counter(); c = time.process_time(); x = 0\n"
    "for i in range(15_000_000): x += i\n"
    "print(time.process_time() - c, time.perf_counter() - t)"
)


def free_cores(n: int = 2) -> float:
    """Cores this benchmark gets now: ``n`` processes spin at once; their CPU seconds over the
    wall time. 2.0 on an idle 2-core machine, less while other jobs hold the cores."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    results = [tuple(map(float, proc.communicate()[0].split())) for proc in procs]
    return sum(cpu for cpu, _ in results) / max(wall for _, wall in results)


def clear_analysis(sweep_dir: Path) -> None:
    for name in ("runs.csv", "sweep_report.html"):
        (sweep_dir / name).unlink(missing_ok=True)
    for run in (sweep_dir / "runs").iterdir():
        for name in ("measures.csv", "phases.json", "report.html"):
            (run / name).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--checkpoints", type=int, default=30, help="checkpoints after epoch 0")
    parser.add_argument("--p", type=int, default=53)
    parser.add_argument("--sweep-dir", default=None, help="build / reuse the sweep here")
    parser.add_argument("--workers", type=int, default=None, help="analyze --workers")
    parser.add_argument("--build-workers", type=int, default=None, help="training processes")
    args = parser.parse_args()

    temp = None
    if args.sweep_dir is None:
        temp = tempfile.mkdtemp(prefix="tlg-sweep-bench-")
        sweep_dir = Path(temp) / "sweep"
    else:
        sweep_dir = Path(args.sweep_dir)
    try:
        from tl_grokking._resources import available_cores

        build = build_sweep(sweep_dir, args.runs, args.checkpoints, args.p, args.build_workers)
        n_runs = len(list((sweep_dir / "runs").iterdir()))
        print(
            f"sweep: {sweep_dir} ({n_runs} runs, p = {args.p}, {args.checkpoints + 1} "
            f"checkpoints each; built or checked in {build:.1f} s)"
        )
        print(
            f"cores: {available_cores()}, load average before: {os.getloadavg()}, free cores "
            f"(two spinning processes): {free_cores():.2f}"
        )
        cmd = [sys.executable, "-m", "tl_grokking", "analyze", str(sweep_dir), "--no-progress"]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        results = {}
        for label in ("cold", "warm"):
            if label == "cold":
                clear_analysis(sweep_dir)
            seconds, peak, cpu, output = timed(cmd)
            results[label] = (seconds, peak, cpu)
            print(f"\n== {label}: {' '.join(cmd[2:])}\n{output.rstrip()}")
            print(
                f"{label}: {seconds:.1f} s wall, {cpu:.1f} CPU s (process tree), peak RSS "
                f"(process tree) {peak / 2**20:.0f} MB"
            )
        print(f"\nload average after: {os.getloadavg()}, free cores: {free_cores():.2f}")
        cold, warm = results["cold"], results["warm"]
        print(f"cold_seconds: {cold[0]:.1f}")
        print(f"cold_cpu_seconds: {cold[2]:.1f}")
        print(f"cold_peak_rss_mb: {cold[1] / 2**20:.0f}")
        print(f"warm_seconds: {warm[0]:.1f}")
        print(f"per_run_ms_cold: {1000 * cold[0] / n_runs:.0f}")
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
