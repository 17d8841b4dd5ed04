"""The machinery of the hostile harness: the session's runs, a case, running and classifying it.

A :class:`Case` declares what it builds (a function of a :class:`Ctx`, returning the argv of
``tl-grokking``), the exit status it must end with, the substrings the one-line message must
hold (for exit status 0: the command's output), and optionally a fault to inject while it runs
(``patch``) and checks of what it leaves behind. :func:`run_case` runs it in-process, in a
directory of its own (the working directory while it runs), and :func:`classify` says how it
went, in this order:

* **code execution**: a file named ``MARKER*`` appeared in the case's directory (what every
  pickle payload of the harness creates when it runs);
* **traceback**: ``main`` raised something other than ``SystemExit`` (the CLI keeps the
  traceback of a bug), or a traceback was printed;
* **silent corruption**: a refused input was accepted (exit status 0 where the case expects an
  error), a command that failed changed a file that was there before (``may_change`` allows it
  where a partial result is the documented outcome), left a new temporary file, or a check of
  the case failed;
* **unclear message**: another exit status than expected, no one-line ``tl-grokking CMD:
  error: ...`` message, or one that does not name what was wrong (a substring is missing);
* **handled well**: none of the above.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HANDLED = "handled well"
UNCLEAR = "unclear message"
TRACEBACK = "traceback"
CORRUPTION = "silent corruption"
EXECUTION = "code execution"
OUTCOMES = (HANDLED, UNCLEAR, TRACEBACK, CORRUPTION, EXECUTION)

#: The five families of cases, in the order the table lists them.
FAMILIES = {
    "arguments": "bad flags and flag values of every subcommand",
    "corrupt files": "every run-directory file and checkpoint format, damaged",
    "security": "pickles that would run code, zip bombs, HTML injected into the report",
    "faults": "special files, a file where a directory is expected, read-only and full disks, "
    "interrupted writes, a held lock",
    "analysis": "analyze / report / ablate on odd runs",
}

#: The session's small run (``TrainConfig`` keyword arguments): p = 17, 5 checkpoints.
TINY: dict[str, Any] = dict(
    p=17, frac_train=0.5, d_model=16, n_heads=2, d_mlp=32, lr=3e-3, epochs=20,
    log_every=5, checkpoint_every=5, threads=1,
)  # fmt: skip
SHIPPED_RUN = Path(__file__).resolve().parent.parent / "data" / "run_p23"


@dataclass
class Env:
    """What every case starts from: run directories and standalone checkpoint files."""

    root: Path
    runs: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def _authors_layout(state: dict[str, Any]) -> dict[str, Any]:
    """A TL-layout state dict in the authors' layout (the inverse of the loader's conversion)."""
    import einops

    out = {}
    for key, value in state.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("W_E", "W_in", "W_out"):
            value = value.T.contiguous()
        elif leaf in ("W_Q", "W_K", "W_V"):
            value = einops.rearrange(value, "h m e -> h e m").contiguous()
        elif leaf == "W_O":
            value = einops.rearrange(value, "h e m -> m (h e)").contiguous()
        elif key.startswith("blocks.0.attn.b_"):
            continue  # the authors' model has no attention biases
        out[key] = value
    return out


def build_env(root: Path) -> Env:
    """Train the session's runs (about a second on one thread) and write the standalone files.

    Runs: ``run`` (:data:`TINY`: p = 17, epochs 0–20, a checkpoint every 5), ``other`` (the same
    with seed 1), ``analyzed`` / ``other_analyzed`` (their ``measures.csv`` and ``phases.json``
    written by ``analyze``), ``grokked`` (a copy of ``tests/data/run_p23``, which groks), and
    one tiny run of each task ``sub``, ``mul``, ``div``, ``x2+y2`` and of p = 3.
    Files: ``sd.pt`` (a state dict, ``torch.save``), ``sd_legacy.pt`` (the same, legacy
    format), ``demo.pth`` (the TransformerLens demo layout), ``authors.pth`` (the authors'
    layout), ``ckpt.safetensors`` (one of our checkpoints, outside its run).
    """
    import torch

    from tl_grokking.analysis.progress import analyze_run
    from tl_grokking.runs.rundir import checkpoint_path, load_safetensors
    from tl_grokking.training.config import TrainConfig
    from tl_grokking.training.trainer import train_model

    env = Env(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:

        def train(name: str, **changes: Any) -> None:
            env.runs[name] = root / "runs" / name
            train_model(TrainConfig(**{**TINY, **changes}), env.runs[name], progress=False)

        train("run")
        train("other", seed=1)
        for task in ("sub", "mul", "div", "x2+y2"):
            train(task, task=task, p=11, epochs=10)
        train("p3", p=3, frac_train=0.7, epochs=10)
        for name in ("run", "other"):
            env.runs[f"{name}_analyzed"] = Path(
                shutil.copytree(env.runs[name], root / "runs" / f"{name}_analyzed")
            )
            analyze_run(env.runs[f"{name}_analyzed"], progress=False)
        env.runs["grokked"] = Path(shutil.copytree(SHIPPED_RUN, root / "runs" / "grokked"))
    finally:
        torch.set_num_threads(threads)

    files = root / "files"
    files.mkdir()
    final = load_safetensors(checkpoint_path(env.runs["run"], TINY["epochs"]))
    first = load_safetensors(checkpoint_path(env.runs["run"], 0))
    env.files["ckpt.safetensors"] = Path(
        shutil.copy(checkpoint_path(env.runs["run"], TINY["epochs"]), files / "ckpt.safetensors")
    )
    torch.save(final, files / "sd.pt")
    torch.save(final, files / "sd_legacy.pt", _use_new_zipfile_serialization=False)
    config = {"p": 17, "d_vocab": 18, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32,
              "n_layers": 1, "n_ctx": 3, "act_fn": "relu", "normalization_type": None}  # fmt: skip
    demo = {
        "model": final,
        "config": config,
        "checkpoints": [first, final],
        "checkpoint_epochs": [0, 20],
        "train_losses": [3.0 - 0.1 * i for i in range(21)],
        "test_losses": [3.0 - 0.05 * i for i in range(21)],
        "train_indices": torch.arange(0, 289, 2),
        "test_indices": torch.arange(1, 289, 2),
    }
    torch.save(demo, files / "demo.pth")
    torch.save({"model": _authors_layout(final), "epoch": 20}, files / "authors.pth")
    for name in ("sd.pt", "sd_legacy.pt", "demo.pth", "authors.pth"):
        env.files[name] = files / name
    return env


class Ctx:
    """A case's directory (``tmp``, the working directory while the command runs) and the
    session's :class:`Env`; ``marker`` is where a pickle payload would write."""

    def __init__(self, env: Env, tmp: Path):
        self.env = env
        self.tmp = tmp
        self.marker = tmp / "MARKER"

    def run(self, name: str = "run", dest: str = "run") -> Path:
        """A fresh copy of the session's run ``name`` at ``tmp/dest``."""
        return Path(shutil.copytree(self.env.runs[name], self.tmp / dest))

    def file(self, name: str, dest: str | None = None) -> Path:
        """A fresh copy of the session's file ``name`` at ``tmp/dest``."""
        return Path(shutil.copy(self.env.files[name], self.tmp / (dest or name)))


