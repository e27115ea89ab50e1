"""Store quantized weights as plain per-axis int8, the form ONNX Runtime runs as integer kernels.

A weight with one scale per output channel (per-tensor or per-channel, 2 to 8 bits) dequantizes
to ``(q − z) · s``. When every ``q − z`` fits in int8 (any code of 7 bits or fewer, symmetric
8-bit codes) the same values are int8 codes ``q − z`` with zero point 0 and the same scales, so
the rewritten DequantizeLinear (a blocked 4-bit one and its Reshape become one per-axis int8
DequantizeLinear on the original shape) yields the same weights bit for bit. Only layers that can
run as integer kernels are rewritten: their input comes from a DequantizeLinear and their output
goes to a QuantizeLinear, directly or through a Relu or Clip (``--f-placement fused``).
"""

from __future__ import annotations

__all__ = ["WidenWeightsToInt8Pass", "WidenWeightsToInt8Result"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxq.analysis.constant_dq import is_plain_int8, row_scales, weight_dequantize
from onnxq.analysis.graph import add_initializer, name_output
from onnxq.analysis.placement import runs_as_integer_kernel
from onnxq.base.constants import WEIGHT_OPS

logger = logging.getLogger(__name__)

_INT8 = (-128, 127)


@dataclasses.dataclass
class WidenWeightsToInt8Result(ir.passes.PassResult):
    """``widened``: the layers whose weights were re-stored as per-axis int8."""

    widened: tuple[str, ...]


class WidenWeightsToInt8Pass(ir.passes.InPlacePass):
    """Rewrite the weight DequantizeLinear of integer-kernel layers as per-axis int8.

    The result names the layers rewritten.
    """

    def call(self, model: ir.Model) -> WidenWeightsToInt8Result:
        widened = []
        for node in list(model.graph):
            if node.op_type in WEIGHT_OPS and runs_as_integer_kernel(node):
                if _widen(model.graph, node):
                    widened.append(node.name)
        if widened:
            logger.info("re-stored the weights of %d integer-kernel layers as int8", len(widened))
        return WidenWeightsToInt8Result(model, bool(widened), tuple(widened))


def _widen(graph: ir.Graph, node: ir.Node) -> bool:
    chain = _weight_chain(node.inputs[1])
    if chain is None or is_plain_int8(chain[0]):
        return False
    rows = row_scales(chain[0])
    if rows is None:
        return False
    centred, scale, axis = rows
    if centred.min() < _INT8[0] or centred.max() > _INT8[1]:
        return False
    shape = _final_shape(chain)
    if axis is not None and len(chain) > 1 and (axis != 0 or shape[0] != centred.shape[0]):
        return False
    _replace(graph, chain, centred.reshape(shape), scale, axis)
    return True


def _weight_chain(weight: ir.Value | None) -> list[ir.Node] | None:
    """``[DequantizeLinear]`` or ``[DequantizeLinear, Reshape]`` producing a constant weight."""
    dequantize = weight_dequantize(weight)
    if dequantize is None:
        return None
    if dequantize.outputs[0] is weight:
        return [dequantize]
    if len(list(dequantize.outputs[0].consumers())) != 1:
        return None  # the DequantizeLinear also feeds something besides the Reshape
    return [dequantize, weight.producer()]


def _final_shape(chain: list[ir.Node]) -> tuple[int, ...]:
    dequantize = chain[0]
    codes_shape = tuple(dequantize.inputs[0].const_value.shape)
    if len(chain) == 1:
        return codes_shape
    target = chain[-1].inputs[1].const_value.numpy()
    return np.empty(codes_shape, dtype=np.int8).reshape(target).shape


def _replace(
    graph: ir.Graph, chain: list[ir.Node], codes: np.ndarray, scale: np.ndarray, axis: int | None
) -> None:
    """Swap ``chain`` for one DequantizeLinear of int8 ``codes``, keeping names and metadata."""
    dequantize, last = chain[0], chain[-1]
    for value in {value for node in chain for value in node.inputs if value is not None}:
        only_chain_reads = all(user in chain for user, _ in value.uses())
        if value.is_initializer() and only_chain_reads:
            graph.initializers.pop(value.name)
    weight = dequantize.name.removesuffix("_dq")
    inputs = [
        add_initializer(graph, f"{weight}_quantized", codes, ir.DataType.INT8),
        add_initializer(graph, f"{weight}_scale", scale, ir.DataType.FLOAT),
    ]
    widened = ir.node(
        "DequantizeLinear",
        inputs,
        {} if axis is None else {"axis": axis},
        name=dequantize.name,
        metadata_props=dict(dequantize.metadata_props),
    )
    output = name_output(widened, dequantize.outputs[0].name, ir.DataType.FLOAT, ir.Shape(codes.shape))
    graph.insert_before(dequantize, [widened])
    ir.convenience.replace_all_uses_with(last.outputs[0], output)
    graph.remove(chain, safe=False)
