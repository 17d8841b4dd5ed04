"""``tl-grokking ablate CHECKPOINT``: key frequencies, neuron clusters and the ablation table.

CHECKPOINT is anything :func:`tl_grokking.runs.checkpoints.load_checkpoint` reads (a run directory,
one of our safetensors checkpoints, the authors' or the TransformerLens demo's ``.pth``). When
the format records the train/test split (run directories, demo files), the excluded-loss rows
are measured on the training pairs; otherwise pass ``--frac-train``/``--seed`` to rebuild a
split, or they are measured on all inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tl_grokking.cli._common import add_device_flag, add_key_freqs_flag

if TYPE_CHECKING:
    from torch import Tensor
    from transformer_lens import HookedTransformer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="key frequencies, neuron clusters and the Fourier ablation table of a checkpoint",
        description=(
            "Reverse-engineer a checkpoint as in Nanda et al. (2023): key frequencies by three "
            "rules (neuron clusters, W_E and W_L Fourier norms), neuron clusters, the "
            "trig-identity fit of the logits, and the ablation table (restricted / excluded "
            "logits, neurons replaced by their 3x3 block, clusters removed, attention ablated)."
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run dir")
    parser.add_argument("--epoch", type=int, default=None, help="epoch of a run [the last]")
    add_key_freqs_flag(parser, "to use", "those of the neuron-cluster rule")
    parser.add_argument("--threshold", type=float, default=0.85, help="FVE threshold for clusters")
    parser.add_argument(
        "--neuron-ablation",
        choices=("zero", "mean"),
        default="zero",
        help="how dropped/removed neurons are ablated",
    )
    parser.add_argument(
        "--frac-train",
        type=float,
        default=None,
        help="rebuild a train/test split with this fraction [the split the checkpoint records, "
        "else all inputs]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the rebuilt split")
    add_device_flag(parser, "device")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tl_grokking.analysis.ablations import TABLE_HOOKS, ablation_table
    from tl_grokking.analysis.circuits import key_frequencies, neuron_clusters
    from tl_grokking.analysis.grid import grid_activations, resolve_task
    from tl_grokking.analysis.logits import trig_logit_decomposition

    model, train_indices, task = _load(args)
    task = resolve_task(model, task)
    if args.frac_train is not None:
        train_indices = task.split(args.frac_train, args.seed)[0]
    # One forward pass over the grid feeds the clusters, the trig fit and the table.
    post_name, logits_name = TABLE_HOOKS
    acts = grid_activations(model, task, TABLE_HOOKS)
    clusters = neuron_clusters(model, task, args.threshold, activations=acts[post_name])
    keys = key_frequencies(model, task, rule="all", clusters=clusters)
    key_freqs = keys.keys if args.key_freqs is None else args.key_freqs
    table = ablation_table(
        model,
        task,
        key_freqs=key_freqs,
        train_indices=train_indices,
        clusters=clusters,
        neuron_ablation=args.neuron_ablation,
        activations=acts,
    )
    logits = acts[logits_name][:, : task.p]
    has_sum_directions = "sum_directions" in task.meaningful_analyses
    trig = None
    if table.key_freqs and has_sum_directions:
        trig = trig_logit_decomposition(logits, task, table.key_freqs)
    if args.json:
        out = {
            "key_frequencies": {"keys": keys.keys, "by_rule": keys.by_rule, "agree": keys.agree},
            "clusters": {
                "sizes": clusters.sizes,
                "unclustered": clusters.n_unclustered,
                "threshold": clusters.threshold,
            },
            "trig": None
            if trig is None
            else {"alpha": trig.alpha, "fve": trig.fve, "approx_loss": trig.approx_loss},
            "ablation_table": table.to_dict(),
        }
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    print(f"checkpoint: {args.checkpoint}  (p = {task.p})")
    print(keys)
    print(clusters)
    if trig is not None:
        print(trig)
    print(table)
    return 0


def _load(args: argparse.Namespace) -> tuple[HookedTransformer, Tensor | None, Any]:
    """The model, the training indices (when the format records them) and the task (a
    ``tl_grokking.data.tasks.Task``; ``None`` for a single checkpoint)."""
    from tl_grokking.runs.checkpoints import CheckpointFormatError, load_checkpoint, load_run

    try:
        run = load_run(args.checkpoint)
    except CheckpointFormatError:
        run = None  # a single checkpoint: no epochs, no split
    if run is not None:
        return run.model(args.epoch, device=args.device), run.train_indices, run.task
    if args.epoch is not None:
        raise ValueError(f"--epoch given but {args.checkpoint} is a single checkpoint")
    return load_checkpoint(args.checkpoint, device=args.device), None, None
