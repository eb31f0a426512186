"""pyproject declares what the package imports, and nothing it does not."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# Needed without an import of ours: transformers reads the embedded model's GGUF file with it.
USED_INDIRECTLY = {"gguf"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules() -> set[str]:
    """Every module imported anywhere in the package, lazy imports inside functions included."""
    found = set()
    for path in (REPO / "debate_lightning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", "debate_lightning"}


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_normalise(Requirement(r).name) for r in project["dependencies"]}


def test_every_import_is_declared_and_every_declared_package_is_used():
    dists = packages_distributions()
    imported = {}
    for module in _imported_top_level_modules():
        assert module in dists, f"`import {module}` in debate_lightning/, but no installed distribution provides it"
        imported[module] = {_normalise(d) for d in dists[module]}
    declared = _declared()
    undeclared = {m: d for m, d in imported.items() if not d & declared}
    assert not undeclared, f"imported but not in pyproject dependencies: {undeclared}"
    used = set().union(*imported.values()) | USED_INDIRECTLY
    assert declared <= used, f"declared in pyproject but never imported: {sorted(declared - used)}"
    assert "datasets" not in declared