Check = Callable[[Ctx, "Result"], "str | None"]


@dataclass(frozen=True)
class Case:
    """One hostile input and the outcome it must have.

    ``build(ctx)`` creates the input under ``ctx.tmp`` and returns the argv. ``exit``: the
    exit status expected. ``expect``: substrings of the one-line error message (exit status
    2 or 130), or of the output (exit status 0), e.g. the file, field or flag that was wrong.
    ``patch(ctx)``: a context manager injecting a fault while the command runs. ``checks``:
    functions ``(ctx, result) -> problem or None`` run afterwards (a problem is silent
    corruption). ``may_change``: a failing command may change files that were there (a partial
    result is the documented outcome). ``one_line=False``: a failure printed otherwise (the
    help). ``known``: a library issue that needs a change outside this task's files (the
    test expects the case to fail until it is made; docs/bad_input.md).
    """

    id: str
    family: str
    build: Callable[[Ctx], list[str]]
    exit: int = 2
    expect: tuple[str, ...] = ()
    patch: Callable[[Ctx], contextlib.AbstractContextManager[Any]] | None = None
    checks: tuple[Check, ...] = ()
    may_change: bool = False
    one_line: bool = True
    known: str = ""


@dataclass
class Result:
    argv: list[str]
    exit: int | None
    out: str
    err: str
    exception: BaseException | None = None


@dataclass
class Outcome:
    case: Case
    outcome: str
    detail: str
    result: Result


