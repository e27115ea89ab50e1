"""Store learned weight codes, feature scales and biases in a QDQ graph (``--rounding reconstruct``).

Weight codes are found from their layer: the constant DequantizeLinear that feeds the layer's
weight (``analysis.constant_dq.weight_dequantize``), whose codes initializer gets the new codes
in its own integer type. A feature's scale is found from the feature: every QuantizeLinear that
reads it and every DequantizeLinear that reads their codes get the new scale. A bias is found
from its layer and replaced in its constant (float, as before). Grids, zero points and the
graph's structure stay as they are.
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
    replaced; ``biases``: the layers whose bias was replaced."""

    codes: dict[str, int]
    scales: list[str]
    biases: list[str] = dataclasses.field(default_factory=list)


class StoreLearnedPass(ir.passes.InPlacePass):
    """Replace the weight codes of the layers in ``codes`` (int32 arrays in the stored layout),
    the scales of the features in ``scales`` (float32, the stored shape) and the biases of the
    layers in ``biases`` (float32, the stored shape)."""

    def __init__(
        self,
        codes: Mapping[str, np.ndarray],
        scales: Mapping[str, np.ndarray],
        biases: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.codes = dict(codes)
        self.scales = dict(scales)
        self.biases = dict(biases or {})

    def requires(self, model: ir.Model) -> None:
        layers = {node.name: node for node in model.graph}
        for name, codes in self.codes.items():
            _check_target(name, "codes", codes, _codes_value(layers.get(name)),
                          "no quantized weight to store codes in")
        values = values_by_name(model.graph)
        for name in self.scales:
            if name not in values or not _quantizers(values[name]):
                raise ir.passes.PreconditionError(f"{name}: no quantized feature of that name")
        for name, bias in self.biases.items():
            _check_target(name, "bias", bias, _bias_value(layers.get(name)),
                          "no constant bias of its own")

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
        for name, bias in self.biases.items():
            stored = _bias_value(layers[name])
            stored.const_value = ir.tensor(np.asarray(bias, np.float32), name=stored.name)
        logger.info(
            "stored learned codes of %d layers (%d codes changed), %d feature scales and %d "
            "biases", len(changed), sum(changed.values()), len(self.scales), len(self.biases),
        )
        return StoreLearnedResult(model, bool(self.codes or self.scales or self.biases), changed,
                                  list(self.scales), list(self.biases))

    def _store_codes(self, layer: ir.Node, codes: np.ndarray) -> int:
        stored = _codes_value(layer)
        old = stored.const_value.numpy().astype(np.int32)
        array = codes.astype(_NUMPY_TYPES[stored.dtype])
        stored.const_value = ir.tensor(array, dtype=stored.dtype, name=stored.name)
        return int((old != codes).sum())


def _check_target(layer: str, what: str, array: np.ndarray, stored: ir.Value | None,
                  missing: str) -> None:
    """Raise unless ``stored`` exists and has ``array``'s shape."""
    if stored is None:
        raise ir.passes.PreconditionError(f"{layer}: {missing}")
    if stored.const_value.shape != array.shape:
        raise ir.passes.PreconditionError(
            f"{layer}: {what} shaped {array.shape}, stored {stored.const_value.shape}"
        )


def _codes_value(layer: ir.Node | None) -> ir.Value | None:
    """The codes initializer of ``layer``'s quantized weight, if it has one."""
    if layer is None or len(layer.inputs) < 2:
        return None
    dequantize = weight_dequantize(layer.inputs[1])
    if dequantize is None or dequantize.inputs[0].const_value is None:
        return None
    codes = dequantize.inputs[0]
    return codes if codes.dtype in _NUMPY_TYPES else None


def _bias_value(layer: ir.Node | None) -> ir.Value | None:
    """``layer``'s bias, if it is a float initializer that no other node reads."""
    if layer is None or len(layer.inputs) < 3 or layer.inputs[2] is None:
        return None
    bias = layer.inputs[2]
    if bias.const_value is None or bias.producer() is not None or len(bias.uses()) != 1:
        return None
    return bias if bias.dtype == ir.DataType.FLOAT else None


def _quantizers(feature: ir.Value) -> list[ir.Node]:
    return [node for node in feature.consumers() if node.op_type == "QuantizeLinear"]


def _set_scale(node: ir.Node, scale: np.ndarray) -> None:
    value = node.inputs[1]
    array = np.asarray(scale, np.float32).reshape(value.const_value.shape)
    value.const_value = ir.tensor(array, name=value.name)
