"""Where an integer runtime puts a layer's float bias: its int32 grid.

A Conv or Gemm whose input is a per-tensor quantized feature and whose weight comes straight
from a DequantizeLinear can run as an integer kernel: it sums its products in int32 and adds
its bias there, as int32 codes of step ``input scale × weight scale`` (zero point 0). ONNX's
QLinearConv defines the bias so, and ONNX Runtime's optimizer (1.32, from its basic level)
rounds a float bias onto that grid wherever the layer's output goes straight, or through an
activation it folds, into a QuantizeLinear; elsewhere it adds the float bias. ``bias_grid``
finds the layers with such a grid by ONNX Runtime's conditions on the inputs: a constant bias
of one dimension, the input's DequantizeLinear with one scale, the weight's with one scale or
one per output channel on the output axis (not blocked).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxq.analysis.constant_dq import constant_array


@dataclasses.dataclass(frozen=True)
class BiasGrid:
    """A layer whose bias a runtime rounds: the bias, the DequantizeLinear of the feature the
    layer reads (its scale is the grid's first factor) and the weight's scale."""

    layer: ir.Node
    bias: ir.Value
    feature: ir.Node
    weight_scale: np.ndarray

    def step(self) -> np.ndarray:
        """The grid's step per output channel (float32, as a runtime multiplies it)."""
        input_scale = constant_array(self.feature.inputs[1]).astype(np.float32).reshape(())
        return (input_scale * self.weight_scale.astype(np.float32)).reshape(-1)


def bias_grid(node: ir.Node) -> BiasGrid | None:
    """The int32 grid of ``node``'s bias, or None where no runtime rounds it."""
    if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    bias = node.inputs[2]
    if bias.const_value is None or bias.producer() is not None or len(bias.const_value.shape) != 1:
        return None
    feature, weight = (value.producer() for value in node.inputs[:2])
    if feature is None or weight is None:
        return None
    if feature.op_type != "DequantizeLinear" or weight.op_type != "DequantizeLinear":
        return None
    input_scale = constant_array(feature.inputs[1])
    weight_scale = constant_array(weight.inputs[1])
    if input_scale is None or weight_scale is None or input_scale.size != 1:
        return None
    if weight_scale.size != 1 or weight_scale.ndim != 0:
        if weight_scale.shape != (bias.const_value.size,) or "block_size" in weight.attributes:
            return None
        if weight.attributes.get_int("axis", 1) != _output_axis(node):
            return None
    return BiasGrid(node, bias, feature, weight_scale)


def _output_axis(node: ir.Node) -> int:
    """The weight axis of a layer's output channels."""
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    return 0
