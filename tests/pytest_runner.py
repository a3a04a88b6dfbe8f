"""Entry point (`main`) of every Bazel py_test in BUILD: runs the test modules given as args under pytest.

    py_test(name = "test_foo", srcs = ["tests/test_foo.py", "tests/pytest_runner.py"],
            main = "tests/pytest_runner.py", args = ["tests/test_foo.py"], ...)

Bazel starts tests in the runfiles copy of the repo, so the paths in args are repo-relative. Exits with
pytest's status; "no tests collected" counts as a failure, as in .ci/run.
"""

from __future__ import annotations

import sys

import pytest


def main(argv: list[str]) -> int:
    if not argv:
        print("pytest_runner: no test module given (set args in the py_test)", file=sys.stderr)
        return 2
    # The runfiles tree is not the place for a .pytest_cache.
    status = pytest.main(["-p", "no:cacheprovider", *argv])
    if status == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(f"pytest_runner: no tests collected from {argv}", file=sys.stderr)
        return 1
    return int(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
