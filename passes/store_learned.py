"""Store learned weight codes and feature scales in a QDQ graph (``--rounding reconstruct``).

Weight codes are found from their layer: the constant DequantizeLinear that feeds the layer's
weight (``analysis.constant_dq.weight_dequantize``), whose codes initializer gets the new codes
in its own integer type. A feature's scale is found from the feature: every QuantizeLinear that
reads it and every DequantizeLinear that reads their codes get the new scale. Grids, zero
points and the graph's structure stay as they are.
"""

from __future__ import annotations

__all__ = ["StoreLearnedPass", "StoreLearnedResult"]

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq.analysis.constant_dq import weight_dequantize
from onnxq.analysis.graph import values_by_name

logger = logging.getLogger(__name__)

_NUMPY_TYPES = {
    ir.DataType.INT4: np.int8, ir.DataType.INT8: np.int8,
    ir.DataType.UINT4: np.uint8, ir.DataType.UINT8: np.uint8,
}


@dataclasses.dataclass
class StoreLearnedResult(ir.passes.PassResult):
    """``codes``: how many codes changed, by layer; ``scales``: the features whose scale was
    replaced."""

    codes: dict[str, int]
    scales: list[str]


class StoreLearnedPass(ir.passes.InPlacePass):
    """Replace the weight codes of the layers in ``codes`` (int32 arrays in the stored layout)
    and the scales of the features in ``scales`` (float32, the stored shape)."""

    def __init__(
        self, codes: Mapping[str, np.ndarray], scales: Mapping[str, np.ndarray]
    ) -> None:
        super().__init__()
        self.codes = dict(codes)
        self.scales = dict(scales)

    def requires(self, model: ir.Model) -> None:
        layers = {node.name: node for node in model.graph}
        for name, codes in self.codes.items():
            stored = _codes_value(layers.get(name))
            if stored is None:
                raise ir.passes.PreconditionError(f"{name}: no quantized weight to store codes in")
            if stored.const_value.shape != codes.shape:
                raise ir.passes.PreconditionError(
                    f"{name}: codes shaped {codes.shape}, stored {stored.const_value.shape}"
                )
        values = values_by_name(model.graph)
        for name in self.scales:
            if name not in values or not _quantizers(values[name]):
                raise ir.passes.PreconditionError(f"{name}: no quantized feature of that name")

    def call(self, model: ir.Model) -> StoreLearnedResult:
        layers = {node.name: node for node in model.graph}
        changed = {name: self._store_codes(layers[name], codes) for name, codes in self.codes.items()}
        values = values_by_name(model.graph)
        for name, scale in self.scales.items():
            for node in _quantizers(values[name]):
                _set_scale(node, scale)
                for reader in node.outputs[0].consumers():
                    if reader.op_type == "DequantizeLinear":
                        _set_scale(reader, scale)
        logger.info(
            "stored learned codes of %d layers (%d codes changed) and %d feature scales",
            len(changed), sum(changed.values()), len(self.scales),
        )
        return StoreLearnedResult(model, bool(self.codes or self.scales), changed,
                                  list(self.scales))

    def _store_codes(self, layer: ir.Node, codes: np.ndarray) -> int:
        stored = _codes_value(layer)
        old = stored.const_value.numpy().astype(np.int32)
        array = codes.astype(_NUMPY_TYPES[stored.dtype])
        stored.const_value = ir.tensor(array, dtype=stored.dtype, name=stored.name)
        return int((old != codes).sum())


def _codes_value(layer: ir.Node | None) -> ir.Value | None:
    """The codes initializer of ``layer``'s quantized weight, if it has one."""
    if layer is None or len(layer.inputs) < 2:
        return None
    dequantize = weight_dequantize(layer.inputs[1])
    if dequantize is None or dequantize.inputs[0].const_value is None:
        return None
    codes = dequantize.inputs[0]
    return codes if codes.dtype in _NUMPY_TYPES else None


def _quantizers(feature: ir.Value) -> list[ir.Node]:
    return [node for node in feature.consumers() if node.op_type == "QuantizeLinear"]


def _set_scale(node: ir.Node, scale: np.ndarray) -> None:
    value = node.inputs[1]
    array = np.asarray(scale, np.float32).reshape(value.const_value.shape)
    value.const_value = ir.tensor(array, name=value.name)
