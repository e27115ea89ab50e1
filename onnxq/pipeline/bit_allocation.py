"""Spend an equivalent-bits budget on the layers whose low-bit weights cost the network most.

``--bit-budget B`` keeps layers at 8 bits, chosen on the calibration images, so that the model's
equivalent weight bits stay within ``B``. For every layer the plan gives weights under 8 bits,
onnxq quantizes that layer alone (round to nearest on the plan's grid; every other layer float)
and measures how far the network's output moves: the mean KL divergence of its softmax from the
float model's over the calibration images (at most ``PROBE_IMAGES`` of them). Layers are then kept at 8 bits greedily, the largest divergence per added bit
first, skipping those that no longer fit. The layers kept are added to ``keep_8bit`` (their
input features go to 8 bits with them, as with ``--keep-8bit``).

Bits are counted as ``onnxq report`` counts them (``onnxq.reporting.accounting``): Conv weights
only, each costing its codes plus, per scale group, its float32 scale (or decomposed scale code)
and, for affine schemes, a zero point of the codes' width. An affine zero point that turns out
all zero is not counted by ``report``, so the model can come out a little under the estimate,
never over it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from onnxq.analysis.plan import QuantPlan, WeightTarget, make_plan
from onnxq.base import progress
from onnxq.base.constants import COUNTED_OPS, OFFSET_BITS
from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Granularity
from onnxq.core.weight_quantization import groups_per_channel, quantize_weight
from onnxq.io import data, runtime
from onnxq.io.data import ImageSet
from onnxq.io.preprocessing import Preprocessing
from onnxq.pipeline.pass_selection import kl_per_image

#: Images per session run of the probes.
BATCH = 32
#: Calibration images the probes run (the first of the sample): enough to rank layers whose
#: divergences differ by orders of magnitude, and a larger --calib-size costs no more.
PROBE_IMAGES = 128
#: Bits of a float32 scale (plain, or a decomposed scale's per-channel one).
FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True)
class LayerChoice:
    """One candidate layer: its divergence alone at low bits, what 8 bits add, whether kept."""

    node: str
    divergence: float
    added_bits: int
    kept: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The layers kept at 8 bits for the budget, and the equivalent bits it leads to."""

    budget: float
    start_bits: float  # the plan's equivalent bits before any layer is added
    bits: float  # with the kept layers at 8 bits
    layers: list[LayerChoice]

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(layer.node for layer in self.layers if layer.kept)

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "start_bits": self.start_bits,
            "bits": self.bits,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def allocate(
    model: ir.Model,
    config: QuantConfig,
    images: ImageSet,
    preprocessing: Preprocessing,
    ep: str,
) -> Allocation:
    """The layers ``config.bit_budget`` keeps at 8 bits on ``model`` (see the module docstring)."""
    budget = config.bit_budget
    plan = make_plan(model, config)
    shapes = _counted_shapes(model, plan)
    if not shapes:
        raise OnnxqError("--bit-budget counts Conv weights, and this model quantizes none")
    counted = [t for t in plan.weights if t.node in shapes]
    widened = _widened_targets(model, config, [t.node for t in counted])
    candidates = [t for t in counted if widened[t.node].scheme.bits > t.scheme.bits]
    if not candidates:
        raise OnnxqError("--bit-budget: every Conv weight is already at 8 bits or more")
    elements = sum(math.prod(shape) for shape in shapes.values())
    spent = sum(_bits(t, shapes[t.node], config) for t in counted)
    if spent > budget * elements:
        raise OnnxqError(
            f"--bit-budget {budget:g} is below the {spent / elements:.3f} equivalent bits the "
            "model has with no layer added at 8 bits"
        )
    added = {
        t.node: _bits(widened[t.node], shapes[t.node], config) - _bits(t, shapes[t.node], config)
        for t in candidates
    }
    divergences = _divergences(model, candidates, images, preprocessing, ep)
    start, kept = spent, set()
    for node in sorted(added, key=lambda n: (-divergences[n] / added[n], n)):
        if spent + added[node] <= budget * elements:
            spent += added[node]
            kept.add(node)
    layers = [
        LayerChoice(t.node, divergences[t.node], added[t.node], t.node in kept) for t in candidates
    ]
    return Allocation(budget, start / elements, spent / elements, layers)


def _counted_shapes(model: ir.Model, plan: QuantPlan) -> dict[str, tuple[int, ...]]:
    """The weight shape of every planned layer whose weight the budget counts."""
    ops = {node.name: node.op_type for node in model.graph}
    initializers = model.graph.initializers
    return {
        target.node: tuple(initializers[target.weight].shape)
        for target in plan.weights
        if ops.get(target.node) in COUNTED_OPS
    }


def _widened_targets(
    model: ir.Model, config: QuantConfig, nodes: list[str]
) -> dict[str, WeightTarget]:
    """The weight targets of ``nodes`` as the plan makes them when they are kept at 8 bits
    (reduced range and all)."""
    wide = make_plan(model, dataclasses.replace(config, keep_8bit=config.keep_8bit + tuple(nodes)))
    wanted = set(nodes)
    return {target.node: target for target in wide.weights if target.node in wanted}


def _bits(target: WeightTarget, shape: tuple[int, ...], config: QuantConfig) -> int:
    """What ``report`` will count for this weight: codes, scales and zero points."""
    scheme = target.scheme
    zero_point = 0 if scheme.symmetric else scheme.bits
    if scheme.granularity is Granularity.TENSOR:
        return math.prod(shape) * scheme.bits + FLOAT_BITS + zero_point
    channels = shape[target.out_axis]
    per_channel = groups_per_channel(shape, target.out_axis, scheme)
    groups = channels * per_channel
    overhead = groups * (FLOAT_BITS + zero_point)
    if config.decompose_scales and per_channel > 1:
        offset = 0 if scheme.symmetric else OFFSET_BITS
        overhead = groups * (config.scale_bits + zero_point) + channels * (FLOAT_BITS + offset)
    return math.prod(shape) * scheme.bits + overhead


def _divergences(
    model: ir.Model,
    candidates: list[WeightTarget],
    images: ImageSet,
    preprocessing: Preprocessing,
    ep: str,
) -> dict[str, float]:
    """Per candidate, the mean KL divergence from the float model's softmax on ``images`` (the
    first ``PROBE_IMAGES``) with only that layer's weight quantized (round to nearest)."""
    probes = images.head(PROBE_IMAGES)
    pixels = np.concatenate([x for x, _ in data.iter_batches(probes, preprocessing, BATCH)])
    reference = runtime.logits(model, pixels, ep, BATCH)
    divergences = {}
    described = "measuring each layer's sensitivity"
    for target in progress.track(candidates, described, len(candidates)):
        weight = model.graph.initializers[target.weight]
        original = weight.const_value
        values = original.numpy()
        quantized = quantize_weight(values, target.out_axis, target.scheme).dequantize()
        weight.const_value = ir.tensor(quantized.astype(values.dtype), name=weight.name)
        try:
            logits = runtime.logits(model, pixels, ep, BATCH)
            divergences[target.node] = float(np.mean(kl_per_image(reference, logits)))
        finally:
            weight.const_value = original
    return divergences
