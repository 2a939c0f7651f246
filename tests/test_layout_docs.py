"""The README's Layout section and the code layout page of docs/design.md match the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block(readme: str) -> list[str]:
    """The lines of the first fenced block after the README's ``## Layout`` heading."""
    after = readme[readme.index("## Layout\n") :]
    start = after.index("```\n") + 4
    return after[start : after.index("```\n", start)].splitlines()


def named_paths(lines: list[str]) -> list[str]:
    """The paths a layout block names in its first column (``a.py, b/`` names two; ``*`` globs)."""
    paths = []
    for line in lines:
        if not line or line.startswith(" "):
            continue  # a continuation line
        paths += re.match(r"(?:\S+, )*\S+", line).group(0).split(", ")
    return paths


def test_every_path_in_the_readme_layout_exists():
    paths = named_paths(layout_block((ROOT / "README.md").read_text()))
    assert len(paths) > 15
    missing = [p for p in paths if not (list(ROOT.glob(p)) if "*" in p else (ROOT / p).exists())]
    assert not missing, f"README Layout names paths that do not exist: {missing}"


def test_every_module_is_named_in_the_readme_layout_or_the_design_page():
    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "design.md").read_text()
    modules = [p.name for p in (ROOT / "robustagg").iterdir() if p.suffix == ".py" and p.stem != "__main__"]
    modules = [m for m in modules if m != "__init__.py"]
    packages = [p.name + "/" for p in (ROOT / "robustagg").iterdir() if (p / "__init__.py").exists()]
    unnamed = [m for m in modules + packages if m not in text]
    assert not unnamed, f"modules of robustagg/ that neither the README Layout nor docs/design.md names: {unnamed}"


def test_the_path_parser_reads_first_columns_only():
    lines = ["a/b.py          one thing", "                 more about it, c/d.py", "x.py, y/  two things"]
    assert named_paths(lines) == ["a/b.py", "x.py", "y/"]
