"""Keep ONNX Runtime from re-quantizing float weights that follow a quantized feature.

ONNX Runtime's CPU optimizer rewrites a Conv or Gemm with a float weight whose input comes from a
per-tensor DequantizeLinear: it quantizes the weight to per-tensor int8 (its
WeightBiasQuantization rewrite). For a folded 4-bit weight that silently swaps the exact
values for coarser ones. Such a layer gets its own input DequantizeLinear whose scale and zero
point repeat the per-tensor values over the input channels: the same values, computed the same
way, and a pattern the rewrite leaves alone.
"""

from __future__ import annotations

__all__ = ["ProtectFloatWeightsPass", "ProtectFloatWeightsResult"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxq.analysis.graph import add_initializer, name_output

logger = logging.getLogger(__name__)

_REWRITTEN = ("Conv", "Gemm")


@dataclasses.dataclass
class ProtectFloatWeightsResult(ir.passes.PassResult):
    """``protected``: the layers that now read a per-channel quantized input."""

    protected: tuple[str, ...]


class ProtectFloatWeightsPass(ir.passes.InPlacePass):
    """Give every Conv/Gemm with a float weight and a per-tensor quantized input a per-channel one.

    The result names the layers changed.
    """

    def call(self, model: ir.Model) -> ProtectFloatWeightsResult:
        protected = []
        for node in list(model.graph):
            source = _per_tensor_source(node)
            if source is not None:
                _protect(model.graph, node, source)
                protected.append(node.name)
        if protected:
            logger.info("gave %d float-weight layers a per-channel input", len(protected))
        return ProtectFloatWeightsResult(model, bool(protected), tuple(protected))


def _protect(graph: ir.Graph, node: ir.Node, source: ir.Node) -> None:
    channels = _input_channels(node)
    scale = source.inputs[1].const_value.numpy()
    inputs = [
        source.inputs[0],
        add_initializer(
            graph, f"{node.name}_input_scale", np.full(channels, scale), ir.DataType.FLOAT
        ),
    ]
    if len(source.inputs) > 2 and source.inputs[2] is not None:
        zero_point = source.inputs[2]
        inputs.append(
            add_initializer(
                graph,
                f"{node.name}_input_zero_point",
                np.full(channels, zero_point.const_value.numpy()),
                zero_point.dtype,
            )
        )
    dequantize = ir.node(
        "DequantizeLinear",
        inputs,
        {"axis": 1},
        name=f"{node.name}_input_dq",
        metadata_props=dict(source.metadata_props),
    )
    feature = node.inputs[0]
    restored = name_output(dequantize, f"{node.name}_input_dq", ir.DataType.FLOAT, feature.shape)
    graph.insert_before(node, [dequantize])
    node.replace_input_with(0, restored)
    if not feature.uses() and not feature.is_graph_output():
        _remove_unused(graph, source)


def _per_tensor_source(node: ir.Node) -> ir.Node | None:
    """The per-tensor DequantizeLinear feeding ``node``, when ``node`` has a float weight."""
    if node.op_type not in _REWRITTEN or len(node.inputs) < 2 or node.inputs[0] is None:
        return None
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or weight.dtype != ir.DataType.FLOAT:
        return None
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return None
    source = node.inputs[0].producer()
    if source is None or source.op_type != "DequantizeLinear":
        return None
    scale = source.inputs[1].const_value
    if scale is None or scale.numpy().size != 1:
        return None
    zero_point = source.inputs[2] if len(source.inputs) > 2 else None
    if zero_point is not None and zero_point.const_value is None:
        return None
    return source


def _input_channels(node: ir.Node) -> int:
    """Axis-1 size of ``node``'s input, read from its weight."""
    shape = node.inputs[1].const_value.shape
    if node.op_type == "Conv":
        return shape[1] * node.attributes.get_int("group", 1)
    return shape[1] if node.attributes.get_int("transB", 0) else shape[0]


def _remove_unused(graph: ir.Graph, node: ir.Node) -> None:
    inputs = [value for value in node.inputs if value is not None]
    graph.remove(node, safe=True)
    for value in inputs:
        if value.is_initializer() and not value.uses():
            graph.initializers.pop(value.name)
