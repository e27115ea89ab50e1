"""Equivalent weight bits: what a quantized model's weights cost, read from its ONNX graph alone.

The rules (the defaults reproduce every "Equivalent wbit" figure of the seed log):

* Counted weights are those of Conv layers; ``include_fc`` adds Gemm and MatMul. A counted
  weight left in float costs 32 bits per weight.
* A scale group is what one scale covers: the whole tensor, one output channel, or ``gs`` input
  channels × the whole kernel.
* Plain scales cost, per group, the float scale (32 bits for float32) plus, for affine schemes,
  the zero point at the weight's bit width (4 for 4-bit weights, 8 for 8-bit). Symmetric schemes
  have no zero point; an all-zero one (ONNX Runtime's quantizer writes them) counts as none.
* Decomposed scales (the weight DequantizeLinear's scale is itself a DequantizeLinear) cost, per
  group, the scale code (its bit width) plus the zero point as above, and per output channel the
  channel scale (32 bits) plus, for affine schemes, the offset counted as 32 bits: the seed
  counted a float offset, though onnxq stores it as an integer zero point of the codes' type.
* Equivalent bits = (Σ weights × bits + Σ overhead) / Σ weights over the counted weights.

Bit widths come from the nodes' ``onnxq.bits`` metadata, else from the integer types.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx_ir as ir

from onnxq.base import metadata
from onnxq.base.constants import COUNTED_OPS, OFFSET_BITS

#: Ops whose weights ``include_fc`` adds to the counted ones (``COUNTED_OPS``).
FC_OPS = ("Gemm", "MatMul")
#: Nodes that may sit between a weight's DequantizeLinear and the layer reading it.
_PASS_THROUGH = ("Reshape", "Transpose", "Identity", "Cast")


@dataclasses.dataclass(frozen=True)
class WeightAccount:
    """The storage cost of one layer's weight."""

    layer: str
    op: str
    weight: str
    shape: tuple[int, ...]
    scheme: str  # e.g. per-group-affine; "float" when not quantized
    bits: int  # bits per weight code (32 for float)
    group_channels: int | None  # input channels per scale group; None: per tensor or channel
    group_elements: int  # weights per scale group
    groups: int  # scale groups in the weight
    channels: int  # output channels with a channel scale (decomposed), else 0
    scale_bits: int  # per group: the float scale, or the scale code when decomposed
    zero_point_bits: int  # per group
    channel_bits: int  # per output channel (decomposed): channel scale + offset
    counted: bool

    @property
    def decomposed(self) -> bool:
        return self.channels > 0

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def overhead_bits(self) -> int:
        per_group = self.groups * (self.scale_bits + self.zero_point_bits)
        return per_group + self.channels * self.channel_bits

    @property
    def overhead_per_weight(self) -> float:
        return self.overhead_bits / self.elements

    @property
    def equivalent_bits(self) -> float:
        return self.bits + self.overhead_per_weight

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["shape"] = list(self.shape)
        record.update(
            decomposed=self.decomposed,
            elements=self.elements,
            overhead_bits=self.overhead_bits,
            overhead_per_weight=self.overhead_per_weight,
            equivalent_bits=self.equivalent_bits,
        )
        return record


@dataclasses.dataclass(frozen=True)
class FeatureAccount:
    """One quantized feature (activation) tensor."""

    tensor: str
    bits: int
    scheme: str
    group_channels: int | None
    observer: str | None

    def label(self) -> str:
        gs = f" gs={self.group_channels}" if self.group_channels else ""
        observer = f" ({self.observer})" if self.observer else ""
        return f"{self.bits}-bit {self.scheme}{gs}{observer}"