def _snapshot(root: Path) -> dict[str, str]:
    """``relative path -> digest`` of every regular file under ``root`` (special files and
    links by what they are; nothing is opened that is not a regular file)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                with open(path, "rb") as fh:
                    found[rel] = hashlib.sha256(fh.read()).hexdigest()
            elif stat.S_ISLNK(mode):
                found[rel] = "link to " + os.readlink(path)
            elif not stat.S_ISDIR(mode):
                found[rel] = "special"
    return found


def _invoke(argv: list[str], patch: contextlib.AbstractContextManager[Any]) -> Result:
    from tl_grokking.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    exception: BaseException | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            with patch:
                code = main(argv)
        except SystemExit as stop:  # argparse
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception as bug:  # noqa: BLE001 - a traceback is an outcome
            exception = bug
            traceback.print_exc(file=err)
    return Result(argv, code, out.getvalue(), err.getvalue(), exception)


def run_case(case: Case, env: Env, tmp: Path) -> Outcome:
    """Build ``case`` in ``tmp`` (created), run it in-process there, and classify it."""
    import torch

    tmp.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(env, tmp)
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(tmp)
    try:
        argv = case.build(ctx)
        before = _snapshot(tmp)
        patch = case.patch(ctx) if case.patch is not None else contextlib.nullcontext()
        result = _invoke(argv, patch)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    outcome, detail = classify(case, ctx, result, before, _snapshot(tmp))
    return Outcome(case, outcome, detail, result)


def _message(result: Result) -> str | None:
    """The one line ``tl-grokking CMD: error: ...`` (or ``: interrupted``), if it is the only
    such line and the last line printed."""
    lines = [line for line in result.err.splitlines() if line.strip()]
    said = [
        line
        for line in lines
        if line.startswith("tl-grokking") and (": error: " in line or line.endswith("interrupted"))
    ]
    if len(said) == 1 and lines and lines[-1] == said[0]:
        return said[0]
    return None


def classify(
    case: Case, ctx: Ctx, result: Result, before: dict[str, str], after: dict[str, str]
) -> tuple[str, str]:
    """``(outcome, detail)`` of a case that ran (see the module's docstring)."""
    ran = sorted(p.name for p in ctx.tmp.rglob("MARKER*"))
    if ran:
        return EXECUTION, f"the payload ran: {ran} appeared"
    if result.exception is not None or "Traceback (most recent call last)" in result.err:
        last = result.err.strip().splitlines()[-1] if result.err.strip() else ""
        return TRACEBACK, last
    message = _message(result)
    shown = message or (result.err.strip().splitlines() or [""])[-1]
    if case.exit != 0 and result.exit == 0:
        return CORRUPTION, f"accepted (exit status 0): {result.out.strip()[-200:]!r}"
    problems = [problem for check in case.checks if (problem := check(ctx, result))]
    left = sorted(k for k in after if k not in before and k.endswith(".tmp"))
    if left:
        problems.append(f"temporary files left behind: {left}")
    if result.exit != 0 and not case.may_change:
        changed = sorted(
            k for k, digest in before.items() if after.get(k) != digest and not k.endswith(".lock")
        )
        if changed:
            problems.append(f"the failed command changed or removed {changed}")
    if problems:
        return CORRUPTION, "; ".join(problems)
    if result.exit != case.exit:
        return UNCLEAR, f"exit status {result.exit}, expected {case.exit}: {shown}"
    if case.exit == 0:
        text = result.out + result.err
    elif not case.one_line:
        text = result.out + result.err
    elif message is None:
        return UNCLEAR, f"no one-line message: {result.err.strip()[-300:]!r}"
    else:
        text = message
    missing = [s for s in case.expect if s not in text]
    if missing:
        return UNCLEAR, f"does not say {missing}: {shown}"
    return HANDLED, shown if case.exit != 0 else (result.out.strip().splitlines() or [""])[-1]


def run_all(cases: Sequence[Case], env: Env, root: Path) -> Iterator[Outcome]:
    """Run every case in a directory of its own under ``root``."""
    for i, case in enumerate(cases):
        tmp = root / f"case{i:04d}"
        try:
            yield run_case(case, env, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def tables(outcomes: Sequence[Outcome]) -> str:
    """The counts as markdown: ``| outcome | cases |``, then one row per family."""
    by_outcome = Counter(o.outcome for o in outcomes)
    lines = ["| outcome | cases |", "| --- | ---: |"]
    lines += [f"| {name} | {by_outcome[name]} |" for name in OUTCOMES]
    lines += [f"| **all** | **{len(outcomes)}** |", ""]
    lines += [
        "| family | cases | " + " | ".join(OUTCOMES) + " |",
        "| --- | ---: |" + " ---: |" * len(OUTCOMES),
    ]
    for family in FAMILIES:
        mine = [o for o in outcomes if o.case.family == family]
        counts = Counter(o.outcome for o in mine)
        row = " | ".join(str(counts[name]) for name in OUTCOMES)
        lines.append(f"| {family} | {len(mine)} | {row} |")
    return "\n".join(lines)
