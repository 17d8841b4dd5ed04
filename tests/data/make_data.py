"""Re-create the data files shipped in ``tests/data/`` (see ``tests/data/README.md``).

Usage (from the repository root)::

    python tests/data/make_data.py [--fixture ../shared/fixtures/paper_original_format_no_wd.pth]

* ``paper_no_wd.safetensors``: the authors' checkpoint ``paper_original_format_no_wd.pth``
  converted with the project's own loader (``tl_grokking.runs.checkpoints.load_checkpoint``) and
  saved as a TransformerLens-layout state dict, float32, with metadata naming p, the epoch, the
  model configuration, the source file (name and SHA-256) and its train/test split (``split``).
* ``run_p23/``: a tiny run directory trained by ``train_model(RUN_P23_CONFIG)`` on one thread
  (p = 23; the README tour trains the same configuration).

Both are deterministic given the inputs; the run is bit-identical only with the same torch
build and thread count, which is why it is shipped rather than trained by the docs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_FIXTURE = REPO.parent / "shared" / "fixtures" / "paper_original_format_no_wd.pth"

PAPER_FILE = HERE / "paper_no_wd.safetensors"
RUN_DIR = HERE / "run_p23"

#: The tiny run's settings (``TrainConfig(**RUN_P23_CONFIG)``); the README tour trains the same.
RUN_P23_CONFIG: dict = {
    "task": "add",
    "p": 23,
    "frac_train": 0.6,
    "seed": 0,
    "d_model": 32,
    "n_heads": 4,
    "d_mlp": 128,
    "lr": 5e-3,
    "weight_decay": 1.0,
    "epochs": 600,
    "log_every": 20,
    "checkpoint_every": 50,
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_paper_checkpoint(fixture: Path, out: Path = PAPER_FILE) -> None:
    import tl_grokking
    from tl_grokking.analysis.grid import all_logits, loss_and_accuracy
    from tl_grokking.data.tasks import ModularAddition
    from tl_grokking.model.transformer import config_from_model
    from tl_grokking.runs.checkpoints import load_run
    from tl_grokking.runs.rundir import save_safetensors

    run = load_run(fixture)  # the authors' container: one final model
    assert run.split is not None and run.split_check is not None and run.split_check.matches
    model = run.model()
    config = config_from_model(model)
    task = ModularAddition(config.p)
    loss, acc = loss_and_accuracy(all_logits(model, task), task.labels())
    state = {k: v.float() for k, v in run.state_dict().items()}  # parameters only, no buffers
    metadata = {
        "format": "tl_grokking",
        "layout": "TransformerLens HookedTransformer state dict (parameters only), float32",
        "p": str(config.p),
        "epoch": str(run.final_epoch),
        "model_config": json.dumps(config.to_dict(), sort_keys=True),
        "source": fixture.name,
        "source_sha256": sha256(fixture),
        "source_description": (
            "Nanda et al. (2023) original-code checkpoint, p = 113, trained 5000 epochs "
            "without weight decay (the project's test fixture)"
        ),
        "converted_with": (
            f"tl_grokking {tl_grokking.__version__}: "
            "tl_grokking.runs.checkpoints.load_run(source).state_dict(); tests/data/make_data.py"
        ),
        "loss_all_pairs": f"{loss:.6e}",
        "accuracy_all_pairs": f"{acc:.6f}",
        # the source's train/test split, as load_run recovered and checked it
        "split": json.dumps(
            {
                "method": run.split.method,
                "seed": run.split.seed,
                "frac_train": run.split.frac_train,
                "note": f"the split of {fixture.name} ({run.split.source}), which "
                f"{run.split_check}",
            }
        ),
    }
    save_safetensors(state, out, metadata=metadata)
    print(f"wrote {out} ({out.stat().st_size} bytes): loss {loss:.3e}, accuracy {acc:.4f}")


def make_run(out: Path = RUN_DIR) -> None:
    import torch

    from tl_grokking.training.config import TrainConfig
    from tl_grokking.training.trainer import train_model

    if out.exists():
        shutil.rmtree(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_model(TrainConfig(**RUN_P23_CONFIG), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"wrote {out} ({size} bytes): grok epoch {result.grok_epoch}, "
        f"final test accuracy {result.metrics['test_acc']:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--only", choices=("paper", "run"), default=None)
    args = parser.parse_args()
    if args.only in (None, "paper"):
        make_paper_checkpoint(args.fixture)
    if args.only in (None, "run"):
        make_run()


if __name__ == "__main__":
    main()
