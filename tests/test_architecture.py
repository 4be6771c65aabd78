"""The package layout docs/architecture.md describes, checked on the code's own imports.

Imports inside functions count: a circle through a function-level import is still a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "pneumolab"
# Each package, and what it may import besides the top-level modules (config, errors, files, ...).
MAY_IMPORT = {
    "record": set(),
    "data": set(),
    "models": set(),
    "engine": {"data", "models", "record"},
    "outputs": {"data", "models", "engine", "record"},
    "analysis": {"outputs", "record"},
    "cli": {"data", "models", "engine", "record", "outputs", "analysis", "cli"},
}
TOP_LEVEL = {"config", "errors", "files", "extras", "cores", "workers", "version"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """The pneumolab modules `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pneumolab"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pneumolab")}
    return {name for name in found if name in MODULES} - {module_name(path)}


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pneumolab"


def test_no_module_imports_one_that_imports_it_back():
    def cycle_from(start: str, node: str, seen: list[str]) -> list[str] | None:
        for nxt in GRAPH[node]:
            if nxt == start:
                return [*seen, nxt]
            if nxt not in seen:
                found = cycle_from(start, nxt, [*seen, nxt])
                if found:
                    return found
        return None

    cycles = [c for c in (cycle_from(m, m, [m]) for m in GRAPH) if c]
    assert cycles == []


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_package_imports_only_the_steps_before_it(package):
    wrong = {(module, imported) for module, imports in GRAPH.items() if layer(module) == package
             for imported in imports
             if layer(imported) not in MAY_IMPORT[package] | TOP_LEVEL | {package}}
    assert wrong == set()


def test_the_top_level_modules_import_no_package():
    wrong = {(m, i) for m, imports in GRAPH.items() if layer(m) in TOP_LEVEL for i in imports
             if layer(i) not in TOP_LEVEL}
    assert wrong == set()


def test_nothing_imports_a_command_and_only_the_cli_imports_the_training_loop():
    commands = {name for name, path in MODULES.items() if layer(name) == "cli" and "def main(" in path.read_text()}
    assert {"pneumolab.cli.main", "pneumolab.cli.predict", "pneumolab.cli.evaluate"} <= commands
    importers = {m: imports & commands for m, imports in GRAPH.items() if imports & commands}
    # pneumolab-eval applies saved runs as pneumolab-predict does, with its image reader.
    assert importers == {"pneumolab.cli.evaluate": {"pneumolab.cli.predict"}}
    loop_users = {m for m, imports in GRAPH.items() if "pneumolab.engine.train" in imports}
    assert {m for m in loop_users if layer(m) != "engine"} == {"pneumolab.cli.main"}


def test_the_record_and_the_summaries_load_without_torch():
    code = ("import sys; import pneumolab.record.results, pneumolab.record.names, pneumolab.analysis.sweep, "
            "pneumolab.analysis.frame, pneumolab.cli.summarize; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []
