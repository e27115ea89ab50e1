"""Store per-group weight scales as a per-channel float times low-bit integer codes.

Runs after ``QuantizeWeightsPass``, on the weights the pipeline names (those with more than one
group per output channel: ``weight_quantization.groups_per_channel``). Each is found through the
graph, from the layer that reads it: its blocked DequantizeLinear keeps its inputs' names, but its
scale ``<w>_scale`` is no longer an initializer: a second DequantizeLinear ``<w>_scale_dq``
computes it from the codes ``<w>_scale_codes``, the per-channel scale ``<w>_channel_scale`` and,
for affine weights, the offset ``<w>_channel_zero_point``. The weight codes and group zero points
are quantized again with the decomposed scales (``onnxq.core.scale_decomposition`` says how the
decomposition is searched).
"""

from __future__ import annotations

__all__ = ["DecomposeScalesPass", "DecomposeScalesResult", "DecomposedWeight", "scale_code_type"]

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxq.analysis.constant_dq import weight_dequantize
from onnxq.analysis.graph import add_initializer, name_output
from onnxq.analysis.plan import WeightTarget
from onnxq.base import metadata
from onnxq.core import quant_math
from onnxq.core.scale_decomposition import (
    DecomposedScales,
    decompose_scales,
    group_zero_points,
)
from onnxq.core.schemes import MAX_BITS, MIN_BITS
from onnxq.core.weight_quantization import CodeChooser, QuantizedWeight

logger = logging.getLogger(__name__)

_SIGNED_TYPES = (ir.DataType.INT4, ir.DataType.INT8)


@dataclasses.dataclass(frozen=True)
class DecomposedWeight:
    """A weight's new codes and grid, laid out as its DequantizeLinear reads them."""

    codes: np.ndarray  # int32 weight codes
    scale: np.ndarray  # float32 group scales, as the scale DequantizeLinear computes them
    zero_point: np.ndarray | None  # int32 group zero points; None for symmetric weights
    scales: DecomposedScales  # the decomposition, one row per output channel

    def replace_in(self, quantized: QuantizedWeight) -> QuantizedWeight:
        """``quantized`` with these codes, scales and zero points (its layout unchanged)."""
        return dataclasses.replace(
            quantized, codes=self.codes, scale=self.scale, zero_point=self.zero_point
        )


@dataclasses.dataclass
class DecomposeScalesResult(ir.passes.PassResult):
    """``decomposed``: what was stored for each weight, by weight name."""

    decomposed: dict[str, DecomposedWeight]


def scale_code_type(bits: int, offset: bool) -> ir.DataType:
    """The type of scale codes: unsigned without an offset; with one, a signed type wide enough
    for both the codes and the (negative) channel zero point."""
    if not offset:
        return ir.DataType.UINT4 if bits <= 4 else ir.DataType.UINT8
    return ir.DataType.INT8 if bits < 8 else ir.DataType.INT16


