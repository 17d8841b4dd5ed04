"""The figures of Nanda et al. (2023) from a run directory, one interactive HTML file each.

Usage::

    tl-grokking reproduce --quick --out runs/quick      # or the full paper run, or any run
    python examples/reproduce_paper.py runs/quick [--out runs/quick/figures] [--show]

Writes ``figures/<name>.html`` for every figure (plotly.js sits once beside them as
``plotly.min.js``: nothing is loaded from the network), or opens them in a browser with
``--show``. Each figure is built by one function of :mod:`tl_grokking.figures.plots`, from a
model and its task or from explicit data, so the same lines work in a notebook.

What the figures show (the paper's names):

* ``loss_curves``       train/test loss with memorisation, circuit formation and cleanup shaded
* ``progress_measures`` restricted / excluded loss, Gini of the Fourier norms, sum of squares
* ``embedding``         W_E is sparse in the Fourier basis: a few key frequencies
* ``unembedding``       W_L reads cos(w_k c), sin(w_k c) of the same frequencies
* ``clusters``, ``fve`` neurons cluster by frequency
* ``neurons``           activations over (a, b) of neurons of each cluster
* ``attention``         attention from '=' to a and to b
* ``trig_identity``     logits ≈ Σ_k α_k cos(w_k(a + b − c))
* ``ablations``         the ablation table
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_grokking.analysis.ablations import ablation_table
from tl_grokking.analysis.circuits import key_frequencies
from tl_grokking.analysis.logits import trig_logit_decomposition
from tl_grokking.analysis.phases import detect_phases
from tl_grokking.analysis.progress import progress_measures, read_measures_csv
from tl_grokking.figures import plots
from tl_grokking.runs.checkpoints import load_run
from tl_grokking.runs.rundir import read_json


def figures(run_dir: Path) -> dict:
    """Every figure of the paper for the run in ``run_dir`` (final checkpoint)."""
    run = load_run(run_dir)
    model, task = run.model(), run.task
    model.eval()
    # Progress measures and phases: stored by `tl-grokking analyze`, or computed now.
    if (run_dir / "measures.csv").is_file():
        measures = read_measures_csv(run_dir / "measures.csv")
    else:
        measures = progress_measures(run, progress=True)
    if (run_dir / "phases.json").is_file():
        phases = read_json(run_dir / "phases.json")
    else:
        phases = detect_phases(measures)
    keys = key_frequencies(model, task, rule="all")
    print(keys)
    clusters = keys.clusters
    out = {
        "loss_curves": plots.loss_curves(run.metrics, phases=phases),
        "progress_measures": plots.progress_measures_panel(measures, phases=phases),
        "embedding": plots.embedding_fourier_norms(model, task, key_freqs=keys.keys),
        "unembedding": plots.unembed_fourier_heatmap(model, task, clusters=clusters),
        "clusters": plots.neuron_cluster_sizes(clusters),
        "fve": plots.fve_histogram(clusters),
        "neurons": plots.neuron_activation_grids(model, task, clusters),
        "attention": plots.attention_to_operands(model, task),
    }
    if keys.keys:
        decomposition = trig_logit_decomposition(model, task, keys.keys)
        print(decomposition)
        table = ablation_table(
            model, task, key_freqs=keys.keys, train_indices=run.train_indices, clusters=clusters
        )
        print(table)
        out["trig_identity"] = plots.trig_identity_coefficients(decomposition)
        out["ablations"] = plots.ablation_table_figure(table)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (tl-grokking train/reproduce)")
    parser.add_argument("--out", type=Path, default=None, help="default RUN_DIR/figures")
    parser.add_argument("--show", action="store_true", help="open each figure in a browser")
    args = parser.parse_args()
    figs = figures(args.run_dir)
    if args.show:
        for fig in figs.values():
            fig.show()
        return
    out = args.out or args.run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figs.items():
        # "directory": one plotly.min.js written next to the pages, referenced by a relative
        # path; no CDN.
        fig.write_html(out / f"{name}.html", include_plotlyjs="directory", full_html=True)
    print(f"wrote {len(figs)} figures to {out}/")


if __name__ == "__main__":
    main()
