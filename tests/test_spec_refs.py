"""Citations of the behaviour contract point at sections that exist.

Code, tests and docs cite docs/spec.md as "SPEC" followed by a section
number (``1``, ``6.3``) or a list of them (``3, 4``). Every such citation in
the files git tracks, and in the untracked files it does not ignore, must
name a numbered heading of docs/spec.md, and no file may point at the
contract's former place outside the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = "docs/spec.md"
NOT_SCANNED = (CONTRACT,)
NOT_SCANNED_DIRS = ("docs/results/",)  # measured output, not prose that cites the contract

_WORD = "SP" + "EC"  # spelled in two parts so that this file's own patterns are no citations
_NUMBER = r"\d+(?:\.\d+)*"
_CITATION = re.compile(rf"\b{_WORD}\s+({_NUMBER}(?:\s*(?:,|and)\s*{_NUMBER})*)")
_HEADING = re.compile(rf"^#{{1,6}}\s+({_NUMBER})\.?\s")
# The contract's file as it was named outside the repository (any path ending in it).
_OUT_OF_TREE_CONTRACT = re.compile(rf"\b{_WORD}\.md\b")


def spec_sections(text: str) -> set[str]:
    """The section numbers of the contract's headings: ``## 6. Title`` gives "6", ``### 6.3 Title`` "6.3"."""
    return {m.group(1) for line in text.splitlines() if (m := _HEADING.match(line))}


def citations(text: str) -> Iterator[tuple[int, str]]:
    """(line number, section number) for every number cited, ``3`` and ``4`` for a citation of "3, 4"."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        for m in _CITATION.finditer(line):
            for number in re.split(r"\s*(?:,|and)\s*", m.group(1)):
                yield lineno, number


def dangling(text: str, sections: set[str], where: str) -> list[str]:
    """``where:line: <citation>`` for every cited section number that is not a heading of the contract."""
    return [f"{where}:{lineno}: {_WORD} {number}" for lineno, number in citations(text) if number not in sections]


def old_contract(text: str, where: str) -> list[str]:
    """``where:line: <line>`` for every line that names the contract's former file."""
    return [
        f"{where}:{lineno}: {line.strip()}"
        for lineno, line in enumerate(text.splitlines(), start=1)
        if _OUT_OF_TREE_CONTRACT.search(line)
    ]


def repository_files() -> list[str]:
    """Tracked and untracked, not ignored files that exist in the work tree (paths relative to the root)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    inside = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if inside.returncode != 0 or Path(inside.stdout.strip()).resolve() != ROOT:
        pytest.skip("not a git checkout of the repository")
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    paths = sorted({p for p in listed.split("\0") if p})
    return [p for p in paths if p not in NOT_SCANNED and not p.startswith(NOT_SCANNED_DIRS) and (ROOT / p).is_file()]


def texts(paths: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(path, text) of the files that are text (binary files, such as images, are left out)."""
    for path in paths:
        data = (ROOT / path).read_bytes()
        if b"\0" in data:
            continue
        try:
            yield path, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def test_the_contract_has_the_sections_the_code_cites_most():
    """The heading parser sees the contract's sections (an empty set would make every citation dangle)."""
    sections = spec_sections((ROOT / CONTRACT).read_text(encoding="utf-8"))
    assert {"1", "2", "3", "4", "5", "6", "6.1", "6.2", "6.3", "6.4", "7"} <= sections


def test_every_citation_names_a_section_of_the_contract():
    sections = spec_sections((ROOT / CONTRACT).read_text(encoding="utf-8"))
    found = [p for path, text in texts(repository_files()) for p in dangling(text, sections, path)]
    assert not found, f"citations of sections that {CONTRACT} does not have:\n" + "\n".join(found)


def test_no_file_points_at_the_contract_outside_the_repository():
    found = [p for path, text in texts(repository_files()) for p in old_contract(text, path)]
    assert not found, f"files that name the former contract file instead of {CONTRACT}:\n" + "\n".join(found)


def test_the_checker_flags_dangling_citations():
    contract = "# Title\n\n## 1. Inputs\n### 1.7 Writes\n## 3. Distance rules\n## 4. Pre-aggregators\n"
    sections = spec_sections(contract)
    assert sections == {"1", "1.7", "3", "4"}
    cite = _WORD
    text = (
        f"x = 1  # see {cite} 9.9\n"
        f'# ({cite} 1, "Writes"; {cite} 3, 4 and 1.7)\n'
        f"# ({cite} 3, 12)\n"
        f"# {cite}s and {cite} without a number are no citations\n"
        f"# {cite} 1.7.\n"
    )
    assert dangling(text, sections, "t.py") == [f"t.py:1: {cite} 9.9", f"t.py:3: {cite} 12"]
    assert dangling(f"{cite} 1.2", sections, "t.py") == [f"t.py:1: {cite} 1.2"]


def test_the_checker_flags_the_former_contract_file():
    text = f"ok: docs/spec.md\nfollows ../shared/{_WORD}.md literally\nsee {_WORD}.md\n"
    assert old_contract(text, "t.py") == [f"t.py:2: follows ../shared/{_WORD}.md literally", f"t.py:3: see {_WORD}.md"]
