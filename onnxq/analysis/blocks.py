"""Blocks of a float graph for reconstruction: stretches of nodes with one tensor in and one out.

A *cut* is a tensor that, once computed in the graph's (topological) order, is the only
non-constant value still waiting for a reader: a residual block's output (its skip tensor is
read by then), a plain layer's activation. The stretches between cuts hold whole residual
blocks; a stretch without a weighted layer (an activation, a pooling) joins the one before it, and
runs of stretches that end in an activation join the stretch after them while the block keeps at most ``max_layers`` weighted
layers, so a plain MBConv block (expand, depthwise, project: no skip) is one block too.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxq.base.constants import WEIGHT_OPS

#: Ops whose output is an activated feature: a stretch ending in one may join the next stretch.
_ACTIVATIONS = frozenset(
    {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Tanh",
     "MaxPool", "LRN"}
)


@dataclasses.dataclass(frozen=True)
class Block:
    """Nodes from the tensor ``input`` to the tensor ``output``; ``layers``: its weighted nodes."""

    input: str
    output: str
    layers: tuple[str, ...]


def is_weighted(node: ir.Node) -> bool:
    """A Conv, Gemm or MatMul whose second input is a constant (an initializer)."""
    return (
        node.op_type in WEIGHT_OPS
        and len(node.inputs) > 1
        and node.inputs[1] is not None
        and node.inputs[1].const_value is not None
    )


def find_blocks(graph: ir.Graph, max_layers: int = 3) -> list[Block]:
    """The graph's blocks in order, from its single input to its single output."""
    stretches = _merge(_stretches(graph), max_layers)
    return [Block(start, end, tuple(layers)) for start, end, layers, _ in stretches]


def _stretches(graph: ir.Graph) -> list[tuple[str, str, list[str], str]]:
    """``(input, output, weighted layers, op that produced output)`` between consecutive cuts."""
    constant = {value.name for value in graph.initializers.values()}
    pending = {value.name: len(value.uses()) for value in graph.inputs}
    start = graph.inputs[0].name
    stretches, layers = [], []
    for node in graph:
        if all(value is None or value.name in constant for value in node.inputs):
            constant.update(value.name for value in node.outputs)
            continue
        for value in node.inputs:
            if value is not None and value.name in pending:
                pending[value.name] -= 1
        pending = {name: count for name, count in pending.items() if count > 0}
        for value in node.outputs:
            pending[value.name] = len(value.uses()) + value.is_graph_output()
        if is_weighted(node):
            layers.append(node.name)
        live = [name for name, count in pending.items() if count > 0]
        if len(live) == 1 and live[0] == node.outputs[0].name:
            stretches.append((start, live[0], layers, node.op_type))
            start, layers = live[0], []
    if layers or not stretches:
        output = graph.outputs[0].name
        stretches.append((start, output, layers, ""))
    return stretches


def _merge(
    stretches: list[tuple[str, str, list[str], str]], max_layers: int
) -> list[tuple[str, str, list[str], str]]:
    """Stretches joined into blocks (see the module docstring)."""
    attached: list[tuple[str, str, list[str], str]] = []
    for start, end, layers, op in stretches:  # an activation or pooling joins its layer
        if attached and (not layers or not attached[-1][2]):
            attached[-1] = (attached[-1][0], end, attached[-1][2] + layers, op)
        else:
            attached.append((start, end, list(layers), op))
    merged: list[tuple[str, str, list[str], str]] = []
    for start, end, layers, op in attached:
        if merged and merged[-1][3] in _ACTIVATIONS and (
            len(merged[-1][2]) + len(layers) <= max_layers
        ):
            merged[-1] = (merged[-1][0], end, merged[-1][2] + layers, op)
        else:
            merged.append((start, end, layers, op))
    return merged
