"""The hostile cases: :data:`CASES`, in five families (:data:`hostile.harness.FAMILIES`).

Every case names what it breaks in its id (``family/command/what``) and declares its expected
outcome: the exit status and the substrings the one-line message must hold (the file, field or
flag that was wrong, and what it is). Paths in argv are relative to the case's directory (the
working directory while it runs); ``run`` is a fresh copy of the session's run (p = 17,
checkpoints at epochs 0, 5, 10, 15, 20, ``resume.safetensors`` at 20).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from hostile.harness import Case, Check, Ctx, Result

CASES: list[Case] = []
LINUX = Path("/proc/self/fd").is_dir()

Mutation = Callable[[Ctx, Path], None]
Build = Callable[[Ctx], list[str]]


def add(family: str, id: str, build: Build, exit: int = 2, *expect: str, **kw: Any) -> None:
    CASES.append(Case(f"{family}/{id}", family, build, exit, tuple(expect), **kw))


# ---- commands

#: The flags of a tiny training run (so that a bad value accepted by mistake costs little).
TINY_FLAGS = (
    "--p 17 --d-model 16 --n-heads 2 --d-mlp 32 --epochs 4 --log-every 2 --checkpoint-every 2 "
    "--threads 1 --no-progress"
).split()


def analyze(target: str = "run", *flags: str) -> list[str]:
    return ["analyze", target, "--no-progress", "--threads", "1", *flags]


def report(target: str = "run", *flags: str) -> list[str]:
    return ["report", target, "--no-progress", "--threads", "1", *flags]


def ablate(target: str = "run", *flags: str) -> list[str]:
    return ["ablate", target, "--threads", "1", *flags]


def resume(target: str = "run", *flags: str) -> list[str]:
    return ["train", "--out", target, "--resume", "--epochs", "25", "--no-progress", *flags]


def train(target: str = "new", *flags: str) -> list[str]:
    return ["train", "--out", target, *TINY_FLAGS, *flags]


def reproduce(*flags: str) -> list[str]:
    return ["reproduce", "--quick", "--epochs", "1", "--no-progress", "--out", "repro", *flags]


COMMANDS: dict[str, Callable[..., list[str]]] = {
    "analyze": analyze,
    "report": report,
    "ablate": ablate,
    "resume": resume,
}


def on_run(argv: list[str], *mutations: Mutation, run: str = "run", dest: str = "run") -> Build:
    """Build: copy the session's run ``run`` to ``dest``, apply ``mutations``, return argv."""

    def build(ctx: Ctx) -> list[str]:
        path = ctx.run(run, dest)
        for mutate in mutations:
            mutate(ctx, path)
        return argv

    return build


def on_file(argv: list[str], name: str, *mutations: Mutation, dest: str | None = None) -> Build:
    """Build: copy the session's file ``name``, apply ``mutations`` to it, return argv."""

    def build(ctx: Ctx) -> list[str]:
        path = ctx.file(name, dest)
        for mutate in mutations:
            mutate(ctx, path)
        return argv

    return build


def plain(argv: list[str]) -> Build:
    return lambda ctx: argv


# ---- mutations of a run (``fn(ctx, run_dir)``)

LAST = "checkpoints/epoch_20.safetensors"
MIDDLE = "checkpoints/epoch_10.safetensors"


def write(rel: str, data: bytes | str) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        path = run / rel if rel else run
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return mutate


def truncate(rel: str, keep: float = 0.5) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        data = (run / rel).read_bytes()
        (run / rel).write_bytes(data[: int(len(data) * keep)])

    return mutate


def noise(rel: str, size: int = 300, seed: int = 0) -> Mutation:
    return write(rel, bytes((seed * 7919 + i * 104729) % 251 for i in range(size)))


def remove(*rels: str) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        for rel in rels:
            path = run / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    return mutate


def edit_json(rel: str, fn: Callable[[Any], Any]) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        path = run / rel
        path.write_text(json.dumps(fn(json.loads(path.read_text())), allow_nan=True))

    return mutate


def config(**changes: Any) -> Mutation:
    return edit_json("config.json", lambda c: {**c, **changes})


def config_without(key: str) -> Mutation:
    return edit_json("config.json", lambda c: {k: v for k, v in c.items() if k != key})


def raw_config(text: str) -> Mutation:
    """Replace a field's value in config.json by raw JSON text (``1e999``, ``NaN``)."""

    def mutate(ctx: Ctx, run: Path) -> None:
        path = run / "config.json"
        data = json.loads(path.read_text())
        key, value = text.split("=", 1)
        data[key] = "@@"
        path.write_text(json.dumps(data).replace('"@@"', value))

    return mutate


def tensors(rel: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Mutation:
    """Rewrite a safetensors file's tensors (its metadata kept)."""

    def mutate(ctx: Ctx, run: Path) -> None:
        from safetensors import safe_open

        from tl_grokking.runs.rundir import load_safetensors, save_safetensors

        path = run / rel
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        save_safetensors(fn(load_safetensors(path)), path, metadata=meta or None)

    return mutate


def metadata(rel: str, **changes: str) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        from safetensors import safe_open

        from tl_grokking.runs.rundir import load_safetensors, save_safetensors

        path = run / rel
        with safe_open(str(path), framework="pt") as fh:
            meta = {**(fh.metadata() or {}), **changes}
        save_safetensors(load_safetensors(path), path, metadata=meta)

    return mutate


def set_tensor(key: str, value: Callable[[Any], Any]) -> Callable[[dict[str, Any]], dict]:
    return lambda t: {**t, key: value(t[key])}


def nan_at(t: Any) -> Any:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def inf_at(t: Any) -> Any:
    t = t.clone()
    t.view(-1)[-1] = float("inf")
    return t


def fifo(rel: str) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        path = run / rel if rel else run
        _clear(path)
        os.mkfifo(path)

    return mutate


def loop(rel: str) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        path = run / rel if rel else run
        _clear(path)
        os.symlink(path.name, path)

    return mutate


def directory(rel: str) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        path = run / rel
        _clear(path)
        path.mkdir()
        (path / "inside.txt").write_text("a directory, not a file")

    return mutate


def link(rel: str, target: str) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        path = run / rel if rel else run
        _clear(path)
        os.symlink(target, path)

    return mutate


def plain_file(rel: str) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        path = run / rel if rel else run
        _clear(path)
        path.write_text("a file, not a directory")

    return mutate


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def copy_from(run_name: str, *rels: str) -> Mutation:
    """Copy files of another session run into this one (another run's derived files)."""

    def mutate(ctx: Ctx, run: Path) -> None:
        for rel in rels:
            shutil.copy(ctx.env.runs[run_name] / rel, run / rel)

    return mutate


def keep_checkpoints(*epochs: int) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        for path in (run / "checkpoints").iterdir():
            if path.name not in {f"epoch_{e}.safetensors" for e in epochs}:
                path.unlink()

    return mutate


def metrics_lines(*lines: str) -> Mutation:
    return write("metrics.jsonl", "".join(line + "\n" for line in lines))


def resumed_to(epochs: int) -> Mutation:
    """Train the run on to ``epochs`` (the derived files of before are then stale)."""

    def mutate(ctx: Ctx, run: Path) -> None:
        from tl_grokking.training.config import resume_config
        from tl_grokking.training.trainer import train_model

        train_model(resume_config(run, epochs=epochs), run, resume=True, progress=False)

    return mutate


# ---- checks (``fn(ctx, result) -> problem or None``)


def resumable(epochs: int = 25, run: str = "run") -> Check:
    """The run left behind is consistent: every checkpoint and the metrics read, and a plain
    ``--resume`` then finishes it."""

    def check(ctx: Ctx, result: Result) -> str | None:
        from hostile.harness import _invoke
        from tl_grokking.runs.checkpoints import load_run
        from tl_grokking.runs.rundir import list_checkpoints

        cwd = os.getcwd()
        os.chdir(ctx.tmp)
        try:
            again = _invoke(resume(run, "--epochs", str(epochs)), contextlib.nullcontext())
            if again.exit != 0:
                return f"the run left behind does not resume: {again.err.strip()[-300:]}"
            loaded = load_run(run)
            for epoch in loaded.epochs:
                loaded.state_dict(epoch)
            if list_checkpoints(run)[-1][0] != epochs:
                return f"the resumed run does not reach epoch {epochs}"
        except Exception as err:  # noqa: BLE001
            return f"the run left behind is inconsistent: {type(err).__name__}: {err}"
        finally:
            os.chdir(cwd)
        return None

    return check


def no_file(rel: str) -> Check:
    def check(ctx: Ctx, result: Result) -> str | None:
        return f"{rel} was written" if os.path.lexists(ctx.tmp / rel) else None

    return check


def page_says(text: str, page: str = "run/report.html") -> Check:
    def check(ctx: Ctx, result: Result) -> str | None:
        if text not in (ctx.tmp / page).read_text(encoding="utf-8"):
            return f"{page} does not say {text!r}"
        return None

    return check


def no_tmp_files(rel: str = "run") -> Check:
    def check(ctx: Ctx, result: Result) -> str | None:
        left = sorted(p.name for p in (ctx.tmp / rel).rglob("*.tmp"))
        return f"temporary files not removed: {left}" if left else None

    return check


def escaped(payload: str, page: str = "run/report.html", shown: bool = True) -> Check:
    """The report holds ``payload`` only escaped (and, when ``shown``, holds it escaped)."""

    def check(ctx: Ctx, result: Result) -> str | None:
        import html

        import markupsafe

        text = (ctx.tmp / page).read_text(encoding="utf-8")
        if payload in text:
            return f"{page} holds the payload {payload!r} unescaped"
        forms = {str(markupsafe.escape(payload)), html.escape(payload), html.escape(payload, False)}
        forms |= {json.dumps(payload)[1:-1].replace("<", "\\u003c")}
        if shown and not any(form in text for form in forms):
            return f"{page} does not show the payload {payload!r} (escaped)"
        return None

    return check


# ---- faults injected while a command runs


def failing(target: str, error: BaseException, after: int = 0, only: str | None = None):
    """A patch: the callable at ``target`` raises ``error`` from its ``after + 1``-th call on
    (``only``: only on calls whose arguments mention that string)."""

    def make(ctx: Ctx) -> contextlib.AbstractContextManager[Any]:
        module, name = target.rsplit(".", 1)
        import importlib

        owner = importlib.import_module(module)
        original = getattr(owner, name)
        calls = {"n": 0}

        def side_effect(*args: Any, **kwargs: Any) -> Any:
            if only is not None and not any(only in _describe_arg(a) for a in args):
                return original(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] > after:
                raise error
            return original(*args, **kwargs)

        return mock.patch.object(owner, name, side_effect=side_effect)

    return make


def _describe_arg(arg: Any) -> str:
    if isinstance(arg, int) and not isinstance(arg, bool):  # a file descriptor: its path
        try:
            return os.readlink(f"/proc/self/fd/{arg}")
        except OSError:
            return ""
    return str(arg) if isinstance(arg, str | os.PathLike) else ""


def holding_lock(rel: str = "run"):
    def make(ctx: Ctx) -> contextlib.AbstractContextManager[Any]:
        from tl_grokking.runs.rundir import run_lock

        return run_lock(ctx.tmp / rel)

    return make


def inflate_floor(size: int):
    def make(ctx: Ctx) -> contextlib.AbstractContextManager[Any]:
        from tl_grokking.runs import checkpoints

        return mock.patch.object(checkpoints, "INFLATE_FLOOR", size)

    return make


ENOSPC = OSError(errno.ENOSPC, "No space left on device")
EROFS = OSError(errno.EROFS, "Read-only file system")
EIO = OSError(errno.EIO, "Input/output error")


# ---- pickles that would run code


class Call:
    """Pickles to ``func(*args)``: what a hostile file asks an unpickler to run."""

    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)

    def __call__(self, *args: Any) -> None:  # pickle wants a callable in __reduce__
        raise AssertionError("never called")


