"""The package's import graph: no cycles, and no module imports from a layer above its own.

Every import counts, function-level ones included. The layers are those of
docs/architecture.md; a new module must be given its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Package → folder, as pyproject's package-dir installs them (subpackages lie in subfolders).
PACKAGES = {"onnxq": ROOT / "onnxq", "onnxq.passes": ROOT / "passes", "onnxq.models": ROOT / "models"}

#: Layers from the bottom up, each a subpackage of ``onnxq`` (``interface``: the modules at the
#: top of the package). A module may import from its own layer and the ones below.
LAYERS = (
    "base", "core", "io", "analysis", "calibration", "passes", "reconstruction", "pipeline",
    "models", "reporting",
    "experiments", "interface",
)


def module_names() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> int:
    """Rank of ``module``'s layer: its subpackage (``onnxq.passes.smooth`` → ``passes``), or
    ``interface`` for a module at the top of the package."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] not in LAYERS):
        return LAYERS.index("interface")
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} lies in no layer of tests/test_layers.py")
    return LAYERS.index(parts[1])


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onnxq"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules and name != "onnxq")
    return found


MODULES = module_names()
GRAPH = {name: imports(path, MODULES) - {name} for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_every_layer_is_a_subpackage():
    folders = {p.name for p in (ROOT / "onnxq").iterdir() if (p / "__init__.py").exists()}
    assert folders | {"passes", "models", "interface"} == set(LAYERS)
    assert not [p for p in (ROOT / "onnxq").iterdir() if p.is_dir() and p.name not in folders
                and p.name != "__pycache__"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_higher_layer(module):
    rank = layer_of(module)
    names = LAYERS
    upward = sorted(t for t in GRAPH[module] if layer_of(t) > rank)
    assert not upward, (
        f"{module} ({names[rank]}) imports from higher layers: "
        + ", ".join(f"{t} ({names[layer_of(t)]})" for t in upward)
    )


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_checks_see_function_level_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "def f():\n    from onnxq.cli import main\n    import onnxq.experiments.sweep\n"
        "    from onnxq.reporting import report\n"
    )
    assert imports(source, MODULES) == {
        "onnxq.cli", "onnxq.experiments.sweep", "onnxq.reporting", "onnxq.reporting.report"
    }
    assert [LAYERS[layer_of(m)] for m in sorted(imports(source, MODULES))] == [
        "interface", "experiments", "reporting", "reporting"
    ]
