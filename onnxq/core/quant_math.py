"""The numpy reference for every quantization formula onnxq writes into a graph.

ONNX QuantizeLinear computes ``saturate(round_half_to_even(x / scale) + zero_point)`` in float32
and DequantizeLinear ``(q - zero_point) * scale``; the functions here do exactly that, so tests can
compare a graph's outputs with them bit for bit. Ranges are ``[lo, hi]`` per row (a tensor, a
channel or a group), always widened to contain 0 so that zero is exactly representable.
"""

from __future__ import annotations

import numpy as np


def integer_range(bits: int, signed: bool, restricted: bool = False) -> tuple[int, int]:
    """The integers a ``bits``-wide signed or unsigned code can hold.

    ``restricted`` (signed only) leaves out the most negative code, so the range is symmetric:
    ``[-(2^(b-1)-1), 2^(b-1)-1]``.
    """
    if signed:
        return -(1 << (bits - 1)) + int(restricted), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def scale_and_zero_point(
    lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool, restricted: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (int32) that map ``[lo, hi]`` onto the integer grid.

    Affine: unsigned codes, ``scale = (hi - lo) / (qmax - qmin)`` with the range widened to hold 0.
    Symmetric: signed codes, zero point 0; ``restricted``: ``scale = max(|lo|, |hi|) / qmax``
    (both extremes representable: ONNX Runtime's int8 weights, PyTorch's qnnpack/x86 weight
    observers); full range: ``scale = 2 * max(|lo|, |hi|) / (qmax - qmin)``, which clips the
    positive extreme by half a step. An empty range gets scale 1.
    """
    lo = np.minimum(np.asarray(lo, dtype=np.float32), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float32), 0.0)
    qmin, qmax = integer_range(bits, signed=symmetric)
    if symmetric:
        absmax = np.maximum(-lo, hi)
        if restricted:
            scale = (absmax / np.float32(qmax)).astype(np.float32)
        else:
            scale = (2.0 * absmax / np.float32(qmax - qmin)).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        return scale, np.zeros(scale.shape, dtype=np.int32)
    scale = ((hi - lo) / np.float32(qmax - qmin)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    zero_point = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(np.int32)
    return scale, zero_point


def quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    bits: int,
    signed: bool,
    restricted: bool = False,
) -> np.ndarray:
    """``clamp(round_half_to_even(x / scale) + zero_point)`` in float32, as ONNX does.

    The clamp is the type's range, or the restricted symmetric range (``integer_range``).
    """
    qmin, qmax = integer_range(bits, signed, restricted)
    q = np.round(np.asarray(x, dtype=np.float32) / np.asarray(scale, dtype=np.float32))
    q = q + np.asarray(zero_point, dtype=np.float32)
    return np.clip(q, qmin, qmax).astype(np.int32)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32, as ONNX DequantizeLinear does."""
    diff = np.asarray(q, dtype=np.float32) - np.asarray(zero_point, dtype=np.float32)
    return (diff * np.asarray(scale, dtype=np.float32)).astype(np.float32)


def fake_quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    bits: int,
    signed: bool,
    restricted: bool = False,
) -> np.ndarray:
    """Quantize then dequantize: the value a Q→DQ pair lets through."""
    codes = quantize(x, scale, zero_point, bits, signed, restricted)
    return dequantize(codes, scale, zero_point)


def group_rows(view: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Split each row of a 2-D ``[R, K]`` array into blocks of ``block`` columns.

    Returns ``[R, G, block]`` values (the last block zero-padded when ``block`` does not divide
    ``K``, as ONNX blocked quantization allows) and a ``[G, block]`` mask of real entries.
    """
    rows, cols = view.shape
    groups = -(-cols // block)
    padded = np.zeros((rows, groups * block), dtype=np.float32)
    padded[:, :cols] = view
    mask = np.zeros(groups * block, dtype=bool)
    mask[:cols] = True
    return padded.reshape(rows, groups, block), mask.reshape(groups, block)


def expand_groups(per_group: np.ndarray, block: int, cols: int) -> np.ndarray:
    """Repeat a ``[R, G]`` per-group array to ``[R, cols]`` (the inverse of ``group_rows``)."""
    return np.repeat(per_group, block, axis=1)[:, :cols]
