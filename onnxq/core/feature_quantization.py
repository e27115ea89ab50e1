"""Calibrated quantization parameters of a feature tensor and their numpy reference."""

from __future__ import annotations

import dataclasses

import numpy as np

from onnxq.core import quant_math
from onnxq.core.schemes import Granularity, Scheme


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    """Calibrated scale and zero point of one feature tensor, per channel (or a scalar)."""

    scale: np.ndarray  # float32, shape () or [C]
    zero_point: np.ndarray  # int32, same shape
    scheme: Scheme

    @property
    def per_axis(self) -> bool:
        return self.scale.ndim == 1

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """The numpy reference of what the inserted Q/DQ pair computes on ``x [N, C, ...]``."""
        shape = (1, -1) + (1,) * (x.ndim - 2) if self.per_axis else ()
        return quant_math.fake_quantize(
            x,
            self.scale.reshape(shape),
            self.zero_point.reshape(shape),
            self.scheme.bits,
            self.scheme.signed,
        )

    @classmethod
    def from_group_ranges(
        cls, lo: np.ndarray, hi: np.ndarray, channels: int, scheme: Scheme
    ) -> FeatureParams:
        """Parameters from per-group ranges (one group per tensor, channel or ``gs`` channels)."""
        scale, zero_point = quant_math.scale_and_zero_point(
            lo, hi, scheme.bits, scheme.symmetric, scheme.restricted
        )
        if scheme.granularity is Granularity.TENSOR:
            return cls(scale.reshape(()), zero_point.reshape(()), scheme)
        group_of = np.arange(channels) // (scheme.group_size or 1)
        return cls(scale[group_of], zero_point[group_of], scheme)