@dataclasses.dataclass(frozen=True)
class ModelAccount:
    """Every weight's cost, the totals over the counted ones, and the feature schemes."""

    weights: list[WeightAccount]
    features: list[FeatureAccount]
    config: dict | None  # the onnxq configuration recorded in the model, if any
    channel_sets: list[dict] | None  # what smooth and reorder did, if recorded
    include_fc: bool = False
    pass_selection: list[dict] | None = None  # the probes of the automatic channel passes
    bit_allocation: dict | None = None  # what --bit-budget measured and kept

    @property
    def counted(self) -> list[WeightAccount]:
        return [weight for weight in self.weights if weight.counted]

    @property
    def elements(self) -> int:
        return sum(weight.elements for weight in self.counted)

    @property
    def total_bits(self) -> int:
        return sum(w.elements * w.bits + w.overhead_bits for w in self.counted)

    @property
    def equivalent_bits(self) -> float:
        return self.total_bits / self.elements if self.elements else 0.0

    @property
    def float_bytes(self) -> int:
        return self.elements * 4

    @property
    def packed_bytes(self) -> float:
        return self.total_bits / 8

    @property
    def compression(self) -> float:
        return self.float_bytes / self.packed_bytes if self.total_bits else 0.0

    def feature_schemes(self) -> dict[str, int]:
        """How many feature tensors use each scheme, e.g. ``{"8-bit per-tensor-affine": 61}``."""
        counts: dict[str, int] = {}
        for feature in self.features:
            counts[feature.label()] = counts.get(feature.label(), 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "accounting": {"include_fc": self.include_fc, "offset_bits": OFFSET_BITS},
            "layers": [weight.to_dict() for weight in self.weights],
            "totals": {
                "weights": self.elements,
                "bits": self.total_bits,
                "equivalent_bits": self.equivalent_bits,
                "float_bytes": self.float_bytes,
                "packed_bytes": self.packed_bytes,
                "compression": self.compression,
            },
            "features": {
                "schemes": self.feature_schemes(),
                "tensors": [dataclasses.asdict(feature) for feature in self.features],
            },
            "channel_sets": self.channel_sets,
            "pass_selection": self.pass_selection,
            "bit_allocation": self.bit_allocation,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def account(model: ir.Model, include_fc: bool = False) -> ModelAccount:
    """The bit accounting of ``model`` (see the module docstring for the rules)."""
    counted_ops = COUNTED_OPS + (FC_OPS if include_fc else ())
    weights = []
    for node in model.graph:
        if node.op_type in COUNTED_OPS + FC_OPS and len(node.inputs) > 1:
            weight = _weight_account(node, node.op_type in counted_ops)
            if weight is not None:
                weights.append(weight)
    features = [_feature_account(node) for node in model.graph if _is_feature_quantize(node)]
    config = model.metadata_props.get(metadata.QUANTIZATION)
    channel_sets = model.metadata_props.get(metadata.CHANNEL_SETS)
    selection = model.metadata_props.get(metadata.PASS_SELECTION)
    allocation = model.metadata_props.get(metadata.BIT_ALLOCATION)
    return ModelAccount(
        weights,
        features,
        json.loads(config) if config else None,
        json.loads(channel_sets) if channel_sets else None,
        include_fc,
        json.loads(selection) if selection else None,
        json.loads(allocation) if allocation else None,
    )


def _weight_account(node: ir.Node, counted: bool) -> WeightAccount | None:
    value = node.inputs[1]
    dequantize = None if value is None else _dequantize_of(value)
    if dequantize is None:
        if value is None or value.const_value is None:
            return None  # a weight computed at run time: not a stored weight
        shape = tuple(value.const_value.shape)
        return WeightAccount(
            node.name, node.op_type, value.name, shape, "float", 32, None, math.prod(shape),
            1, 0, 0, 0, 0, counted,
        )
    return _quantized_account(node, dequantize, counted)


def _dequantize_of(value: ir.Value) -> ir.Node | None:
    """The DequantizeLinear of constant codes that ``value`` is computed from, if any."""
    producer = value.producer()
    while producer is not None and producer.op_type in _PASS_THROUGH:
        producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    return producer if producer.inputs[0].const_value is not None else None


def _quantized_account(node: ir.Node, dequantize: ir.Node, counted: bool) -> WeightAccount:
    codes = dequantize.inputs[0]
    bits = _bits(dequantize, codes)
    scale = dequantize.inputs[1]
    scale_dequantize = _dequantize_of(scale)  # decomposed scales (through a Reshape in rows)
    decomposed = scale_dequantize is not None
    if decomposed:
        scale_codes, channel_scale = scale_dequantize.inputs[0], scale_dequantize.inputs[1]
        groups = math.prod(scale_codes.const_value.shape)
        channels = math.prod(channel_scale.const_value.shape)
        scale_bits = _bits(scale_dequantize, scale_codes)
        channel_bits = channel_scale.dtype.bitwidth
    else:
        groups = math.prod(scale.const_value.shape)
        channels, channel_bits = 0, 0
        scale_bits = scale.dtype.bitwidth
    shape = _weight_shape(node.inputs[1], codes)
    elements = math.prod(shape)
    block = dequantize.attributes.get_int("block_size", 0)
    scheme = _scheme(dequantize, groups, block, shape)
    group_elements = block or elements // groups
    group_channels = _group_channels(dequantize, shape, group_elements) if "group" in scheme else None
    affine = scheme.endswith("affine")
    zero_point_bits = bits if affine else 0
    if decomposed and affine:
        channel_bits += OFFSET_BITS
    return WeightAccount(
        node.name, node.op_type, _weight_name(dequantize), shape, scheme, bits, group_channels,
        group_elements, groups, channels, scale_bits, zero_point_bits, channel_bits,
        counted,
    )


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _bits(node: ir.Node, codes: ir.Value) -> int:
    recorded = node.metadata_props.get(metadata.BITS)
    return int(recorded) if recorded else codes.dtype.bitwidth


def _weight_shape(value: ir.Value, codes: ir.Value) -> tuple[int, ...]:
    """The shape the layer reads: known, or set by a constant Reshape, else the codes' shape."""
    if value.shape is not None and value.shape.is_static():
        return tuple(int(d) for d in value.shape)
    producer = value.producer()
    if producer is not None and producer.op_type == "Reshape":
        target = producer.inputs[1].const_value
        if target is not None and not (target.numpy() <= 0).any():
            return tuple(int(d) for d in target.numpy())
    return tuple(codes.const_value.shape)


def _weight_name(dequantize: ir.Node) -> str:
    name = dequantize.inputs[0].name or ""
    return name.removesuffix("_quantized")


def _scheme(dequantize: ir.Node, groups: int, block: int, shape: tuple[int, ...]) -> str:
    recorded = dequantize.metadata_props.get(metadata.SCHEME)
    if recorded:
        return recorded
    if block or groups > shape[0]:  # blocked, or per-axis over one row of codes per group
        granularity = "group"
    else:
        granularity = "tensor" if groups == 1 else "channel"
    zero_point = _input(dequantize, 2)
    affine = zero_point is not None and bool(np.any(zero_point.const_value.numpy()))
    return f"per-{granularity}-{'affine' if affine else 'symmetric'}"


def _group_channels(dequantize: ir.Node, shape: tuple[int, ...], block: int) -> int | None:
    recorded = dequantize.metadata_props.get(metadata.GROUP_CHANNELS)
    if recorded:
        return int(recorded)
    kernel = math.prod(shape[2:]) if len(shape) > 2 else 1
    return max(1, block // kernel)


def _is_feature_quantize(node: ir.Node) -> bool:
    return node.op_type == "QuantizeLinear" and node.inputs[0].const_value is None


def _feature_account(node: ir.Node) -> FeatureAccount:
    dtype = _quantized_type(node)
    props = node.metadata_props
    bits = int(props.get(metadata.BITS) or dtype.bitwidth)
    scheme = props.get(metadata.SCHEME)
    if not scheme:
        scale = node.inputs[1].const_value
        granularity = "tensor" if scale is None or scale.size == 1 else "channel"
        signed = dtype in (ir.DataType.INT4, ir.DataType.INT8, ir.DataType.INT16)
        scheme = f"per-{granularity}-{'symmetric' if signed else 'affine'}"
    group = props.get(metadata.GROUP_CHANNELS)
    return FeatureAccount(
        node.inputs[0].name, bits, scheme, int(group) if group else None,
        props.get(metadata.OBSERVER),
    )


def _quantized_type(node: ir.Node) -> ir.DataType:
    """What a QuantizeLinear produces: its zero point's type, ``output_dtype``, else uint8."""
    zero_point = _input(node, 2)
    if zero_point is not None and zero_point.dtype is not None:
        return zero_point.dtype
    output_dtype = node.attributes.get_int("output_dtype", 0)
    return ir.DataType(output_dtype) if output_dtype else ir.DataType.UINT8
