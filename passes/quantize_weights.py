"""Replace constant Conv/Gemm/MatMul weights by integer codes and a DequantizeLinear.

Per-tensor and per-channel 8-bit weights use a plain (per-axis) DequantizeLinear on the original
weight, the pattern ONNX Runtime fuses into integer kernels. Everything else (any weight stored
in 4 bits, any per-group weight) uses opset-21 blocked DequantizeLinear on a 2-D view of the
weight followed by a Reshape: for a Conv weight ``[O, I, kh, kw]`` the view is
``[O, I·kh·kw]`` and a group of ``gs`` input channels is a block of ``gs·kh·kw`` values.
"""

from __future__ import annotations

__all__ = ["QuantizeWeightsPass", "QuantizeWeightsResult"]

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxq.analysis.graph import add_initializer, name_output
from onnxq.analysis.plan import WeightTarget
from onnxq.base import metadata
from onnxq.core.weight_quantization import (
    CodeChooser,
    QuantizedWeight,
    quantize_weight,
    storage_type,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class QuantizeWeightsResult(ir.passes.PassResult):
    """``quantized``: each weight's codes and grid, by weight name."""

    quantized: dict[str, QuantizedWeight]


class QuantizeWeightsPass(ir.passes.InPlacePass):
    """Quantize the weights named by ``targets`` (see ``onnxq.analysis.plan``) in place.

    Adds initializers ``<w>_quantized``, ``<w>_scale`` (and ``<w>_zero_point``), a
    DequantizeLinear ``<w>_dq`` and, for blocked weights, a Reshape ``<w>_reshape``; the node
    reads the dequantized weight, and the float initializer goes once nothing else reads it.
    ``choose_codes`` maps weight names to their code choosers (see ``quantize_weight``).
    The result says what each weight became (``QuantizeWeightsResult``).
    """

    def __init__(
        self,
        targets: Sequence[WeightTarget],
        choose_codes: Mapping[str, CodeChooser] | None = None,
    ) -> None:
        super().__init__()
        self.targets = list(targets)
        self.choose_codes = dict(choose_codes or {})

    def call(self, model: ir.Model) -> QuantizeWeightsResult:
        nodes = {node.name: node for node in model.graph}
        quantized: dict[str, QuantizedWeight] = {}
        restored: dict[str, ir.Value] = {}
        for target in self.targets:
            node = nodes[target.node]
            if target.weight not in restored:
                weight = node.inputs[target.input_index].const_value.numpy()
                chooser = self.choose_codes.get(target.weight)
                quantized[target.weight] = quantize_weight(
                    weight, target.out_axis, target.scheme, chooser
                )
                restored[target.weight] = _store(
                    model.graph, node, target.weight, quantized[target.weight]
                )
            old = node.inputs[target.input_index]
            node.replace_input_with(target.input_index, restored[target.weight])
            if not old.uses() and old.is_initializer():
                model.graph.initializers.pop(old.name)
        if quantized:
            logger.info(
                "quantized %d weights (%d with chosen codes)",
                len(quantized), len(set(quantized) & set(self.choose_codes)),
            )
        return QuantizeWeightsResult(model, bool(self.targets), quantized)


def _store(
    graph: ir.Graph, node: ir.Node, name: str, quantized: QuantizedWeight
) -> ir.Value:
    """Initializers and a DequantizeLinear (and Reshape) for ``quantized`` before ``node``;
    the value that restores the weight."""
    dtype = storage_type(quantized.scheme.bits, quantized.scheme.signed)
    inputs = [
        add_initializer(graph, f"{name}_quantized", quantized.codes, dtype),
        add_initializer(graph, f"{name}_scale", quantized.scale, ir.DataType.FLOAT),
    ]
    if quantized.zero_point is not None:
        inputs.append(add_initializer(graph, f"{name}_zero_point", quantized.zero_point, dtype))
    attributes = {}
    if quantized.axis is not None:
        attributes["axis"] = quantized.axis
    if quantized.blocked:
        attributes["block_size"] = quantized.block_size
    dq = ir.node(
        "DequantizeLinear", inputs, attributes, name=f"{name}_dq",
        metadata_props=weight_metadata(quantized),
    )
    result = name_output(dq, f"{name}_dq", ir.DataType.FLOAT, ir.Shape(quantized.codes.shape))
    new_nodes = [dq]
    if quantized.codes.shape != quantized.shape:
        shape = add_initializer(
            graph, f"{name}_shape", np.asarray(quantized.shape, np.int64), ir.DataType.INT64
        )
        reshape = ir.node("Reshape", [result, shape], name=f"{name}_reshape")
        result = name_output(
            reshape, f"{name}_dq_reshaped", ir.DataType.FLOAT, ir.Shape(quantized.shape)
        )
        new_nodes.append(reshape)
    graph.insert_before(node, new_nodes)
    return result


def weight_metadata(quantized: QuantizedWeight) -> dict[str, str]:
    """Node metadata that lets a reader (``onnxq report``, Netron) see the scheme."""
    scheme = quantized.scheme
    return {
        metadata.ROLE: "weight",
        metadata.BITS: str(scheme.bits),
        metadata.SCHEME: scheme.name,
        metadata.GROUP_CHANNELS: str(quantized.group_channels),
        metadata.OBSERVER: scheme.observer.value,
        **({metadata.SYMMETRIC_RANGE: scheme.symmetric_range} if scheme.symmetric else {}),
    }
