"""Observers: choose clipping ranges for weights (directly) and features (streamed batches).

Weights are seen whole, so their observers work on the values themselves. Features are seen
batch by batch during calibration; their observers keep only running per-channel min/max and,
for MSE and percentile, a fixed-size histogram per scale group, so memory does not grow with the
number of calibration images.
"""

from __future__ import annotations

import numpy as np

from onnxq.core import quant_math
from onnxq.core.schemes import Granularity, Observer, Scheme

# Joint shrink factors tried for a range, then a finer per-end refinement around the best one.
_JOINT_FACTORS = np.linspace(1.0, 0.2, 41, dtype=np.float32)
_REFINE_STEPS = np.linspace(-0.08, 0.08, 9, dtype=np.float32)


def _quantization_error(
    values: np.ndarray, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray, scheme: Scheme
) -> np.ndarray:
    """Weighted squared error of fake-quantizing ``values`` with range ``[lo, hi]`` per row."""
    scale, zero_point = quant_math.scale_and_zero_point(
        lo, hi, scheme.bits, scheme.symmetric, scheme.restricted
    )
    scale, zero_point = scale[..., None], zero_point[..., None]
    restored = quant_math.fake_quantize(
        values, scale, zero_point, scheme.bits, scheme.signed, scheme.restricted
    )
    restored -= values
    np.square(restored, out=restored)
    restored *= weights
    return restored.sum(axis=-1)


def mse_range(
    values: np.ndarray, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray, scheme: Scheme
) -> tuple[np.ndarray, np.ndarray]:
    """The clipping range ``[a·lo, b·hi]`` minimising the weighted quantization error per row.

    ``values``/``weights`` have a trailing sample axis (weights are 0/1 masks for tensors, counts
    for histograms). A joint grid over one shrink factor is refined per end for affine schemes.
    """
    lo = np.minimum(lo, 0.0).astype(np.float32)
    hi = np.maximum(hi, 0.0).astype(np.float32)
    best_err = np.full(lo.shape, np.inf, dtype=np.float64)
    best_a = np.ones(lo.shape, dtype=np.float32)
    for factor in _JOINT_FACTORS:
        err = _quantization_error(values, weights, factor * lo, factor * hi, scheme)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_a = np.where(better, factor, best_a)
    best_lo_a, best_hi_a = best_a.copy(), best_a.copy()
    if not scheme.symmetric:
        for end in ("lo", "hi"):
            for step in _REFINE_STEPS:
                if end == "lo":
                    lo_a, hi_a = np.clip(best_a + step, 0.05, 1.0), best_hi_a
                else:
                    lo_a, hi_a = best_lo_a, np.clip(best_a + step, 0.05, 1.0)
                err = _quantization_error(values, weights, lo_a * lo, hi_a * hi, scheme)
                better = err < best_err
                best_err = np.where(better, err, best_err)
                if end == "lo":
                    best_lo_a = np.where(better, lo_a, best_lo_a)
                else:
                    best_hi_a = np.where(better, hi_a, best_hi_a)
    return best_lo_a * lo, best_hi_a * hi