def payloads(marker: Path) -> dict[str, Any]:
    """Objects whose unpickling creates ``marker`` (or ``marker.npy``), by what they call."""
    import numpy as np
    import torch

    m = str(marker)
    write_it = f"open({m!r}, 'w').write('pwned')"
    return {
        "exec": Call(exec, write_it),
        "eval": Call(eval, write_it),
        "os.system": Call(os.system, f"touch '{m}'"),
        "subprocess.call": Call(subprocess.call, ["touch", m]),
        "open": Call(open, m, "w"),
        "shutil.copyfile": Call(shutil.copyfile, os.devnull, m),
        "torch.save": Call(torch.save, {}, m),
        "numpy.save": Call(np.save, m, np.zeros(1)),
        "Path.write_text": Call(Path.write_text, Path(m), "pwned"),
        "getattr chain": Call(Call(getattr, Call(__import__, "os"), "system"), f"touch '{m}'"),
    }


def save_payload(path: Path, payload: Any, legacy: bool = False, key: str = "payload") -> None:
    """A state dict file with ``payload`` next to its tensors."""
    import torch

    state = {"embed.W_E": torch.zeros(18, 16), key: payload}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)


def evil_file(kind: str, legacy: bool) -> Build:
    def build(ctx: Ctx) -> list[str]:
        save_payload(ctx.tmp / "evil.pth", payloads(ctx.marker)[kind], legacy)
        return ablate("evil.pth")

    return build


def evil_in_run(rel: str, argv: list[str]) -> Build:
    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        save_payload(run / rel, payloads(ctx.marker)["exec"])
        return argv

    return build


def evil_pickle(make: Callable[[Ctx], bytes], argv: list[str] | None = None) -> Build:
    def build(ctx: Ctx) -> list[str]:
        (ctx.tmp / "evil.pth").write_bytes(make(ctx))
        return argv or ablate("evil.pth")

    return build


def _zip_with(ctx: Ctx, member: str, data: bytes) -> bytes:
    """``sd.pt`` with the entry ending in ``member`` replaced by ``data``."""
    out = io.BytesIO()
    with zipfile.ZipFile(ctx.env.files["sd.pt"]) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = data if info.filename.endswith(member) else src.read(info.filename)
            dst.writestr(info, body)
    return out.getvalue()


def _legacy_with_magic(ctx: Ctx) -> bytes:
    """A legacy torch file whose first pickle (the magic number) is a payload."""
    blob = ctx.env.files["sd_legacy.pt"].read_bytes()
    first = pickle.dumps(payloads(ctx.marker)["exec"], protocol=2)
    return first + blob[len(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)) :]


def repacked(deflate_all: bool = True, pad: int = 0, declare: int | None = None) -> Build:
    """``sd.pt`` (with a ``pad``-float zero tensor) re-packed with deflated entries;
    ``declare``: the central directory then claims this many uncompressed bytes for the data
    entries (a forged size)."""

    def build(ctx: Ctx) -> list[str]:
        import torch

        from tl_grokking.runs.rundir import load_safetensors

        state = load_safetensors(ctx.env.files["ckpt.safetensors"])
        if pad:
            state["pad"] = torch.zeros(pad)
        plain_path = ctx.tmp / "plain.pt"
        torch.save(state, plain_path)
        path = ctx.tmp / "bomb.pt"
        with zipfile.ZipFile(plain_path) as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                kind = zipfile.ZIP_DEFLATED if deflate_all or "/data/" in info.filename else 0
                dst.writestr(info.filename, src.read(info.filename), compress_type=kind)
        plain_path.unlink()
        if declare is not None:
            _forge_sizes(path, declare)
        return ablate("bomb.pt")

    return build


def _forge_sizes(path: Path, size: int) -> None:
    """Set the declared uncompressed size of every ``/data/`` entry in the central directory."""
    data = bytearray(path.read_bytes())
    pos = data.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        name = bytes(data[pos + 46 : pos + 46 + name_len])
        if b"/data/" in name:
            struct.pack_into("<I", data, pos + 24, size)
        pos = data.find(b"PK\x01\x02", pos + 46)
    path.write_bytes(bytes(data))


# =================================================================================================
# (a) arguments
# =================================================================================================

INT_FIELDS = [
    "p",
    "seed",
    "epochs",
    "warmup_steps",
    "d_model",
    "n_heads",
    "d_head",
    "d_mlp",
    "d_vocab_out",
    "log_every",
    "checkpoint_every",
    "early_stop_patience",
    "measure_every",
    "threads",
]
#: Values each field refuses after parsing (the validators), by field.
INT_BAD = {
    "p": ["2", "-5"],
    "seed": ["-1"],
    "epochs": ["0", "-3"],
    "warmup_steps": ["-1"],
    "d_model": ["0", "-16"],
    "n_heads": ["0", "3"],
    "d_head": ["0", "-1"],
    "d_mlp": ["0"],
    "d_vocab_out": ["5", "0"],
    "log_every": ["0"],
    "checkpoint_every": ["0", "-2"],
    "early_stop_patience": ["0"],
    "measure_every": ["0"],
    "threads": ["0", "-4"],
}
FLOAT_BAD = {
    "frac_train": ["0", "1", "1.5", "-0.1", "nan", "inf"],
    "lr": ["0", "-1e-3", "nan", "inf"],
    "weight_decay": ["-1", "nan", "inf"],
    "beta1": ["1", "-0.5", "nan"],
    "beta2": ["1.5", "nan"],
    "attn_rate": ["-1", "nan", "2"],
    "early_stop_acc": ["0", "1.5", "nan"],
}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


