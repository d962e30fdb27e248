"""The package's layers, read from the source: imports only point down, no circle, torch stays above the core.

    cli -> build, bench, parity -> calibration, graphs -> method -> backbones -> deploy, engines -> runtime -> core
(deploy and engines sit on runtime and core; the torch layers may read runtime's torch-free helpers.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "halfv_export"
# What each part may import from the project (its own part always). Top-level modules are parts of their own.
ALLOWED = {
    "core": set(),
    "runtime": {"core"},
    "engines": {"core", "runtime"},
    "deploy": {"core", "runtime", "engines"},
    "backbones": {"core", "runtime"},
    "method": {"core", "backbones"},
    "graphs": {"core", "runtime", "backbones", "method"},
    "calibration": {"core", "runtime", "backbones", "method"},
    "parity": {"core", "runtime", "backbones", "method", "graphs"},
    "bench": {"core", "runtime", "backbones", "method", "graphs"},
    "build": {"core", "runtime", "engines", "backbones", "graphs", "calibration", "parity", "bench"},
    "cli": {"core", "runtime", "engines", "deploy", "backbones", "method", "graphs", "calibration", "parity",
            "bench", "build"},
}
TORCH_FREE = ("core", "runtime", "engines", "deploy")
HEAVY = ("torch", "transformers", "onnxscript", "onnx_ir", "safetensors")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield ".".join(parts), path, is_package


def _imports(name: str, path: Path, is_package: bool, top_level_only: bool):
    """(imported absolute module name, line) for every import in the file (or only the module-level ones)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = name if is_package else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from . import x` may name a module
                yield f"{target}.{alias.name}", node.lineno


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "halfv_export" or len(parts) < 2:
        return None
    return parts[1]


MODULES = list(_modules())


@pytest.mark.parametrize("name,path,is_package", MODULES, ids=[m[0] for m in MODULES])
def test_imports_point_down(name, path, is_package):
    part = _part(name)
    if part is None or part not in ALLOWED:
        return  # the package root (__init__)
    bad = []
    for target, line in _imports(name, path, is_package, top_level_only=False):
        other = _part(target)
        if target.split(".")[0] == "halfv_zoo":
            bad.append(f"{path.name}:{line} imports the zoo ({target}); the zoo registers itself instead")
        elif other and other != part and other not in ALLOWED[part] and target != "halfv_export.__version__":
            bad.append(f"{path.name}:{line} ({part}) imports {target} ({other})")
        elif part in TORCH_FREE and target.split(".")[0] in HEAVY:
            bad.append(f"{path.name}:{line} ({part} must stay torch-free) imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_circle_between_modules():
    """Module-level imports form no cycle (a cycle makes import order matter and layers meaningless)."""
    known = {name for name, _, _ in MODULES}
    graph = {}
    for name, path, is_package in MODULES:
        graph[name] = {t for t, _ in _imports(name, path, is_package, top_level_only=True)
                       if t in known and t != name and not name.startswith(t + ".")}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
