"""Give nodes and values readable names derived from the weights they use.

A node reading ``layer1.0.conv1.weight`` becomes ``layer1.0.conv1`` (and so does its output); a
node without weights is named after the layer that feeds it plus its op type
(``layer1.0.conv1.relu``). Graph inputs, outputs and initializers keep their names. Netron then
shows a graph whose edges read like the model's modules.
"""

from __future__ import annotations

__all__ = ["NameAfterWeightsPass"]

import logging

import onnx_ir as ir

logger = logging.getLogger(__name__)


class NameAfterWeightsPass(ir.passes.InPlacePass):
    """Rename nodes and intermediate values after the layer (weight) they belong to."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        taken = {value.name for value in graph.inputs} | {v.name for v in graph.outputs}
        taken |= set(graph.initializers)
        prefix_of: dict[int, str] = {}
        node_names: set[str] = set()
        for node in graph:
            weight_prefix = _weight_prefix(node)
            prefix = weight_prefix or _inherited_prefix(node, prefix_of)
            name = _unique(weight_prefix or f"{prefix}.{node.op_type.lower()}", node_names)
            node_names.add(name)
            node.name = name
            for index, value in enumerate(node.outputs):
                prefix_of[id(value)] = prefix
                if value.is_graph_output():
                    continue
                value.name = _unique(name if index == 0 else f"{name}.{index}", taken)
                taken.add(value.name)
        logger.info("named %d nodes after their weights", len(node_names))
        return ir.passes.PassResult(model, modified=True)


def _weight_prefix(node: ir.Node) -> str | None:
    for value in node.inputs[1:2]:
        if value is not None and value.is_initializer() and value.name.endswith(".weight"):
            return value.name[: -len(".weight")]
    return None


def _inherited_prefix(node: ir.Node, prefix_of: dict[int, str]) -> str:
    for value in node.inputs:
        if value is not None and id(value) in prefix_of:
            return prefix_of[id(value)]
    return "input"


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    count = 1
    while f"{name}_{count}" in taken:
        count += 1
    return f"{name}_{count}"