for name in INT_FIELDS:
    add(
        "arguments",
        f"train/{flag(name)}=seven",
        plain(train("new", flag(name), "seven")),
        2,
        f"argument {flag(name)}",
        "invalid int value",
    )
    add(
        "arguments",
        f"train/{flag(name)}=1.5",
        plain(train("new", flag(name), "1.5")),
        2,
        f"argument {flag(name)}",
        "'1.5'",
    )
    for value in INT_BAD[name]:
        add(
            "arguments",
            f"train/{flag(name)}={value}",
            plain(train("new", flag(name), value)),
            2,
            name,
            value,
            checks=(no_file("new/config.json"),),
        )
for name, values in FLOAT_BAD.items():
    add(
        "arguments",
        f"train/{flag(name)}=abc",
        plain(train("new", flag(name), "abc")),
        2,
        f"argument {flag(name)}",
        "invalid float value",
    )
    for value in values:
        add(
            "arguments",
            f"train/{flag(name)}={value}",
            plain(train("new", flag(name), value)),
            2,
            name,
            checks=(no_file("new/config.json"),),
        )
for flags, expect in [
    (("--task", "nope"), ("task", "nope")),
    (("--act-fn", "tanh"), ("--act-fn", "invalid choice")),
    (("--trainable-biases", "some"), ("--trainable-biases", "invalid choice")),
    (("--device", "tpu"), ("device", "tpu")),
    (("--device", "cuda:x"), ("device", "cuda:x")),
    (("--device", ""), ("device",)),
    (("--d-model", "30", "--n-heads", "4"), ("d_model", "n_heads")),
    (("--p", "100003"), ("p = 100003", "memory")),
    (("--d-mlp", "1000000000"), ("d_mlp", "memory")),
    (("--p", str(10**30)), ("p",)),
    (("--frac-train", "0.001"), ("frac_train",)),
    (("--bogus",), ("unrecognized arguments: --bogus",)),
    (("--epochs",), ("--epochs", "expected one argument")),
    (("--resume", "--overwrite"), ("--resume", "--overwrite")),
    (("extra",), ("unrecognized arguments: extra",)),
    (("--resume",), ("--resume", "holds no run")),
]:
    add("arguments", f"train/{' '.join(flags)}", plain(train("new", *flags)), 2, *expect)
for id, argv, expect in [
    ("no --out", ["train", *TINY_FLAGS], ("--out",)),
    ("--out ''", ["train", "--out", "", *TINY_FLAGS], ("--out", "empty")),
    ("--out '   '", ["train", "--out", "   ", *TINY_FLAGS], ("--out", "empty")),
]:
    add("arguments", f"train/{id}", plain(argv), 2, *expect)

for command, target in [("analyze", "run"), ("ablate", "run"), ("report", "run")]:
    make = COMMANDS[command]
    bad = [
        (("--threads", "0"), ("--threads", "0")),
        (("--threads", "-2"), ("--threads", "-2")),
        (("--threads", "x"), ("--threads", "invalid int value")),
        (("--device", "tpu"), ("device", "tpu")),
        (("--device", "cuda:-1"), ("device", "cuda:-1")),
        (("--bogus",), ("unrecognized arguments: --bogus",)),
        (("extra",), ("unrecognized arguments: extra",)),
    ]
    if command != "report":
        bad += [
            (("--key-freqs", ""), ("--key-freqs", "at least one integer")),
            (("--key-freqs", "x"), ("--key-freqs", "takes integers")),
            (("--key-freqs", "1.5"), ("--key-freqs", "takes integers")),
            (("--key-freqs", ","), ("--key-freqs", "at least one integer")),
            (("--key-freqs", "0"), ("key", "0")),
            (("--key-freqs", "99"), ("key", "99")),
            (("--key-freqs", "-3"), ("key", "-3")),
        ]
    if command == "ablate":
        bad += [
            (("--epoch", "x"), ("--epoch", "invalid int value")),
            (("--epoch", "7"), ("epoch", "7", "[0, 5, 10, 15, 20]")),
            (("--epoch", "-1"), ("epoch", "-1")),
            (("--threshold", "x"), ("--threshold", "invalid float value")),
            (("--threshold", "2"), ("threshold", "2")),
            (("--threshold", "-1"), ("threshold", "-1")),
            (("--threshold", "nan"), ("threshold", "nan")),
            (("--neuron-ablation", "half"), ("--neuron-ablation", "invalid choice")),
            (("--frac-train", "0"), ("frac_train", "0")),
            (("--frac-train", "1"), ("frac_train", "1")),
            (("--frac-train", "nan"), ("frac_train", "nan")),
            (("--frac-train", "x"), ("--frac-train", "invalid float value")),
            (("--seed", "-1"), ("seed", "-1")),
            (("--seed", "1.5"), ("--seed", "invalid int value")),
        ]
    if command == "report":
        bad += [
            (("--out", ""), ("--out", "empty")),
            (("--out", "run"), ("--out", "is a directory")),
            (("--out", "run/config.json/r.html"), ("--out", "config.json is a file")),
        ]
    for flags, expect in bad:
        add(
            "arguments",
            f"{command}/{' '.join(flags) or 'empty'}",
            on_run(make(target, *flags)),
            2,
            *expect,
        )
    add("arguments", f"{command}/no RUN_DIR", plain([command]), 2, "required")

for flags, expect in [
    (("--epochs", "0"), ("epochs", "0")),
    (("--epochs", "-1"), ("epochs", "-1")),
    (("--epochs", "x"), ("--epochs", "invalid int value")),
    (("--seed", "-1"), ("seed", "-1")),
    (("--seed", "x"), ("--seed", "invalid int value")),
    (("--device", "tpu"), ("device", "tpu")),
    (("--threads", "0"), ("threads", "0")),
    (("--out", ""), ("--out", "empty")),
    (("--p", "17"), ("unrecognized arguments: --p",)),
    (("--bogus",), ("unrecognized arguments: --bogus",)),
]:
    add("arguments", f"reproduce/{' '.join(flags)}", plain(reproduce(*flags)), 2, *expect)
add(
    "arguments",
    "reproduce/--out is a file",
    lambda ctx: (ctx.tmp / "f").write_text("x") and reproduce("--out", "f"),
    2,
    "--out",
    "is a file",
)
add("arguments", "tl-grokking/no command", plain([]), 2, "usage", one_line=False)
add("arguments", "tl-grokking/nope", plain(["nope"]), 2, "invalid choice: 'nope'")
add("arguments", "tl-grokking/--bogus", plain(["--bogus"]), 2, "unrecognized arguments")
add("arguments", "tl-grokking/--version", plain(["--version"]), 0, "tl-grokking")


# =================================================================================================
# (b) corrupt files
# =================================================================================================

NOT_UTF8 = b'{"p": 17, "task": "add\xff\xfe"}\n'

