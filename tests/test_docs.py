"""Every markdown document the code and the docs cite exists in the repository, and every relative link resolves.

Scanned: each .py file under kinetics_jax/, pallas_kernels/, scripts/ and tests/, README.md and docs/*.md.

- A citation is a token naming a markdown file: a bare file name, docs/<name>, or any relative path ending in the
  markdown extension. In .py files and README.md it is resolved from the repository root. Inside docs/*.md it
  may also be resolved from docs/, where the documents cite each other by their bare names.
- A link is a relative markdown link target, `[text](target)` or `[label]: target`, in README.md or docs/*.md,
  outside fenced code. It is resolved from the linking file's own directory, as a markdown renderer does; a
  `#fragment` is ignored.
- URLs are not checked. Nor are `GENERATED` names: files the code writes at run time, not documents it cites.

Reads the source tree itself (not Bazel's runfiles), imports no jax, and takes milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("kinetics_jax", "pallas_kernels", "scripts", "tests")
DOCS = ROOT / "docs"
EXT = ".md"
# Markdown files the code writes (kinetics_jax/study/report.py, scripts/study.py): outputs, not citations.
GENERATED = frozenset({"summary" + EXT})

_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_CITATION = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w])")
_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _scanned() -> list[Path]:
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files) + [ROOT / "README.md"] + sorted(DOCS.glob("*" + EXT))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _exists(target: str, bases: list[Path]) -> bool:
    return any((base / target).is_file() for base in bases)


def _citation_problems(path: Path, lines: list[str]) -> list[str]:
    bases = [ROOT] + ([DOCS] if path.parent == DOCS else [])
    problems = []
    for number, line in enumerate(lines, 1):
        for token in _CITATION.findall(_URL.sub(" ", line)):
            target = token[2:] if token.startswith("./") else token
            if Path(target).name in GENERATED or _exists(target, bases):
                continue
            problems.append(f"{_name(path)}:{number}: cites {token}, which is not in the repository")
    return problems


def _link_targets(lines: list[str]):
    """(line number, target) of every relative link outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(lines, 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        targets = _INLINE_LINK.findall(line)
        reference = _REFERENCE_LINK.match(line)
        if reference:
            targets.append(reference.group(1))
        for target in targets:
            if target.startswith("#") or _URL.match(target) or target.lower().startswith("mailto:"):
                continue
            yield number, target


def _link_problems(path: Path, lines: list[str]) -> list[str]:
    problems = []
    for number, target in _link_targets(lines):
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        if not file_part:
            continue
        resolved = (path.parent / file_part) if not file_part.startswith("/") else ROOT / file_part.lstrip("/")
        if not resolved.exists():
            problems.append(f"{_name(path)}:{number}: links to {target}, which does not exist "
                            f"(relative to {_name(path.parent) if path.parent != ROOT else 'the repository root'})")
    return problems


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def test_cited_markdown_documents_exist():
    problems = [p for path in _scanned() for p in _citation_problems(path, _read(path))]
    assert not problems, ("markdown documents cited but absent from the repository (cite docs/<name> from the "
                          "repository root):\n  " + "\n  ".join(problems))


def test_relative_links_in_readme_and_docs_resolve():
    problems = []
    for path in [ROOT / "README.md"] + sorted(DOCS.glob("*" + EXT)):
        problems += _link_problems(path, _read(path))
    assert not problems, "broken relative links:\n  " + "\n  ".join(problems)


def test_the_checker_finds_what_it_should():
    """The patterns on lines written here (nothing under ROOT is read)."""
    absent = "NO_SUCH_DOC" + EXT
    lines = [f"see {absent} and docs/{absent}", "an output: runs/x/summary" + EXT,
             "a url https://example.com/" + absent, "present: docs/policies" + EXT + " and README" + EXT]
    problems = _citation_problems(ROOT / "kinetics_jax" / "x.py", lines)
    assert [p.split(": cites ")[1].split(",")[0] for p in problems] == [absent, f"docs/{absent}"]
    assert all(p.startswith("kinetics_jax/x.py:1:") for p in problems)
    doc = DOCS / ("x" + EXT)
    assert _citation_problems(doc, ["cost_model" + EXT]) == []            # a sibling of docs/*.md, by bare name
    links = [f"[a](cost_model{EXT}#units)", f"[b](missing{EXT})", f"![c](../README{EXT})", "```",
             f"[d](in_code{EXT})", "```", f"[ref]: ./also_missing{EXT}", f"[e](https://example.com/x{EXT})",
             "[f](#anchor)"]
    found = _link_problems(doc, links)
    assert [p.split(": links to ")[1].split(",")[0] for p in found] == [f"missing{EXT}", f"./also_missing{EXT}"]
