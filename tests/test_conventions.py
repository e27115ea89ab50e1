"""onnxq's grids against ONNX Runtime's quantizer and PyTorch's observers on the same tensors.

Where the conventions agree the scales, zero points and codes must be equal; where they differ on
purpose the difference is written down exactly:

* ONNX Runtime int8 symmetric weights = onnxq ``restricted`` (codes ±127, ``scale = absmax/127``).
* ONNX Runtime int4 symmetric weights = onnxq ``full`` (codes −8..7, ``scale = 2·absmax/15``); the
  restricted grid's scale is 15/14 of it and its codes stop at ±7.
* PyTorch's default qint8 observers (``quant_min=−128``) = onnxq ``full``; with
  ``quant_min = −(2^(b−1)−1)`` (qnnpack/x86 weight observers) = onnxq ``restricted``.
* Affine (unsigned codes with a zero point): all three agree for every width.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from onnxruntime.quantization import quant_utils

from onnxq.core import quant_math
from onnxq.core.schemes import Scheme
from onnxq.core.weight_quantization import quantize_weight

BITS = range(2, 9)


def _tensor(seed: int = 0, shape=(16, 8, 3, 3)) -> np.ndarray:
    """A weight-like tensor whose channels have different ranges and signs of their extreme."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_t(4, size=shape).astype(np.float32)
    weight *= np.geomspace(0.01, 2.0, shape[0], dtype=np.float32).reshape(-1, 1, 1, 1)
    weight[::2] *= -1  # half the channels have their largest magnitude on the negative side
    return weight


def _onnxq(weight: np.ndarray, name: str, bits: int, symmetric_range: str = "restricted"):
    quantized = quantize_weight(weight, 0, Scheme.parse(name, bits=bits, symmetric_range=symmetric_range))
    zero_point = quantized.zero_point if quantized.zero_point is not None else np.zeros_like(quantized.scale, np.int32)
    return quantized.scale.reshape(-1), zero_point.reshape(-1), quantized.codes.reshape(weight.shape[0], -1)


def _ort_per_channel(weight: np.ndarray, qtype: int, symmetric: bool):
    scales, zero_points, codes = [], [], []
    for row in weight.reshape(weight.shape[0], -1):
        zero_point, scale, quantized = quant_utils.quantize_data(row, qtype, symmetric)
        scales.append(scale)
        zero_points.append(int(zero_point))
        codes.append(np.asarray(quantized, dtype=np.int32))
    return np.asarray(scales, np.float32).reshape(-1), np.asarray(zero_points), np.stack(codes)


@pytest.mark.parametrize(
    "qtype, bits, symmetric_range",
    [(TensorProto.INT8, 8, "restricted"), (TensorProto.INT4, 4, "full")],
    ids=["int8-restricted", "int4-full"],
)
def test_symmetric_weights_match_onnxruntime(qtype, bits, symmetric_range):
    weight = _tensor()
    ort_scale, ort_zero_point, ort_codes = _ort_per_channel(weight, qtype, symmetric=True)
    scale, zero_point, codes = _onnxq(weight, "per-channel-symmetric", bits, symmetric_range)
    np.testing.assert_allclose(scale, ort_scale, rtol=1e-7)
    assert not ort_zero_point.any() and not zero_point.any()
    np.testing.assert_array_equal(codes, ort_codes)


def test_int4_restricted_grid_differs_from_onnxruntime_by_15_over_14():
    weight = _tensor()
    ort_scale, _, ort_codes = _ort_per_channel(weight, TensorProto.INT4, symmetric=True)
    scale, _, codes = _onnxq(weight, "per-channel-symmetric", 4, "restricted")
    np.testing.assert_allclose(scale, ort_scale * 15 / 14, rtol=1e-6)
    assert codes.min() == -7 and codes.max() == 7  # both extremes of every channel representable
    assert ort_codes.max() == 7 and ort_codes.min() == -8
    # ONNX Runtime's int4 grid clips the positive extreme of channels whose absmax is positive
    rows = weight.reshape(len(weight), -1)
    positive = rows.max(axis=1) > -rows.min(axis=1)
    restored = ort_codes[positive].max(axis=1) * ort_scale[positive]
    assert np.all(restored < rows[positive].max(axis=1))