class DecomposeScalesPass(ir.passes.InPlacePass):
    """Decompose the group scales of the quantized weights ``targets`` into ``scale_bits``-bit
    codes times per-channel scales.

    ``float_weights`` holds their values before quantization, by weight name; ``choose_codes``
    (by weight name) picks the codes on the decomposed grid, as in ``quantize_weight``. The
    result says what was stored for each weight (``DecomposeScalesResult``).
    """

    def __init__(
        self,
        targets: Sequence[WeightTarget],
        float_weights: Mapping[str, np.ndarray],
        scale_bits: int = 4,
        choose_codes: Mapping[str, CodeChooser] | None = None,
    ) -> None:
        super().__init__()
        self.targets = {target.weight: target for target in targets}  # one per weight
        self.float_weights = float_weights
        self.scale_bits = scale_bits
        self.choose_codes = dict(choose_codes or {})

    def requires(self, model: ir.Model) -> None:
        if not MIN_BITS <= self.scale_bits <= MAX_BITS:
            raise ir.passes.PreconditionError(
                f"scale codes of {self.scale_bits} bits are not supported ({MIN_BITS}..{MAX_BITS})"
            )
        for name, node in self._dequantize_nodes(model).items():
            if node is None or _groups_per_channel(node) < 2:
                raise ir.passes.PreconditionError(
                    f"{name}: not read through a blocked DequantizeLinear with several groups "
                    "per output channel"
                )

    def call(self, model: ir.Model) -> DecomposeScalesResult:
        decomposed = {
            name: self._decompose(model.graph, node, name, self.float_weights[name])
            for name, node in self._dequantize_nodes(model).items()
        }
        if decomposed:
            logger.info(
                "decomposed the group scales of %d weights into %d-bit codes",
                len(decomposed), self.scale_bits,
            )
        return DecomposeScalesResult(model, bool(decomposed), decomposed)

    def ensures(self, model: ir.Model) -> None:
        for name, node in self._dequantize_nodes(model).items():
            producer = node.inputs[1].producer()
            if producer is None or producer.op_type != "DequantizeLinear":
                raise ir.passes.PostconditionError(f"{name}: scale is not dequantized codes")

    def _dequantize_nodes(self, model: ir.Model) -> dict[str, ir.Node | None]:
        """Each target weight's DequantizeLinear, reached from the layer that reads it."""
        layers = {target.node for target in self.targets.values()}
        nodes = {node.name: node for node in model.graph if node.name in layers}
        return {
            name: weight_dequantize(nodes[target.node].inputs[target.input_index])
            if target.node in nodes else None
            for name, target in self.targets.items()
        }

    def _decompose(
        self, graph: ir.Graph, node: ir.Node, name: str, weight: np.ndarray
    ) -> DecomposedWeight:
        codes_value, scale_value = node.inputs[0], node.inputs[1]
        zero_point_value = node.inputs[2] if len(node.inputs) > 2 else None
        axis = node.attributes.get_int("axis", 1)
        block = node.attributes.get_int("block_size")
        bits = int(node.metadata_props.get(metadata.BITS) or codes_value.dtype.bitwidth)
        signed = codes_value.dtype in _SIGNED_TYPES
        restricted = signed and node.metadata_props.get(metadata.SYMMETRIC_RANGE) == "restricted"
        decomposed = _decompose_weight(
            weight.reshape(codes_value.const_value.shape),
            scale_value.const_value.numpy(),
            None if zero_point_value is None else zero_point_value.const_value.numpy(),
            axis, block, bits, signed, restricted, self.scale_bits, self.choose_codes.get(name),
        )
        _set_contents(codes_value, decomposed.codes)
        if zero_point_value is not None:
            _set_contents(zero_point_value, decomposed.zero_point)
        scale_dq = self._scale_dequantize(graph, name, decomposed.scales, channel_axis=1 - axis)
        graph.insert_before(node, scale_dq)
        node.replace_input_with(1, scale_dq.outputs[0])
        graph.initializers.pop(scale_value.name)
        name_output(scale_dq, scale_value.name, ir.DataType.FLOAT, scale_value.shape)
        node.metadata_props[metadata.SCALE_BITS] = str(self.scale_bits)
        return decomposed

    def _scale_dequantize(
        self, graph: ir.Graph, name: str, scales: DecomposedScales, channel_axis: int
    ) -> ir.Node:
        offset = scales.channel_zero_point is not None
        dtype = scale_code_type(self.scale_bits, offset)
        codes = scales.codes if channel_axis == 0 else scales.codes.T
        channel_scale = scales.channel_scale
        inputs = [
            _add_integers(graph, f"{name}_scale_codes", codes, dtype),
            add_initializer(graph, f"{name}_channel_scale", channel_scale, ir.DataType.FLOAT),
        ]
        if offset:
            inputs.append(
                _add_integers(graph, f"{name}_channel_zero_point", scales.channel_zero_point, dtype)
            )
        props = {metadata.ROLE: "weight_scale", metadata.BITS: str(self.scale_bits)}
        return ir.node(
            "DequantizeLinear", inputs, {"axis": channel_axis}, name=f"{name}_scale_dq",
            metadata_props=props,
        )


def _groups_per_channel(node: ir.Node) -> int:
    """Scale groups per output channel of a blocked weight DequantizeLinear (0: not blocked)."""
    scale = node.inputs[1] if len(node.inputs) > 1 else None
    if not node.attributes.get_int("block_size", 0) or scale is None or scale.const_value is None:
        return 0
    return scale.const_value.shape[node.attributes.get_int("axis", 1)]


def _decompose_weight(
    view: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    axis: int,
    block: int,
    bits: int,
    signed: bool,
    restricted: bool,
    scale_bits: int,
    choose_codes: CodeChooser | None = None,
) -> DecomposedWeight:
    """Decompose the grid of a weight stored as ``view`` (blocks along ``axis``) and quantize it
    again; the search works with one row per output channel, so ``axis`` 0 is transposed."""
    if axis == 0:
        view, scale = view.T, scale.T
        zero_point = None if zero_point is None else zero_point.T
    groups, mask = quant_math.group_rows(view, block)
    zero_point = None if zero_point is None else zero_point.astype(np.int32)
    scales = decompose_scales(groups, mask, scale, zero_point, bits, scale_bits, restricted)
    group_scale = scales.group_scales()
    if zero_point is not None:
        zero_point = group_zero_points(group_scale, scale, zero_point, bits)
    cols = view.shape[1]
    stored_zero_point = np.zeros(group_scale.shape, np.int32) if zero_point is None else zero_point
    full_scale = quant_math.expand_groups(group_scale, block, cols)
    full_zero_point = quant_math.expand_groups(stored_zero_point, block, cols)
    if choose_codes is None:
        codes = quant_math.quantize(view, full_scale, full_zero_point, bits, signed, restricted)
    else:
        codes = choose_codes(view, full_scale, full_zero_point)
    if axis == 0:
        codes, group_scale = codes.T, group_scale.T
        zero_point = None if zero_point is None else zero_point.T
    return DecomposedWeight(codes, group_scale, zero_point, scales)


def _integers(array: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """``array`` in the numpy type ``ir.tensor`` expects for integers stored as ``dtype``."""
    kinds = {
        ir.DataType.INT4: np.int8, ir.DataType.INT8: np.int8, ir.DataType.INT16: np.int16,
        ir.DataType.UINT4: np.uint8, ir.DataType.UINT8: np.uint8,
    }
    return np.asarray(array).astype(kinds[dtype])


def _add_integers(graph: ir.Graph, name: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
    return add_initializer(graph, name, _integers(array, dtype), dtype)


def _set_contents(value: ir.Value, array: np.ndarray) -> None:
    """Give the integer initializer ``value`` new contents of the same type and shape."""
    value.const_value = ir.tensor(_integers(array, value.dtype), dtype=value.dtype, name=value.name)
