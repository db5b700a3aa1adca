"""The package layout the README's "Architecture" section describes, checked on the source.

- imports point down the layers (function-level "lazy" imports included);
- no import cycle between library modules;
- no module imports a `_private` name from another module;
- no library file is longer than 400 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"dit_cache": ROOT / "dit_cache", "dit_cache.adapters": ROOT / "adapters", "dit_cache.kernels": ROOT / "kernels"}
MAX_LINES = 400

#: Layer of each top-level part of the package; a module may import its own layer or lower.
LAYERS = {
    "adapters": 0, "kernels": 0, "version": 0, "_common": 0,
    "runtime": 1,
    "methods": 2,
    "api": 3, "schedules": 3, "schedule_file": 3, "__init__": 3,
    "bench": 4, "calibration": 4, "finetuning": 4, "conversion": 4, "zoo": 4, "testing": 4,
    "cli": 5,
}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if package == "dit_cache" and path.is_relative_to(ROOT / "dit_cache" / "zoo") and "mnist-" in str(path):
                continue
            rel = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *rel))
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _runtime_nodes(tree: ast.AST):
    """Every node, at any depth, except those under `if TYPE_CHECKING:` (never executed)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(module: str, path: Path):
    """(imported module, imported names) for every import statement that runs, at any depth."""
    is_package = path.name == "__init__.py"
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]


def _edges():
    """module -> library modules it imports (a `from pkg import sub` names the submodule)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names in _imports(module, path):
            if not target.startswith("dit_cache"):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                edges[module].update(subs)
            if target in MODULES and len(subs) < len(names or [None]):
                edges[module].add(target)
    return edges


def test_every_package_is_installed():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert packages <= listed, f"packages missing from pyproject's list: {sorted(packages - listed)}"


def test_no_library_file_is_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in _edges().items():
        for target in targets:
            if target == "dit_cache" and _part(module) != "__init__":
                wrong.append(f"{module} imports the package root (import from the defining module instead)")
            elif LAYERS[_part(target)] > LAYERS[_part(module)]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "upward imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = _edges()
    # the root re-exports the public API: an edge into it is reported by the layer test
    edges = {m: {t for t in ts if t != "dit_cache"} for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_imported_from_another_module(module):
    private = [
        f"{target}.{name}"
        for target, names in _imports(module, MODULES[module])
        if target.startswith("dit_cache")
        for name in names
        if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in MODULES
    ]
    assert not private, f"{module} imports private names {private}"
