"""Every snippet of README.md and docs/*.md runs as written, from a clean clone.

How the snippets are checked (one test per markdown file, blocks in document order):

* Every ```` ```python ```` block is **executed**. The blocks of one file share one namespace
  (a later block may use the names of an earlier one), each file gets a fresh namespace and a
  fresh temporary working directory that holds a copy of ``tests/data/`` and ``examples/`` —
  what a user who runs the snippets from the repository root sees, without writing into the
  repository. Tracebacks point at the markdown file's own lines. There is no opt-out: a python
  block that would take minutes does not belong in the docs; show it as a shell command in a
  ```` ```bash ```` block instead (parsed, not executed — e.g. the paper's 40k-epoch run).
* Every line of a ```` ```bash ```` / ```` ```sh ```` / ```` ```console ```` block (for
  ``console``, the lines starting with ``$``) that invokes ``tl-grokking`` (or ``python -m
  tl_grokking``) is **parsed** by the real parser, ``tl_grokking.cli.build_parser()``: an
  argparse error (``SystemExit``) fails the test. A checkpoint file it names must exist in the
  repository.
* A shell block preceded by the line ``<!-- docs-test: run -->`` is also **executed**, in the
  same working directory and in order with the python blocks: ``tl-grokking`` commands
  in-process through ``tl_grokking.cli.main`` (exit status 0 required), plus ``cp -r``,
  ``mkdir -p`` and ``python examples/<script>.py`` (run with ``runpy``). Mark only cheap blocks
  (small p, few epochs, the shipped checkpoint or run of ``tests/data/``). Parsed but not run,
  because they take minutes to hours: ``tl-grokking reproduce [--quick]`` (README, user guide;
  ~40 s and ~1 h), the paper's ``tl-grokking train`` runs (training guide), the benchmarks.

Torch runs on one thread here (the snippets' matrices are tiny; two threads on a busy two-core
machine are several times slower). The whole module takes well under a minute.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import shutil
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tl_compat import tl_state

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_MARKER = "<!-- docs-test: run -->"
SHELL_LANGS = {"bash", "sh", "shell", "console"}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


# ---------------------------------------------------------------------------------------------
# Reading the markdown
# ---------------------------------------------------------------------------------------------


@dataclass
class Block:
    path: Path
    line: int  # 1-based line number of the block's first code line
    lang: str
    code: str
    run: bool = False  # a shell block marked RUN_MARKER

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


@dataclass
class Command:
    block: Block
    line: int
    text: str
    argv: list[str]  # the whole segment, program included
    segments: list[list[str]] = field(default_factory=list)


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with their languages and line numbers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        previous = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.relative_to(REPO)}:{i + 1}: unclosed code fence")
        blocks.append(
            Block(path, i + 2, lang.lower(), "\n".join(body) + "\n", previous == RUN_MARKER)
        )
        i = j + 1
    return blocks


def _split_segments(tokens: list[str]) -> list[list[str]]:
    segments, current = [], []
    for token in tokens:
        if token in ("&&", ";", "||", "|", "&"):
            if current:
                segments.append(current)
            current = []
        else:
            current.append(token)
    if current:
        segments.append(current)
    return segments


def shell_lines(block: Block) -> list[tuple[int, str, list[list[str]]]]:
    """``(line, text, segments)`` of each shell command of a block; a segment is one argv."""
    out = []
    raw = block.code.splitlines()
    i = 0
    while i < len(raw):
        line_no, text = block.line + i, raw[i]
        while text.endswith("\\") and i + 1 < len(raw):  # line continuation
            i += 1
            text = text[:-1] + " " + raw[i]
        i += 1
        if block.lang == "console":
            if not text.lstrip().startswith("$"):
                continue  # output
            text = text.lstrip()[1:]
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        segments = []
        for segment in _split_segments(list(lexer)):
            while segment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[0]):
                segment = segment[1:]  # VAR=value prefixes
            if segment:
                segments.append(segment)
        out.append((line_no, text.strip(), segments))
    return out


def cli_argv(segment: list[str]) -> list[str] | None:
    """The arguments of a ``tl-grokking`` / ``python -m tl_grokking[.cli]`` segment, else None."""
    if segment[0] == "tl-grokking":
        return segment[1:]
    if (
        len(segment) >= 3
        and segment[0] in ("python", "python3")
        and segment[1] == "-m"
        and segment[2] in ("tl_grokking", "tl_grokking.cli")
    ):
        return segment[3:]
    return None


ALL_BLOCKS = {path: read_blocks(path) for path in DOC_FILES}


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def parse_cli(argv: list[str], where: str) -> None:
    """Parse with the real parser; any argparse error fails with its message."""
    from tl_grokking.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exit_:
        asks_help = any(a in ("-h", "--help", "--version") for a in argv)
        if exit_.code == 0 and asks_help:
            return
        pytest.fail(
            f"{where}: `tl-grokking {shlex.join(argv)}` does not parse:\n{stderr.getvalue()}",
            pytrace=False,
        )


def run_segment(segment: list[str], where: str) -> None:
    """Execute one segment of a RUN_MARKER block in the current directory."""
    argv = cli_argv(segment)
    if argv is not None:
        from tl_grokking.cli import main

        parse_cli(argv, where)
        rc = main(argv)
        assert rc == 0, f"{where}: `tl-grokking {shlex.join(argv)}` exited with status {rc}"
        return
    prog, args = segment[0], segment[1:]
    if prog == "cp" and args[:1] == ["-r"] and len(args) == 3:
        src, dst = Path(args[1]), Path(args[2])
        dst = dst / src.name if dst.is_dir() else dst
        assert dst.parent.is_dir(), f"{where}: cp: {dst.parent} does not exist"
        shutil.copytree(src, dst)
    elif prog == "mkdir" and args[:1] == ["-p"]:
        for name in args[1:]:
            Path(name).mkdir(parents=True, exist_ok=True)
    elif prog in ("python", "python3") and args and re.fullmatch(r"examples/\w+\.py", args[0]):
        old_argv = sys.argv
        sys.argv = list(args)
        try:
            runpy.run_path(args[0], run_name="__main__")
        except SystemExit as exit_:
            assert exit_.code in (0, None), f"{where}: `{shlex.join(segment)}` exited {exit_.code}"
        finally:
            sys.argv = old_argv
    else:
        pytest.fail(
            f"{where}: cannot execute `{shlex.join(segment)}` in a '{RUN_MARKER}' block "
            "(only tl-grokking, cp -r, mkdir -p and python examples/*.py are run)",
            pytrace=False,
        )


def run_python(block: Block, namespace: dict) -> None:
    # Pad with blank lines so that tracebacks give the markdown file's own line numbers.
    code = "\n" * (block.line - 1) + block.code
    exec(compile(code, str(block.path), "exec"), namespace)  # noqa: S102


@pytest.fixture
def doc_workdir(tmp_path, monkeypatch):
    """A working directory that looks like the repository root to the snippets."""
    shutil.copytree(DATA, tmp_path / "tests" / "data", ignore=shutil.ignore_patterns("*.py"))
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    from tl_grokking.data.tasks import TASKS

    tasks = dict(TASKS)  # snippets may register tasks: keep them out of the other tests
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield tmp_path
    finally:
        torch.set_num_threads(threads)
        TASKS.clear()
        TASKS.update(tasks)


def _doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("path", DOC_FILES, ids=_doc_id)
def test_snippets_run(path: Path, doc_workdir: Path, monkeypatch):
    """Run the python blocks and the marked shell blocks; parse every tl-grokking line."""
    # A real module, so that what needs one (a dataclass defined in a snippet) finds it.
    module = types.ModuleType("docs_snippets")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for block in ALL_BLOCKS[path]:
        if block.lang == "python":
            try:
                run_python(block, namespace)
            except Exception as err:
                raise AssertionError(
                    f"the python block at {block.where} fails: {type(err).__name__}: {err}"
                ) from err
        elif block.lang in SHELL_LANGS:
            for line, _text, segments in shell_lines(block):
                where = f"{_doc_id(path)}:{line}"
                for segment in segments:
                    argv = cli_argv(segment)
                    if block.run:
                        run_segment(segment, where)
                    elif argv is not None:
                        parse_cli(argv, where)
    check = POST_CHECKS.get(_doc_id(path))
    if check is not None:
        check(doc_workdir, namespace)


# What a run must have produced, per file: the snippets did what the text says.


def _check_readme(workdir: Path, ns: dict) -> None:
    from tl_grokking.model.transformer import GrokModel

    assert isinstance(ns["model"], GrokModel)
    assert isinstance(ns["paper"], GrokModel) and ns["paper"].cfg.d_vocab == 114
    assert ns["result"].metrics["test_acc"] == 1.0, "the tour's p = 23 run should grok"
    assert len(ns["keys"].keys) >= 1
    report = workdir / "runs" / "tour" / "report.html"
    assert report.is_file() and report.stat().st_size > 100_000
    # The shell tour ran on a copy of the shipped run, not on tests/data itself.
    assert (workdir / "runs" / "p23" / "measures.csv").is_file()
    assert (workdir / "runs" / "p23" / "report.html").is_file()
    assert not (workdir / "tests" / "data" / "run_p23" / "measures.csv").exists()


def _check_user_guide(workdir: Path, ns: dict) -> None:
    assert ns["result"].grok_epoch is not None
    assert (workdir / "runs" / "guide" / "report.html").is_file()
    assert (workdir / "runs" / "w_e.html").is_file()


POST_CHECKS = {"README.md": _check_readme, "docs/user_guide.md": _check_user_guide}


# ---------------------------------------------------------------------------------------------
# Static checks of the docs
# ---------------------------------------------------------------------------------------------


def test_readme_has_an_executed_tour():
    """The README's python tour and at least one executed shell block exist."""
    blocks = ALL_BLOCKS[REPO / "README.md"]
    assert any(b.lang == "python" for b in blocks)
    assert any(b.lang in SHELL_LANGS and b.run for b in blocks)


