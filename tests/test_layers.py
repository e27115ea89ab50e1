"""The package's import graph: no cycles, and no module imports from a layer above its own.

Every import counts, function-level ones included. The layers are those of
docs/architecture.md; a new module must be given its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Package → folder, as pyproject's package-dir installs them.
PACKAGES = {"onnxq": ROOT / "onnxq", "onnxq.passes": ROOT / "passes", "onnxq.models": ROOT / "models"}

#: Layers from the bottom up; a module may import from its own layer and the ones below.
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("errors", "metadata", "constants", "outputs", "progress"),
    "core": (
        "schemes", "config", "quant_math", "observers", "weight_quantization",
        "feature_quantization", "rounding", "scale_decomposition",
    ),
    "io": ("preprocessing", "data", "runtime"),
    "analysis": ("graph", "channels", "placement", "plan", "constant_dq", "equivalence"),
    "calibration": ("calibration", "channel_statistics", "layer_inputs", "quant_error", "cache"),
    "passes": ("passes",),
    "pipeline": (
        "modelio", "channel_rewrites", "layer_rounding", "pass_selection", "quantize", "deploy",
    ),
    "models": ("models",),
    "reporting": ("evaluate", "accounting", "report"),
    "experiments": ("experiment", "spec", "tables", "plots", "sweep", "demo"),
    "interface": ("__init__", "__main__", "entry", "failures", "cli"),
}


def module_names() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def layer_of(module: str) -> int:
    """Rank of ``module``'s layer (``onnxq.passes.smooth`` → the rank of ``passes``)."""
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    for rank, members in enumerate(LAYERS.values()):
        if key in members:
            return rank
    raise AssertionError(f"{module} has no layer in tests/test_layers.py")


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


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_higher_layer(module):
    rank = layer_of(module)
    names = list(LAYERS)
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
    source.write_text("def f():\n    from onnxq.cli import main\n    import onnxq.sweep\n")
    assert imports(source, MODULES) == {"onnxq.cli", "onnxq.sweep"}
