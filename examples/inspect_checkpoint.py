# %% [markdown]
# # Inspecting one checkpoint, figure by figure
#
# A notebook-style tour (the `# %%` cells run in VS Code / Jupyter, or top to bottom as a
# script) of a single trained model: load it, find its key frequencies, and draw each figure
# of the report with the function that makes it. Any checkpoint that
# `tl_grokking.runs.checkpoints.load_checkpoint` reads works — our run directories and safetensors,
# the authors' original `.pth`, the TransformerLens demo file, plain state dicts — for any p.
#
# Usage as a script::
#
#     python examples/inspect_checkpoint.py [CHECKPOINT] [--out tour.html]
#
# CHECKPOINT defaults to `tests/data/paper_no_wd.safetensors`, shipped with the repository: the
# authors' p = 113 model, trained without weight decay (see tests/data/README.md). As a script
# it writes every figure into one self-contained HTML page (default `checkpoint_tour.html`),
# which opens offline.

# %%
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tl_grokking.analysis.ablations import ablation_table
from tl_grokking.analysis.circuits import key_frequencies
from tl_grokking.analysis.grid import all_logits, loss_and_accuracy
from tl_grokking.analysis.logits import trig_logit_decomposition
from tl_grokking.data.tasks import ModularAddition
from tl_grokking.figures import plots
from tl_grokking.figures.report import ReportSection, circuitsvis_element, render_report_html
from tl_grokking.runs.checkpoints import load_checkpoint

DEFAULT_CHECKPOINT = (
    Path(__file__).resolve().parents[1] / "tests" / "data" / "paper_no_wd.safetensors"
)
IN_NOTEBOOK = "ipykernel" in sys.modules

parser = argparse.ArgumentParser(description="A figure-by-figure tour of one checkpoint.")
parser.add_argument("checkpoint", nargs="?", type=Path, default=DEFAULT_CHECKPOINT)
parser.add_argument("--out", type=Path, default=Path("checkpoint_tour.html"))
args = parser.parse_args([] if IN_NOTEBOOK else None)
if not args.checkpoint.exists():
    sys.exit(f"checkpoint not found: {args.checkpoint} (pass one: inspect_checkpoint.py PATH)")

# %% [markdown]
# ## 1. Load the model and check it solves the task
# The analysis reads only the final position's logits over all p² inputs `[a, b, =]`.

# %%
model = load_checkpoint(args.checkpoint)
model.eval()
p = model.cfg.d_vocab - 1
task = ModularAddition(p)
loss, acc = loss_and_accuracy(all_logits(model, task), task.labels())
print(f"{args.checkpoint.name}: p = {p}, d_mlp = {model.cfg.d_mlp}, heads = {model.cfg.n_heads}")
print(f"loss over all p² inputs {loss:.3e}, accuracy {acc:.4f}")
figures: list[tuple[str, object]] = []  # (title, figure) for the page written at the end


def show(title: str, fig) -> None:
    """Display in a notebook; collect for the HTML page otherwise."""
    figures.append((title, fig))
    if IN_NOTEBOOK:
        fig.show()


# %% [markdown]
# ## 2. Key frequencies, by the three rules of the paper
# Neuron clusters (the paper's definition), W_E Fourier norms (the TransformerLens demo's) and
# W_L Fourier norms (the paper's appendix).

# %%
keys = key_frequencies(model, task, rule="all")
print(keys)
clusters = keys.clusters

# %% [markdown]
# ## 3. The embedding is sparse in the Fourier basis
# Bars in basis order const, cos 1, sin 1, cos 2, ... (cos first); key frequencies in red.

# %%
show("W_E in the Fourier basis", plots.embedding_fourier_norms(model, task, key_freqs=keys.keys))

# %% [markdown]
# ## 4. Neurons cluster by frequency; W_L reads each cluster's frequency

# %%
show("Neuron clusters", plots.neuron_cluster_sizes(clusters))
show("Fraction of variance explained", plots.fve_histogram(clusters))
show("W_L in the Fourier basis", plots.unembed_fourier_heatmap(model, task, clusters=clusters))
show("Neuron activations", plots.neuron_activation_grids(model, task, clusters, per_cluster=1))

# %% [markdown]
# ## 5. Attention
# From '=' to a and to b over the whole grid, and (circuitsvis) for a few inputs.

# %%
show("Attention to a and b", plots.attention_to_operands(model, task))
examples = [(3, 5), (p - 1, p // 2)]
if IN_NOTEBOOK:
    from IPython.display import display

    for view in plots.attention_heads_view(model, task, examples):
        display(view)

# %% [markdown]
# ## 6. The logits are a sum of cosines of a + b − c, and the ablations

# %%
if keys.keys:
    decomposition = trig_logit_decomposition(model, task, keys.keys)
    print(decomposition)
    show("Trig-identity logits", plots.trig_identity_coefficients(decomposition))
    table = ablation_table(model, task, key_freqs=keys.keys, clusters=clusters)
    print(table)
    show("Ablations", plots.ablation_table_figure(table))
else:
    print("no key frequency: this model has not formed the Fourier circuit")

# %% [markdown]
# ## 7. One offline page with everything (when run as a script)

# %%
if not IN_NOTEBOOK:
    sections = [ReportSection(title, figure=fig) for title, fig in figures]
    n_heads = model.cfg.n_heads
    views = "".join(
        circuitsvis_element(
            "AttentionHeads",
            {
                "attention": pattern,
                "tokens": tokens,
                "attentionHeadNames": [f"head {h}" for h in range(n_heads)],
                "maskUpperTri": True,
            },
            f"cv-{i}",
        )
        for i, (tokens, pattern) in enumerate(plots.attention_examples(model, task, examples))
    )
    sections.append(
        ReportSection("Attention of example inputs", body_html=views, kind="circuitsvis")
    )
    page = render_report_html(f"Checkpoint tour — {args.checkpoint.name}", sections)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")
