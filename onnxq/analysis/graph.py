"""Small onnx_ir helpers shared by the passes."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

#: Ops whose ``strides`` attribute shrinks a feature map's sides.
_STRIDED_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})
#: Ops whose output is no longer a feature map (a global pool or a reduction).
_GLOBAL_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean",
                         "ReduceMax", "ReduceSum", "ReduceL2", "Flatten"})

_SIGNED = (ir.DataType.INT4, ir.DataType.INT8)
_UNSIGNED = (ir.DataType.UINT4, ir.DataType.UINT8)


def add_initializer(
    graph: ir.Graph, name: str, array: np.ndarray, dtype: ir.DataType
) -> ir.Value:
    """Register ``array`` as an initializer of ONNX type ``dtype`` named ``name``."""
    array = np.asarray(array)
    if dtype in _SIGNED:
        array = array.astype(np.int8)
    elif dtype in _UNSIGNED:
        array = array.astype(np.uint8)
    tensor = ir.tensor(array, dtype=dtype, name=name)
    value = ir.Value(
        name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def name_output(
    node: ir.Node, name: str, dtype: ir.DataType, shape: ir.Shape | None = None
) -> ir.Value:
    """Name, type and shape the first output of ``node``; returns it."""
    value = node.outputs[0]
    value.name = name
    value.dtype = dtype
    value.shape = shape
    return value


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every graph input, initializer and node output of ``graph``, by name."""
    values = {value.name: value for value in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        values.update((value.name, value) for value in node.outputs)
    return values


def replace_constant(value: ir.Value, array: np.ndarray) -> None:
    """Give the initializer ``value`` new contents (float32), keeping its name."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    value.const_value = ir.tensor(array, name=value.name)
    value.shape = ir.Shape(array.shape)


def is_depthwise(node: ir.Node) -> bool:
    """A Conv with one input channel per group (``group`` equal to its input channels)."""
    if node.op_type != "Conv" or node.attributes.get_int("group", 1) == 1:
        return False
    shape = node.inputs[1].shape if node.inputs[1] is not None else None
    return shape is not None and len(shape) > 1 and shape[1] == 1


def downsampling(graph: ir.Graph) -> dict[str, float]:
    """How many times smaller per side than the graph's input each node's output is.

    Read from the graph's structure alone, so it holds for dynamic image sizes: a strided Conv
    or pool multiplies the factor by its largest stride; an op with several feature inputs
    takes the smallest factor among them (a Mul by a squeeze-and-excitation gate keeps the
    feature map's); global pools, reductions and Flatten end the feature map (``inf``).
    Upsampling is not modelled: a Resize keeps its input's factor.
    """
    values: dict[ir.Value, float] = {}  # graph inputs are absent: factor 1
    nodes: dict[str, float] = {}
    for node in graph:
        inputs = [
            values.get(value, 1.0)
            for value in node.inputs
            if value is not None and value.const_value is None
        ]
        factor = min(inputs, default=math.inf)
        if node.op_type in _GLOBAL_OPS:
            factor = math.inf
        elif node.op_type in _STRIDED_OPS:
            factor *= max(node.attributes.get_ints("strides", [1]) or [1])
        nodes[node.name] = factor
        values.update((value, factor) for value in node.outputs)
    return nodes
