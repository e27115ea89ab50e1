"""Integer codes and DequantizeLinear parameters of a weight, in numpy (no graph).

Per-tensor and per-channel weights keep their layout with one scale per tensor or output
channel. Any weight stored in 4 bits and any per-group weight is laid out for opset-21 blocked
DequantizeLinear on a 2-D view: for a Conv weight ``[O, I, kh, kw]`` the view is ``[O, I·kh·kw]``
and a group of ``gs`` input channels is a block of ``gs·kh·kw`` values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.core import observers, quant_math
from onnxq.core.schemes import Granularity, Scheme

#: Chooses the integer codes of a weight's ``[output channels, inputs]`` view, given the
#: scale and zero point of every entry (same shape); round-to-nearest when none is given.
CodeChooser = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes as stored in the graph and the DequantizeLinear parameters that restore them."""

    codes: np.ndarray  # int32 values; the stored layout (original, or a 2-D view when blocked)
    scale: np.ndarray  # float32, shaped as DequantizeLinear's scale input
    zero_point: np.ndarray | None  # int32 like scale; None for symmetric schemes
    axis: int | None  # DequantizeLinear axis (None for per-tensor)
    block_size: int | None  # blocked DequantizeLinear block size (None when not blocked)
    shape: tuple[int, ...]  # the original weight shape
    group_channels: int  # input channels per scale group (all of them for per-channel)
    scheme: Scheme

    @property
    def blocked(self) -> bool:
        return self.block_size is not None

    def dequantize(self) -> np.ndarray:
        """What the graph's DequantizeLinear (and Reshape) compute, in numpy."""
        scale, zero_point = self.scale, self.zero_point
        if zero_point is None:
            zero_point = np.zeros_like(scale, dtype=np.int32)
        if self.blocked:
            scale = np.repeat(scale, self.block_size, axis=self.axis)
            zero_point = np.repeat(zero_point, self.block_size, axis=self.axis)
            index = [slice(None)] * self.codes.ndim
            index[self.axis] = slice(0, self.codes.shape[self.axis])
            scale, zero_point = scale[tuple(index)], zero_point[tuple(index)]
        elif self.axis is not None:
            expand = [1] * self.codes.ndim
            expand[self.axis] = -1
            scale, zero_point = scale.reshape(expand), zero_point.reshape(expand)
        return quant_math.dequantize(self.codes, scale, zero_point).reshape(self.shape)


def quantize_weight(
    weight: np.ndarray, out_axis: int, scheme: Scheme, choose_codes: CodeChooser | None = None
) -> QuantizedWeight:
    """Quantize ``weight`` (output channels along ``out_axis``) with ``scheme``.

    The grid comes from the scheme's observer; ``choose_codes`` picks codes on it (default:
    round to nearest). For per-tensor schemes the view is the whole weight as one row.
    """
    weight = np.asarray(weight, dtype=np.float32)
    view = _channel_view(weight, out_axis, scheme)
    in_channels = _in_channels(weight.shape, out_axis)
    kernel = view.shape[1] // in_channels if scheme.granularity is not Granularity.TENSOR else 1
    block, group_channels = _block(view, in_channels, kernel, scheme)
    groups, mask = quant_math.group_rows(view, block)
    lo, hi = observers.weight_ranges(groups, mask, scheme)
    scale, zero_point = quant_math.scale_and_zero_point(
        lo, hi, scheme.bits, scheme.symmetric, scheme.restricted
    )
    cols = view.shape[1]
    full_scale = quant_math.expand_groups(scale, block, cols)
    full_zero_point = quant_math.expand_groups(zero_point, block, cols)
    if choose_codes is None:
        codes = quant_math.quantize(
            view, full_scale, full_zero_point, scheme.bits, scheme.signed, scheme.restricted
        )
    else:
        codes = choose_codes(view, full_scale, full_zero_point)
    zero_point = None if scheme.symmetric else zero_point
    return _stored_form(weight, out_axis, codes, scale, zero_point, block, group_channels, scheme)


def groups_per_channel(shape: tuple[int, ...], out_axis: int, scheme: Scheme) -> int:
    """Scale groups per output channel that ``quantize_weight`` gives a weight of ``shape``."""
    if scheme.granularity is not Granularity.GROUP:
        return 1
    in_channels = _in_channels(shape, out_axis)
    return -(-in_channels // _group_channels(in_channels, scheme))


def _in_channels(shape: tuple[int, ...], out_axis: int) -> int:
    """Inputs per output of a dense ``[K, N]``/``[N, K]`` weight, or a Conv's ``C/groups``."""
    return shape[1 - out_axis] if len(shape) == 2 else shape[1]


def _group_channels(in_channels: int, scheme: Scheme) -> int:
    """Input channels per scale group of a per-group scheme."""
    return min(scheme.group_size, in_channels)


def _channel_view(weight: np.ndarray, out_axis: int, scheme: Scheme) -> np.ndarray:
    """``[rows, cols]`` with one output channel per row (one row for per-tensor)."""
    if scheme.granularity is Granularity.TENSOR:
        return weight.reshape(1, -1)
    rows = weight if out_axis == 0 else weight.T
    return rows.reshape(rows.shape[0], -1)


def _block(view: np.ndarray, in_channels: int, kernel: int, scheme: Scheme) -> tuple[int, int]:
    """Values per scale block and input channels per group."""
    if scheme.granularity is Granularity.GROUP:
        group_channels = _group_channels(in_channels, scheme)
        return group_channels * kernel, group_channels
    return view.shape[1], in_channels


def _stored_form(
    weight: np.ndarray,
    out_axis: int,
    codes: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    block: int,
    group_channels: int,
    scheme: Scheme,
) -> QuantizedWeight:
    """Lay out codes and parameters the way DequantizeLinear will read them."""
    common = dict(shape=weight.shape, group_channels=group_channels, scheme=scheme)
    if scheme.bits > 4 and scheme.granularity is Granularity.TENSOR:
        return QuantizedWeight(
            codes.reshape(weight.shape), scale.reshape(()),
            None if zero_point is None else zero_point.reshape(()), None, None, **common,
        )
    if scheme.bits > 4 and scheme.granularity is Granularity.CHANNEL:
        rows = codes.reshape((weight if out_axis == 0 else weight.T).shape)
        return QuantizedWeight(
            rows if out_axis == 0 else rows.T, scale.reshape(-1),
            None if zero_point is None else zero_point.reshape(-1), out_axis, None, **common,
        )
    if out_axis == 1 and scheme.granularity is not Granularity.TENSOR:
        # A [K, N] weight keeps its layout: blocks run down axis 0.
        return QuantizedWeight(
            codes.T, scale.T, None if zero_point is None else zero_point.T, 0, block, **common
        )
    return QuantizedWeight(codes, scale, zero_point, 1, block, **common)


def storage_type(bits: int, signed: bool) -> ir.DataType:
    """The narrowest ONNX integer type holding ``bits``-bit codes."""
    if bits <= 4:
        return ir.DataType.INT4 if signed else ir.DataType.UINT4
    return ir.DataType.INT8 if signed else ir.DataType.UINT8