@pytest.mark.parametrize("qtype, bits", [(TensorProto.UINT8, 8), (TensorProto.UINT4, 4)], ids=["uint8", "uint4"])
def test_affine_weights_match_onnxruntime(qtype, bits):
    weight = _tensor(1)
    ort_scale, ort_zero_point, ort_codes = _ort_per_channel(weight, qtype, symmetric=False)
    scale, zero_point, codes = _onnxq(weight, "per-channel-affine", bits)
    # ONNX Runtime subtracts the range ends in float64, onnxq in float32: up to one float32 ulp
    np.testing.assert_allclose(scale, ort_scale, rtol=2.4e-7)
    np.testing.assert_array_equal(zero_point, ort_zero_point)
    np.testing.assert_array_equal(codes, ort_codes)


torch = pytest.importorskip("torch")
from torch.ao.quantization import observer as torch_observers  # noqa: E402


def _torch_qparams(weight: np.ndarray, qscheme, quant_min: int, quant_max: int, per_channel: bool):
    kind = torch_observers.PerChannelMinMaxObserver if per_channel else torch_observers.MinMaxObserver
    dtype = torch.qint8 if quant_min < 0 else torch.quint8
    options = {"ch_axis": 0} if per_channel else {}
    observer = kind(dtype=dtype, qscheme=qscheme, quant_min=quant_min, quant_max=quant_max, **options)
    observer(torch.from_numpy(weight))
    scale, zero_point = observer.calculate_qparams()
    return scale.numpy().astype(np.float32).reshape(-1), zero_point.numpy().reshape(-1)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("symmetric_range", ["restricted", "full"])
def test_symmetric_grids_match_pytorch_observers(bits, granularity, symmetric_range):
    weight = _tensor(2)
    half = 1 << (bits - 1)
    quant_min = -(half - 1) if symmetric_range == "restricted" else -half
    per_channel = granularity == "channel"
    qscheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    torch_scale, torch_zero_point = _torch_qparams(weight, qscheme, quant_min, half - 1, per_channel)
    scale, zero_point, _ = _onnxq(weight, f"per-{granularity}-symmetric", bits, symmetric_range)
    np.testing.assert_allclose(scale, torch_scale, rtol=1e-7)
    assert not torch_zero_point.any() and not zero_point.any()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_affine_grids_match_pytorch_observers(bits, granularity):
    weight = _tensor(3) + 0.3  # ranges not centred on zero
    per_channel = granularity == "channel"
    qscheme = torch.per_channel_affine if per_channel else torch.per_tensor_affine
    torch_scale, torch_zero_point = _torch_qparams(weight, qscheme, 0, (1 << bits) - 1, per_channel)
    scale, zero_point, _ = _onnxq(weight, f"per-{granularity}-affine", bits)
    np.testing.assert_allclose(scale, torch_scale, rtol=1e-6)
    np.testing.assert_array_equal(zero_point, torch_zero_point)


@pytest.mark.parametrize("bits", BITS)
def test_restricted_grid_represents_both_extremes_exactly(bits):
    weight = _tensor(4, shape=(8, 1, 3, 3))
    scale, _, codes = _onnxq(weight, "per-channel-symmetric", bits)
    restored = codes * scale[:, None]
    rows = weight.reshape(len(weight), -1)
    absmax = np.abs(rows).max(axis=1)
    np.testing.assert_allclose(np.abs(restored).max(axis=1), absmax, rtol=1e-6)
    assert np.abs(codes).max() == (1 << (bits - 1)) - 1


def test_full_range_clips_the_positive_extreme_by_half_a_step():
    values = np.array([[-1.0, 1.0]], np.float32)
    scale, _ = quant_math.scale_and_zero_point(values.min(1), values.max(1), 4, True)
    assert scale[0] == np.float32(2.0 / 15.0)
    codes = quant_math.quantize(values, scale[:, None], np.zeros((1, 1)), 4, True)
    assert codes.max() == 7  # +1 is 7.5 steps: clipped to 7, so it comes back as 14/15
    np.testing.assert_allclose(quant_math.dequantize(codes, scale[:, None], 0).max(), 14 / 15, rtol=1e-6)
    restricted, _ = quant_math.scale_and_zero_point(values.min(1), values.max(1), 4, True, restricted=True)
    assert restricted[0] == np.float32(1.0 / 7.0)
    assert quant_math.quantize(values, restricted[:, None], np.zeros((1, 1)), 4, True, True).tolist() == [[-7, 7]]