# config.json: every command that reads it
CONFIG_BAD: list[tuple[str, Mutation, tuple[str, ...]]] = [
    ("truncated", truncate("config.json"), ("config.json", "not valid JSON")),
    ("zero bytes", write("config.json", b""), ("config.json", "not valid JSON")),
    ("random bytes", noise("config.json"), ("config.json",)),
    ("not UTF-8", write("config.json", NOT_UTF8), ("config.json", "UTF-8")),
    ("a list", write("config.json", "[1, 2]"), ("config.json", "JSON object")),
    ("null", write("config.json", "null"), ("config.json", "JSON object")),
    ("p a string", config(p="17"), ("config.json", "p")),
    ("p 17.5", config(p=17.5), ("config.json", "p", "17.5")),
    ("p true", config(p=True), ("config.json", "p")),
    ("p 1e999", raw_config("p=1e999"), ("config.json", "p")),
    ("p 10**40", raw_config("p=" + str(10**40)), ("config.json", "p")),
    ("p NaN", raw_config("p=NaN"), ("config.json", "p")),
    ("p 19 (tensors say 17)", config(p=19), ("config.json", "p", "19")),
    ("seed null", config(seed=None), ("config.json", "seed")),
    ("seed -1", config(seed=-1), ("config.json", "seed")),
    ("frac_train 2", config(frac_train=2), ("config.json", "frac_train")),
    ("frac_train NaN", raw_config("frac_train=NaN"), ("config.json", "frac_train")),
    ("task unknown", config(task="nope"), ("config.json", "task")),
    ("task a list", config(task=["add"]), ("config.json", "task")),
    ("d_mlp a word", config(d_mlp="many"), ("config.json", "d_mlp")),
    ("d_mlp 64 (tensors say 32)", config(d_mlp=64), ("d_mlp",)),
    ("n_heads 0", config(n_heads=0), ("config.json", "n_heads")),
    ("act_fn unknown", config(act_fn="<script>"), ("config.json", "act_fn")),
    ("attn_rate -1", config(attn_rate=-1), ("config.json", "attn_rate")),
]
for what, mutate, expect in CONFIG_BAD:
    add("corrupt files", f"analyze/config.json {what}", on_run(analyze(), mutate), 2, *expect)
for what, mutate, expect in CONFIG_BAD[:8] + CONFIG_BAD[13:18]:
    add("corrupt files", f"resume/config.json {what}", on_run(resume(), mutate), 2, *expect)
for what, mutate, expect in CONFIG_BAD[:5] + CONFIG_BAD[7:8] + CONFIG_BAD[17:18]:
    add("corrupt files", f"report/config.json {what}", on_run(report(), mutate), 2, *expect)
    add("corrupt files", f"ablate/config.json {what}", on_run(ablate(), mutate), 2, *expect)

# metrics.jsonl
METRICS_BAD: list[tuple[str, Mutation, tuple[str, ...]]] = [
    (
        "corrupt middle line",
        metrics_lines('{"epoch": 0}', '{"epoch": 5, "te', '{"epoch": 10}'),
        ("metrics.jsonl", "line 2"),
    ),
    ("random bytes", noise("metrics.jsonl"), ("metrics.jsonl",)),
    (
        "not UTF-8",
        write("metrics.jsonl", b'{"epoch": 0}\n\xff\xfe\n{"epoch": 5}\n'),
        ("metrics.jsonl", "UTF-8"),
    ),
    (
        "epoch a string",
        metrics_lines('{"epoch": "5"}', '{"epoch": 10}'),
        ("metrics.jsonl", "line 1", "epoch"),
    ),
    ("epoch -5", metrics_lines('{"epoch": -5}', '{"epoch": 10}'), ("metrics.jsonl", "epoch")),
    ("epoch 2.5", metrics_lines('{"epoch": 2.5}', '{"epoch": 10}'), ("metrics.jsonl", "epoch")),
    ("no epoch", metrics_lines('{"test_acc": 0.5}', '{"epoch": 10}'), ("metrics.jsonl", "epoch")),
    (
        "a value a string",
        metrics_lines('{"epoch": 0, "test_acc": "high"}', '{"epoch": 5}'),
        ("metrics.jsonl", "test_acc"),
    ),
    (
        "a value true",
        metrics_lines('{"epoch": 0, "train_loss": true}', '{"epoch": 5}'),
        ("metrics.jsonl", "train_loss"),
    ),
    ("a line a list", metrics_lines("[1, 2]", '{"epoch": 5}'), ("metrics.jsonl", "line 1")),
    (
        "a value a dict",
        metrics_lines('{"epoch": 0, "test_loss": {"a": 1}}', '{"epoch": 5}'),
        ("metrics.jsonl", "test_loss"),
    ),
]
METRICS_OK: list[tuple[str, Mutation]] = [
    ("truncated last line", truncate("metrics.jsonl", 0.97)),
    ("zero bytes", write("metrics.jsonl", b"")),
    ("blank lines", metrics_lines("", '{"epoch": 0, "test_acc": 0.1}', "", "")),
    ("huge numbers", metrics_lines('{"epoch": 0, "test_loss": 1e308, "train_loss": 1e999}')),
    ("NaN values", metrics_lines('{"epoch": 0, "test_loss": NaN, "test_acc": NaN}')),
    ("null values", metrics_lines('{"epoch": 0, "test_loss": null}')),
    ("huge epoch", metrics_lines('{"epoch": 0}', '{"epoch": 100000000000000000000}')),
    ("epochs out of order", metrics_lines('{"epoch": 10}', '{"epoch": 0}', '{"epoch": 5}')),
    ("unknown keys", metrics_lines('{"epoch": 0, "mystery": 3.5}')),
]
for what, mutate, expect in METRICS_BAD:
    add("corrupt files", f"analyze/metrics.jsonl {what}", on_run(analyze(), mutate), 2, *expect)
for what, mutate, expect in METRICS_BAD[:4]:
    add("corrupt files", f"report/metrics.jsonl {what}", on_run(report(), mutate), 2, *expect)
    add("corrupt files", f"resume/metrics.jsonl {what}", on_run(resume(), mutate), 2, *expect)
for what, mutate in METRICS_OK:
    add("corrupt files", f"analyze/metrics.jsonl {what}", on_run(analyze(), mutate), 0, "wrote")
for what, mutate in METRICS_OK[:2]:
    add("corrupt files", f"report/metrics.jsonl {what}", on_run(report(), mutate), 0, "wrote")

# checkpoints (the last one: every command; the middle one: what reads every checkpoint)
W_E = "embed.W_E"
CKPT_BAD: list[tuple[str, Callable[[str], Mutation], tuple[str, ...]]] = [
    ("truncated", lambda r: truncate(r), ("corrupt or truncated",)),
    ("zero bytes", lambda r: write(r, b""), ("corrupt or truncated",)),
    ("random bytes", lambda r: noise(r), ()),
    ("header only", lambda r: truncate(r, 0.1), ("corrupt or truncated",)),
    (
        "header length 2**60",
        lambda r: write(r, struct.pack("<Q", 2**60) + b"{}"),
        ("corrupt or truncated",),
    ),
    ("header a list", lambda r: write(r, struct.pack("<Q", 2) + b"[]"), ("safetensors",)),
    (
        "header offsets past the end",
        lambda r: write(
            r, struct.pack("<Q", 60) + b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,99999]}}'
        ),
        ("safetensors",),
    ),
    (
        "W_E of the wrong shape",
        lambda r: tensors(r, set_tensor(W_E, lambda t: t[:-1])),
        ("embed.W_E",),
    ),
    ("W_E 1-D", lambda r: tensors(r, set_tensor(W_E, lambda t: t.flatten())), ("embed.W_E",)),
    (
        "W_in of another d_mlp",
        lambda r: tensors(r, set_tensor("blocks.0.mlp.W_in", lambda t: t[:, :8].contiguous())),
        ("blocks.0.mlp.W_in",),
    ),
    (
        "W_O missing",
        lambda r: tensors(r, lambda t: {k: v for k, v in t.items() if k != "blocks.0.attn.W_O"}),
        ("W_O",),
    ),
    (
        "an unknown key",
        lambda r: tensors(r, lambda t: {**t, "blocks.0.evil": t[W_E]}),
        ("blocks.0.evil",),
    ),
    (
        "a second layer",
        lambda r: tensors(r, lambda t: {**t, "blocks.1.mlp.W_in": t["blocks.0.mlp.W_in"]}),
        ("n_layers",),
    ),
    (
        "LayerNorm weights",
        lambda r: tensors(r, lambda t: {**t, "ln_final.w": t["blocks.0.mlp.b_out"]}),
        ("LayerNorm",),
    ),
    ("no tensors", lambda r: tensors(r, lambda t: {}), ()),
    ("p 19", lambda r: tensors(r, lambda t: {**t, W_E: t[W_E][:1].repeat(20, 1)}), ("p",)),
    ("NaN in W_E", lambda r: tensors(r, set_tensor(W_E, nan_at)), ("NaN", "embed.W_E")),
    (
        "inf in W_U",
        lambda r: tensors(r, set_tensor("unembed.W_U", inf_at)),
        ("infinite", "unembed.W_U"),
    ),
]
CKPT_OK: list[tuple[str, Callable[[str], Mutation]]] = [
    ("float16", lambda r: tensors(r, lambda t: {k: v.half() for k, v in t.items()})),
    ("float64", lambda r: tensors(r, lambda t: {k: v.double() for k, v in t.items()})),
    ("a torch zip file", lambda r: _as_torch(r, legacy=False)),
    ("a legacy torch file", lambda r: _as_torch(r, legacy=True)),
    (
        "biases missing",
        lambda r: tensors(r, lambda t: {k: v for k, v in t.items() if ".b_" not in k}),
    ),
]


