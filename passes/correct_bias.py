"""Subtract from a layer's bias the mean output shift its quantized weight causes.

A quantized weight ``Ŵ = W + ΔW`` moves the layer's output by ``ΔW x``; over the calibration
data that is ``ΔW E[x]`` on average, per output channel. Subtracting it from the bias removes
the systematic part of the error (bias correction). Conv and Gemm layers are supported; one
without a bias gets one, named ``<node>.bias_corrected``.
"""

from __future__ import annotations

__all__ = ["CorrectBiasPass", "CorrectBiasResult"]

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq.analysis.graph import add_initializer

logger = logging.getLogger(__name__)

_BIAS_INPUT = {"Conv": 2, "Gemm": 2}


@dataclasses.dataclass
class CorrectBiasResult(ir.passes.PassResult):
    """``corrected``: the bias value each corrected node reads now, by node name."""

    corrected: dict[str, ir.Value]


class CorrectBiasPass(ir.passes.InPlacePass):
    """Subtract ``shifts[node]`` (``[output channels]``, the mean output change ``ΔW E[x]``)
    from the bias of each named Conv or Gemm node.

    The result maps each node to the bias value it reads afterwards (``CorrectBiasResult``).
    """

    def __init__(self, shifts: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.shifts = {name: np.asarray(shift, dtype=np.float64) for name, shift in shifts.items()}

    def requires(self, model: ir.Model) -> None:
        nodes = {node.name: node for node in model.graph}
        for name in self.shifts:
            node = nodes.get(name)
            if node is None or node.op_type not in _BIAS_INPUT:
                raise ir.passes.PreconditionError(f"{name}: not a Conv or Gemm node of the graph")
            bias = _bias(node)
            if bias is not None and bias.const_value is None:
                raise ir.passes.PreconditionError(f"{name}: its bias is not a constant")
            if bias is not None and bias.const_value.size not in (1, len(self.shifts[name])):
                raise ir.passes.PreconditionError(f"{name}: its bias is not one per channel")

    def call(self, model: ir.Model) -> CorrectBiasResult:
        corrected = {
            node.name: self._correct(model.graph, node)
            for node in model.graph
            if node.name in self.shifts
        }
        if corrected:
            logger.info("corrected the bias of %d layers", len(corrected))
        return CorrectBiasResult(model, bool(corrected), corrected)

    def ensures(self, model: ir.Model) -> None:
        for node in model.graph:
            if node.name in self.shifts:
                bias = _bias(node)
                if bias is None or bias.const_value.shape[-1] != len(self.shifts[node.name]):
                    raise ir.passes.PostconditionError(
                        f"{node.name}: corrected bias has the wrong length"
                    )

    def _correct(self, graph: ir.Graph, node: ir.Node) -> ir.Value:
        shift = self.shifts[node.name]
        if node.op_type == "Gemm":  # Y = alpha·A·B + beta·C
            alpha = node.attributes.get_float("alpha", 1.0)
            shift = shift * alpha / node.attributes.get_float("beta", 1.0)
        bias = _bias(node)
        old = np.zeros(1, np.float32) if bias is None else bias.const_value.numpy().reshape(-1)
        new = (np.broadcast_to(old, shift.shape) - shift).astype(np.float32)
        if bias is not None and bias.is_initializer() and len(bias.uses()) == 1:
            bias.const_value = ir.tensor(new, name=bias.name)
            bias.shape = ir.Shape(new.shape)
            return bias
        value = add_initializer(graph, f"{node.name}.bias_corrected", new, ir.DataType.FLOAT)
        index = _BIAS_INPUT[node.op_type]
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        return value


def _bias(node: ir.Node) -> ir.Value | None:
    index = _BIAS_INPUT[node.op_type]
    return node.inputs[index] if len(node.inputs) > index else None
