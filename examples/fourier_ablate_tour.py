"""A tour of the Fourier tools on one checkpoint: key frequencies, clusters, ablations.

Usage::

    python examples/fourier_ablate_tour.py [CHECKPOINT]

CHECKPOINT defaults to ``tests/data/paper_no_wd.safetensors``, shipped with the repository:
the paper authors' checkpoint ``paper_original_format_no_wd.pth`` (p = 113, trained without
weight decay) converted to our format (tests/data/README.md). Any format that
``tl_grokking.runs.checkpoints.load_checkpoint`` reads works, for any p.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tl_grokking import (
    ablation_table,
    evaluate_model,
    fourier_ablate,
    key_frequencies,
    neuron_clusters,
    trig_logit_decomposition,
)

DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "data" / "paper_no_wd.safetensors"


def load(path: Path):
    try:
        from tl_grokking.runs.checkpoints import load_checkpoint
    except ImportError:
        sys.exit("tl_grokking.runs.checkpoints.load_checkpoint is not available in this install")
    if not path.exists():
        sys.exit(f"checkpoint not found: {path} (pass a path: fourier_ablate_tour.py CHECKPOINT)")
    return load_checkpoint(path)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    model = load(path)
    p = model.cfg.d_vocab - 1
    print(f"{path.name}: p = {p}, d_mlp = {model.cfg.d_mlp}, heads = {model.cfg.n_heads}\n")

    # 1. Neuron clusters and key frequencies by the three rules of the paper.
    clusters = neuron_clusters(model)
    keys = key_frequencies(model, rule="all", clusters=clusters)
    print(clusters, "\n")
    print(keys, "\n")

    # 2. The logits are (mostly) a sum of cos(w_k(a + b - c)) over the key frequencies.
    print(trig_logit_decomposition(model, freqs=keys.keys), "\n")

    # 3. Hooks compose with TransformerLens: remove the key frequencies from the embedding,
    #    or keep only them in the MLP activations (3x3 blocks), and measure the damage.
    with torch.no_grad():
        for label, hooks in [
            ("no hooks", []),
            ("W_E without key freqs", fourier_ablate(model, keys.keys, "embed", mode="remove")),
            (
                "mlp_post: key 3x3 blocks only",
                fourier_ablate(model, keys.keys, "mlp_post", mode="keep", basis="block"),
            ),
        ]:
            out = evaluate_model(model, fwd_hooks=hooks)
            print(f"{label:32s} loss {out['all_loss']:.3e}  acc {100 * out['all_acc']:.2f}%")
    print()

    # 4. The paper's ablation table.
    print(ablation_table(model, key_freqs=keys.keys, clusters=clusters))


if __name__ == "__main__":
    main()
