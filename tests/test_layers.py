"""The import contract (DESIGN.md, "Layers point one way"): no upward imports, no import cycles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
#: `lint-imports`, run by the interpreter of this test run (its console script may not be on PATH).
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_layers_contract_is_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_no_import_cycles():
    graph = grimp.build_graph("envhub", "trainers", exclude_type_checking_imports=True, cache_dir=None)
    assert _cycles(graph) == []


def test_an_upward_import_breaks_the_contract(tmp_path):
    # The contract is not vacuous: the contract layer importing the CLI is reported, by name.
    for part in ("envhub", "trainers"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "envhub" / "env" / "core.py"
    core.write_text(core.read_text() + "\nimport envhub.cli  # an upward import\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1
    assert "envhub.env.core -> envhub.cli" in result.stdout


def test_a_cycle_is_found():
    graph = grimp.build_graph("envhub", exclude_type_checking_imports=True, cache_dir=None)
    graph.add_import(importer="envhub.identity.ids", imported="envhub.env.core")
    assert ["envhub.env.core", "envhub.identity.ids", "envhub.identity.manifest"] in _cycles(graph)
