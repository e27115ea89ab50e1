"""SmoothQuant for convolutions: move activation range into the weights that read it.

For each channel set (see ``onnxq.analysis.channels``) with activation ranges ``a_j``
(calibration) and weight ranges ``w_j`` (the largest ``|w|`` of the consumers' weights that
multiply channel ``j``), the scale ``s_j = a_j^α / w_j^(1-α)`` divides the set's tensors and
multiplies the consumers' input channels. With ``alpha="auto"`` each set takes the α of a grid
that minimises the estimated output error of its consumers once quantized
(``onnxq.calibration.quant_error``), and is left alone unless that lowers the estimate by
``MIN_GAIN`` (25%) or more.

The division is folded into the producers' weights and biases, which is exact when every op of
the set commutes with a positive per-channel scale (Relu, MaxPool, Add of members, ...). A set
that runs through a scalar Clip (ReLU6) cannot be folded: it is skipped, or, with
``explicit_mul``, gets a per-channel Mul by ``1/s`` in front of its consumers (a runtime op).
Depthwise consumers are scaled per channel, which their weights allow exactly.
"""

from __future__ import annotations

__all__ = ["SmoothPass", "SmoothRecord", "SmoothResult", "smoothing_scale"]

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq.analysis import channels
from onnxq.analysis.channels import ChannelSet, Consumer, Producer
from onnxq.analysis.equivalence import OutputCheck
from onnxq.analysis.graph import (
    add_initializer,
    name_output,
    replace_constant,
    values_by_name,
)
from onnxq.base import metadata
from onnxq.base.constants import ACT_SCALES, AUTO
from onnxq.calibration import quant_error
from onnxq.calibration.channel_statistics import ChannelStatistics
from onnxq.core.schemes import Scheme

_SCALE_LIMITS = (1e-5, 1e5)
ALPHA_GRID = tuple(i / 10 for i in range(11))
#: ``auto`` smooths a set only if that lowers its consumers' estimated error by this fraction.
#: The estimate is a layer's own error; on EfficientNet-Lite0, sets whose estimate fell by up to
#: 15% moved the network's output error up or down (BENCHMARKS.md), so smaller gains are noise.
MIN_GAIN = 0.25

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SmoothRecord:
    """What the pass did to one channel set: ``folded``, ``mul`` (explicit Mul) or ``skipped``."""

    set: str
    status: str
    reason: str = ""
    scale_range: tuple[float, float] | None = None
    inserted: tuple[str, ...] = ()
    alpha: float | None = None

    def to_dict(self) -> dict:
        record: dict = {"status": self.status}
        if self.reason:
            record["reason"] = self.reason
        if self.alpha is not None:
            record["alpha"] = self.alpha
        if self.scale_range is not None:
            record["scale_range"] = [float(f"{v:.4g}") for v in self.scale_range]
        if self.inserted:
            record["inserted"] = list(self.inserted)
        return record


