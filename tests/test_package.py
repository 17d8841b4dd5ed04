"""The package surface: version, public names, lazy figure modules, the CLI entry points."""

import importlib
import subprocess
import sys
from collections import Counter

import tl_grokking


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
    code = "import sys, tl_grokking; print([m for m in ('torch', 'plotly', 'transformer_lens') if m in sys.modules])"
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
