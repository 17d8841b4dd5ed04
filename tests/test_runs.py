"""Tests for tl_grokking.runs.rundir: atomic writes, metrics.jsonl, the checkpoint listing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from tl_grokking.runs.rundir import (
    RunDirError,
    RunDirNotFoundError,
    append_metrics,
    atomic_write,
    atomic_write_text,
    checkpoint_epoch,
    checkpoint_path,
    is_run_dir,
    list_checkpoints,
    load_safetensors,
    read_json,
    read_metrics,
    require_run_dir,
    resume_epoch,
    rewrite_metrics,
    save_safetensors,
    write_json,
)


def test_atomic_write_replaces_on_success_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_atomic_write_keeps_old_file_on_exception(tmp_path):
    target = tmp_path / "config.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text('{"a": 2, "half": ')  # a partial write, then a crash
            raise RuntimeError("boom")
    assert read_json(target) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    # a crash before anything is written also leaves no file behind
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "new.json"):
            raise KeyboardInterrupt
    assert not (tmp_path / "new.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_json_round_trip_and_invalid_json(tmp_path):
    data = {"p": 17, "frac_train": 0.3, "nested": {"x": [1, 2]}}
    write_json(tmp_path / "c.json", data)
    assert read_json(tmp_path / "c.json") == data
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RunDirError, match=r"bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_safetensors_round_trip_with_metadata(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3).T, "b": torch.tensor([True, False])}
    save_safetensors(tensors, tmp_path / "x.safetensors", metadata={"epoch": "7"})
    loaded = load_safetensors(tmp_path / "x.safetensors")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as fh:
        assert fh.metadata() == {"epoch": "7"}


def test_safetensors_files_are_a_function_of_their_contents(tmp_path):
    # safetensors (0.8 here) orders __metadata__ by a randomly seeded Rust HashMap, so without
    # the canonical header a checkpoint's bytes (and its sha256) varied between saves of the
    # same weights: 20 raw saves of a 4-key header give several distinct byte strings.
    from safetensors.torch import save

    tensors = {
        "w": torch.randn(4, 3),
        "b": torch.zeros(2, dtype=torch.float64),
        "é": torch.arange(3),
    }
    metadata = {"format": "tl_grokking", "epoch": "12", "seed": "3", "kind": "resume"}
    files = []
    for i in range(20):
        order = list(metadata.items())[i % 4 :] + list(metadata.items())[: i % 4]
        save_safetensors(tensors, tmp_path / f"{i}.safetensors", metadata=dict(order))
        files.append((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(set(files)) == 1
    data = files[0]
    size = int.from_bytes(data[:8], "little")
    assert size % 8 == 0 and data[8 : 8 + size].rstrip(b" ").endswith(b"}")
    header = json.loads(data[8 : 8 + size])
    assert list(header["__metadata__"]) == sorted(metadata)
    loaded = load_safetensors(tmp_path / "0.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as fh:
        assert fh.metadata() == metadata
    # with at most one metadata key the canonical form is safetensors' own bytes
    single = tmp_path / "single.safetensors"
    save_safetensors(tensors, single, metadata={"epoch": "1"})
    assert single.read_bytes() == save(tensors, metadata={"epoch": "1"})


def test_metrics_append_read_rewrite(tmp_path):
    records = [{"epoch": 0, "loss": 4.5}, {"epoch": 10, "loss": float("nan")}]
    for record in records:
        append_metrics(tmp_path, record)
    got = read_metrics(tmp_path)
    assert got[0] == records[0] and got[1]["epoch"] == 10 and math.isnan(got[1]["loss"])
    assert read_metrics(tmp_path, keep=lambda r: r["epoch"] > 0)[0]["epoch"] == 10
    rewrite_metrics(tmp_path, records[:1])
    assert read_metrics(tmp_path) == records[:1]
    assert read_metrics(tmp_path / "nowhere") == []


def test_read_metrics_skips_a_truncated_last_line(tmp_path):
    append_metrics(tmp_path, {"epoch": 0, "train_loss": 1.0})
    append_metrics(tmp_path, {"epoch": 5, "train_loss": 0.5})
    full = (tmp_path / "metrics.jsonl").read_text()
    # a crash in the middle of the third append: no trailing newline, half a JSON object
    (tmp_path / "metrics.jsonl").write_text(full + '{"epoch": 10, "train_lo')
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 5]


def test_read_metrics_rejects_a_corrupt_middle_line(tmp_path):
    lines = [json.dumps({"epoch": 0}), "{garbage", json.dumps({"epoch": 2})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=r"metrics\.jsonl: line 2 is not valid JSON"):
        read_metrics(tmp_path)


def test_list_checkpoints_sorted_and_ignores_temp_files(tmp_path):
    assert list_checkpoints(tmp_path) == []
    for epoch in (100, 5, 20):
        save_safetensors({"w": torch.zeros(1)}, checkpoint_path(tmp_path, epoch))
    ckpt_dir = tmp_path / "checkpoints"
    # what a crash inside atomic_write leaves, plus other look-alikes
    (ckpt_dir / ".epoch_200.safetensors.k3j2.tmp").write_bytes(b"partial")
    (ckpt_dir / "epoch_300.safetensors.tmp").write_bytes(b"partial")
    (ckpt_dir / "epoch_x.safetensors").write_bytes(b"")
    (ckpt_dir / "notes.txt").write_text("hi")
    found = list_checkpoints(tmp_path)
    assert [e for e, _ in found] == [5, 20, 100]
    assert [p.name for _, p in found] == [f"epoch_{e}.safetensors" for e in (5, 20, 100)]
    assert checkpoint_path(tmp_path, 7) == ckpt_dir / "epoch_7.safetensors"


def test_is_run_dir(tmp_path):
    assert not is_run_dir(tmp_path)
    write_json(tmp_path / "config.json", {})
    assert is_run_dir(tmp_path)


def test_atomic_write_gives_the_file_ordinary_permissions(tmp_path):
    import os
    import stat

    target = tmp_path / "perm.txt"
    atomic_write_text(target, "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(target).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_checkpoint_epoch_reads_only_checkpoint_names(tmp_path):
    assert checkpoint_epoch("epoch_12.safetensors") == 12
    assert checkpoint_epoch(tmp_path / "checkpoints" / "epoch_0.safetensors") == 0
    for name in ("epoch_x.safetensors", ".epoch_3.safetensors.ab.tmp", "epoch_3.pt", "resume"):
        assert checkpoint_epoch(name) is None, name


def test_require_run_dir_says_what_is_wrong(tmp_path):
    """The one run-directory check behind load_run, analyze and report."""
    with pytest.raises(RunDirNotFoundError, match=r"run directory .*missing does not exist"):
        require_run_dir(tmp_path / "missing")
    assert issubclass(RunDirNotFoundError, FileNotFoundError)
    assert issubclass(RunDirNotFoundError, RunDirError)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunDirError, match=r"file\.txt is a file, not a directory"):
        require_run_dir(tmp_path / "file.txt")
    with pytest.raises(RunDirError, match=r"not a run directory: no config\.json"):
        require_run_dir(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match=r"config\.json must hold a JSON object"):
        require_run_dir(tmp_path)
    (tmp_path / "config.json").write_text('{"p": 1')
    with pytest.raises(RunDirError, match=r"config\.json is not valid JSON"):
        require_run_dir(tmp_path)
    write_json(tmp_path / "config.json", {"p": 17})
    with pytest.raises(RunDirError, match="has no checkpoints"):
        require_run_dir(tmp_path)
    save_safetensors({"w": torch.zeros(1)}, checkpoint_path(tmp_path, 5))
    assert require_run_dir(tmp_path) == list_checkpoints(tmp_path)


def test_resume_epoch(tmp_path):
    assert resume_epoch(tmp_path) is None
    save_safetensors({"w": torch.zeros(1)}, tmp_path / "resume.safetensors", {"epoch": "40"})
    assert resume_epoch(tmp_path) == 40
    (tmp_path / "resume.safetensors").write_bytes(b"cut off")
    assert resume_epoch(tmp_path) is None
