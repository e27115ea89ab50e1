"""Estimates of the output error that quantizing a layer's weights and input causes.

For a consumer ``y = W·x`` with input channels ``j`` the estimate is the usual diagonal one,

    E = Σ_j E[x_j²] · ‖ΔW_j‖²  +  Σ_j ‖W_j‖² · E[Δx_j²],

where ``ΔW_j`` is the rounding error of every weight that multiplies channel ``j`` (computed by
quantizing the weight) and ``E[Δx_j²]`` the mean squared quantization error of channel ``j``'s
values (computed on its calibration histogram with the ranges calibration would choose). It
ranks the candidate scales and orders of the smooth and reorder passes.
"""

from __future__ import annotations

import numpy as np

from onnxq.analysis.channels import Consumer, consumer_input_channels, conv_input_index
from onnxq.calibration.channel_statistics import ChannelStatistics
from onnxq.core import observers, quant_math
from onnxq.core.schemes import Granularity, Observer, Scheme
from onnxq.core.weight_quantization import quantize_weight

#: Output channels of a wide layer on which its weight rounding error is estimated.
SAMPLED_ROWS = 64


def per_input_channel_sum(consumer: Consumer, array: np.ndarray) -> np.ndarray:
    """Sum of ``array`` (shaped like the consumer's weight) over each input channel's entries."""
    if consumer.op_type != "Conv":
        return array.sum(axis=1 - consumer.axis)
    per_column = array.reshape(array.shape[0], array.shape[1], -1).sum(axis=2)
    result = np.zeros(consumer_input_channels(consumer, array), dtype=np.float64)
    np.add.at(result, conv_input_index(array.shape, consumer.group).ravel(), per_column.ravel())
    return result


def weight_rounding_error(consumer: Consumer, weight: np.ndarray, scheme: Scheme) -> np.ndarray:
    """``‖ΔW_j‖²`` per input channel when ``weight`` is quantized with ``scheme``.

    Rows (output channels) are quantized independently unless the scheme is per-tensor, so a
    wide layer's error is estimated on ``SAMPLED_ROWS`` evenly spaced rows, scaled up.
    """
    out_axis = 0 if consumer.op_type == "Conv" else 1 - consumer.axis
    rows = weight.shape[out_axis]
    factor = 1.0
    if scheme.granularity is not Granularity.TENSOR and consumer.group == 1 and rows > SAMPLED_ROWS:
        kept = np.linspace(0, rows - 1, SAMPLED_ROWS).round().astype(np.int64)
        weight, factor = np.take(weight, kept, axis=out_axis), rows / SAMPLED_ROWS
    restored = quantize_weight(weight, out_axis, scheme).dequantize()
    return factor * per_input_channel_sum(consumer, np.square(restored - weight, dtype=np.float64))


def feature_error(statistics: ChannelStatistics, scheme: Scheme) -> np.ndarray:
    """Mean squared quantization error of each channel's values under the feature ``scheme``.

    Ranges are found as calibration would (min/max, or MSE on the group's merged histogram;
    a percentile observer is taken as min/max), then every histogram bin is fake-quantized.
    """
    group_of = observers.channel_groups(len(statistics.minimum), scheme)
    lo, hi = _group_extremes(statistics, group_of)
    if scheme.observer is Observer.MSE:
        lo, hi = _mse_group_ranges(statistics, group_of, lo, hi, scheme)
    step, zero_point = quant_math.scale_and_zero_point(
        lo, hi, scheme.bits, scheme.symmetric, scheme.restricted
    )
    centers = statistics.centers
    restored = quant_math.fake_quantize(
        centers,
        step[group_of][:, None],
        zero_point[group_of][:, None],
        scheme.bits,
        scheme.signed,
        scheme.restricted,
    )
    counts = statistics.counts
    squared = counts * np.square(restored - centers, dtype=np.float64)
    return squared.sum(axis=1) / np.maximum(counts.sum(axis=1), 1.0)


def _group_extremes(
    statistics: ChannelStatistics, group_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    groups = int(group_of[-1]) + 1
    lo, hi = np.full(groups, np.inf), np.full(groups, -np.inf)
    np.minimum.at(lo, group_of, statistics.minimum)
    np.maximum.at(hi, group_of, statistics.maximum)
    return lo, hi


def _mse_group_ranges(
    statistics: ChannelStatistics,
    group_of: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    scheme: Scheme,
    bins: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """The MSE observer's ranges on each group's channel histograms merged onto one grid."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    width = np.maximum(hi - lo, np.finfo(np.float32).tiny) / bins
    position = (statistics.centers - lo[group_of][:, None]) / width[group_of][:, None]
    index = np.clip(position.astype(np.int64), 0, bins - 1) + (group_of * bins)[:, None]
    merged = np.bincount(index.ravel(), statistics.counts.ravel(), minlength=len(lo) * bins)
    grid = lo[:, None] + (np.arange(bins) + 0.5)[None, :] * width[:, None]
    return observers.mse_range(
        grid.astype(np.float32), merged.reshape(len(lo), bins).astype(np.float32),
        lo.astype(np.float32), hi.astype(np.float32), scheme,
    )


def consumer_error(
    consumer: Consumer,
    weight: np.ndarray,
    statistics: ChannelStatistics | None,
    weight_scheme: Scheme | None,
    feature_scheme: Scheme | None,
) -> float:
    """The estimate ``E`` above for one consumer; ``statistics`` span all its input channels.

    Without statistics every channel weighs alike and the feature term is left out.
    """
    error = 0.0
    if weight_scheme is not None:
        rounding = weight_rounding_error(consumer, weight, weight_scheme)
        error += float(rounding.sum() if statistics is None else statistics.mean_square @ rounding)
    if feature_scheme is not None and statistics is not None:
        norms = per_input_channel_sum(consumer, np.square(weight, dtype=np.float64))
        error += float(norms @ feature_error(statistics, feature_scheme))
    return error
