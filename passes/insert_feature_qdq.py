"""Insert QuantizeLinear → DequantizeLinear on feature tensors with calibrated parameters.

Per-tensor parameters are scalars; per-channel and per-group ones are per-axis (axis 1) with
one entry per channel, a group's value repeated over its channels. Feature codes are always
stored as (u)int8; narrower widths add a Clip to their range between Q and DQ. (ONNX Runtime
1.32's Relu/Clip→QuantizeLinear fusions mishandle 4-bit types: Relu→Q(int4) drops the Relu and
returns wrong values, Clip→Q(uint4) can fail to load, so 4-bit QuantizeLinear is never used.)
"""

from __future__ import annotations

__all__ = ["InsertFeatureQDQPass"]

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxq.analysis.graph import add_initializer, name_output, values_by_name
from onnxq.analysis.plan import FeatureTarget
from onnxq.base import metadata
from onnxq.core import quant_math
from onnxq.core.feature_quantization import FeatureParams
from onnxq.core.schemes import Scheme
from onnxq.core.weight_quantization import storage_type

logger = logging.getLogger(__name__)


class InsertFeatureQDQPass(ir.passes.InPlacePass):
    """For each target tensor ``x``: ``x → x_q → [x_clip →] x_dq``, read by the target consumers.

    Initializers ``x_scale`` and ``x_zero_point`` hold the parameters; consumers not named in
    the target keep reading the float tensor.
    """

    def __init__(
        self, targets: Sequence[FeatureTarget], params: Mapping[str, FeatureParams]
    ) -> None:
        super().__init__()
        self.targets = list(targets)
        self.params = dict(params)

    def requires(self, model: ir.Model) -> None:
        missing = [t.tensor for t in self.targets if t.tensor not in self.params]
        if missing:
            raise ir.passes.PreconditionError(f"no calibrated parameters for {missing[:3]}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        values = values_by_name(graph)
        nodes = {node.name: node for node in graph}
        for target in self.targets:
            value = values[target.tensor]
            restored = self._insert(graph, value, self.params[target.tensor])
            for consumer in target.consumers:
                node = nodes[consumer]
                for index, node_input in enumerate(node.inputs):
                    if node_input is value:
                        node.replace_input_with(index, restored)
        if self.targets:
            logger.info("inserted Q/DQ pairs on %d feature tensors", len(self.targets))
        return ir.passes.PassResult(model, modified=bool(self.targets))

    def _insert(self, graph: ir.Graph, value: ir.Value, params: FeatureParams) -> ir.Value:
        name = value.name
        scheme = params.scheme
        dtype = storage_type(8, scheme.signed)
        scale = add_initializer(graph, f"{name}_scale", params.scale, ir.DataType.FLOAT)
        zero_point = add_initializer(graph, f"{name}_zero_point", params.zero_point, dtype)
        axis = {"axis": 1} if params.per_axis else {}
        props = feature_metadata(scheme)
        quantize = ir.node(
            "QuantizeLinear", [value, scale, zero_point], axis, name=f"{name}_q",
            metadata_props=props,
        )
        codes = name_output(quantize, f"{name}_quantized", dtype, value.shape)
        new_nodes = [quantize]
        if scheme.bits != 8:
            qmin, qmax = quant_math.integer_range(scheme.bits, scheme.signed)
            clip = ir.node(
                "Clip",
                [
                    codes,
                    add_initializer(graph, f"{name}_qmin", np.asarray(qmin), dtype),
                    add_initializer(graph, f"{name}_qmax", np.asarray(qmax), dtype),
                ],
                name=f"{name}_clip",
            )
            codes = name_output(clip, f"{name}_clipped", dtype, value.shape)
            new_nodes.append(clip)
        dequantize = ir.node(
            "DequantizeLinear", [codes, scale, zero_point], axis, name=f"{name}_dq",
            metadata_props=props,
        )
        restored = name_output(dequantize, f"{name}_dq", ir.DataType.FLOAT, value.shape)
        new_nodes.append(dequantize)
        if value.producer() is not None:
            graph.insert_after(value.producer(), new_nodes)
        else:
            graph.insert_before(graph[0], new_nodes)
        return restored


def feature_metadata(scheme: Scheme) -> dict[str, str]:
    """Node metadata naming the feature scheme, for reports and Netron."""
    return {
        metadata.ROLE: "feature",
        metadata.BITS: str(scheme.bits),
        metadata.SCHEME: scheme.name,
        metadata.GROUP_CHANNELS: str(scheme.group_size or ""),
        metadata.OBSERVER: scheme.observer.value,
    }
