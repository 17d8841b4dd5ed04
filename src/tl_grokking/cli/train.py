"""``tl-grokking train``: train a grokking transformer and write a run directory.

Every :class:`tl_grokking.training.trainer.TrainConfig` field has a flag (``--frac-train`` for
``frac_train``, ...); defaults are the paper's (Nanda et al. 2023).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tl_grokking.model.transformer import SUPPORTED_ACT_FNS, TRAINABLE_BIASES

EPILOG = """\
examples:
  # the paper's run (p = 113, 30% train, weight decay 1), stop once test accuracy >= 99%
  tl-grokking train --out runs/paper --early-stop-acc 0.99

  # a small model that groks in about a thousand epochs (seconds on a laptop CPU)
  tl-grokking train --out runs/small --p 29 --frac-train 0.6 --lr 3e-3 \\
      --d-model 64 --d-mlp 128 --epochs 1000 --log-every 50 --checkpoint-every 50

The run directory holds config.json, metrics.jsonl (one line per logged epoch),
checkpoints/epoch_<N>.safetensors and resume.safetensors; continue an interrupted run with
--resume, analyse it with 'tl-grokking analyze RUN_DIR'.
"""


def _nullable_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on modular addition and write a run directory",
        description=(
            "Train the one-layer transformer of Nanda et al. (2023) on [a, b, =] -> (a + b) mod p "
            "with full-batch AdamW and float64 cross-entropy at the '=' position, logging "
            "train/test loss and accuracy and saving checkpoints into OUT. Defaults reproduce "
            "the paper (shown in brackets)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT from its last checkpoint (epochs, intervals, device and "
        "early-stop settings may change; the result is bit-identical to an uninterrupted run)",
    )
    out.add_argument(
        "--overwrite", action="store_true", help="delete the run already in OUT and start again"
    )
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    data = parser.add_argument_group("task and data")
    data.add_argument("--task", default="add", help="task name [add: (a + b) mod p]")
    data.add_argument("--p", type=int, default=113, help="modulus, an integer >= 3 [113]")
    data.add_argument(
        "--frac-train", type=float, default=0.3, help="fraction of the p² pairs to train on [0.3]"
    )
    data.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation and of the split [0]"
    )

    opt = parser.add_argument_group("optimisation (full batch: one AdamW step per epoch)")
    opt.add_argument("--epochs", type=int, default=40_000, help="number of epochs [40000]")
    opt.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate [1e-3]")
    opt.add_argument(
        "--weight-decay", type=float, default=1.0, help="AdamW weight decay; 0 never groks [1.0]"
    )
    opt.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1 [0.9]")
    opt.add_argument("--beta2", type=float, default=0.98, help="AdamW beta2 [0.98]")
    opt.add_argument(
        "--warmup-steps",
        type=int,
        default=10,
        help="linear learning-rate warm-up lr*min(step/N, 1); 0 disables it [10]",
    )

    model = parser.add_argument_group("model (one layer, no LayerNorm)")
    model.add_argument("--d-model", type=int, default=128, help="residual stream width [128]")
    model.add_argument("--n-heads", type=int, default=4, help="attention heads [4]")
    model.add_argument(
        "--d-head",
        type=_nullable_int,
        default=None,
        help="width of each head [d_model / n_heads = 32]",
    )
    model.add_argument("--d-mlp", type=int, default=512, help="MLP neurons [512]")
    model.add_argument(
        "--act-fn", default="relu", choices=SUPPORTED_ACT_FNS, help="MLP activation [relu]"
    )
    model.add_argument(
        "--d-vocab-out",
        type=_nullable_int,
        default=None,
        help="output logits: p (the residues) or p + 1 (the authors' code) [p]",
    )
    model.add_argument(
        "--trainable-biases",
        default="none",
        choices=TRAINABLE_BIASES,
        help="which biases train: none (all zero and frozen, the TransformerLens demo), mlp "
        "(b_in/b_out, the authors' code) or all [none]",
    )
    model.add_argument(
        "--attn-rate",
        type=float,
        default=1.0,
        help="attention rate: pattern = rate*softmax + (1-rate)*uniform; 1 = ordinary [1.0]",
    )

    book = parser.add_argument_group("logging, checkpoints, stopping")
    book.add_argument(
        "--log-every", type=int, default=100, help="evaluate and log metrics every N epochs [100]"
    )
    book.add_argument(
        "--checkpoint-every", type=int, default=100, help="save a checkpoint every N epochs [100]"
    )
    book.add_argument(
        "--measure-every",
        type=_nullable_int,
        default=None,
        help="also log the cheap progress measures (Gini of W_E/W_L, sum of squared weights) "
        "every N epochs [off]",
    )
    book.add_argument(
        "--early-stop-acc",
        type=float,
        default=None,
        help="stop once test accuracy has been >= this for --early-stop-patience logs [off]",
    )
    book.add_argument(
        "--early-stop-patience", type=int, default=3, help="consecutive logs for early stop [3]"
    )
    book.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps [cpu]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tl_grokking.runs.rundir import CONFIG_FILE
    from tl_grokking.training.trainer import TrainConfig, train_model

    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pass one of them")
    if args.resume and not (Path(args.out) / CONFIG_FILE).is_file():
        # train_model(resume=True) would start a new run; from the shell that is usually a typo in --out
        raise FileNotFoundError(
            f"--resume: {args.out} holds no run to resume (no {CONFIG_FILE}); "
            "drop --resume to start a new run there"
        )
    config = TrainConfig(
        task=args.task,
        p=args.p,
        frac_train=args.frac_train,
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        beta1=args.beta1,
        beta2=args.beta2,
        warmup_steps=args.warmup_steps,
        d_model=args.d_model,
        n_heads=args.n_heads,
        d_head=args.d_head,
        d_mlp=args.d_mlp,
        act_fn=args.act_fn,
        d_vocab_out=args.d_vocab_out,
        trainable_biases=args.trainable_biases,
        attn_rate=args.attn_rate,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        early_stop_acc=args.early_stop_acc,
        early_stop_patience=args.early_stop_patience,
        measure_every=args.measure_every,
    )
    callbacks = []
    if config.measure_every is not None:
        from tl_grokking.analysis.progress import cheap_measures_callback

        callbacks.append(cheap_measures_callback(config.make_task()))
    result = train_model(
        config,
        Path(args.out),
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        callbacks=callbacks,
    )
    m = result.metrics
    grok = "not reached" if result.grok_epoch is None else f"epoch {result.grok_epoch}"
    print(
        f"trained to epoch {result.epoch} in {result.wall_time:.1f} s"
        f"{' (early stop)' if result.stopped_early else ''}: train loss {m['train_loss']:.3g}, "
        f"test loss {m['test_loss']:.3g}, test acc {m['test_acc']:.4f}; "
        f"test acc >= 0.99: {grok}; run directory {result.run_dir}",
        file=sys.stdout,
    )
    return 0
