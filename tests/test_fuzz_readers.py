"""Property-based tests of the file readers: whatever the bytes, a reader returns what the file
holds or raises its own documented error (never a KeyError, TypeError, UnicodeDecodeError,
SafetensorError or a pickle's code running)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tl_grokking.runs.checkpoints import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    read_checkpoint_file,
)
from tl_grokking.runs.rundir import RunDirError, read_json, read_metrics

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


@FUZZ
@given(data=st.binary(max_size=400))
def test_metrics_reader_on_arbitrary_bytes(tmp_path, data):
    (tmp_path / "metrics.jsonl").write_bytes(data)
    try:
        records = read_metrics(tmp_path)
    except RunDirError:
        return
    for record in records:  # what it returns is what the format promises
        assert isinstance(record["epoch"], int) and record["epoch"] >= 0
        assert all(v is None or isinstance(v, int | float) for v in record.values())


@FUZZ
@given(lines=st.lists(json_values, max_size=5))
def test_metrics_reader_on_arbitrary_json_lines(tmp_path, lines):
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / "metrics.jsonl").write_text(text)
    try:
        read_metrics(tmp_path)
    except RunDirError as err:
        assert "metrics.jsonl: line" in str(err)


@FUZZ
@given(data=st.binary(max_size=300))
def test_json_reader_on_arbitrary_bytes(tmp_path, data):
    (tmp_path / "x.json").write_bytes(data)
    try:
        read_json(tmp_path / "x.json")
    except RunDirError as err:
        assert "x.json" in str(err)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b),  # zip-like
        st.binary(max_size=200).map(lambda b: b"\x80\x02" + b),  # pickle-like
        st.binary(max_size=200).map(lambda b: (len(b)).to_bytes(8, "little") + b"{" + b),
    ),
    name=st.sampled_from(["f.safetensors", "f.pt", "f.pth", "f"]),
)
def test_checkpoint_reader_on_arbitrary_bytes(tmp_path, data, name):
    (tmp_path / name).write_bytes(data)
    try:
        read_checkpoint_file(tmp_path / name)
    except (CheckpointFormatError, UnsafeCheckpointError) as err:
        assert name in str(err)


@pytest.mark.parametrize("name", ["f.safetensors", "f.pt"])
def test_the_fuzzers_reach_the_real_decoders(tmp_path, name):
    """Not vacuous: a valid file of each kind is read (the fuzzers' error branches are not all)."""
    import torch

    from tl_grokking.runs.rundir import save_safetensors

    if name.endswith(".safetensors"):
        save_safetensors({"a": torch.ones(2)}, tmp_path / name)
    else:
        torch.save({"a": torch.ones(2)}, tmp_path / name)
    obj, _ = read_checkpoint_file(tmp_path / name)
    assert torch.equal(obj["a"], torch.ones(2))
