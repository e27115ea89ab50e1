"""Stage (1) of quantization: the function-preserving channel passes, smooth then reorder.

Activation statistics come from the calibration images (streamed); what each pass did to every
channel set is returned as ``ChannelSetReport`` records and stored as JSON in the model's
``metadata_props`` (key ``onnxq.channel_sets``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.analysis import channels
from onnxq.analysis.plan import make_plan
from onnxq.base import metadata
from onnxq.base.constants import ACTIVATION_KEYS, AUTO
from onnxq.base.errors import OnnxqError
from onnxq.calibration.channel_statistics import ChannelStatistics, collect_statistics
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.io import data
from onnxq.io.data import ImageSet
from onnxq.io.preprocessing import Preprocessing
from onnxq.passes.reorder import ReorderPass
from onnxq.passes.smooth import SmoothPass


@dataclasses.dataclass
class ChannelSetReport:
    """One channel set: its members and what smooth and reorder did to it."""

    name: str
    channels: int
    tensors: list[str]
    producers: list[str]
    pass_through: list[str]
    consumers: list[str]
    smooth: dict | None = None
    reorder: dict | None = None

    @classmethod
    def of(cls, channel_set: channels.ChannelSet) -> ChannelSetReport:
        return cls(**channel_set.to_dict())

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        return {key: value for key, value in record.items() if value is not None}

    def summary(self) -> str:
        """One line: the set's members, then what each pass did to it and why."""
        members = (
            f"{self.name} [{self.channels} ch] tensors {', '.join(self.tensors)}; "
            f"producers {', '.join(self.producers) or '-'}; "
            f"consumers {', '.join(self.consumers) or '-'}"
        )
        passes = (("smooth", self.smooth), ("reorder", self.reorder))
        return " | ".join([members] + [_describe(name, record) for name, record in passes if record])


def _describe(name: str, record: dict) -> str:
    details = []
    if "alpha" in record:
        details.append(f"α={record['alpha']:g}")
    if "scale_range" in record:
        details.append("s in [{:.3g}, {:.3g}]".format(*record["scale_range"]))
    if "moved" in record:
        details.append(f"{record['moved']} channels moved")
    if "key" in record:
        details.append(f"by {record['key']}")
    if "inserted" in record:
        details.append(f"{len(record['inserted'])} Mul added")
    text = f"{name} {record['status']}" + (f" ({', '.join(details)})" if details else "")
    return text + (f": {record['reason']}" if "reason" in record else "")


def summary_lines(reports: list[ChannelSetReport]) -> list[str]:
    """What the channel passes did: totals per pass, then one line per channel set."""
    totals = []
    for name in ("smooth", "reorder"):
        statuses = [getattr(r, name)["status"] for r in reports if getattr(r, name)]
        if statuses:
            counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
            totals.append(f"{name}: {counts}")
    header = f"channel sets: {len(reports)} ({'; '.join(totals)})"
    return [header] + [f"  {report.summary()}" for report in reports]


def rewrite_channels(
    model: ir.Model,
    config: QuantConfig,
    images: ImageSet | None,
    preprocessing: Preprocessing,
    batch_size: int,
    ep: str = "auto",
    verify: bool = False,
) -> list[ChannelSetReport]:
    """Run the channel passes ``config`` asks for on ``model`` (in place); empty when none.

    Reorder runs first, so that smoothing weighs its scales against the channel groups that
    quantization will see; each pass calibrates its statistics on the model it rewrites.
    """
    smooth, key = config.smooth_alpha is not None, config.reorder
    if not smooth and key is None:
        return []
    if images is None and (smooth or key in ACTIVATION_KEYS):
        flag = "--smooth" if smooth else f"--reorder {key}"
        raise OnnxqError(f"{flag} needs calibration images (--calib DIR)")
    reports = {s.name: ChannelSetReport.of(s) for s in channels.analyze(model).sets}
    schemes = _consumer_schemes(model, config)
    check_inputs = _check_inputs(model, images, preprocessing) if verify else None

    def statistics(wanted: Callable[[channels.ChannelSet], bool]) -> dict[str, ChannelStatistics]:
        sets = [s for s in channels.analyze(model).sets if wanted(s)]
        return _statistics(model, sets, images, preprocessing, batch_size, ep)

    if key is not None:
        measured = images is not None and key in ACTIVATION_KEYS + (AUTO,)
        reorder_pass = ReorderPass(
            key, statistics(lambda s: not s.permute_blockers) if measured else {}, verify,
            check_inputs, schemes,
        )
        for record in _run(reorder_pass, model).records:
            for name in record.sets:
                _report(reports, name).reorder = record.to_dict()
    if smooth:
        smooth_pass = SmoothPass(
            statistics(lambda s: not (s.mul_blockers if config.smooth_mul else s.smooth_blockers)),
            config.smooth_alpha, config.act_scale, config.smooth_mul, verify, check_inputs, schemes,
        )
        for record in _run(smooth_pass, model).records:
            _report(reports, record.set).smooth = record.to_dict()
    result = list(reports.values())
    records = [r.to_dict() for r in result]
    model.metadata_props[metadata.CHANNEL_SETS] = json.dumps(records, sort_keys=True)
    return result


def _consumer_schemes(
    model: ir.Model, config: QuantConfig
) -> dict[str, tuple[Scheme | None, Scheme | None]]:
    """``node -> (weight scheme, input feature scheme)`` as the quantization plan will have them."""
    plan = make_plan(model, config)
    weights = {target.node: target.scheme for target in plan.weights}
    features = {node: t.scheme for t in plan.features for node in t.consumers}
    nodes = weights.keys() | features.keys()
    return {node: (weights.get(node), features.get(node)) for node in nodes}


def _report(reports: dict[str, ChannelSetReport], name: str) -> ChannelSetReport:
    if name not in reports:
        reports[name] = ChannelSetReport(name, 0, [], [], [], [])
    return reports[name]


def _statistics(
    model: ir.Model,
    sets: list[channels.ChannelSet],
    images: ImageSet,
    preprocessing: Preprocessing,
    batch_size: int,
    ep: str,
) -> dict[str, ChannelStatistics]:
    tensors = {consumer.tensor for channel_set in sets for consumer in channel_set.consumers}
    return collect_statistics(model, tensors, images, preprocessing, batch_size, ep)


def _check_inputs(
    model: ir.Model, images: ImageSet | None, preprocessing: Preprocessing
) -> dict[str, np.ndarray] | None:
    """Two calibration images as the inputs of ``--verify`` (random inputs without images)."""
    if images is None:
        return None
    pixels, _ = next(data.iter_batches(images.head(2), preprocessing, 2))
    return {model.graph.inputs[0].name: pixels}


def _run(channel_pass: ir.passes.InPlacePass, model: ir.Model) -> ir.passes.PassResult:
    try:
        return channel_pass(model)
    except ir.passes.PostconditionError as error:
        raise OnnxqError(f"--verify: {error}") from None