def weight_ranges(
    groups: np.ndarray, mask: np.ndarray, scheme: Scheme
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ``[lo, hi]`` for weight values laid out ``[R, G, block]`` with a ``[G, block]`` mask."""
    lo = np.min(groups, axis=-1, where=mask, initial=np.inf)
    hi = np.max(groups, axis=-1, where=mask, initial=-np.inf)
    if scheme.observer is Observer.MSE:
        return mse_range(groups, mask.astype(np.float32), lo, hi, scheme)
    if scheme.observer is Observer.PERCENTILE:
        padded = np.where(mask, groups, np.nan)
        lo = np.nanpercentile(padded, 100.0 - scheme.percentile, axis=-1)
        hi = np.nanpercentile(padded, scheme.percentile, axis=-1)
    return lo.astype(np.float32), hi.astype(np.float32)


def group_count(channels: int, scheme: Scheme) -> int:
    """How many feature scale groups a tensor with ``channels`` channels has under ``scheme``."""
    if scheme.granularity is Granularity.TENSOR:
        return 1
    if scheme.granularity is Granularity.CHANNEL:
        return channels
    return -(-channels // scheme.group_size)


def channel_groups(channels: int, scheme: Scheme) -> np.ndarray:
    """The scale group of each channel (``[C]`` ints)."""
    if scheme.granularity is Granularity.TENSOR:
        return np.zeros(channels, dtype=np.int64)
    if scheme.granularity is Granularity.CHANNEL:
        return np.arange(channels, dtype=np.int64)
    return np.arange(channels, dtype=np.int64) // scheme.group_size


class FeatureObserver:
    """Streams batches of one feature tensor ``[N, C, ...]`` and keeps per-channel min/max.

    ``ranges()`` gives one ``[lo, hi]`` per scale group of ``scheme``; ``channel_min``/
    ``channel_max`` give the per-channel statistics the smooth and reorder passes use.
    """

    def __init__(self, scheme: Scheme) -> None:
        self.scheme = scheme
        self.channel_min: np.ndarray | None = None
        self.channel_max: np.ndarray | None = None
        self.batches = 0

    @property
    def channels(self) -> int:
        return 0 if self.channel_min is None else len(self.channel_min)

    def update(self, x: np.ndarray) -> None:
        """Fold one batch into the running statistics."""
        flat = _channel_major(x)
        batch_min, batch_max = flat.min(axis=(0, 2)), flat.max(axis=(0, 2))
        if self.channel_min is None:
            self.channel_min, self.channel_max = batch_min, batch_max
        else:
            if len(batch_min) != self.channels:
                raise ValueError(f"channel count changed from {self.channels} to {len(batch_min)}")
            np.minimum(self.channel_min, batch_min, out=self.channel_min)
            np.maximum(self.channel_max, batch_max, out=self.channel_max)
        self.batches += 1
        self._update_histogram(flat, np.maximum(-batch_min, batch_max))

    def _update_histogram(self, flat: np.ndarray, channel_absmax: np.ndarray) -> None:
        """Hook for observers that need more than min/max."""

    def group_min_max(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact per-group min and max seen so far."""
        if self.channel_min is None:
            raise ValueError("observer saw no data")
        starts = _group_starts(self.channels, self.scheme)
        return (
            np.minimum.reduceat(self.channel_min, starts).astype(np.float32),
            np.maximum.reduceat(self.channel_max, starts).astype(np.float32),
        )

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-group clipping range ``(lo, hi)``."""
        return self.group_min_max()


class HistogramFeatureObserver(FeatureObserver):
    """Adds a per-group histogram for MSE and percentile range search.

    Bins are symmetric around zero with a per-group width that doubles (merging bin pairs
    exactly) whenever a batch exceeds the covered range, so one pass suffices and memory is
    ``groups × bins`` whatever the number of images.
    """

    def __init__(self, scheme: Scheme, bins: int | None = None) -> None:
        super().__init__(scheme)
        self.bins = bins or (2048 if scheme.granularity is Granularity.TENSOR else 512)
        self.counts: np.ndarray | None = None
        self.width: np.ndarray | None = None

    def _update_histogram(self, flat: np.ndarray, channel_absmax: np.ndarray) -> None:
        group_of = channel_groups(flat.shape[1], self.scheme)
        n_groups = int(group_of[-1]) + 1
        group_absmax = np.zeros(n_groups, dtype=np.float32)
        np.maximum.at(group_absmax, group_of, channel_absmax)
        if self.counts is None:
            self.counts = np.zeros((n_groups, self.bins), dtype=np.int64)
            self.width = np.zeros(n_groups, dtype=np.float64)
        self._grow(group_absmax)
        half = self.bins // 2
        inv_width = (1.0 / self.width[group_of]).astype(np.float32)[None, :, None]
        offset = (group_of * self.bins + half).astype(np.int32)[None, :, None]
        for start in range(0, flat.shape[0], _chunk_rows(flat)):
            chunk = flat[start : start + _chunk_rows(flat)]
            index = np.floor(chunk * inv_width)
            np.clip(index, -half, half - 1, out=index)
            index = index.astype(np.int32) + offset
            self.counts += np.bincount(index.ravel(), minlength=self.counts.size).reshape(
                self.counts.shape
            )

    def _grow(self, group_absmax: np.ndarray) -> None:
        """Widen groups whose bins do not cover ``group_absmax`` by doubling bin width."""
        half = self.bins // 2
        fresh = self.width == 0
        tiny = np.maximum(group_absmax.astype(np.float64), 1e-30) / half
        self.width[fresh] = 2.0 ** np.ceil(np.log2(tiny[fresh]))
        covered = self.width * half
        for group in np.nonzero(group_absmax > covered)[0]:
            doublings = int(np.ceil(np.log2(group_absmax[group] / covered[group])))
            self.counts[group] = _merge_bins(self.counts[group], 1 << doublings)
            self.width[group] *= float(1 << doublings)

    def _bin_centers(self) -> np.ndarray:
        half = self.bins // 2
        signed_index = np.arange(self.bins, dtype=np.float64) - half + 0.5
        return (signed_index[None, :] * self.width[:, None]).astype(np.float32)

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.group_min_max()
        if self.scheme.observer is Observer.PERCENTILE:
            return self._percentile_range(lo, hi)
        centers = np.clip(self._bin_centers(), lo[:, None], hi[:, None])
        return mse_range(centers, self.counts.astype(np.float32), lo, hi, self.scheme)

    def _percentile_range(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cumulative = np.cumsum(self.counts, axis=1) / np.maximum(self.counts.sum(1, keepdims=True), 1)
        tail = 1.0 - self.scheme.percentile / 100.0
        centers = self._bin_centers()
        rows = np.arange(len(cumulative))
        lo_bin = np.argmax(cumulative >= tail, axis=1)
        hi_bin = np.argmax(cumulative >= 1.0 - tail, axis=1)
        return (
            np.maximum(centers[rows, lo_bin], lo).astype(np.float32),
            np.minimum(centers[rows, hi_bin], hi).astype(np.float32),
        )


def _merge_bins(counts: np.ndarray, factor: int) -> np.ndarray:
    """Re-bin a zero-centred histogram to ``factor`` times wider bins, exactly."""
    bins = len(counts)
    half = bins // 2
    merged = np.zeros_like(counts)
    if factor > half:
        merged[half - 1] = counts[:half].sum()
        merged[half] = counts[half:].sum()
        return merged
    rows = bins // factor
    merged[half - rows // 2 : half + rows // 2] = counts.reshape(rows, factor).sum(axis=1)
    return merged


def _channel_major(x: np.ndarray) -> np.ndarray:
    """View a feature tensor as ``[N, C, rest]`` (a rank-1 tensor is one channel)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x.reshape(1, 1, -1)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _chunk_rows(flat: np.ndarray, elements: int = 1 << 22) -> int:
    """Rows of ``flat`` per chunk so that temporaries stay around ``elements`` values."""
    per_row = max(1, flat.shape[1] * flat.shape[2])
    return max(1, elements // per_row)


def _group_starts(channels: int, scheme: Scheme) -> np.ndarray:
    group_of = channel_groups(channels, scheme)
    return np.flatnonzero(np.r_[True, group_of[1:] != group_of[:-1]])


def make_feature_observer(scheme: Scheme) -> FeatureObserver:
    """The streaming observer that ``scheme.observer`` asks for."""
    if scheme.observer is Observer.MINMAX:
        return FeatureObserver(scheme)
    return HistogramFeatureObserver(scheme)
