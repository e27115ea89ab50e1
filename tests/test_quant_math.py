import numpy as np
import pytest

from onnxq.core import quant_math


@pytest.mark.parametrize(
    "bits, signed, expected",
    [(8, False, (0, 255)), (8, True, (-128, 127)), (4, False, (0, 15)), (4, True, (-8, 7)), (2, True, (-2, 1))],
)
def test_integer_range(bits, signed, expected):
    assert quant_math.integer_range(bits, signed) == expected


def test_affine_range_is_widened_to_hold_zero():
    scale, zero_point = quant_math.scale_and_zero_point(np.float32(1.0), np.float32(4.0), 4, False)
    assert scale == pytest.approx(4.0 / 15)
    assert zero_point == 0
    restored = quant_math.fake_quantize(np.float32(0.0), scale, zero_point, 4, False)
    assert restored == 0.0


def test_affine_zero_point_maps_lo_to_qmin():
    scale, zero_point = quant_math.scale_and_zero_point(np.float32(-1.0), np.float32(2.0), 8, False)
    assert scale == pytest.approx(3.0 / 255)
    assert zero_point == 85  # round(0 - (-1) / (3/255)) = round(85.0)
    assert quant_math.quantize(np.float32(-1.0), scale, zero_point, 8, False) == 0
    assert quant_math.quantize(np.float32(2.0), scale, zero_point, 8, False) == 255


def test_symmetric_scale_convention():
    scale, zero_point = quant_math.scale_and_zero_point(np.float32(-3.0), np.float32(1.5), 4, True)
    assert scale == pytest.approx(2 * 3.0 / 15)
    assert zero_point == 0
    # -3.0 / 0.4 = -7.5 rounds half-to-even to -8, inside [-8, 7]; +3.0 would clamp to 7.
    assert quant_math.quantize(np.float32(-3.0), scale, zero_point, 4, True) == -8
    assert quant_math.quantize(np.float32(3.0), scale, zero_point, 4, True) == 7


def test_rounding_is_half_to_even_and_clamped():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0], np.float32)
    q = quant_math.quantize(x, np.float32(1.0), np.int32(0), 8, True)
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]


def test_empty_range_gets_unit_scale():
    scale, zero_point = quant_math.scale_and_zero_point(np.zeros(3, np.float32), np.zeros(3, np.float32), 4, False)
    assert scale.tolist() == [1.0, 1.0, 1.0]
    assert zero_point.tolist() == [0, 0, 0]


def test_group_rows_pads_last_group_and_masks_it():
    view = np.arange(10, dtype=np.float32).reshape(2, 5)
    groups, mask = quant_math.group_rows(view, 2)
    assert groups.shape == (2, 3, 2)
    assert mask.tolist() == [[True, True], [True, True], [True, False]]
    assert groups[1, 2].tolist() == [9.0, 0.0]
    per_group = np.array([[1, 2, 3], [4, 5, 6]])
    assert quant_math.expand_groups(per_group, 2, 5).tolist() == [[1, 1, 2, 2, 3], [4, 4, 5, 5, 6]]
