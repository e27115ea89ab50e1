"""Permute the channels of each channel set so that channels of similar range sit together.

A per-group scale covers ``gs`` consecutive input channels of a weight (or ``gs`` consecutive
channels of a feature); sorting channels by their range puts channels of similar range into one
group. The permutation is applied to the producers' output channels (weight rows and biases), to
per-channel constants on the way, and to the consumers' input channels, so the graph computes the
same function with no Gather or other runtime op. Sets linked by a depthwise Conv (see
``onnxq.analysis.channels``) share one permutation, which also permutes the depthwise weights.

Sort keys: ``absmax`` / ``max`` of the calibrated activations that the consumers read, or
``weight-absmax`` / ``weight-max`` of the consumers' weights per input channel. Consumers whose
weights are grouped across channels (not depthwise) decide the key when a set has any. With
``auto`` each group of sets takes the key whose order gives the lowest estimated quantization
error of its consumers (``onnxq.calibration.quant_error``), and keeps its order unless that
lowers the estimate by ``MIN_GAIN`` (1%) or more; orders that cannot matter (per-channel weights
and per-tensor features) are thereby left alone.
"""

from __future__ import annotations

__all__ = ["ReorderPass", "ReorderRecord", "ReorderResult"]

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq.analysis import channels
from onnxq.analysis.channels import ChannelSet, Consumer
from onnxq.analysis.equivalence import OutputCheck
from onnxq.analysis.graph import replace_constant, values_by_name
from onnxq.base.constants import ACTIVATION_KEYS, AUTO, REORDER_KEYS
from onnxq.calibration import quant_error
from onnxq.calibration.channel_statistics import ChannelStatistics
from onnxq.core.schemes import Scheme

#: ``auto`` keeps a set's order unless a key lowers the estimated error by this fraction (orders
#: that cannot matter differ only by float rounding).
MIN_GAIN = 0.01

logger = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class ReorderRecord:
    """What the pass did to sets sharing one permutation: ``permuted``, ``unchanged`` or
    ``skipped``."""

    sets: tuple[str, ...]
    status: str
    reason: str = ""
    moved: int = 0  # channels that changed position
    key: str | None = None

    def to_dict(self) -> dict:
        record: dict = {"status": self.status}
        if self.reason:
            record["reason"] = self.reason
        if self.key is not None:
            record["key"] = self.key
        if self.status == "permuted":
            record["moved"] = self.moved
        if len(self.sets) > 1:
            record["shared_with"] = list(self.sets)
        return record


@dataclasses.dataclass
class ReorderResult(ir.passes.PassResult):
    """``records``: one per group of linked channel sets, what was done to it and why."""

    records: list[ReorderRecord]