def test_run_markers_precede_shell_blocks():
    """A misplaced marker would silently leave a block unexecuted."""
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        marked = {b.line - 1 for b in ALL_BLOCKS[path] if b.run}  # the fence lines
        for i, line in enumerate(lines):
            if line.strip() != RUN_MARKER:
                continue
            fence = next(j for j in range(i + 1, len(lines)) if lines[j].strip())
            assert fence + 1 in marked, f"{_doc_id(path)}:{i + 1}: marker not before a block"
            block = next(b for b in ALL_BLOCKS[path] if b.line - 1 == fence + 1)
            assert block.lang in SHELL_LANGS, f"{block.where}: only shell blocks are marked"


def test_snippets_need_nothing_outside_the_repository():
    """No code block names the shared fixtures or a path outside the clone; every checkpoint
    file a parsed-only command names is in the repository."""
    for path, blocks in ALL_BLOCKS.items():
        for block in blocks:
            if block.lang != "python" and block.lang not in SHELL_LANGS:
                continue
            for bad in ("shared/fixtures", "../", "/work/", "paper_original_format"):
                assert bad not in block.code, f"{block.where}: code names {bad!r}"
            if block.lang not in SHELL_LANGS or block.run:
                continue
            for line, _text, segments in shell_lines(block):
                for segment in segments:
                    argv = cli_argv(segment) or []
                    for arg in argv:
                        if arg.endswith(CHECKPOINT_SUFFIXES) and not arg.startswith("-"):
                            assert (REPO / arg).is_file(), (
                                f"{_doc_id(path)}:{line}: names {arg}, which is not in the "
                                "repository (use tests/data/paper_no_wd.safetensors)"
                            )


