"""TransformerLens 3 and 4 side by side: same seed → same run, checkpoints cross over, same tour.

Run:  python .ci/cross_version.py PYTHON_A PYTHON_B

Each PYTHON is the interpreter of a virtual environment with tl_grokking installed on a
different TransformerLens (e.g. ``.venv/bin/python`` on 3.x and ``.venv-tl4/bin/python`` on
4.x). In each, a worker process:

1. runs every ``python`` block of README.md (the API tour: trains ``runs/tour``, analyses it,
   writes the report) in a scratch copy of ``tests/data``, capturing what it prints;
2. trains a second small run with every bias trainable and the attention-rate knob (the
   trainer's other code paths);
3. hashes the final weights (TL-3 keys), the bytes of every checkpoint file and the metrics
   (``elapsed`` left out) of both runs;
4. then loads the *other* environment's runs with ``load_checkpoint`` and compares the logits
   it computes with those of its own runs.

The driver prints one line per check and exits 1 if any differs: the weights and metrics must
be bit-identical, the tour's output identical, and a checkpoint written by either version must
give the same logits on the other (to float32 rounding: the two versions' forward passes
order their float operations differently).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECOND_RUN = dict(p=19, frac_train=0.5, d_model=24, n_heads=3, d_mlp=48, epochs=60,
                  log_every=10, checkpoint_every=30, trainable_biases="all", attn_rate=0.7,
                  lr=3e-3, seed=5)  # fmt: skip
LOGIT_TOL = 1e-4  # relative to the largest logit


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _weights_sha(run_dir: Path) -> str:
    from tl_grokking import load_checkpoint
    from tl_grokking.model.transformer import tl3_state_dict

    state = tl3_state_dict(load_checkpoint(run_dir))
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _files_sha(run_dir: Path) -> str:
    """The bytes of every checkpoint file: the same run writes the same files (sha256sum)."""
    digest = hashlib.sha256()
    for path in sorted((run_dir / "checkpoints").glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _metrics_sha(run_dir: Path) -> str:
    from tl_grokking.runs.rundir import read_metrics

    rows = [{k: v for k, v in r.items() if k != "elapsed"} for r in read_metrics(run_dir)]
    return _sha(json.dumps(rows, sort_keys=True).encode())


def _logits(run_dir: Path):
    import torch

    from tl_grokking import load_checkpoint
    from tl_grokking.runs.rundir import read_json

    p = read_json(run_dir / "config.json")["p"]
    model = load_checkpoint(run_dir)
    tokens = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    tokens = torch.cat([tokens, torch.full((p * p, 1), p)], dim=1)
    with torch.no_grad():
        return model(tokens)[:, -1].double()


def worker(out: Path, other: Path | None) -> None:
    import tl_grokking.model.transformer as seam

    work = out / "work"
    report: dict = {"backend": seam.BACKEND, "tl_version": list(seam.TL_VERSION)}
    if other is None:  # phase 1: the tour and the second run, in this environment
        shutil.copytree(REPO / "tests" / "data", work / "tests" / "data",
                        ignore=shutil.ignore_patterns("*.py"))  # fmt: skip
        readme = (REPO / "README.md").read_text()
        blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
        captured = io.StringIO()
        with contextlib.chdir(work), contextlib.redirect_stdout(captured):
            namespace: dict = {"__name__": "readme"}
            for block in blocks:
                exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
            from tl_grokking import TrainConfig, train_model

            train_model(TrainConfig(**SECOND_RUN), "runs/second", overwrite=True, progress=False)
        report["tour_output"] = captured.getvalue()
        import torch

        for name in ("tour", "second"):
            run = work / "runs" / name
            report[f"{name}_weights"] = _weights_sha(run)
            report[f"{name}_files"] = _files_sha(run)
            report[f"{name}_metrics"] = _metrics_sha(run)
            torch.save(_logits(run), out / f"{name}_logits.pt")
    else:  # phase 2: load the other environment's runs here
        for name in ("tour", "second"):
            own, theirs = _logits(work / "runs" / name), _logits(other / "work" / "runs" / name)
            scale = float(own.abs().max())
            report[f"{name}_cross_logit_diff"] = float((own - theirs).abs().max()) / scale
    (out / ("phase2.json" if other else "phase1.json")).write_text(json.dumps(report))


def _run(python: str, out: Path, other: Path | None = None) -> dict:
    cmd = [python, __file__, "--worker", str(out)] + ([str(other)] if other else [])
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads((out / ("phase2.json" if other else "phase1.json")).read_text())


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
        return 0
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    python_a, python_b = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        out_a, out_b = Path(tmp, "a"), Path(tmp, "b")
        out_a.mkdir(), out_b.mkdir()
        a, b = _run(python_a, out_a), _run(python_b, out_b)
        a2, b2 = _run(python_a, out_a, out_b), _run(python_b, out_b, out_a)
        return _compare(a, b, a2, b2, out_a, out_b)


def _compare(a: dict, b: dict, a2: dict, b2: dict, out_a: Path, out_b: Path) -> int:
    name_a = f"{a['backend']} (TL {'.'.join(map(str, a['tl_version']))})"
    name_b = f"{b['backend']} (TL {'.'.join(map(str, b['tl_version']))})"
    print(f"A: {name_a}\nB: {name_b}")
    failed = False
    keys = [
        f"{run}_{what}" for run in ("tour", "second") for what in ("weights", "files", "metrics")
    ]
    for key in keys:
        same = a[key] == b[key]
        failed |= not same
        print(f"{key:<16} {'identical' if same else 'DIFFERENT'}: A {a[key]}  B {b[key]}")
    same = a["tour_output"] == b["tour_output"]
    failed |= not same
    lines = a["tour_output"].count("\n")
    print(f"{'tour_output':<16} {'identical' if same else 'DIFFERENT'} ({lines} lines)")
    if not same:
        print("--- A\n" + a["tour_output"] + "--- B\n" + b["tour_output"])
    import torch

    for name in ("tour", "second"):  # the two forward passes, on the same weights
        la, lb = (torch.load(out / f"{name}_logits.pt") for out in (out_a, out_b))
        diff = float((la - lb).abs().max()) / float(la.abs().max())
        failed |= diff > LOGIT_TOL
        print(f"{name + '_forward':<16} A's forward vs B's, same weights: max |Δlogit| / max "
              f"|logit| = {diff:.2e} (tolerance {LOGIT_TOL:g})")  # fmt: skip
    for key in ("tour_cross_logit_diff", "second_cross_logit_diff"):
        for side, rep in (("B's run loaded in A", a2), ("A's run loaded in B", b2)):
            ok = rep[key] <= LOGIT_TOL
            failed |= not ok
            print(f"{key:<24} {side}: max |Δlogit| / max |logit| = {rep[key]:.2e} "
                  f"({'ok' if ok else 'TOO LARGE'}, tolerance {LOGIT_TOL:g})")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