class ReorderPass(ir.passes.InPlacePass):
    """Sort every permutable channel set by ``key``; see the module docstring.

    ``statistics`` (for the activation keys and ``auto``) maps the consumers' input tensors to
    their channel statistics. ``quantization`` maps consumer nodes to their ``(weight scheme,
    feature scheme)`` for ``auto``; without statistics ``auto`` weighs all channels alike.
    The result's ``records`` tell, per group of linked sets, what was permuted or skipped and
    why. With ``verify`` the outputs before and after must agree within
    ``onnxq.analysis.equivalence.TOLERANCE``.
    """

    def __init__(
        self,
        key: str = "absmax",
        statistics: Mapping[str, ChannelStatistics] | None = None,
        verify: bool = False,
        verify_inputs: dict[str, np.ndarray] | None = None,
        quantization: Mapping[str, tuple[Scheme | None, Scheme | None]] | None = None,
    ) -> None:
        super().__init__()
        self.key = key
        self.statistics = dict(statistics or {})
        self.quantization = dict(quantization or {})
        self.verify = verify
        self.verify_inputs = verify_inputs

    def requires(self, model: ir.Model) -> None:
        if self.key not in REORDER_KEYS + (AUTO,):
            raise ir.passes.PreconditionError(f"unknown reorder key {self.key!r}")

    def call(self, model: ir.Model) -> ReorderResult:
        check = OutputCheck(model, self.verify_inputs) if self.verify else None
        nodes_before = len(model.graph)
        values = values_by_name(model.graph)
        analysis = channels.analyze(model)
        records = [
            self._reorder(values, [analysis.sets[i] for i in domain])
            for domain in analysis.domains()
        ]
        if len(model.graph) != nodes_before:
            raise ir.passes.PostconditionError("ReorderPass changed the number of nodes")
        if check is not None:
            check.verify(model, "ReorderPass")
        permuted = sum(record.status == "permuted" for record in records)
        logger.info("reordered %d of %d channel groups", permuted, len(records))
        return ReorderResult(model, permuted > 0, records)

    def _reorder(self, values: dict[str, ir.Value], sets: list[ChannelSet]) -> ReorderRecord:
        names = tuple(s.name for s in sets)
        blockers = [reason for s in sets for reason in s.permute_blockers]
        consumers = [c for s in sets for c in s.consumers]
        if blockers or not consumers:
            return ReorderRecord(names, "skipped", "; ".join(blockers) or "no consumer")
        keyed = [c for c in consumers if not c.depthwise] or consumers
        measured = all(c.tensor in self.statistics for c in keyed)
        if self.key in ACTIVATION_KEYS and not measured:
            return ReorderRecord(names, "skipped", "no activation statistics")
        width = sets[0].channels
        if self.key == AUTO:
            keys = [k for k in REORDER_KEYS if measured or k not in ACTIVATION_KEYS]
            order, key = self._best_order(values, keyed, consumers, width, keys)
        else:
            order, key = _sort(self._sort_key(values, keyed, width, self.key)), self.key
        if order is None:
            return ReorderRecord(names, "unchanged", "no key lowers the estimated error")
        moved = int(np.count_nonzero(order != np.arange(width)))
        if not moved:
            return ReorderRecord(names, "unchanged", "already in order")
        for channel_set in sets:
            _permute(values, channel_set, order)
        return ReorderRecord(names, "permuted", moved=moved, key=key)

    def _best_order(
        self,
        values: dict[str, ir.Value],
        keyed: list[Consumer],
        consumers: list[Consumer],
        width: int,
        keys: list[str],
    ) -> tuple[np.ndarray | None, str | None]:
        """The order (and its key) with the lowest estimated error; None if none beats no change."""
        best_order, best_key = None, None
        unchanged = self._estimated_error(values, consumers, np.arange(width))
        best_error = unchanged * (1.0 - MIN_GAIN)
        for key in keys:
            order = _sort(self._sort_key(values, keyed, width, key))
            error = self._estimated_error(values, consumers, order)
            if error < best_error:
                best_order, best_key, best_error = order, key, error
        return best_order, best_key

    def _estimated_error(
        self, values: dict[str, ir.Value], consumers: list[Consumer], order: np.ndarray
    ) -> float:
        """The consumers' estimated quantization error with their channels put in ``order``."""
        total = 0.0
        for consumer in consumers:
            weight = values[consumer.weight].const_value.numpy()
            inputs = channels.consumer_input_channels(consumer, weight)
            index = _full_index(inputs, consumer.offset, order)
            axis = 0 if _follows_rows(consumer, weight) else consumer.axis
            permuted = np.take(weight, index, axis=axis)
            weight_scheme, feature_scheme = self.quantization.get(consumer.node, (None, None))
            stats = self.statistics.get(consumer.tensor)
            stats = None if stats is None else stats.take(index)
            total += quant_error.consumer_error(
                consumer, permuted, stats, weight_scheme, feature_scheme
            )
        return total

    def _sort_key(
        self, values: dict[str, ir.Value], consumers: list[Consumer], width: int, key: str
    ) -> np.ndarray:
        """The mean over consumers of each one's per-channel range, normalised to max 1."""
        parts = []
        for consumer in consumers:
            if key in ACTIVATION_KEYS:
                stats = self.statistics[consumer.tensor].segment(consumer.offset, width)
                part = stats.absmax if key == "absmax" else stats.maximum
            else:
                weight = values[consumer.weight].const_value.numpy()
                ranges = (
                    channels.input_channel_absmax(consumer, weight)
                    if key == "weight-absmax"
                    else channels.input_channel_max(consumer, weight)
                )
                part = ranges[consumer.offset : consumer.offset + width]
            parts.append(part / max(float(np.abs(part).max()), np.finfo(np.float32).tiny))
        return np.mean(parts, axis=0)


def _sort(key: np.ndarray) -> np.ndarray:
    return np.argsort(key, kind="stable")


def _full_index(channels_in: int, offset: int, order: np.ndarray) -> np.ndarray:
    """Indices over all of a tensor's channels that apply ``order`` at ``offset``."""
    index = np.arange(channels_in)
    index[offset : offset + len(order)] = offset + order
    return index


def _follows_rows(consumer: Consumer, weight: np.ndarray) -> bool:
    """A depthwise Conv's rows are its input channels: they move with the set it reads."""
    return consumer.depthwise and weight.shape[0] == consumer.group


def _permute(values: dict[str, ir.Value], channel_set: ChannelSet, order: np.ndarray) -> None:
    """Apply ``order`` (new channel i is old channel ``order[i]``) to every node of the set."""
    for producer in channel_set.producers:
        _take(values[producer.weight], producer.axis, producer.offset, order)
        if producer.bias is not None:
            bias = values[producer.bias]
            rows = values[producer.weight].const_value.shape[producer.axis]
            vector = np.broadcast_to(bias.const_value.numpy().reshape(-1), (rows,))
            replace_constant(bias, vector)
            _take(bias, 0, producer.offset, order)
    for node in channel_set.passes:
        for param in node.params:
            shape = values[param].const_value.shape
            _take(values[param], int(np.argmax(np.array(shape) != 1)), node.offset, order)
    for consumer in channel_set.consumers:
        weight = values[consumer.weight]
        if not _follows_rows(consumer, weight.const_value.numpy()):
            _take(weight, consumer.axis, consumer.offset, order)
        # a depthwise consumer's rows move as a producer of the linked set


def _take(value: ir.Value, axis: int, offset: int, order: np.ndarray) -> None:
    """Permute entries ``[offset, offset + len(order))`` of ``value`` along ``axis``."""
    array = value.const_value.numpy()
    index = _full_index(array.shape[axis], offset, order)
    replace_constant(value, np.take(array, index, axis=axis))