_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)]*)?\)")


def test_relative_links_resolve():
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in _LINK.finditer(text):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            line = text.count("\n", 0, match.start()) + 1
            assert (path.parent / target).exists(), f"{_doc_id(path)}:{line}: broken link {target}"


def test_shell_line_parsing():
    """The parser of shell lines the checks above rely on."""
    block = Block(REPO / "README.md", 1, "bash", "", False)
    block.code = (
        'python3 -m venv .venv && pip install -e ".[dev]" && tl-grokking reproduce --quick\n'
        "# a comment\n"
        "OMP_NUM_THREADS=1 tl-grokking train --out runs/x \\\n    --p 23   # trailing comment\n"
        "python -m tl_grokking ablate ckpt.safetensors --json; echo done\n"
    )
    lines = shell_lines(block)
    assert [ln for ln, _, _ in lines] == [1, 3, 5]
    cli = [cli_argv(s) for _, _, segs in lines for s in segs if cli_argv(s) is not None]
    assert cli == [
        ["reproduce", "--quick"],
        ["train", "--out", "runs/x", "--p", "23"],
        ["ablate", "ckpt.safetensors", "--json"],
    ]
    console = Block(REPO / "README.md", 10, "console", "$ tl-grokking analyze r\nout 1\n")
    assert [segs for _, _, segs in shell_lines(console)] == [[["tl-grokking", "analyze", "r"]]]


