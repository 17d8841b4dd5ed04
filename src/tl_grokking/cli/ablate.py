"""``tl-grokking ablate CHECKPOINT``: key frequencies, neuron clusters and the ablation table.

CHECKPOINT is anything :func:`tl_grokking.runs.checkpoints.load_checkpoint` reads (a run directory,
one of our safetensors checkpoints, the authors' or the TransformerLens demo's ``.pth``). The
train-pair rows (excluded losses, the full model on the training pairs) are measured on the
run's training pairs, as :func:`tl_grokking.runs.checkpoints.load_run` recovers them: a run
directory's split from its ``config.json``; an authors' file's by their procedure with the seed
of its stored config or their default, checked against the file's stored final train loss; the
demo's recorded indices. The ``train split:`` line says which, and whether the check passed.

``--frac-train``/``--seed`` rebuild the split instead, with the authors' procedure (Python's
``random.shuffle``, :func:`tl_grokking.data.tasks.authors_split`) for an authors' checkpoint
and tl_grokking's (``torch.randperm``, :meth:`tl_grokking.data.tasks.Task.split`) for every
other; the one not given keeps the run's value (else 0.3 / seed 0). A single checkpoint with no
split and no flags has its train-pair rows measured on all inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tl_grokking.cli._common import (
    add_device_flag,
    add_key_freqs_flag,
    add_threads_flag,
    set_analysis_threads,
)

if TYPE_CHECKING:
    from torch import Tensor

    from tl_grokking.model.transformer import GrokModel


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="key frequencies, neuron clusters and the Fourier ablation table of a checkpoint",
        description=(
            "Reverse-engineer a checkpoint as in Nanda et al. (2023): key frequencies by the "
            "circuit rule and by each piece of evidence (neuron clusters, W_E and W_L Fourier "
            "norms, the logits' trig fit), with what each contested frequency changes in the "
            "restricted loss, neuron clusters, the "
            "trig-identity fit of the logits, and the ablation table (restricted / excluded "
            "logits, neurons replaced by their 3x3 block, clusters removed, attention ablated)."
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run dir")
    parser.add_argument("--epoch", type=int, default=None, help="epoch of a run [the last]")
    add_key_freqs_flag(parser, "to use", "those of the circuit rule")
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
        help="rebuild the train/test split with this fraction, by the authors' procedure for an "
        "authors' checkpoint and tl_grokking's for any other [the run's split: its config's, "
        "else 0.3 for the authors' format; a single checkpoint: all inputs]",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="rebuild the train/test split with this seed (procedure as --frac-train) [the "
        "run's: its config's, else the authors' 0, checked against the stored train loss]",
    )
    add_device_flag(parser, "device")
    add_threads_flag(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tl_grokking.analysis.ablations import TABLE_HOOKS, ablation_table
    from tl_grokking.analysis.circuits import key_frequencies, neuron_clusters
    from tl_grokking.analysis.grid import grid_activations, resolve_task
    from tl_grokking.analysis.logits import trig_logit_decomposition
    from tl_grokking.model.transformer import config_from_model

    model, train_indices, task, split = _load(args)
    set_analysis_threads(args.threads, config_from_model(model))
    task = resolve_task(model, task)
    if train_indices is None and (args.frac_train is not None or args.seed is not None):
        train_indices, split = _single_checkpoint_split(args, task)
    # One forward pass over the grid feeds the clusters, the trig fit and the table.
    post_name, logits_name = TABLE_HOOKS
    acts = grid_activations(model, task, TABLE_HOOKS)
    clusters = neuron_clusters(model, task, args.threshold, activations=acts[post_name])
    keys = key_frequencies(model, task, clusters=clusters, logits=acts[logits_name])
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
            "key_frequencies": keys.to_dict(),
            "clusters": {
                "sizes": clusters.sizes,
                "unclustered": clusters.n_unclustered,
                "threshold": clusters.threshold,
            },
            "trig": None
            if trig is None
            else {"alpha": trig.alpha, "fve": trig.fve, "approx_loss": trig.approx_loss},
            "ablation_table": table.to_dict(),
            "train_split": split,
        }
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    print(f"checkpoint: {args.checkpoint}  (p = {task.p})")
    print(split["line"])
    print(keys)
    print(clusters)
    if trig is not None:
        print(trig)
    print(table)
    return 0


def _load(
    args: argparse.Namespace,
) -> tuple[GrokModel, Tensor | None, Any, dict[str, Any]]:
    """The model, the training indices (when known), the task (a
    ``tl_grokking.data.tasks.Task``; ``None`` for a single checkpoint) and the split's record
    (``line``: what the text output prints; ``split``, ``check``: the JSON output)."""
    from tl_grokking.runs.checkpoints import CheckpointFormatError, load_checkpoint, load_run

    try:
        run = load_run(args.checkpoint, seed=args.seed, frac_train=args.frac_train)
    except CheckpointFormatError:
        run = None  # a single checkpoint: no epochs, no split
    if run is not None:
        split = {
            "line": run.split_line(),
            "split": None if run.split is None else run.split.to_dict(),
            "check": None if run.split_check is None else run.split_check.to_dict(),
        }
        return run.model(args.epoch, device=args.device), run.train_indices, run.task, split
    if args.epoch is not None:
        raise ValueError(f"--epoch given but {args.checkpoint} is a single checkpoint")
    line = (
        "train split: none (a single checkpoint records none; --frac-train/--seed rebuild "
        "one); the train-pair rows use all inputs"
    )
    model = load_checkpoint(args.checkpoint, device=args.device)
    return model, None, None, {"line": line, "split": None, "check": None}


def _single_checkpoint_split(args: argparse.Namespace, task: Any) -> tuple[Tensor, dict[str, Any]]:
    """The split ``--frac-train``/``--seed`` rebuild for a single checkpoint: the authors'
    procedure for their layout, tl_grokking's for any other (missing values: 0.3, seed 0)."""
    from tl_grokking.runs.checkpoints import (
        AUTHORS_FRAC_TRAIN,
        AUTHORS_SEED,
        SplitInfo,
        detect_format,
    )

    method = "authors" if detect_format(args.checkpoint) == "authors" else "tl_grokking"
    seed = AUTHORS_SEED if args.seed is None else args.seed
    frac = AUTHORS_FRAC_TRAIN if args.frac_train is None else args.frac_train
    train, _ = task.split(frac, seed, method=method)
    origin = {True: "default", False: "given"}
    info = SplitInfo(
        method=method,
        seed=seed,
        frac_train=frac,
        seed_origin=origin[args.seed is None],
        frac_origin=origin[args.frac_train is None],
        n_train=int(train.numel()),
        n_inputs=int(task.pairs().shape[0]),
        source="from --frac-train/--seed, 0.3 and seed 0 where not given: a single checkpoint "
        "records no split",
    )
    return train, {"line": f"train split: {info}", "split": info.to_dict(), "check": None}