def _as_torch(rel: str, legacy: bool) -> Mutation:
    def mutate(ctx: Ctx, run: Path) -> None:
        import torch

        from tl_grokking.runs.rundir import load_safetensors

        state = load_safetensors(run / rel)
        torch.save(state, run / rel, _use_new_zipfile_serialization=not legacy)

    return mutate


for what, make, expect in CKPT_BAD:
    for command in ("analyze", "ablate"):
        add(
            "corrupt files",
            f"{command}/epoch_20 {what}",
            on_run(COMMANDS[command](), make(LAST)),
            2,
            "epoch_20.safetensors",
            *expect,
        )
for what, make, expect in CKPT_BAD[:3] + CKPT_BAD[7:8] + CKPT_BAD[16:17]:
    add(
        "corrupt files",
        f"analyze/epoch_10 {what}",
        on_run(analyze(), make(MIDDLE)),
        2,
        "epoch_10.safetensors",
        *expect,
    )
    add(
        "corrupt files",
        f"report/epoch_20 {what}",
        on_run(report(), make(LAST)),
        2,
        "epoch_20.safetensors",
        *expect,
    )
for what, make in CKPT_OK:
    add("corrupt files", f"analyze/epoch_20 {what}", on_run(analyze(), make(LAST)), 0, "wrote")
    add("corrupt files", f"ablate/epoch_20 {what}", on_run(ablate(), make(LAST)), 0, "ablation")

# resume.safetensors (train --resume)
R = "resume.safetensors"
for what, mutate, expect in [
    ("truncated", truncate(R), (R,)),
    ("zero bytes", write(R, b""), (R,)),
    ("random bytes", noise(R), (R,)),
    ("a torch file", _as_torch(R, legacy=False), (R,)),
    ("epoch 'abc'", metadata(R, epoch="abc"), (R, "epoch")),
    ("epoch -1", metadata(R, epoch="-1"), (R, "epoch")),
    ("epoch 7 (no checkpoint)", metadata(R, epoch="7"), (R, "epoch_7")),
    ("epoch 10**30", metadata(R, epoch=str(10**30)), (R,)),
    (
        "a weight missing",
        tensors(R, lambda t: {k: v for k, v in t.items() if "W_E" not in k}),
        (R, "W_E"),
    ),
    (
        "a weight of another shape",
        tensors(R, lambda t: {**t, "model.embed.W_E": t["model.embed.W_E"][:3]}),
        (R, "W_E"),
    ),
    (
        "AdamW state missing",
        tensors(R, lambda t: {k: v for k, v in t.items() if "exp_avg" not in k}),
        (R, "exp_avg"),
    ),
]:
    add("corrupt files", f"resume/{R} {what}", on_run(resume(), mutate), 2, *expect)

# phases.json and measures.csv (report reads them)
P, M = "phases.json", "measures.csv"
for what, mutate, expect in [
    ("truncated", truncate(P), (P, "not valid JSON")),
    ("zero bytes", write(P, b""), (P, "not valid JSON")),
    ("not UTF-8", write(P, b'{"phases": "\xff"}'), (P, "UTF-8")),
    ("a list", write(P, "[]"), (P,)),
    ("phases a string", edit_json(P, lambda d: {**d, "phases": "x"}), (P, "phases")),
    ("key_freqs 'abc'", edit_json(P, lambda d: {**d, "key_freqs": "abc"}), (P, "key_freqs")),
    (
        "a boundary 'late'",
        edit_json(P, lambda d: {**d, "memorization_end": "late"}),
        (P, "memorization_end"),
    ),
    ("notes a number", edit_json(P, lambda d: {**d, "notes": 5}), (P, "notes")),
    (
        "a phase without an end",
        edit_json(P, lambda d: {**d, "phases": [{"name": "x", "start": 0}]}),
        (P, "phases"),
    ),
]:
    add(
        "corrupt files",
        f"report/{P} {what}",
        on_run(report(), mutate, run="run_analyzed"),
        2,
        *expect,
    )
for what, mutate, expect in [
    ("zero bytes", write(M, b""), (M, "empty")),
    ("no epoch column", write(M, "step,test_loss\n0,1.0\n"), (M, "line 1")),
    ("a repeated column", write(M, "epoch,a,a\n0,1,1\n"), (M, "line 1")),
    ("a value 'abc'", write(M, "epoch,train_loss\n0,abc\n"), (M, "line 2", "train_loss")),
    ("an epoch 2.5", write(M, "epoch,train_loss\n2.5,1\n"), (M, "line 2", "epoch")),
    ("a short row", write(M, "epoch,train_loss,test_loss\n0,1\n"), (M, "line 2")),
    ("not UTF-8", write(M, b"epoch,train_loss\n0,\xff\n"), (M, "UTF-8")),
]:
    add(
        "corrupt files",
        f"report/{M} {what}",
        on_run(report(), mutate, run="run_analyzed"),
        2,
        *expect,
    )

# standalone checkpoint files (ablate FILE)
for name in ("sd.pt", "sd_legacy.pt", "demo.pth", "authors.pth", "ckpt.safetensors"):
    for what, mutate, expect in [
        (
            "truncated",
            lambda c, p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
            ("corrupt or truncated",),
        ),
        ("zero bytes", lambda c, p: p.write_bytes(b""), ()),
        ("random bytes", lambda c, p: p.write_bytes(bytes(range(256)) * 2), ()),
        ("first bytes only", lambda c, p: p.write_bytes(p.read_bytes()[:9]), ()),
    ]:
        add(
            "corrupt files",
            f"ablate/{name} {what}",
            on_file(ablate(name), name, mutate),
            2,
            name,
            *expect,
        )


def _torch_object(obj: Callable[[Ctx], Any], legacy: bool = False) -> Mutation:
    def mutate(ctx: Ctx, path: Path) -> None:
        import torch

        torch.save(obj(ctx), path, _use_new_zipfile_serialization=not legacy)

    return mutate


def _demo(**changes: Any) -> Callable[[Ctx], Any]:
    def make(ctx: Ctx) -> Any:
        import torch

        demo = torch.load(ctx.env.files["demo.pth"], weights_only=True)
        demo.update(changes)
        return {k: v for k, v in demo.items() if v is not None}

    return make


def _sd(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Ctx], Any]:
    def make(ctx: Ctx) -> Any:
        from tl_grokking.runs.rundir import load_safetensors

        return fn(dict(load_safetensors(ctx.env.files["ckpt.safetensors"])))

    return make


for what, obj, expect in [
    ("a list", lambda c: [1, 2, 3], ("expected a dict", "list")),
    ("an empty dict", lambda c: {}, ("known formats",)),
    ("a dict of strings", lambda c: {"a": "b"}, ("unrecognised checkpoint",)),
    ("a tensor", lambda c: __import__("torch").zeros(3), ("expected a dict",)),
    ("a state dict with a NaN", _sd(lambda s: {**s, W_E: nan_at(s[W_E])}), ("NaN", "embed.W_E")),
    (
        "a state dict without W_E",
        _sd(lambda s: {k: v for k, v in s.items() if k != W_E}),
        ("embed.W_E",),
    ),
    ("a state dict of ints", _sd(lambda s: {k: v.long() for k, v in s.items()}), None),
    ("demo: checkpoints a string", _demo(checkpoints="x"), ("checkpoints",)),
    ("demo: epochs of another length", _demo(checkpoint_epochs=[0]), ("checkpoint_epochs",)),
    ("demo: epochs strings", _demo(checkpoint_epochs=["a", "b"]), ("checkpoint_epochs",)),
    (
        "demo: train_indices out of range",
        _demo(train_indices=list(range(280, 300))),
        ("train_indices",),
    ),
    (
        "demo: config with LayerNorm",
        _demo(config={"normalization_type": "LN"}),
        ("normalization_type",),
    ),
    (
        "demo: no model, no checkpoints",
        _demo(model=None, checkpoints=[], checkpoint_epochs=[]),
        ("no model",),
    ),
    (
        "authors: state_dicts without epochs",
        lambda c: {"model": _authors_layout_of(c), "state_dicts": [_authors_layout_of(c)]},
        ("state_dicts",),
    ),
]:
    add(
        "corrupt files",
        f"ablate/file {what}",
        on_file(ablate("x.pth"), "sd.pt", _torch_object(obj), dest="x.pth"),
        0 if expect is None else 2,
        *(("x.pth", *expect) if expect else ("ablation",)),
    )