def test_parse_cli_rejects_a_bad_line():
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        parse_cli(["train", "--no-such-flag"], "here")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        parse_cli(["analyze", "runs/x", "[--key-freqs", "14]"], "here")
    parse_cli(["train", "--help"], "here")  # help exits 0: accepted


# ---------------------------------------------------------------------------------------------
# The examples the docs point at, on the shipped data
# ---------------------------------------------------------------------------------------------


def test_inspect_checkpoint_example_on_the_shipped_run(doc_workdir: Path):
    """The example on the shipped run's final checkpoint (p = 23: seconds; the default, the
    p = 113 checkpoint, takes longer and is checked statically below)."""
    out = doc_workdir / "tour.html"
    run_segment(
        ["python", "examples/inspect_checkpoint.py", "tests/data/run_p23", "--out", str(out)],
        "examples/inspect_checkpoint.py",
    )
    page = out.read_text(encoding="utf-8")
    assert "run_p23" in page and "W_E in the Fourier basis" in page and "Ablations" in page


def test_inspect_checkpoint_example_defaults_to_the_shipped_checkpoint():
    source = (REPO / "examples" / "inspect_checkpoint.py").read_text(encoding="utf-8")
    assert '"tests" / "data" / "paper_no_wd.safetensors"' in source
    assert "shared" not in source


def test_reproduce_paper_example_on_the_shipped_run(doc_workdir: Path, shipped_run: Path):
    run_segment(
        ["python", "examples/reproduce_paper.py", str(shipped_run), "--out", "figs"],
        "examples/reproduce_paper.py",
    )
    written = sorted(p.stem for p in (doc_workdir / "figs").glob("*.html"))
    assert {"loss_curves", "embedding", "ablations", "trig_identity"} <= set(written), written


# ---------------------------------------------------------------------------------------------
# The shipped data (tests/data/README.md)
# ---------------------------------------------------------------------------------------------

FIXTURE = REPO.parent / "shared" / "fixtures" / "paper_original_format_no_wd.pth"


def _make_data_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", DATA / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_checkpoint_is_small_and_says_where_it_came_from():
    import json

    from safetensors import safe_open

    from tl_grokking.runs.checkpoints import detect_format, load_run

    path = DATA / "paper_no_wd.safetensors"
    assert path.stat().st_size < 1_500_000
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}  # noqa: SIM118
    assert dtypes == {"F32"}
    assert meta["p"] == "113" and meta["epoch"] == "4999"
    assert meta["source"] == "paper_original_format_no_wd.pth"
    assert len(meta["source_sha256"]) == 64
    assert json.loads(meta["model_config"])["trainable_biases"] == "mlp"
    assert detect_format(path) == "safetensors"
    run = load_run(path)
    assert run.epochs == [4999] and run.model_config.p == 113
    assert run.model_config.trainable_biases == "mlp" and run.model_config.d_vocab_out == 114


