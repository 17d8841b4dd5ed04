"""The package surface: version, public names, lazy figure modules, the CLI entry points."""

import importlib
import json
import subprocess
import sys
from collections import Counter

import pytest

import tl_grokking
import tl_grokking.cli


def test_version_matches_metadata():
    from importlib.metadata import version

    assert tl_grokking.__version__ == version("tl-grokking")


def test_every_public_name_resolves_once():
    names = tl_grokking.__all__
    assert not [n for n, c in Counter(names).items() if c > 1]
    for name in names:
        assert getattr(tl_grokking, name) is not None, name


def test_public_surface_is_curated_and_each_name_is_its_modules():
    names = tl_grokking.__all__
    assert len(names) <= 40
    for name in names:
        if name == "__version__":
            continue
        module = importlib.import_module(tl_grokking._EXPORTS[name])
        assert name in module.__all__, (name, module.__name__)
        assert getattr(tl_grokking, name) is getattr(module, name)
    assert set(tl_grokking._EXPORTS) == set(names) - {"__version__"}


def test_a_name_that_does_not_exist_raises_attribute_error():
    try:
        tl_grokking.no_such_function  # noqa: B018
    except AttributeError as err:
        assert "no_such_function" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_import_loads_neither_torch_nor_plotly():
    code = (
        "import sys, tl_grokking; "
        "print([m for m in ('torch', 'plotly', 'transformer_lens') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_runs_the_command():
    for module in ("tl_grokking", "tl_grokking.cli"):
        out = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == f"tl-grokking {tl_grokking.__version__}", module


def test_cli_lists_every_subcommand():
    from tl_grokking.cli import SUBCOMMANDS, build_parser

    help_text = build_parser().format_help()
    for name in SUBCOMMANDS:
        assert name in help_text
    assert set(SUBCOMMANDS) >= {"train", "analyze", "ablate", "report", "reproduce"}


# ---- the command line: start-up, help, shared flags --------------------------------------------

HEAVY = ("torch", "transformer_lens", "plotly", "numpy", "safetensors")


def _subparsers():
    from tl_grokking.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices


#: Runs ``python -m tl_grokking ARGS`` (its ``__main__``), then lists what it imported.
_LIST_IMPORTS = """
import json, runpy, sys
sys.argv = ["tl-grokking", *sys.argv[1:]]
try:
    runpy.run_module("tl_grokking", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    status = exit.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


@pytest.mark.parametrize("command", ["", "train", "analyze", "ablate", "report", "reproduce"])
def test_help_imports_no_heavy_module(command):
    """``tl-grokking [COMMAND] --help`` builds the whole parser (every subcommand's flags)
    without importing torch, TransformerLens, plotly, numpy or safetensors."""
    argv = [sys.executable, "-c", _LIST_IMPORTS, *command.split(), "--help"]
    out = subprocess.run(argv, capture_output=True, text=True)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report["status"] == 0 and out.stdout.startswith(f"usage: tl-grokking {command}".strip())
    modules = set(report["modules"])
    assert {f"tl_grokking.cli.{name}" for name in tl_grokking.cli.SUBCOMMANDS} <= modules
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_every_flag_with_a_value_shows_its_default():
    for name, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # positionals, switches (--json, --no-progress), -h, train --out
            text = formatter._expand_help(action)
            assert "[" in text and text.endswith("]"), (name, action.option_strings, text)


def test_progress_flags_are_the_same_everywhere():
    parsers = _subparsers()
    for name in ("train", "analyze", "report", "reproduce"):
        flags = {s for a in parsers[name]._actions for s in a.option_strings}
        assert "--no-progress" in flags and "--progress" not in flags, name
    assert not any("--progress" in a.option_strings for p in parsers.values() for a in p._actions)


def test_python_dash_m_shows_the_help_and_exit_codes(tmp_path):
    help_text = subprocess.run(
        [sys.executable, "-m", "tl_grokking", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert help_text.startswith("usage: tl-grokking") and "reproduce" in help_text
    missing = tmp_path / "missing"
    bad = subprocess.run(
        [sys.executable, "-m", "tl_grokking", "train", "--out", str(missing), "--resume"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == (
        f"tl-grokking train: error: --resume: {missing} holds no run to resume (no "
        "config.json); drop --resume to start a new run there\n"
    )
