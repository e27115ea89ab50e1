"""Scale decomposition: per-group weight scales stored as a per-channel float times small integers.

One output channel's group scales become ``s · (c_g − z)``: a float32 channel scale ``s``,
unsigned ``scale_bits``-wide codes ``c_g`` (one per group) and, for affine weight schemes, a
channel zero point ``z ≤ 0`` that offsets the codes (the scales ``s·k … s·(k + 2^bits − 1)`` with
``k = −z``), which is what ONNX ``DequantizeLinear(c, s, z)`` computes. Symmetric weight schemes
have no offset (``z = 0``). Each group's weight zero point and codes are then chosen again for the
decomposed scale, so the integers stored are exactly those the graph dequantizes.

The search minimises the squared reconstruction error of the weight: a grid of channel windows
(``s``, ``k``), each scored with every group's code rounded to its ideal scale, then, in the best
window, every code a group can take (up to ``CODE_SPAN`` of them) scored exactly.
"""

from __future__ import annotations

__all__ = [
    "CODE_SPAN",
    "DecomposedScales",
    "decompose_scales",
    "group_zero_points",
    "offset_range",
]

import dataclasses

import numpy as np

from onnxq.core import quant_math

#: Channel steps tried, as fractions of the step that gives the largest group scale the top code.
STEP_FACTORS = np.geomspace(1.2, 0.05, 8).astype(np.float32)
#: At most this many codes per group are scored exactly in the chosen window (all of 4 bits).
CODE_SPAN = 16
#: Rows are searched in chunks of about this many weights, to bound temporary memory.
_CHUNK_ELEMENTS = 1 << 21


@dataclasses.dataclass(frozen=True)
class DecomposedScales:
    """Group scales ``(codes − zero_point) · channel_scale`` for rows (output channels) × groups."""

    codes: np.ndarray  # [R, G] int32 in [0, 2^bits − 1]
    channel_scale: np.ndarray  # [R] float32, > 0
    channel_zero_point: np.ndarray | None  # [R] int32 ≤ 0 (minus the offset); None: no offset
    bits: int

    def group_scales(self) -> np.ndarray:
        """The ``[R, G]`` float32 scales, computed as ONNX DequantizeLinear does."""
        zero_point = (
            np.zeros(len(self.channel_scale), np.int32)
            if self.channel_zero_point is None
            else self.channel_zero_point
        )
        return quant_math.dequantize(self.codes, self.channel_scale[:, None], zero_point[:, None])


def offset_range(scale_bits: int) -> int:
    """The largest offset a channel zero point can hold: the stored codes and zero point share a
    signed type one bit wider than the codes (int8 up to 7-bit codes, else int16)."""
    container = 8 if scale_bits < 8 else 16
    return -quant_math.integer_range(container, signed=True)[0]