def test_shipped_checkpoint_is_the_authors_model_bit_for_bit():
    if not FIXTURE.is_file():
        pytest.skip(f"the source fixture is not here ({FIXTURE}: shared/ not checked out)")
    import hashlib

    from safetensors import safe_open

    from tl_grokking.runs.checkpoints import load_checkpoint

    with safe_open(str(DATA / "paper_no_wd.safetensors"), "pt") as fh:
        assert fh.metadata()["source_sha256"] == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    ours = load_checkpoint(DATA / "paper_no_wd.safetensors")
    authors = load_checkpoint(FIXTURE)
    a, b = tl_state(ours), tl_state(authors)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shipped_checkpoint_solves_the_task():
    from tl_grokking.analysis.grid import all_logits, loss_and_accuracy
    from tl_grokking.data.tasks import ModularAddition
    from tl_grokking.runs.checkpoints import load_checkpoint

    model = load_checkpoint(DATA / "paper_no_wd.safetensors", p=113)
    task = ModularAddition(113)
    loss, acc = loss_and_accuracy(all_logits(model, task), task.labels())
    assert acc == 1.0
    assert 1.0e-7 < loss < 1.2e-7  # 1.111e-7, as the authors' file (docs/checkpoints.md)


def test_shipped_run_is_the_documented_configuration_and_grokked():
    from tl_grokking.runs.checkpoints import load_run
    from tl_grokking.runs.rundir import read_json, read_metrics

    config = read_json(DATA / "run_p23" / "config.json")
    expected = _make_data_module().RUN_P23_CONFIG
    assert {k: config[k] for k in expected} == expected
    run = load_run(DATA / "run_p23")
    assert run.epochs == list(range(0, 601, 50))
    metrics = read_metrics(DATA / "run_p23")
    assert metrics[0]["test_acc"] < 0.2 and metrics[-1]["test_acc"] == 1.0
    assert metrics[-1]["epoch"] == 600
    size = sum(f.stat().st_size for f in (DATA / "run_p23").rglob("*") if f.is_file())
    assert size < 1_200_000
    # Nothing an analysis writes into a run directory is shipped.
    names = {f.name for f in (DATA / "run_p23").iterdir()}
    assert names == {"config.json", "metrics.jsonl", "checkpoints", "resume.safetensors"}


# ---------------------------------------------------------------------------------------------
# Module and API references in the prose
# ---------------------------------------------------------------------------------------------

_DOTTED = re.compile(r"`(tl_grokking(?:\.\w+)+)")


def _resolve(dotted: str) -> None:
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return
    raise ModuleNotFoundError(dotted)


def test_dotted_references_resolve():
    """Every `tl_grokking.x.y` the docs name is a module, or an attribute of one."""
    broken = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in _DOTTED.finditer(text):
            try:
                _resolve(match.group(1))
            except (ImportError, AttributeError) as err:
                line = text.count("\n", 0, match.start()) + 1
                broken.append(f"{_doc_id(path)}:{line}: {match.group(1)} ({err})")
    assert not broken, "references to names that do not exist:\n  " + "\n  ".join(broken)


def test_user_guide_concepts_table_names_real_functions():
    """In the user guide's "Concepts → API" table, each function is in a module of its row."""
    import importlib

    text = (REPO / "docs" / "user_guide.md").read_text(encoding="utf-8")
    section = text.split("## Concepts → API", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "`tl_grokking." in ln]
    assert len(rows) >= 10
    for row in rows:
        _, names, modules = [cell.strip() for cell in row.strip("|").split("|")]
        mods = [importlib.import_module(m) for m in re.findall(r"`(tl_grokking[\w.]+)`", modules)]
        for name in re.findall(r"`(\w+)`", names):
            assert any(hasattr(m, name) for m in mods), f"{name} is in none of {modules}"
