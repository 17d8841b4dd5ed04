"""Wall time and peak memory of the whole Fourier analysis of one checkpoint.

Measures, after the model is loaded: neuron clusters, key frequencies by all three rules, the
trig-identity decomposition of the logits and the full ablation table — once with each function
doing its own forward pass ("separate calls"), once sharing one forward pass over the grid as
``tl-grokking ablate`` does ("shared forward"). CPU time (user + system, all threads) is shown
next to wall time because the wall time depends on what else runs on the machine. Memory is
the resident set size (RSS) of this process, sampled every 2 ms by a background thread during
the analysis; the reported delta is the peak minus the RSS just before. Target (p = 113,
paper-size model, CPU): ≤ 10 s, ≤ 1 GB.

Usage::

    python benchmarks/analysis_speed.py [CHECKPOINT] [--repeat N] [--threads T]

CHECKPOINT defaults to ``tests/data/paper_no_wd.safetensors`` (the authors' no-weight-decay
checkpoint, p = 113, converted).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import torch

DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "data" / "paper_no_wd.safetensors"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the RSS in a background thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak = interval, rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def analysis(model) -> dict[str, float]:
    """The whole analysis, each function computing what it needs (three grid forward passes)."""
    from tl_grokking import (
        ablation_table,
        key_frequencies,
        neuron_clusters,
        trig_logit_decomposition,
    )

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    clusters = neuron_clusters(model)
    times["neuron_clusters"] = time.perf_counter() - t0
    t = time.perf_counter()
    keys = key_frequencies(model, rule="all", clusters=clusters)
    times["key_frequencies(all)"] = time.perf_counter() - t
    t = time.perf_counter()
    trig_logit_decomposition(model, freqs=keys.keys)
    times["trig_logit_decomposition"] = time.perf_counter() - t
    t = time.perf_counter()
    ablation_table(model, key_freqs=keys.keys, clusters=clusters)
    times["ablation_table"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    return times


def analysis_shared(model) -> dict[str, float]:
    """The same results from one grid forward pass shared by all steps (``tl-grokking ablate``)."""
    from tl_grokking import (
        ablation_table,
        grid_activations,
        key_frequencies,
        neuron_clusters,
        trig_logit_decomposition,
    )
    from tl_grokking.analysis.ablations import TABLE_HOOKS

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    acts = grid_activations(model, None, TABLE_HOOKS)
    times["forward"] = time.perf_counter() - t0
    t = time.perf_counter()
    clusters = neuron_clusters(model, activations=acts[TABLE_HOOKS[0]])
    keys = key_frequencies(model, rule="all", clusters=clusters)
    times["clusters+keys"] = time.perf_counter() - t
    t = time.perf_counter()
    p = model.cfg.d_vocab - 1
    trig_logit_decomposition(acts[TABLE_HOOKS[1]][:, :p], freqs=keys.keys)
    times["trig"] = time.perf_counter() - t
    t = time.perf_counter()
    ablation_table(model, key_freqs=keys.keys, clusters=clusters, activations=acts)
    times["ablation_table"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tl_grokking.runs.checkpoints import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    cfg = model.cfg
    print(
        f"checkpoint {Path(args.checkpoint).name}: p = {cfg.d_vocab - 1}, d_model {cfg.d_model}, "
        f"d_mlp {cfg.d_mlp}, heads {cfg.n_heads}; torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    for label, fn in (("separate calls", analysis), ("shared forward", analysis_shared)):
        for i in range(args.repeat):
            before = rss_bytes()
            cpu0 = time.process_time()
            with torch.no_grad(), PeakRSS() as mem:
                times = fn(model)
            cpu = time.process_time() - cpu0
            steps = ", ".join(f"{k} {v:.2f}s" for k, v in times.items() if k != "total")
            print(
                f"{label} run {i + 1}: total {times['total']:.2f} s wall, {cpu:.2f} s CPU "
                f"({steps}); peak RSS "
                f"{mem.peak / 2**20:.0f} MiB, +{(mem.peak - before) / 2**20:.0f} MiB over "
                f"{before / 2**20:.0f} MiB before"
            )


if __name__ == "__main__":
    main()
