"""Store quantized weights in the shape their layer reads, where no Reshape is needed.

``QuantizeWeightsPass`` lays out every 4-bit and per-group weight as a 2-D ``[O, I·kh·kw]`` view
for a blocked DequantizeLinear, followed by a Reshape to the layer's shape. Some runtimes do not
follow that Reshape: OpenVINO's CPU plugin fails to compile it when the scales are themselves
dequantized (``--decompose-scales``), and keeps the weights of such layers in float. Two cases
need no Reshape at all, and this pass rewrites them:

* one scale per output channel (4-bit per-channel weights, or groups as wide as the layer): a
  per-axis DequantizeLinear (axis 0) of the codes in the layer's shape, or a per-tensor one;
* per-group weights of a layer whose kernel is 1×1 (pointwise convolutions): the blocked
  DequantizeLinear runs along the input-channel axis of the 4-D codes, with ``[O, G, 1, 1]``
  scales and zero points (and decomposed scale codes in that shape too);
* per-group weights of k×k kernels whose groups divide the input channels: one row of codes
  per group, ``[O·G, gs·kh·kw]``, a per-axis DequantizeLinear (one scale per row) and the
  Reshape to the layer's shape; a decomposed scale's ``[O, G]`` is flattened by a Reshape.
  OpenVINO compiles this form with decomposed affine scales, the blocked one it does not.

Codes, scales and zero points keep their values and names, so the weights the layer reads are
bit for bit the same. A group size that does not divide a layer's inputs (a smaller last
block) keeps the blocked 2-D view and its Reshape.
"""

from __future__ import annotations

__all__ = ["LayerShapedWeightsPass", "LayerShapedWeightsResult"]

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from onnxq.analysis.constant_dq import is_constant_dequantize, only_reshape_reader
from onnxq.analysis.graph import add_initializer, name_output

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LayerShapedWeightsResult(ir.passes.PassResult):
    """``reshaped``: the weights (by the name of their DequantizeLinear) now in layer shape."""

    reshaped: tuple[str, ...]


class LayerShapedWeightsPass(ir.passes.InPlacePass):
    """Re-store blocked weight DequantizeLinear nodes per-axis, per-tensor or in layer shape
    wherever their scales allow, dropping the Reshape after them."""

    def call(self, model: ir.Model) -> LayerShapedWeightsResult:
        reshaped = []
        for node in list(model.graph):
            if _blocked_weight(node) and _rewrite(model.graph, node, only_reshape_reader(node)):
                reshaped.append(node.name)
        if reshaped:
            logger.info("stored %d weights in their layers' shape (no Reshape)", len(reshaped))
        return LayerShapedWeightsResult(model, bool(reshaped), tuple(reshaped))


def _blocked_weight(node: ir.Node) -> bool:
    """A blocked constant DequantizeLinear of 2-D codes (how weights are quantized first)."""
    if node.op_type != "DequantizeLinear" or not node.attributes.get_int("block_size", 0):
        return False
    codes = node.inputs[0]
    return (
        is_constant_dequantize(node)
        and codes.const_value is not None
        and len(codes.const_value.shape) == 2
        and not node.outputs[0].is_graph_output()
    )


