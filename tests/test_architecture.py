"""The house rules of docs/architecture.md, checked on the source: imports flow one way, the CPU
engine has one door, no import circle (lazy imports inside functions count too), no file too long."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "debate_lightning"
MAX_LINES = 600

# room -> rooms it must never import (DESIGN.md: "Which room may import which")
FORBIDDEN = {
    "data": {"debate", "tournament", "training", "serve", "cli", "accel", "models"},
    "prompts": {"debate", "tournament", "training", "serve", "cli", "accel", "models"},
    "models": {"debate", "tournament", "training", "serve", "cli"},
    "accel": {"debate", "tournament", "training", "serve", "cli"},
    "debate": {"tournament", "training", "serve", "cli", "accel"},
    "tournament": {"training", "serve", "cli", "accel"},
    "training": {"serve", "cli"},
}
ACCEL_USERS = {"debate_lightning.models.hf", "debate_lightning.training.policy"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every debate_lightning module ``path`` imports, at the top or inside a function."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("debate_lightning")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(name, path) if m in modules and m != name}
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_circle():
    graph = _graph()
    # a package's __init__ importing its own submodules is how a door works, not a circle
    edges = {m: {d for d in deps if not (m == d.rpartition(".")[0] or d == m.rpartition(".")[0])} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_flow_one_way():
    bad = [f"{m} imports {d}" for m, deps in _graph().items() for d in deps
           if _room(d) in FORBIDDEN.get(_room(m), set())
           and not (m in ACCEL_USERS and _room(d) == "accel")
           and not (_room(m) == "accel" and d == "debate_lightning.models.embedded")]  # the kernels' cache dir
    assert not bad, bad


def test_the_cpu_engine_has_one_door():
    graph = _graph()
    users = {m for m, deps in graph.items() if _room(m) != "accel" and any(_room(d) == "accel" for d in deps)}
    assert users <= ACCEL_USERS, f"only {ACCEL_USERS} may use the engine, not {users - ACCEL_USERS}"
    through_submodules = {m: d for m, deps in graph.items() if _room(m) != "accel"
                          for d in deps if d.startswith("debate_lightning.accel.")}
    assert not through_submodules, f"use `from debate_lightning import accel`: {through_submodules}"


def test_losses_import_nothing_but_torch():
    tree = ast.parse((PACKAGE / "training" / "losses.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= {"torch", "__future__", "math", "typing", "collections"}, names


def test_no_module_over_600_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
