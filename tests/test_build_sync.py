"""The top-level BUILD file lists every Python file of the repo, and nothing else.

Rules (see the comment at the top of BUILD):
  * every .py file under kinetics_jax/, pallas_kernels/, scripts/ and tests/ is in the `srcs` of some
    py_library / py_binary / py_test, and every .py file named in a `srcs` exists;
  * every tests/test_*.py has its own py_test named after the module, run by tests/pytest_runner.py
    (main) with the module passed in `args`;
  * every scripts/*.py has its own py_binary named after the script.

BUILD is Starlark, which for this file's style is also valid Python syntax, so it is read with `ast`.
Only literal string lists, `+` of them and `glob([...], exclude = [...])` are understood in `srcs`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "BUILD"
CODE_DIRS = ("kinetics_jax", "pallas_kernels", "scripts", "tests")
RUNNER = "tests/pytest_runner.py"
RULES = ("py_library", "py_binary", "py_test")


@dataclass
class Target:
    kind: str
    name: str
    line: int
    srcs: list[str] = field(default_factory=list)
    main: str | None = None
    args: list[str] = field(default_factory=list)


def _glob(call: ast.Call) -> list[str]:
    include = _strings(call.args[0]) if call.args else []
    exclude: list[str] = []
    for kw in call.keywords:
        if kw.arg == "include":
            include = _strings(kw.value)
        elif kw.arg == "exclude":
            exclude = _strings(kw.value)
    excluded = {p for pattern in exclude for p in _expand(pattern)}
    return sorted({p for pattern in include for p in _expand(pattern)} - excluded)


def _expand(pattern: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern) if p.is_file()}


def _strings(node: ast.expr) -> list[str]:
    """The strings of a Starlark list expression: [..], [..] + [..], glob([..])."""
    if isinstance(node, (ast.List, ast.Tuple)):
        out = []
        for elt in node.elts:
            if not (isinstance(elt, ast.Constant) and isinstance(elt.value, str)):
                raise ValueError(f"BUILD line {elt.lineno}: only string literals are supported in lists")
            out.append(elt.value)
        return out
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _strings(node.left) + _strings(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "glob":
        return _glob(node)
    raise ValueError(f"BUILD line {node.lineno}: unsupported expression {ast.unparse(node)!r} (use a literal list)")


def _string(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    raise ValueError(f"BUILD line {node.lineno}: expected a string literal, got {ast.unparse(node)!r}")


def _file(label: str) -> str:
    """'//:a/b.py' or ':a/b.py' or 'a/b.py' -> 'a/b.py' (files of the top-level package only)."""
    for prefix in ("//:", ":"):
        if label.startswith(prefix):
            return label[len(prefix):]
    return label


def parse_build(text: str) -> list[Target]:
    targets = []
    for stmt in ast.parse(text, filename=str(BUILD)).body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in RULES):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        if "name" not in kw:
            raise ValueError(f"BUILD line {call.lineno}: {call.func.id} without a name")
        target = Target(call.func.id, _string(kw["name"]), call.lineno)
        if "srcs" in kw:
            target.srcs = [_file(s) for s in _strings(kw["srcs"])]
        if "main" in kw:
            target.main = _file(_string(kw["main"]))
        if "args" in kw:
            target.args = _strings(kw["args"])
        targets.append(target)
    return targets


@pytest.fixture(scope="module")
def targets() -> list[Target]:
    assert BUILD.is_file(), f"no top-level BUILD file at {BUILD}"
    found = parse_build(BUILD.read_text())
    assert found, f"{BUILD} declares no {'/'.join(RULES)} targets"
    return found


def _py_files_on_disk() -> set[str]:
    return {p.relative_to(ROOT).as_posix()
            for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")
            if "__pycache__" not in p.parts}


def _listed(targets: list[Target]) -> set[str]:
    return {s for t in targets for s in t.srcs if s.endswith(".py")}


def _bullets(items) -> str:
    return "".join(f"\n  - {i}" for i in sorted(items))


def test_every_python_file_is_in_build(targets):
    missing = _py_files_on_disk() - _listed(targets)
    assert not missing, (f"{len(missing)} .py file(s) not listed in any srcs of {BUILD.name} "
                         f"(add them to the right py_library / py_binary / py_test):{_bullets(missing)}")


def test_build_lists_only_existing_files(targets):
    stale = {s for s in _listed(targets) if not (ROOT / s).is_file()}
    assert not stale, f"{BUILD.name} lists .py file(s) that do not exist:{_bullets(stale)}"


def test_each_test_module_has_a_py_test(targets):
    tests = {t.name: t for t in targets if t.kind == "py_test"}
    problems = []
    for module in sorted((ROOT / "tests").glob("test_*.py")):
        path, name = module.relative_to(ROOT).as_posix(), module.stem
        t = tests.get(name)
        if t is None:
            problems.append(f"{path}: no py_test named {name!r}")
            continue
        if path not in t.srcs:
            problems.append(f"{path}: not in srcs of py_test {name!r} (line {t.line})")
        if t.main != RUNNER or RUNNER not in t.srcs:
            problems.append(f"{path}: py_test {name!r} must have main = {RUNNER!r} and list it in srcs")
        if path not in t.args:
            problems.append(f"{path}: py_test {name!r} must pass it in args (else pytest runs nothing)")
    assert not problems, "test modules without a proper py_test in BUILD:" + _bullets(problems)


def test_every_runner_py_test_runs_existing_modules(targets):
    problems = [f"py_test {t.name!r} (line {t.line}): args {t.args} must be test modules listed in its srcs"
                for t in targets if t.kind == "py_test" and t.main == RUNNER
                if not t.args or any(a not in t.srcs or not (ROOT / a).is_file() for a in t.args)]
    assert not problems, "py_test targets whose args are not their own existing test modules:" + _bullets(problems)


def test_each_script_has_a_py_binary(targets):
    binaries = {t.name: t for t in targets if t.kind == "py_binary"}
    problems = []
    for script in sorted((ROOT / "scripts").glob("*.py")):
        path, name = script.relative_to(ROOT).as_posix(), script.stem
        t = binaries.get(name)
        if t is None:
            problems.append(f"{path}: no py_binary named {name!r}")
        elif path not in t.srcs or (t.main is not None and t.main != path):
            problems.append(f"{path}: py_binary {name!r} (line {t.line}) must list it in srcs (and as main, if set)")
    assert not problems, "scripts without a proper py_binary in BUILD:" + _bullets(problems)