def _authors_layout_of(ctx: Ctx) -> dict[str, Any]:
    from hostile.harness import _authors_layout
    from tl_grokking.runs.rundir import load_safetensors

    return _authors_layout(dict(load_safetensors(ctx.env.files["ckpt.safetensors"])))


# =================================================================================================
# (c) security
# =================================================================================================

for kind in payloads(Path("MARKER")):
    for legacy in (False, True):
        fmt = "legacy pickle" if legacy else "torch zip"
        add(
            "security",
            f"ablate/pickle payload {kind} ({fmt})",
            evil_file(kind, legacy),
            2,
            "evil.pth",
            "refusing to load",
        )
for command in ("analyze", "report", "ablate"):
    add(
        "security",
        f"{command}/payload as the last checkpoint",
        evil_in_run(LAST, COMMANDS[command]()),
        2,
        "epoch_20.safetensors",
        "refusing to load",
    )
add(
    "security",
    "analyze/payload as a middle checkpoint",
    evil_in_run(MIDDLE, analyze()),
    2,
    "epoch_10.safetensors",
    "refusing to load",
)
add(
    "security",
    "resume/payload as resume.safetensors",
    evil_in_run(R, resume()),
    2,
    "resume.safetensors",
)
add(
    "security",
    "ablate/payload in a demo file's config",
    evil_pickle(lambda c: _bytes_of(_demo(config=payloads(c.marker)["exec"])(c))),
    2,
    "evil.pth",
    "refusing to load",
)
add(
    "security",
    "ablate/payload in an authors' file's config",
    evil_pickle(
        lambda c: _bytes_of(
            {"model": _authors_layout_of(c), "config": payloads(c.marker)["os.system"]}
        )
    ),
    2,
    "evil.pth",
    "refusing to load",
)
add(
    "security",
    "ablate/payload inside a list of checkpoints",
    evil_pickle(
        lambda c: _bytes_of(
            _demo(checkpoints=[payloads(c.marker)["eval"]], checkpoint_epochs=[0])(c)
        )
    ),
    2,
    "evil.pth",
    "refusing to load",
)
add(
    "security",
    "ablate/a zip whose data.pkl is a payload",
    evil_pickle(lambda c: _zip_with(c, "data.pkl", pickle.dumps(payloads(c.marker)["exec"], 2))),
    2,
    "evil.pth",
    "refusing to load",
)
add(
    "security",
    "ablate/a legacy file whose magic number is a payload",
    evil_pickle(_legacy_with_magic),
    2,
    "evil.pth",
    "refusing to load",
)
for protocol in (0, 2, 4, 5):
    add(
        "security",
        f"ablate/a bare pickle, protocol {protocol}",
        evil_pickle(lambda c, p=protocol: pickle.dumps({"model": payloads(c.marker)["exec"]}, p)),
        2,
        "evil.pth",
        *{0: ("not a safetensors or torch file",), 2: ("refusing to load", "exec")}.get(
            protocol, ("weights_only=True) cannot read", "Unsupported operand")
        ),
    )
add(
    "security",
    "ablate/a pickled nn.Module",
    evil_pickle(lambda c: _bytes_of(__import__("torch").nn.Linear(2, 2))),
    2,
    "evil.pth",
    "refusing to load",
    "Linear",
)
add(
    "security",
    "ablate/a zip bomb (deflated zeros, bound lowered)",
    repacked(pad=1_000_000),
    2,
    "bomb.pt",
    "refusing to load",
    "declare",
    patch=inflate_floor(2**20),
)
add(
    "security",
    "ablate/a zip whose data entries declare 4 GB",
    repacked(declare=2**32 - 2),
    2,
    "bomb.pt",
    "refusing to load",
    "declare",
)
add(
    "security",
    "ablate/a zip whose data entries declare fewer bytes than they hold",
    repacked(declare=4),
    2,
    "bomb.pt",
    "corrupt or truncated",
)
add("security", "ablate/a deflated state dict within the bound", repacked(), 0, "ablation")
add(
    "security",
    "ablate/a legacy file declaring a 800 GB storage",
    evil_pickle(lambda c: _huge_legacy(c, 200_000_000_000)),
    2,
    "evil.pth",
    "corrupt or truncated",
)
add(
    "security",
    "ablate/a legacy file declaring an 8 GB storage",
    evil_pickle(lambda c: _huge_legacy(c, 2_000_000_000)),
    2,
    "evil.pth",
    "corrupt or truncated",
)


def _bytes_of(obj: Any, legacy: bool = False) -> bytes:
    import torch

    out = io.BytesIO()
    torch.save(obj, out, _use_new_zipfile_serialization=not legacy)
    return out.getvalue()


def _huge_legacy(ctx: Ctx, numel: int) -> bytes:
    """A legacy torch file whose one storage declares ``numel`` floats (the file holds 10)."""
    import torch

    blob = bytearray(_bytes_of({"w": torch.zeros(10)}, legacy=True))
    code = b"\x8a\x05" + numel.to_bytes(5, "little")  # LONG1, 5 bytes
    head = bytes(blob[:-48]).replace(b"K\nN)", code + b"N)", 1)
    head = head.replace(b"K\x00K\n\x85", b"K\x00" + code + b"\x85", 1)
    return head + struct.pack("<q", numel) + bytes(blob[-40:])


# HTML and script injected into what the report shows
INJECTIONS = [
    "<script>alert('hostile-1')</script>",
    '"><img src=x onerror=alert(2)>',
    "</script><script>alert(3)</script>",
    "</pre><iframe src=javascript:alert(5)>",
]
for payload in INJECTIONS[:3:2]:
    add(
        "security",
        f"report/config.json value {payload}",
        on_run(report(), config(notes=payload)),
        0,
        "wrote",
        checks=(escaped(payload),),
    )
for payload in INJECTIONS[1:2]:
    add(
        "security",
        f"report/phases.json note {payload}",
        on_run(
            report(), edit_json(P, lambda d, p=payload: {**d, "notes": [p]}), run="run_analyzed"
        ),
        0,
        "wrote",
        checks=(escaped(payload),),
    )
add(
    "security",
    "report/config.json key <script>",
    on_run(report(), config(**{INJECTIONS[0]: 1})),
    0,
    "wrote",
    checks=(escaped(INJECTIONS[0]),),
)
add(
    "security",
    "report/phases.json key_freq_rule <script>",
    on_run(
        report(), edit_json(P, lambda d: {**d, "key_freq_rule": INJECTIONS[3]}), run="run_analyzed"
    ),
    0,
    "wrote",
    checks=(escaped(INJECTIONS[3]),),
)
add(
    "security",
    "report/measures.csv column </script>",
    on_run(
        report(),
        lambda c, r: (r / M).write_text(
            (r / M).read_text().replace("sum_sq_weights", "x" + INJECTIONS[2])
        ),
        run="run_analyzed",
    ),
    0,
    "wrote",
    checks=(escaped("x" + INJECTIONS[2], shown=False),),
)
add(
    "security",
    "report/metrics.jsonl key <script>",
    on_run(report(), metrics_lines(f'{{"epoch": 0, {json.dumps(INJECTIONS[0])}: 1.0}}')),
    0,
    "wrote",
    checks=(escaped(INJECTIONS[0], shown=False),),
)
for name in ('run"><svg onload=alert(6)>',):
    add(
        "security",
        f"report/run directory named {name}",
        on_run(report(name), dest=name),
        0,
        "wrote",
        checks=(escaped(name, page=f"{name}/report.html"),),
    )
add(
    "security",
    "analyze/a checkpoint linked to /etc/passwd",
    on_run(analyze(), link(LAST, "/etc/passwd")),
    2,
    "epoch_20.safetensors",
)


# =================================================================================================
# (d) faults
# =================================================================================================

