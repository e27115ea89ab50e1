"""DequantizeLinear nodes on constant codes (quantized weights), read back in numpy.

``dequantize_constant`` computes exactly what ONNX Runtime's DequantizeLinear computes,
``float32(q - zero_point) * scale`` with the scale broadcast per tensor, per axis or per block,
so a folded weight is bit for bit the value the quantized graph feeds its layer.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.core import quant_math


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value of a constant, or of a constant DequantizeLinear's output (decomposed scales),
    possibly through a Reshape to a constant shape."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and _is_constant_reshape(producer):
        array = constant_array(producer.inputs[0])
        return None if array is None else array.reshape(producer.inputs[1].const_value.numpy())
    if producer is not None and is_constant_dequantize(producer):
        return dequantize_constant(producer)
    return None


def is_constant_dequantize(node: ir.Node) -> bool:
    """A DequantizeLinear whose inputs are all constants (or constant DequantizeLinear outputs,
    possibly reshaped)."""
    return node.op_type == "DequantizeLinear" and all(
        value is None or value.const_value is not None or _from_constant_dequantize(value)
        for value in node.inputs
    )


def _from_constant_dequantize(value: ir.Value) -> bool:
    producer = value.producer()
    if producer is not None and _is_constant_reshape(producer):
        producer = producer.inputs[0].producer()
    return producer is not None and is_constant_dequantize(producer)


def _is_constant_reshape(node: ir.Node) -> bool:
    return (
        node.op_type == "Reshape"
        and node.inputs[1] is not None
        and node.inputs[1].const_value is not None
        and node.inputs[0] is not None
    )


def weight_dequantize(weight: ir.Value | None) -> ir.Node | None:
    """The constant DequantizeLinear that produces ``weight``, directly or through a Reshape to
    a constant shape (how ``QuantizeWeightsPass`` stores blocked weights); None for any other
    weight."""
    producer = weight.producer() if weight is not None else None
    if producer is not None and producer.op_type == "Reshape":
        if not _is_constant_reshape(producer):
            return None
        producer = producer.inputs[0].producer()
    return producer if producer is not None and is_constant_dequantize(producer) else None


def only_reshape_reader(node: ir.Node) -> ir.Node | None:
    """The Reshape to a constant shape that is the only reader of ``node``'s output, if any
    (how blocked weights are reshaped to their layer)."""
    readers = list(node.outputs[0].consumers())
    if len(readers) != 1 or not _is_constant_reshape(readers[0]):
        return None
    return None if readers[0].outputs[0].is_graph_output() else readers[0]


def is_plain_int8(node: ir.Node) -> bool:
    """Int8 codes, zero point 0, per tensor or per axis: what integer kernels read directly."""
    zero_point = constant_array(node.inputs[2]) if len(node.inputs) > 2 else None
    return (
        node.inputs[0].dtype == ir.DataType.INT8
        and not node.attributes.get_int("block_size", 0)
        and (zero_point is None or not zero_point.any())
    )


def _parameters(node: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = constant_array(node.inputs[0]).astype(np.int32)
    scale = constant_array(node.inputs[1]).astype(np.float32)
    zero_point = constant_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if zero_point is None:
        return codes, scale, np.zeros(scale.shape, np.int32)
    return codes, scale, zero_point.astype(np.int32)


def _axis(node: ir.Node, rank: int) -> int:
    axis = node.attributes.get_int("axis", 1)
    return axis + rank if axis < 0 else axis


def _broadcast(node: ir.Node, codes: np.ndarray, parameter: np.ndarray) -> np.ndarray:
    """A scale or zero point laid out to broadcast against ``codes``."""
    if parameter.ndim == 0:
        return parameter
    axis = _axis(node, codes.ndim)
    block_size = node.attributes.get_int("block_size", 0)
    if block_size:
        repeated = np.repeat(parameter, block_size, axis=axis)
        return np.take(repeated, np.arange(codes.shape[axis]), axis=axis)
    shape = [1] * codes.ndim
    shape[axis] = -1
    return parameter.reshape(shape)


def broadcast_parameters(node: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A constant DequantizeLinear's ``(codes, scale, zero point)``, int32/float32/int32, the
    scale and zero point laid out to the codes' full shape."""
    codes, scale, zero_point = _parameters(node)
    full = [np.broadcast_to(_broadcast(node, codes, p), codes.shape) for p in (scale, zero_point)]
    return codes, np.ascontiguousarray(full[0]), np.ascontiguousarray(full[1])


def dequantize_constant(node: ir.Node) -> np.ndarray:
    """The float32 tensor a constant DequantizeLinear produces."""
    codes, scale, zero_point = _parameters(node)
    return quant_math.dequantize(
        codes, _broadcast(node, codes, scale), _broadcast(node, codes, zero_point)
    )


def row_scales(node: ir.Node) -> tuple[np.ndarray, np.ndarray, int | None] | None:
    """``(codes − zero point, scale, axis)`` when one scale covers each slice along ``axis``.

    True for per-tensor (axis None, scalar scale), per-axis and blocked parameters with one
    block per row; None for blocks that split a row (per-group weights).
    """
    codes, scale, zero_point = _parameters(node)
    centred = codes - _broadcast(node, codes, zero_point)
    if scale.size == 1:
        return centred, scale.reshape(()), None
    axis = _axis(node, codes.ndim)
    block_size = node.attributes.get_int("block_size", 0)
    if not block_size:
        return centred, scale.reshape(-1), axis
    if codes.ndim != 2 or block_size < codes.shape[axis]:
        return None
    return centred, scale.reshape(-1), 1 - axis


def full_range_int8_weights(graph: ir.Graph, limit: int) -> int:
    """How many plain int8 weights (``is_plain_int8``) have a code beyond ``±limit``."""
    return sum(
        1
        for node in graph
        if is_constant_dequantize(node)
        and node.inputs[0].const_value is not None
        and is_plain_int8(node)
        and int(np.abs(node.inputs[0].const_value.numpy().astype(np.int32)).max(initial=0)) > limit
    )
