"""``python -m tests.hostile [-v] [FILTER]``: run the hostile harness and print its table.

Prints the counts (``| outcome | cases |`` and one row per family), then every case that was
not handled well with what happened; ``-v`` lists every case. ``FILTER`` keeps the cases whose
id contains it. Exit status 1 if any case was not handled well.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `hostile` as in the tests

from hostile.cases import CASES  # noqa: E402
from hostile.harness import HANDLED, build_env, run_all, tables  # noqa: E402


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    words = [a for a in argv if a != "-v"]
    cases = [c for c in CASES if not words or any(w in c.id for w in words)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tl_hostile_") as root:
        env = build_env(Path(root) / "env")
        outcomes = list(run_all(cases, env, Path(root) / "cases"))
    print(tables(outcomes))
    print(f"\n{len(outcomes)} cases in {time.perf_counter() - start:.0f} s")
    shown = [o for o in outcomes if verbose or o.outcome != HANDLED]
    if shown:
        print("\n| case | outcome | what happened |\n| --- | --- | --- |")
        for o in shown:
            detail = o.detail.replace("|", "\\|").replace("\n", " ")[:400]
            print(f"| {o.case.id} | {o.outcome} | {detail} |")
    return 0 if all(o.outcome == HANDLED for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