def decompose_scales(
    groups: np.ndarray,
    mask: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    weight_bits: int,
    scale_bits: int,
    restricted: bool = False,
) -> DecomposedScales:
    """Decompose the per-group ``scale`` ``[R, G]`` of weights ``groups`` ``[R, G, block]``.

    ``mask`` ``[G, block]`` marks real entries (see ``quant_math.group_rows``); ``scale`` and
    ``zero_point`` (None for symmetric) are the plain per-group grid, used as each group's ideal.
    ``restricted``: symmetric codes stop at ``±(2^(b−1)−1)`` (``quant_math.integer_range``).
    """
    rows = max(1, _CHUNK_ELEMENTS // max(1, groups[0].size))
    parts = [
        _decompose_rows(
            groups[start : start + rows], mask, scale[start : start + rows],
            None if zero_point is None else zero_point[start : start + rows],
            weight_bits, scale_bits, restricted,
        )
        for start in range(0, len(scale), rows)
    ]
    return DecomposedScales(
        np.concatenate([part.codes for part in parts]),
        np.concatenate([part.channel_scale for part in parts]),
        None if zero_point is None else np.concatenate([part.channel_zero_point for part in parts]),
        scale_bits,
    )


def _decompose_rows(
    groups: np.ndarray,
    mask: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    weight_bits: int,
    scale_bits: int,
    restricted: bool,
) -> DecomposedScales:
    grid = _Grid(groups, mask, scale, zero_point, weight_bits, restricted)
    codes_max = (1 << scale_bits) - 1
    max_offset = 0 if zero_point is None else offset_range(scale_bits)
    largest = np.where(grid.varies, scale, 0.0).max(axis=1)
    top_step = np.where(largest > 0, largest, 1.0).astype(np.float32) / codes_max
    best_error = np.full(len(scale), np.inf)
    best = _Window(top_step, np.zeros(len(scale), np.float32), codes_max)
    for factor, fit_top in _candidates(max_offset > 0):
        step = (top_step * factor).astype(np.float32)
        offset = np.zeros(len(scale), np.float32)
        if fit_top:
            offset = np.clip(np.round(largest / step) - codes_max, 0, max_offset).astype(np.float32)
        window = _Window(step, offset, codes_max)
        error = grid.error(window.scales(window.nearest(scale))).sum(axis=1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best = window.where(better, best)
    codes = _best_codes(grid, scale, best)
    channel_zero_point = None if zero_point is None else -best.offset.astype(np.int32)
    return DecomposedScales(codes, best.step, channel_zero_point, scale_bits)


def group_zero_points(
    groups_scale: np.ndarray, ideal_scale: np.ndarray, ideal_zero_point: np.ndarray, bits: int
) -> np.ndarray:
    """Affine zero points that centre each group's new grid on the centre of its ideal grid."""
    centre = _grid_centre(ideal_scale, ideal_zero_point, bits)
    return _centred_zero_points(groups_scale, centre, bits).astype(np.int32)


def _grid_centre(scale: np.ndarray, zero_point: np.ndarray, bits: int) -> np.ndarray:
    """The value at the middle of each group's affine grid."""
    qmin, qmax = quant_math.integer_range(bits, signed=False)
    return (np.float32((qmin + qmax) / 2) - zero_point.astype(np.float32)) * scale


def _centred_zero_points(scale: np.ndarray, centre: np.ndarray, bits: int) -> np.ndarray:
    qmin, qmax = quant_math.integer_range(bits, signed=False)
    zero_point = np.round(np.float32((qmin + qmax) / 2) - centre / scale)
    return np.clip(zero_point, qmin, qmax, out=zero_point)


class _Grid:
    """The weights of one tensor in groups, and the error of quantizing them at given scales."""

    def __init__(
        self,
        groups: np.ndarray,
        mask: np.ndarray,
        scale: np.ndarray,
        zero_point: np.ndarray | None,
        bits: int,
        restricted: bool = False,
    ) -> None:
        self.groups = groups
        self.mask = None if mask.all() else mask.astype(np.float32)  # None: no padding
        self.bits, self.signed = bits, zero_point is None
        self.restricted = restricted and self.signed
        self.centre = None if self.signed else _grid_centre(scale, zero_point, bits)
        self.varies = np.abs(groups).max(axis=-1) > 0

    def error(self, scale: np.ndarray) -> np.ndarray:
        """Squared error per group ``[R, G]`` of quantizing at ``scale`` (zero points re-chosen)."""
        # quant_math.fake_quantize, computed in place (the same float32 operations).
        qmin, qmax = quant_math.integer_range(self.bits, self.signed, self.restricted)
        if self.signed:
            zero_point = np.float32(0.0)
        else:
            zero_point = _centred_zero_points(scale, self.centre, self.bits)[..., None]
        scale = scale[..., None]
        restored = self.groups / scale
        np.round(restored, out=restored)
        restored += zero_point
        np.clip(restored, qmin, qmax, out=restored)
        restored -= zero_point
        restored *= scale
        restored -= self.groups
        np.square(restored, out=restored)
        if self.mask is not None:
            restored *= self.mask
        return restored.sum(axis=-1)


def _candidates(with_offset: bool) -> list[tuple[float, bool]]:
    """``(step factor, fit the top)`` pairs: the window either ends at the largest group scale
    (with an offset when the step is small) or starts at zero (no offset, top groups clipped)."""
    if not with_offset:
        return [(float(factor), False) for factor in STEP_FACTORS]
    no_offset = [(float(factor), False) for factor in STEP_FACTORS if factor < 1.0]
    return [(float(factor), True) for factor in STEP_FACTORS] + no_offset


@dataclasses.dataclass(frozen=True)
class _Window:
    """The scales a row (output channel) can give its groups: ``step · (code + offset)`` for
    codes from ``low`` (the first with a positive scale) to ``codes_max``."""

    step: np.ndarray  # [R] float32
    offset: np.ndarray  # [R] float32, whole numbers ≥ 0
    codes_max: int

    @property
    def low(self) -> np.ndarray:
        return (self.offset == 0).astype(np.float32)[:, None]

    def nearest(self, scale: np.ndarray) -> np.ndarray:
        """The codes whose scales are nearest ``scale`` ``[R, G]``, inside the window."""
        codes = np.round(scale / self.step[:, None]) - self.offset[:, None]
        return np.clip(np.maximum(codes, self.low), None, self.codes_max)

    def scales(self, codes: np.ndarray) -> np.ndarray:
        """Float32 scales of ``codes``, computed as ONNX DequantizeLinear does."""
        return (codes + self.offset[:, None]) * self.step[:, None]

    def where(self, rows: np.ndarray, other: _Window) -> _Window:
        """This window for the ``rows`` marked True, ``other`` for the rest."""
        return _Window(
            np.where(rows, self.step, other.step),
            np.where(rows, self.offset, other.offset),
            self.codes_max,
        )


def _best_codes(grid: _Grid, scale: np.ndarray, window: _Window) -> np.ndarray:
    """Per group, the code whose scale quantizes the group with least error, of ``CODE_SPAN``
    codes in the window around the one nearest the ideal ``scale`` (all of them for 4 bits)."""
    span = min(CODE_SPAN, window.codes_max + 1)
    nearest = window.nearest(scale)
    first = np.clip(nearest - span // 2, 0, window.codes_max + 1 - span)
    best_error = np.full(scale.shape, np.inf)
    best_codes = nearest
    for shift in range(span):
        codes = np.maximum(first + shift, window.low)
        error = grid.error(window.scales(codes))
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_codes = np.where(better, codes, best_codes)
    return best_codes.astype(np.int32)