SPECIAL: list[tuple[str, Callable[[str], Mutation], str]] = [
    ("a FIFO", fifo, "is a FIFO"),
    ("a symbolic link loop", loop, "symbolic link loop"),
    ("/dev/zero", lambda rel: link(rel, "/dev/zero"), "character device"),
]
for what, make, said in SPECIAL + [("a directory", directory, "is a directory")]:
    for command in ("analyze", "report", "ablate", "resume"):
        add(
            "faults",
            f"{command}/config.json is {what}",
            on_run(COMMANDS[command](), make("config.json")),
            2,
            "config.json",
            said,
        )
    for command in ("analyze", "report"):
        add(
            "faults",
            f"{command}/metrics.jsonl is {what}",
            on_run(COMMANDS[command](), make("metrics.jsonl")),
            2,
            "metrics.jsonl",
            said,
        )
    for command in ("analyze", "ablate"):
        add(
            "faults",
            f"{command}/epoch_20 is {what}",
            on_run(COMMANDS[command](), make(LAST)),
            2,
            "epoch_20.safetensors",
            said,
        )
    add("faults", f"resume/resume.safetensors is {what}", on_run(resume(), make(R)), 2, R, said)
    add(
        "faults",
        f"report/phases.json is {what}",
        on_run(report(), make(P), run="run_analyzed"),
        2,
        P,
        said,
    )
    add(
        "faults",
        f"report/measures.csv is {what}",
        on_run(report(), make(M), run="run_analyzed"),
        2,
        M,
        said,
    )
for what, make, said in SPECIAL + [("a file", plain_file, "is a file")]:
    add(
        "faults",
        f"analyze/checkpoints/ is {what}",
        on_run(analyze(), make("checkpoints")),
        2,
        "checkpoints",
        said,
    )
    for command in ("analyze", "report", "ablate"):
        # ablate takes a checkpoint file too: a regular file is read as one
        is_file = what == "a file" and command == "ablate"
        add(
            "faults",
            f"{command}/the run directory is {what}",
            on_run(COMMANDS[command](), make("")),
            2,
            "run",
            said if not is_file else "not a safetensors or torch file",
        )
    add(
        "faults",
        f"train/--out is {what}",
        lambda ctx, m=make: m("")(ctx, ctx.tmp / "new") or train("new"),
        2,
        "--out",
        said,
    )
    add(
        "faults",
        f"ablate/FILE is {what}",
        lambda ctx, m=make: m("")(ctx, ctx.tmp / "x.pth") or ablate("x.pth"),
        2,
        "x.pth",
        said if what != "a file" else "not a safetensors or torch file",
    )
add(
    "faults",
    "train/--out under a file",
    lambda ctx: (ctx.tmp / "f").write_text("x") and train("f/new"),
    2,
    "--out",
    "f is a file",
)
add(
    "faults",
    "train/--out under a FIFO",
    lambda ctx: os.mkfifo(ctx.tmp / "f") or train("f/new"),
    2,
    "--out",
    "is a FIFO",
)
if LINUX:  # /proc refuses new entries, even to root
    add(
        "faults",
        "train/--out under /proc (cannot be created)",
        plain(train("/proc/tl_hostile/run")),
        2,
        "/proc/tl_hostile",
    )
add(
    "faults",
    "ablate/FILE is a broken symbolic link",
    lambda ctx: os.symlink("nowhere", ctx.tmp / "x.pth") or ablate("x.pth"),
    2,
    "x.pth",
    "broken symbolic link",
)
add(
    "faults",
    "analyze/a run directory that does not exist",
    plain(analyze("nowhere")),
    2,
    "nowhere",
    "does not exist",
)
add(
    "faults",
    "report/--out is a FIFO (replaced by the report)",
    on_run(report("run", "--out", "out.html"), lambda c, r: os.mkfifo(c.tmp / "out.html")),
    0,
    "wrote",
)
add(
    "faults",
    "analyze/an empty directory",
    lambda ctx: (ctx.tmp / "run").mkdir() or analyze(),
    2,
    "run",
    "no config.json",
)
add(
    "faults",
    "analyze/no checkpoints",
    on_run(analyze(), remove("checkpoints")),
    2,
    "run",
    "no checkpoints",
)

# a full disk, a read-only file system, I/O errors: the write fails, the file names itself, the
# run stays consistent
FSYNC, MKSTEMP, REPLACE = "os.fsync", "tempfile.mkstemp", "os.replace"
for i, (what, target, error, said) in enumerate(
    [
        ("disk full at fsync", FSYNC, ENOSPC, "No space left on device"),
        ("I/O error at fsync", FSYNC, EIO, "Input/output error"),
        ("read-only file system", MKSTEMP, EROFS, "Read-only file system"),
        (
            "rename refused",
            REPLACE,
            PermissionError(errno.EACCES, "Permission denied"),
            "Permission denied",
        ),
    ]
):
    add(
        "faults",
        f"train/{what} at the first write",
        plain(train("new")),
        2,
        said,
        "config.json",
        patch=failing(target, error),
    )
    add(
        "faults",
        f"analyze/{what} writing measures.csv",
        on_run(analyze()),
        2,
        said,
        "measures.csv",
        patch=failing(target, error),
        checks=(no_file("run/measures.csv"),),
    )
    if i % 2 == 0:  # (a report costs a second: two of them)
        add(
            "faults",
            f"report/{what} writing report.html",
            on_run(report()),
            2,
            said,
            "report.html",
            patch=failing(target, error),
            checks=(no_file("run/report.html"),),
        )
    add(
        "faults",
        f"resume/{what} in the middle of the run",
        on_run(resume()),
        2,
        said,
        patch=failing(target, error, after=3),
        may_change=True,
        checks=(resumable(),),
    )
if LINUX:  # the fault finds the file by its descriptor in /proc/self/fd
    add(
        "faults",
        "train/disk full writing a checkpoint (safetensors)",
        plain(train("new")),
        2,
        "No space left on device",
        "epoch_0.safetensors",
        patch=failing("os.write", ENOSPC, only="epoch_0.safetensors"),
    )
    add(
        "faults",
        "resume/disk full appending to metrics.jsonl",
        on_run(resume()),
        2,
        "No space left on device",
        "metrics.jsonl",
        patch=failing("os.write", ENOSPC, only="metrics.jsonl"),
        may_change=True,
        checks=(resumable(),),
    )
add(
    "faults",
    "resume/Ctrl-C in the middle of the run",
    on_run(resume()),
    130,
    "interrupted",
    patch=failing(FSYNC, KeyboardInterrupt(), after=4),
    may_change=True,
    checks=(resumable(),),
)
add(
    "faults",
    "analyze/out of memory",
    on_run(analyze()),
    2,
    "memory",
    patch=failing("tl_grokking.analysis.progress.progress_measures", MemoryError()),
)
add(
    "faults",
    "resume/another process holds the lock",
    on_run(resume()),
    2,
    "being written by another process",
    patch=holding_lock(),
)
add(
    "faults",
    "train/another process holds the lock of a new --out",
    lambda ctx: (ctx.tmp / "new").mkdir() or train("new"),
    2,
    "being written by another process",
    patch=holding_lock("new"),
)
add(
    "faults",
    "analyze/while another process holds the lock",
    on_run(analyze()),
    0,
    "wrote",
    patch=holding_lock(),
)

# interrupted writes: temporary files left by a killed write
LEFTOVERS = (
    ".config.json.k1l2.tmp",
    "checkpoints/.epoch_25.safetensors.x9z.tmp",
    ".resume.safetensors.q7.tmp",
    ".measures.csv.a1.tmp",
)


def leftovers(ctx: Ctx, run: Path) -> None:
    for rel in LEFTOVERS:
        (run / rel).write_bytes(b"half a write")


for command, expect in [("analyze", "wrote"), ("report", "wrote"), ("ablate", "ablation")]:
    add(
        "faults",
        f"{command}/temporary files of a killed write",
        on_run(COMMANDS[command](), leftovers),
        0,
        expect,
    )
add(
    "faults",
    "resume/temporary files of a killed write (removed)",
    on_run(resume(), leftovers),
    0,
    "trained to epoch 25",
    checks=(no_tmp_files(),),
)
add(
    "faults",
    "resume/a checkpoint newer than resume.safetensors (killed mid-save)",
    on_run(resume(), lambda c, r: shutil.copy(r / LAST, r / "checkpoints/epoch_25.safetensors")),
    0,
    "trained to epoch 25",
)


# =================================================================================================
# (e) analysis robustness
# =================================================================================================

