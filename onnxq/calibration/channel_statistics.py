"""Per-channel activation statistics for the smooth and reorder passes (streamed calibration)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnxq.calibration import streaming
from onnxq.core.observers import HistogramFeatureObserver
from onnxq.core.schemes import Granularity, Observer, Scheme
from onnxq.io.data import ImageSet
from onnxq.io.preprocessing import Preprocessing

#: Statistics are kept per channel; the histograms' bins double in width as ranges grow.
_PER_CHANNEL = Scheme(bits=8, granularity=Granularity.CHANNEL, observer=Observer.MSE)
HISTOGRAM_BINS = 256


@dataclasses.dataclass(frozen=True)
class ChannelStatistics:
    """Per channel of one tensor: minimum, maximum, mean square (``[C]`` float64 each) and a
    histogram of the values (bin ``centers`` and ``counts``, ``[C, bins]`` each)."""

    minimum: np.ndarray
    maximum: np.ndarray
    mean_square: np.ndarray
    centers: np.ndarray
    counts: np.ndarray

    @property
    def absmax(self) -> np.ndarray:
        return np.maximum(-self.minimum, self.maximum)

    def segment(self, offset: int, width: int) -> ChannelStatistics:
        """The statistics of channels ``[offset, offset + width)``."""
        return self.take(np.arange(offset, offset + width))

    def take(self, index: np.ndarray) -> ChannelStatistics:
        """The statistics of channels ``index`` (a selection or permutation)."""
        return ChannelStatistics(
            self.minimum[index], self.maximum[index], self.mean_square[index],
            self.centers[index], self.counts[index],
        )

    def divided(self, scale: np.ndarray) -> ChannelStatistics:
        """The statistics of the tensor divided by a positive per-channel ``scale``."""
        return ChannelStatistics(
            self.minimum / scale, self.maximum / scale, self.mean_square / scale**2,
            self.centers / scale[:, None], self.counts,
        )

    @classmethod
    def of(cls, batches: Iterable[np.ndarray]) -> ChannelStatistics:
        """Statistics of tensors ``[N, C, ...]`` given in memory (tests, small inputs)."""
        observer = MomentObserver()
        for batch in batches:
            observer.update(batch)
        return observer.statistics()


class MomentObserver(HistogramFeatureObserver):
    """Per-channel histograms (see ``HistogramFeatureObserver``) plus each channel's sum of
    squares."""

    def __init__(self) -> None:
        super().__init__(_PER_CHANNEL, bins=HISTOGRAM_BINS)
        self.square_sum: np.ndarray | None = None
        self.count = 0

    def _update_histogram(self, flat: np.ndarray, channel_absmax: np.ndarray) -> None:
        super()._update_histogram(flat, channel_absmax)
        squares = np.einsum("ncr,ncr->c", flat, flat, dtype=np.float64)
        self.square_sum = squares if self.square_sum is None else self.square_sum + squares
        self.count += flat.shape[0] * flat.shape[2]

    def statistics(self) -> ChannelStatistics:
        if self.channel_min is None:
            raise ValueError("observer saw no data")
        return ChannelStatistics(
            self.channel_min.astype(np.float64),
            self.channel_max.astype(np.float64),
            self.square_sum / max(self.count, 1),
            self._bin_centers().astype(np.float64),
            self.counts.astype(np.float64),
        )


def collect_statistics(
    model: ir.Model,
    tensors: Iterable[str],
    images: ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = streaming.CALIBRATION_BATCH,
    ep: str = "auto",
) -> dict[str, ChannelStatistics]:
    """Per-channel statistics of ``tensors`` over ``images`` (streamed, one batch at a time)."""
    schemes: Mapping[str, Scheme] = {name: _PER_CHANNEL for name in sorted(set(tensors))}
    observers = streaming.collect(
        model, schemes, images, preprocessing, batch_size, ep,
        make_observer=lambda scheme: MomentObserver(),
    )
    return {name: observer.statistics() for name, observer in observers.items()}


def statistics_on_inputs(
    model: ir.Model, tensors: Iterable[str], inputs: Mapping[str, np.ndarray], ep: str = "cpu"
) -> dict[str, ChannelStatistics]:
    """Per-channel statistics of ``tensors`` on one batch of in-memory ``inputs``."""
    wanted = sorted(set(tensors))
    session = streaming.session_with_outputs(model, wanted, ep)
    fetched = [name for name in wanted if name not in inputs]
    outputs = dict(zip(fetched, session.run(fetched, dict(inputs))))
    outputs.update(inputs)
    return {name: ChannelStatistics.of([outputs[name]]) for name in wanted}
