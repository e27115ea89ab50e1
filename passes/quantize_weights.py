"""Replace constant Conv/Gemm/MatMul weights by integer codes and a DequantizeLinear.

Per-tensor and per-channel 8-bit weights use a plain (per-axis) DequantizeLinear on the original
weight, the pattern ONNX Runtime fuses into integer kernels. Everything else (any weight stored
in 4 bits, any per-group weight) uses opset-21 blocked DequantizeLinear on a 2-D view of the
weight followed by a Reshape: for a Conv weight ``[O, I, kh, kw]`` the view is
``[O, I·kh·kw]`` and a group of ``gs`` input channels is a block of ``gs·kh·kw`` values.
"""

from __future__ import annotations

__all__ = ["QuantizeWeightsPass"]

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


class QuantizeWeightsPass(ir.passes.InPlacePass):
    """Quantize the weights named by ``targets`` (see ``onnxq.analysis.plan``) in place.

    Adds initializers ``<w>_quantized``, ``<w>_scale`` (and ``<w>_zero_point``), a
    DequantizeLinear ``<w>_dq`` and, for blocked weights, a Reshape ``<w>_reshape``; the node
    reads the dequantized weight, and the float initializer goes once nothing else reads it.
    ``choose_codes`` maps weight names to their code choosers (see ``quantize_weight``).
    """

    def __init__(
        self,
        targets: Sequence[WeightTarget],
        choose_codes: Mapping[str, CodeChooser] | None = None,
    ) -> None:
        super().__init__()
        self.targets = list(targets)
        self.choose_codes = dict(choose_codes or {})
        self.quantized: dict[str, QuantizedWeight] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = {node.name: node for node in model.graph}
        restored: dict[str, ir.Value] = {}
        for target in self.targets:
            node = nodes[target.node]
            if target.weight not in restored:
                restored[target.weight] = self._quantize(model.graph, node, target)
            old = node.inputs[target.input_index]
            node.replace_input_with(target.input_index, restored[target.weight])
            if not old.uses() and old.is_initializer():
                model.graph.initializers.pop(old.name)
        return ir.passes.PassResult(model, modified=bool(self.targets))

    def _quantize(self, graph: ir.Graph, node: ir.Node, target: WeightTarget) -> ir.Value:
        weight = node.inputs[target.input_index]
        quantized = quantize_weight(
            weight.const_value.numpy(),
            target.out_axis,
            target.scheme,
            self.choose_codes.get(target.weight),
        )
        self.quantized[target.weight] = quantized
        name = target.weight
        dtype = storage_type(target.scheme.bits, target.scheme.signed)
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