ANALYSIS_RUNS: list[tuple[str, list[Mutation], dict[str, tuple[int, tuple[str, ...]]]]] = [
    (
        "one checkpoint (the last)",
        [keep_checkpoints(20)],
        {
            "analyze": (0, ("1 checkpoints", "wrote")),
            "report": (0, ("wrote",)),
            "ablate": (0, ("ablation",)),
        },
    ),
    (
        "one checkpoint (epoch 0)",
        [keep_checkpoints(0)],
        {
            "analyze": (0, ("wrote",)),
            "report": (0, ("last checkpoint at epoch 0",)),
            "ablate": (0, ("ablation",)),
        },
    ),
    ("two checkpoints", [keep_checkpoints(0, 20)], {"analyze": (0, ("wrote",))}),
    ("irregular checkpoint epochs", [keep_checkpoints(0, 5, 20)], {"analyze": (0, ("wrote",))}),
    (
        "diverged: NaN weights at the end",
        [tensors(LAST, set_tensor("blocks.0.mlp.W_out", nan_at))],
        {
            "analyze": (2, ("NaN", "epoch 20")),
            "report": (2, ("NaN", "epoch 20")),
            "ablate": (2, ("NaN", "epoch 20")),
        },
    ),
    (
        "NaN weights in a middle checkpoint",
        [tensors(MIDDLE, set_tensor(W_E, nan_at))],
        {"analyze": (2, ("NaN", "epoch 10")), "ablate": (0, ("ablation",))},
    ),
    (
        "diverged: NaN losses logged",
        [
            metrics_lines(
                '{"epoch": 0, "train_loss": 2.9, "test_loss": 2.9, "test_acc": 0.1}',
                '{"epoch": 5, "train_loss": NaN, "test_loss": NaN, "test_acc": 0.0}',
            )
        ],
        {"analyze": (0, ("wrote",)), "report": (0, ("wrote",))},
    ),
    (
        "infinite losses logged",
        [
            metrics_lines(
                '{"epoch": 0, "train_loss": Infinity, "test_loss": Infinity, "test_acc": 0.1}'
            )
        ],
        {"analyze": (0, ("wrote",))},
    ),
    (
        "no metrics.jsonl",
        [remove("metrics.jsonl")],
        {"analyze": (0, ("wrote",)), "ablate": (0, ("ablation",))},
    ),
    (
        "metrics only at epoch 0",
        [metrics_lines('{"epoch": 0, "test_acc": 0.1}')],
        {"analyze": (0, ("wrote",))},
    ),
    (
        "metrics beyond the last checkpoint",
        [remove(LAST)],
        {"report": (0, ("metrics already reach epoch 20",))},
    ),
    (
        "still training (config asks for more epochs)",
        [config(epochs=40)],
        {"analyze": (0, ("wrote",))},
    ),
    (
        "no resume.safetensors",
        [remove(R)],
        {"analyze": (0, ("wrote",)), "resume": (2, (R, "missing"))},
    ),
    (
        "all-zero weights",
        [tensors(LAST, lambda t: {k: v * 0 for k, v in t.items()})],
        {"analyze": (0, ("wrote",)), "report": (0, ("wrote",)), "ablate": (0, ("ablation",))},
    ),
    (
        "huge weights (1e30)",
        [tensors(LAST, lambda t: {k: v * 1e30 for k, v in t.items()})],
        {"analyze": (0, ("wrote",)), "ablate": (0, ("ablation",))},
    ),
    (
        "a checkpoint of another run's architecture",
        [tensors(MIDDLE, set_tensor("blocks.0.mlp.W_out", lambda t: t[:16].contiguous()))],
        {"analyze": (2, ("epoch 10", "W_out"))},
    ),
    (
        "a checkpoint of another p",
        [
            tensors(
                MIDDLE,
                lambda t: {
                    **t,
                    W_E: t[W_E][:1].repeat(20, 1),
                    "unembed.W_U": t["unembed.W_U"][:, :1].repeat(1, 19),
                    "unembed.b_U": t["unembed.b_U"][:1].repeat(19),
                },
            )
        ],
        {"analyze": (2, ("epoch 10",))},
    ),
    (
        "an empty checkpoints directory",
        [keep_checkpoints()],
        {
            "analyze": (2, ("no checkpoints",)),
            "report": (2, ("no checkpoints",)),
            "ablate": (2, ("no checkpoints",)),
        },
    ),
]
for what, mutations, commands in ANALYSIS_RUNS:
    for command, (status, expect) in commands.items():
        add(
            "analysis",
            f"{command}/{what}",
            on_run(COMMANDS[command](), *mutations),
            status,
            *expect,
        )

STALE: list[tuple[str, list[Mutation]]] = [
    (
        "another run's measures.csv and phases.json (same epochs)",
        [copy_from("other_analyzed", M, P)],
    ),
    ("measures and phases of before the run went on", [resumed_to(25)]),
    (
        "measures.csv with fewer epochs",
        [lambda c, r: (r / M).write_text("\n".join((r / M).read_text().splitlines()[:3]) + "\n")],
    ),
]
for what, mutations in STALE:
    add(
        "analysis",
        f"report/stale derived files: {what}",
        on_run(report(), *mutations, run="run_analyzed"),
        0,
        "wrote",
        checks=(page_says("measures.csv is out of date"),),
    )
add(
    "analysis",
    "report/phases.json says no phases",
    on_run(
        report(),
        edit_json(P, lambda d: {**d, "phases": None, "reason": "too few"}),
        run="run_analyzed",
    ),
    0,
    "wrote",
)
add(
    "analysis",
    "analyze/again over its own derived files",
    on_run(analyze(), run="run_analyzed"),
    0,
    "wrote",
)

for task in ("sub", "mul", "div", "x2+y2"):
    add("analysis", f"analyze/a {task} run", on_run(analyze(), run=task), 0, "wrote")
    if task == "sub":
        add("analysis", f"ablate/a {task} run", on_run(ablate(), run=task), 0, "ablation")
    else:  # the key-frequency analysis needs token-order Fourier structure: refused, says so
        add(
            "analysis",
            f"ablate/a {task} run",
            on_run(ablate(), run=task),
            2,
            f"'{task}'",
            "not meaningful",
        )
add("analysis", "report/a x2+y2 run", on_run(report(), run="x2+y2"), 0, "wrote")
for command, expect in (("analyze", "wrote"), ("ablate", "ablation"), ("report", "wrote")):
    add("analysis", f"{command}/a p = 3 run", on_run(COMMANDS[command](), run="p3"), 0, expect)
for command, flags, status, expect in [
    ("ablate", (), 0, ("key frequencies", "[6, 10]")),
    ("ablate", ("--key-freqs", "6"), 0, ("ablation",)),
    ("ablate", ("--key-freqs", "6", "6"), 0, ("ablation",)),
    ("ablate", ("--key-freqs", "12"), 2, ("key", "12")),
    ("ablate", ("--epoch", "0"), 0, ("ablation",)),
    ("ablate", ("--neuron-ablation", "mean", "--threshold", "0.5"), 0, ("ablation",)),
    ("ablate", ("--threshold", "1"), 0, ("ablation",)),
    ("ablate", ("--json",), 0, ('"ablation_table"',)),
    ("analyze", ("--key-freqs", "1,2,3,4,5,6,7,8,9,10,11"), 0, ("wrote",)),
    ("report", (), 0, ("wrote",)),
]:
    add(
        "analysis",
        f"{command}/the grokked run {' '.join(flags)}".rstrip(),
        on_run(COMMANDS[command]("run", *flags), run="grokked"),
        status,
        *expect,
    )

for name, flags, status, expect in [
    ("sd.pt", (), 0, ("ablation",)),
    ("sd_legacy.pt", (), 0, ("ablation",)),
    ("demo.pth", (), 0, ("train_indices", "ablation")),
    ("demo.pth", ("--epoch", "0"), 0, ("ablation",)),
    ("demo.pth", ("--epoch", "3"), 2, ("epoch", "3")),
    ("authors.pth", (), 0, ("authors' procedure", "ablation")),
    ("ckpt.safetensors", (), 0, ("ablation",)),
    ("ckpt.safetensors", ("--epoch", "3"), 2, ("epoch", "[20]", "3")),
    ("ckpt.safetensors", ("--seed", "1", "--frac-train", "0.5"), 0, ("seed 1", "ablation")),
]:
    add(
        "analysis",
        f"ablate/{name} {' '.join(flags)}".rstrip(),
        on_file(ablate(name, *flags), name),
        status,
        *expect,
    )
for command, name in [
    ("analyze", "ckpt.safetensors"),
    ("analyze", "demo.pth"),
    ("report", "demo.pth"),
    ("report", "ckpt.safetensors"),
]:
    add(
        "analysis",
        f"{command}/a single file, not a run directory ({name})",
        on_file(COMMANDS[command](name), name),
        2,
        name,
    )


_IDS = [case.id for case in CASES]
assert len(set(_IDS)) == len(_IDS), "repeated case ids"
