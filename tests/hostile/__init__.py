"""The hostile harness: several hundred bad inputs to the ``tl-grokking`` command.

Each case (:mod:`hostile.cases`) builds its input in a temporary directory from small runs
trained once per session (:func:`hostile.harness.build_env`), runs ``tl_grokking.cli.main(argv)``
in-process and is classified (:func:`hostile.harness.run_case`) as one of
:data:`hostile.harness.OUTCOMES`: handled well, unclear message, traceback, silent corruption,
code execution. ``tests/test_hostile.py`` asserts that every case is handled well;
``python -m tests.hostile`` prints the table of outcomes (docs/bad_input.md).
"""
