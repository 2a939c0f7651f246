"""No import cycle among the modules of robustagg/, counting imports inside functions too.

A lazy import still makes two modules depend on each other (``cli`` and
``sim.commands`` once did, one of them lazily). An import of a module's own
ancestor package is no edge: Python has started that
package's ``__init__`` before any of its submodules, so it cannot close a
cycle that would leave a name undefined (``from . import _C`` reaches the
compiled extension through it).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robustagg"


def module_names(root: Path) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_edges(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its code (``from . import x`` names x)."""
    modules = module_names(root)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The cycles a depth-first walk meets, each as its modules in order, first one repeated at the end."""
    found, state, stack = [], {}, []

    def walk(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == "open":
                found.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                walk(v)
        stack.pop()
        state[u] = "done"

    for m in sorted(edges):
        if m not in state:
            walk(m)
    return found


def test_no_import_cycle_in_the_package():
    edges = import_edges(PACKAGE)
    assert len(edges) > 40 and sum(map(len, edges.values())) > 100  # the walk saw the package
    assert cycles(edges) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(edges))


def test_the_walk_finds_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text(
        "from .. import ext  # the ancestor package: no edge\n\n\ndef f():\n    from ..a import thing  # lazy, still an edge\n"
    )
    edges = import_edges(pkg)
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.sub.c"] == {"pkg.a"}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