def _rewrite(graph: ir.Graph, dequantize: ir.Node, reshape: ir.Node | None) -> bool:
    """Re-store ``dequantize`` in the shape the layer reads; False where that needs a Reshape."""
    codes = dequantize.inputs[0]
    view = tuple(codes.const_value.shape)
    shape = view if reshape is None else tuple(int(d) for d in reshape.inputs[1].const_value.numpy())
    if any(d <= 0 for d in shape) or math.prod(shape) != math.prod(view):
        return False
    axis = dequantize.attributes.get_int("axis", 1)
    block = dequantize.attributes.get_int("block_size", 0)
    parameters = [value for value in dequantize.inputs[1:] if value is not None]
    grids = [_grid_constant(value) for value in parameters]
    if any(grid is None or len(grid.const_value.shape) != 2 for grid in grids):
        return False
    rows = view[1 - axis]  # the slices the blocks run along: output channels (1: per-tensor)
    if reshape is not None and rows > 1 and (axis != 1 or shape[0] != rows):
        return False  # a Reshape follows only the [O, I·kh·kw] view of a Conv weight
    groups = grids[0].const_value.shape[axis]
    if groups == 1 and all(grid is value for grid, value in zip(grids, parameters)):
        for value in parameters:  # one scale per row: per-axis (or per-tensor)
            _reshape_constant(value, (rows,) if rows > 1 else ())
        _set_layout(dequantize, axis=1 - axis if rows > 1 else None)
    elif reshape is not None and len(shape) > 2 and math.prod(shape[2:]) == 1:
        grid_shape = (rows, groups) + (1,) * (len(shape) - 2)  # 1×1 kernels: blocks in 4-D
        for grid, value in zip(grids, parameters):
            _reshape_constant(grid, grid_shape)
            value.shape = ir.Shape(grid_shape)
    elif reshape is not None and view[1] == groups * block:
        _rows_per_group(graph, dequantize, parameters, grids)  # k×k kernels, groups that divide
        return True
    else:
        return False
    if reshape is not None:
        _reshape_constant(codes, shape)
        dequantize.outputs[0].shape = ir.Shape(shape)
        ir.convenience.replace_all_uses_with(reshape.outputs[0], dequantize.outputs[0])
        shape_value = reshape.inputs[1]
        graph.remove(reshape, safe=True)
        if shape_value.is_initializer() and not shape_value.uses():
            graph.initializers.pop(shape_value.name)
    return True


def _rows_per_group(
    graph: ir.Graph, dequantize: ir.Node, parameters: list[ir.Value], grids: list[ir.Value]
) -> None:
    """One row of codes per group, ``[O·G, gs·kh·kw]``, dequantized per-axis (axis 0) and
    reshaped to the layer's shape; a decomposed scale's ``[O, G]`` output is flattened by a
    Reshape of its own."""
    codes = dequantize.inputs[0]
    rows, groups = grids[0].const_value.shape
    _reshape_constant(codes, (rows * groups, codes.const_value.shape[1] // groups))
    dequantize.outputs[0].shape = ir.Shape(codes.shape)
    for index, (grid, value) in enumerate(zip(grids, parameters), start=1):
        if grid is value:
            _reshape_constant(value, (rows * groups,))
            continue
        flat = add_initializer(
            graph, f"{value.name}_flat_shape", np.asarray([rows * groups], np.int64),
            ir.DataType.INT64,
        )
        flatten = ir.node("Reshape", [value, flat], name=f"{value.name}_flatten")
        name_output(flatten, f"{value.name}_flat", ir.DataType.FLOAT, ir.Shape([rows * groups]))
        graph.insert_before(dequantize, [flatten])
        dequantize.replace_input_with(index, flatten.outputs[0])
    _set_layout(dequantize, axis=0)


def _grid_constant(value: ir.Value) -> ir.Value | None:
    """The constant that holds a scale's or zero point's grid: the value itself, or the codes
    of the per-channel DequantizeLinear that computes a decomposed scale (read only here)."""
    if value.const_value is not None:
        return value
    producer = value.producer()
    if producer is None or producer.op_type != "DequantizeLinear" or len(value.uses()) != 1:
        return None
    if producer.attributes.get_int("axis", 1) != 0 or producer.attributes.get_int("block_size", 0):
        return None
    codes = producer.inputs[0]
    return codes if codes.const_value is not None else None


def _reshape_constant(value: ir.Value, shape: tuple[int, ...]) -> None:
    """Give the initializer ``value`` the same contents in ``shape``."""
    array = value.const_value.numpy().reshape(shape)
    value.const_value = ir.tensor(array, dtype=value.dtype, name=value.name)
    value.shape = ir.Shape(shape)


def _set_layout(node: ir.Node, axis: int | None) -> None:
    """Make a blocked DequantizeLinear per-axis along ``axis`` (per-tensor when None)."""
    node.attributes.pop("block_size", None)
    node.attributes.pop("axis", None)
    if axis is not None:
        node.attributes["axis"] = ir.AttrInt64("axis", axis)
