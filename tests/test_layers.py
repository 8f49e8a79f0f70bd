"""The house rules of the package's imports: layers, no cycles, no hidden imports.

- Packages along the data flow import only downward (the import-linter contract in
  pyproject.toml, also run by CI as `lint-imports`).
- No import cycle between modules.
- No mergepkg import inside a function, where it would hide a cycle; the exceptions
  defer a heavy library and say which.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mergepkg"

# (importing module, imported module): imports inside a function, on purpose
DEFERRED = {
    ("mergepkg.methods.fused", "mergepkg.methods.kernels.compiled"): "imports numba (0.3 s) on first use",
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> list[tuple[str, str, bool, int]]:
    """(importer, imported, inside a function, line) for every mergepkg import."""
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module(path)
        tree = ast.parse(path.read_text())
        nested = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if n is not f
        }
        typing_only = {
            id(n)
            for node in tree.body
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mergepkg"):
                for alias in node.names:  # `from pkg import module` imports the module
                    target = f"{node.module}.{alias.name}"
                    found.append(
                        (importer, target if target in modules else node.module, id(node) in nested, node.lineno)
                    )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("mergepkg"):
                        found.append((importer, alias.name, id(node) in nested, node.lineno))
    return found


def test_packages_import_only_downward():
    linter = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_import_cycle_between_modules():
    graph = nx.DiGraph()
    for importer, imported, _, _ in _imports():
        if importer != "mergepkg" and imported != importer:  # the package root only re-exports, lazily
            graph.add_edge(importer, imported)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles[:5])


def test_no_mergepkg_import_hides_inside_a_function():
    hidden = [f"{a}:{line} imports {b}" for a, b, inside, line in _imports() if inside and (a, b) not in DEFERRED]
    assert not hidden, "\n".join(hidden)
    used = {(a, b) for a, b, inside, _ in _imports() if inside}
    assert set(DEFERRED) <= used, f"stale exceptions: {set(DEFERRED) - used}"
