"""Decide what to quantize in a graph: which weights, which feature tensors, at which scheme."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx_ir as ir

from onnxq.analysis.graph import downsampling, is_depthwise
from onnxq.analysis.placement import fused_features
from onnxq.base.constants import INTEGER_KERNEL_OPS, WEIGHT_OPS
from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme, reduced_range

#: ``--keep-8bit highres``: layers whose output is at most this many times smaller per side than
#: the input image (the stem and the first stage of an ImageNet CNN: 112×112 and 56×56 maps).
HIGHRES_DOWNSAMPLING = 4


@dataclasses.dataclass(frozen=True)
class WeightTarget:
    """A constant weight input of a node, with the axis of its output channels."""

    node: str
    input_index: int
    weight: str
    out_axis: int
    scheme: Scheme


@dataclasses.dataclass(frozen=True)
class FeatureTarget:
    """A feature tensor to fake-quantize, and the nodes that read the quantized copy."""

    tensor: str
    consumers: tuple[str, ...]
    scheme: Scheme


@dataclasses.dataclass
class QuantPlan:
    weights: list[WeightTarget]
    features: list[FeatureTarget]
    skipped: list[tuple[str, str]]  # (node name, reason)


def weight_layout(node: ir.Node) -> tuple[int, int] | str:
    """``(input index, output-channel axis)`` of a node's constant weight, or why there is none."""
    if node.op_type == "Conv":
        index, out_axis = 1, 0
    elif node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return "Gemm with transA=1 is not supported"
        index, out_axis = 1, 0 if node.attributes.get_int("transB", 0) else 1
    elif node.op_type == "MatMul":
        index, out_axis = 1, 1
    else:
        return f"{node.op_type} has no weight"
    weight = node.inputs[index] if len(node.inputs) > index else None
    if weight is None or weight.const_value is None:
        return "its weight is not a constant"
    rank = len(weight.const_value.shape)
    if node.op_type == "Conv" and rank < 3 or node.op_type != "Conv" and rank != 2:
        return f"weight of rank {rank} is not supported"
    return index, out_axis


def make_plan(model: ir.Model, config: QuantConfig) -> QuantPlan:
    """The weights and features ``config`` asks for, in graph order."""
    nodes = [node for node in model.graph if node.op_type in config.ops]
    layouts = {node.name: weight_layout(node) for node in nodes if node.op_type in WEIGHT_OPS}
    weighted = [node for node in nodes if isinstance(layouts.get(node.name), tuple)]
    kept = _kept_nodes(config.keep_8bit, model.graph, nodes, weighted)
    plan = QuantPlan([], [], [])
    for name, layout in layouts.items():
        if isinstance(layout, str):
            plan.skipped.append((name, layout))
    for node in weighted:
        index, out_axis = layouts[node.name]
        scheme = _at_8bit(config.weights) if node.name in kept else config.weights
        if config.reduce_range:
            scheme = reduced_range(scheme)
        plan.weights.append(WeightTarget(node.name, index, node.inputs[index].name, out_axis, scheme))
    if config.features is not None and config.placement == "fused":
        plan.features = _fused_feature_targets(model.graph, config, kept)
    elif config.features is not None:
        plan.features = _feature_targets(nodes, kept, config.features)
    return plan


def _feature_targets(
    nodes: Sequence[ir.Node], kept: set[str], scheme: Scheme
) -> list[FeatureTarget]:
    consumers: dict[str, list[str]] = {}
    bits: dict[str, int] = {}
    for node in nodes:
        for value in _feature_inputs(node):
            consumers.setdefault(value.name, []).append(node.name)
            wanted = 8 if node.name in kept else scheme.bits
            bits[value.name] = max(bits.get(value.name, 0), wanted)
    return [
        FeatureTarget(name, tuple(users), dataclasses.replace(scheme, bits=bits[name]))
        for name, users in consumers.items()
    ]


def _fused_feature_targets(
    graph: ir.Graph, config: QuantConfig, kept: set[str]
) -> list[FeatureTarget]:
    """Inputs and outputs of every op with an integer kernel (see ``onnxq.analysis.placement``)."""
    ops = set(config.ops) | set(INTEGER_KERNEL_OPS)
    return [
        FeatureTarget(
            placed.tensor,
            placed.consumers,
            _at_8bit(config.features) if kept.intersection(placed.touches) else config.features,
        )
        for placed in fused_features(graph, ops)
    ]


def _feature_inputs(node: ir.Node) -> list[ir.Value]:
    """The non-constant float inputs of ``node`` that carry features."""
    candidates = node.inputs[:1] if node.op_type in WEIGHT_OPS else node.inputs
    return [
        value
        for value in candidates
        if value is not None
        and value.const_value is None
        and (value.dtype is None or value.dtype == ir.DataType.FLOAT)
    ]


def _kept_nodes(
    names: Sequence[str], graph: ir.Graph, nodes: Sequence[ir.Node], weighted: Sequence[ir.Node]
) -> set[str]:
    kept: set[str] = set()
    for name in names:
        if name == "first":
            kept.update(node.name for node in weighted[:1])
        elif name == "last":
            kept.update(node.name for node in weighted[-1:])
        elif name == "depthwise":
            kept.update(node.name for node in weighted if is_depthwise(node))
        elif name == "depthwise3x3":
            kept.update(node.name for node in weighted if _is_depthwise_3x3(node))
        elif name == "highres":
            factors = downsampling(graph)
            kept.update(n.name for n in weighted if factors[n.name] <= HIGHRES_DOWNSAMPLING)
        else:
            matches = {node.name for node in nodes if name in (node.name, node.op_type)}
            if not matches:
                raise OnnxqError(
                    f"--keep-8bit: no quantized node or op type is named {name!r} "
                    "(use first, last, depthwise, depthwise3x3, highres, a node name or an op type)"
                )
            kept.update(matches)
    return kept


def _is_depthwise_3x3(node: ir.Node) -> bool:
    """A depthwise Conv with a 3×3 kernel: 9 weights per channel, few in all and each already
    carrying about 4 bits of its channel's scale and zero point, so 8-bit codes cost a model
    little (EfficientNet-Lite0: 4.228 → 4.260 equivalent bits)."""
    return is_depthwise(node) and tuple(node.inputs[1].shape[2:]) == (3, 3)


def _at_8bit(scheme: Scheme) -> Scheme:
    return dataclasses.replace(scheme, bits=max(scheme.bits, 8))