def smoothing_scale(activation: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    """``a^α / w^(1-α)`` per channel; 1 where a channel is dead (``a`` or ``w`` is zero)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = np.power(activation, alpha) / np.power(weight, 1.0 - alpha)
    usable = np.isfinite(scale) & (scale > 0) & (activation > 0) & (weight > 0)
    return np.clip(np.where(usable, scale, 1.0), *_SCALE_LIMITS).astype(np.float32)


@dataclasses.dataclass
class SmoothResult(ir.passes.PassResult):
    """``records``: one per channel set, what was done to it and why."""

    records: list[SmoothRecord]

    def summary(self) -> str:
        """``"3 sets folded, 1 with a Mul, 2 skipped"``."""
        counts = {status: 0 for status in ("folded", "mul", "skipped")}
        for record in self.records:
            counts[record.status] += 1
        return (
            f"{counts['folded']} sets folded, {counts['mul']} with a Mul, "
            f"{counts['skipped']} skipped"
        )


class SmoothPass(ir.passes.InPlacePass):
    """Divide each channel set by ``s`` (folded into its producers), multiply its consumers by ``s``.

    ``statistics`` maps the consumers' input tensors to their calibrated channel statistics.
    ``quantization`` maps consumer nodes to their ``(weight scheme, feature scheme)`` (either may
    be None), which ``alpha="auto"`` needs to estimate quantization errors.
    The result's ``records`` tell, per set, what was folded, what got an explicit Mul and what
    was skipped and why. With ``verify`` the pass runs the model before and after (on ``verify_inputs`` or
    random inputs) and fails if an output moved by more than
    ``onnxq.analysis.equivalence.TOLERANCE``.
    """

    def __init__(
        self,
        statistics: Mapping[str, ChannelStatistics],
        alpha: float | str = 0.5,
        act_scale: str = "absmax",
        explicit_mul: bool = False,
        verify: bool = False,
        verify_inputs: dict[str, np.ndarray] | None = None,
        quantization: Mapping[str, tuple[Scheme | None, Scheme | None]] | None = None,
    ) -> None:
        super().__init__()
        self.statistics = dict(statistics)
        self.alpha = alpha
        self.quantization = dict(quantization or {})
        self.act_scale = act_scale
        self.explicit_mul = explicit_mul
        self.verify = verify
        self.verify_inputs = verify_inputs

    def requires(self, model: ir.Model) -> None:
        if self.alpha != AUTO and not 0.0 <= self.alpha <= 1.0:
            raise ir.passes.PreconditionError(f"alpha must be in [0, 1] or auto, got {self.alpha}")
        if self.act_scale not in ACT_SCALES:
            raise ir.passes.PreconditionError(f"unknown activation scale {self.act_scale!r}")

    def call(self, model: ir.Model) -> SmoothResult:
        graph = model.graph
        check = OutputCheck(model, self.verify_inputs) if self.verify else None
        nodes_before = len(graph)
        values = values_by_name(graph)
        nodes = {node.name: node for node in graph}
        records = [
            self._smooth(graph, values, nodes, channel_set)
            for channel_set in channels.analyze(model).sets
        ]
        if len(graph) != nodes_before + sum(len(record.inserted) for record in records):
            raise ir.passes.PostconditionError("SmoothPass added nodes besides its explicit Muls")
        if check is not None:
            check.verify(model, "SmoothPass")
        result = SmoothResult(model, any(r.status != "skipped" for r in records), records)
        logger.info("smoothed %s", result.summary())
        return result

    def _smooth(
        self,
        graph: ir.Graph,
        values: dict[str, ir.Value],
        nodes: dict[str, ir.Node],
        channel_set: ChannelSet,
    ) -> SmoothRecord:
        fold_blockers = channel_set.smooth_blockers
        if fold_blockers and (not self.explicit_mul or channel_set.mul_blockers):
            return SmoothRecord(channel_set.name, "skipped", "; ".join(fold_blockers))
        missing = [c.tensor for c in channel_set.consumers if c.tensor not in self.statistics]
        if missing:
            return SmoothRecord(channel_set.name, "skipped", f"no statistics for {missing[0]}")
        scale, alpha = self._scale(values, channel_set)
        if scale is None:
            reason = f"no α lowers the estimated error by {MIN_GAIN:.0%}"
            return SmoothRecord(channel_set.name, "skipped", reason)
        scale_range = (float(scale.min()), float(scale.max()))
        for consumer in channel_set.consumers:
            _scale_inputs(values[consumer.weight], consumer, channel_set.channels, scale)
        if not fold_blockers:
            for producer in channel_set.producers:
                _divide_outputs(values, producer, scale)
            return SmoothRecord(channel_set.name, "folded", "", scale_range, alpha=alpha)
        inserted = _insert_muls(graph, values, nodes, channel_set, scale)
        return SmoothRecord(
            channel_set.name, "mul", "; ".join(fold_blockers), scale_range, inserted, alpha
        )

    def _scale(
        self, values: dict[str, ir.Value], channel_set: ChannelSet
    ) -> tuple[np.ndarray | None, float]:
        """The set's scale and its α; with ``auto``, None when no α beats leaving it alone."""
        activation, weight = self._ranges(values, channel_set)
        activation = activation * ACT_SCALES[self.act_scale]
        if self.alpha != AUTO:
            return smoothing_scale(activation, weight, self.alpha), self.alpha
        best, best_alpha = None, None
        unchanged = self._estimated_error(values, channel_set, np.ones(channel_set.channels))
        best_error = unchanged * (1.0 - MIN_GAIN)
        for alpha in ALPHA_GRID:
            scale = smoothing_scale(activation, weight, alpha)
            error = self._estimated_error(values, channel_set, scale)
            if error < best_error:
                best, best_alpha, best_error = scale, alpha, error
        return best, best_alpha

    def _estimated_error(
        self, values: dict[str, ir.Value], channel_set: ChannelSet, scale: np.ndarray
    ) -> float:
        """The consumers' estimated quantization error once the set is divided by ``scale``."""
        total = 0.0
        for consumer in channel_set.consumers:
            weight = values[consumer.weight].const_value.numpy()
            full = np.ones(channels.consumer_input_channels(consumer, weight))
            full[consumer.offset : consumer.offset + len(scale)] = scale
            scaled = weight * channels.input_channel_factor(consumer, weight, full)
            stats = self.statistics[consumer.tensor].divided(full)
            weight_scheme, feature_scheme = self.quantization.get(consumer.node, (None, None))
            total += quant_error.consumer_error(
                consumer, scaled, stats, weight_scheme, feature_scheme
            )
        return total

    def _ranges(
        self, values: dict[str, ir.Value], channel_set: ChannelSet
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per channel: the largest activation ``|x|`` and weight ``|w|`` over the consumers."""
        width = channel_set.channels
        activation = np.zeros(width)
        weight = np.zeros(width)
        for consumer in channel_set.consumers:
            stats = self.statistics[consumer.tensor].segment(consumer.offset, width)
            activation = np.maximum(activation, stats.absmax)
            array = values[consumer.weight].const_value.numpy()
            ranges = channels.input_channel_absmax(consumer, array)
            weight = np.maximum(weight, ranges[consumer.offset : consumer.offset + width])
        return activation, weight


def _scale_inputs(weight: ir.Value, consumer: Consumer, width: int, scale: np.ndarray) -> None:
    """Multiply the consumer's input channels ``[offset, offset + width)`` by ``scale``."""
    array = weight.const_value.numpy()
    full = np.ones(channels.consumer_input_channels(consumer, array), dtype=np.float32)
    full[consumer.offset : consumer.offset + width] = scale
    replace_constant(weight, array * channels.input_channel_factor(consumer, array, full))


def _divide_outputs(values: dict[str, ir.Value], producer: Producer, scale: np.ndarray) -> None:
    """Divide the producer's output channels (weight rows and bias) by ``scale``."""
    weight = values[producer.weight]
    array = weight.const_value.numpy().copy()
    rows = slice(producer.offset, producer.offset + len(scale))
    index = [slice(None)] * array.ndim
    index[producer.axis] = rows
    shape = [1] * array.ndim
    shape[producer.axis] = len(scale)
    array[tuple(index)] /= scale.reshape(shape)
    replace_constant(weight, array)
    if producer.bias is not None:
        bias = values[producer.bias]
        outputs = array.shape[producer.axis]
        vector = np.broadcast_to(bias.const_value.numpy().reshape(-1), (outputs,)).copy()
        vector[rows] /= scale
        replace_constant(bias, vector)


def _insert_muls(
    graph: ir.Graph,
    values: dict[str, ir.Value],
    nodes: dict[str, ir.Node],
    channel_set: ChannelSet,
    scale: np.ndarray,
) -> tuple[str, ...]:
    """Put ``x · (1/s)`` in front of every consumer; returns the new Mul nodes' names."""
    inserted: dict[str, ir.Value] = {}
    for consumer in channel_set.consumers:
        node = nodes[consumer.node]
        x = node.inputs[0]
        if x.name not in inserted:
            weight = values[consumer.weight].const_value.numpy()
            full = np.ones(channels.consumer_input_channels(consumer, weight), dtype=np.float32)
            full[consumer.offset : consumer.offset + len(scale)] = 1.0 / scale
            rank = weight.ndim if consumer.op_type == "Conv" else 2
            inserted[x.name] = _mul(graph, values, x, full.reshape((1, -1) + (1,) * (rank - 2)))
        node.replace_input_with(0, inserted[x.name])
    return tuple(value.producer().name for value in inserted.values())


def _mul(
    graph: ir.Graph, values: dict[str, ir.Value], x: ir.Value, factor: np.ndarray
) -> ir.Value:
    name = _unused_name(f"{x.name}.smooth", values)
    constant = add_initializer(graph, f"{name}_factor", factor, ir.DataType.FLOAT)
    node = ir.node("Mul", [x, constant], name=name, metadata_props={metadata.ROLE: "smooth"})
    output = name_output(node, name, ir.DataType.FLOAT, x.shape)
    values[name] = output
    values[constant.name] = constant
    producer = x.producer()
    if producer is not None:
        graph.insert_after(producer, node)
    else:
        graph.insert_before(graph[0], node)
    return output


def _unused_name(name: str, values: Mapping[str, ir.Value]) -> str:
    candidate, count = name, 0
    while candidate in values or f"{candidate}_factor" in values:
        count += 1
        candidate = f"{name}_{count}"
    return candidate
