"""Reduced-range int8 weights: what ONNX Runtime's u8×s8 kernels multiply exactly on every x86 CPU.

Without VNNI those kernels add pairs of uint8 × int8 products into a saturating int16, so weight
codes beyond ±64 clip the sums of large activations (EfficientNet-Lite0 W8A8 lost 5.6 points of
top-1 on such a machine). Quantizing there keeps 8-bit weights at 7-bit codes by default.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxq.analysis import constant_dq
from onnxq.base import host, metadata, progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import evaluate

W8 = Scheme.parse("per-channel-symmetric", bits=8)
A8 = Scheme.parse("per-tensor-affine", bits=8)


def test_cpu_flags_come_from_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert host.cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert host.cpu_flags(tmp_path / "missing") == set()


def test_the_environment_overrides_the_cpu_check(monkeypatch):
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(host.SATURATES_VARIABLE, value)
        host.int8_kernels_saturate.cache_clear()
        assert host.int8_kernels_saturate() is expected
    monkeypatch.delenv(host.SATURATES_VARIABLE)
    host.int8_kernels_saturate.cache_clear()


def test_the_reduced_code_range_cannot_saturate_an_int16_pair():
    limit = np.iinfo(np.int16).max
    assert 2 * 255 * host.NON_SATURATING_CODE <= limit < 2 * 255 * (host.NON_SATURATING_CODE + 1)


@pytest.mark.parametrize(
    ("weights", "features", "saturates", "expected"),
    [
        (W8, A8, True, True),  # the W8A8 default on an AVX2 machine
        (W8, A8, False, False),  # VNNI, ARM: all 8 bits
        (Scheme.parse("per-channel-affine", bits=8), A8, True, False),  # uint8 weights: u8×u8
        (W8, None, True, False),  # weight-only: float kernels
    ],
)
def test_reduce_range_is_on_where_int8_kernels_would_saturate(weights, features, saturates, expected):
    config = QuantConfig(weights=weights, features=features)
    assert config.resolved(calibrated=True, int8_saturates=saturates).reduce_range is expected
    explicit = QuantConfig(weights=weights, features=features, reduce_range=not expected)
    assert explicit.resolved(calibrated=True, int8_saturates=saturates).reduce_range is not expected


def test_reduced_8bit_weights_are_7bit_weights_to_the_rounding_rule():
    config = QuantConfig(weights=W8, features=A8)
    reduced = config.resolved(calibrated=True, int8_saturates=True)
    assert (reduced.rounding, reduced.bias_correction) == ("gptq", True)
    assert config.resolved(calibrated=False, int8_saturates=True).rounding == "nearest"
    assert config.resolved(calibrated=True, int8_saturates=False).rounding == "nearest"


def _w8a8(tiny_path, images, reduce_range):
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=W8, features=A8, calib_size=8, reduce_range=reduce_range)
    return model, quantize(model, config, images.head(8))


def test_reduced_range_stores_7bit_codes_in_int8(tiny_path, sample_images):
    model, result = _w8a8(tiny_path, sample_images, reduce_range=True)
    assert result.config.reduce_range
    dequantizers = [node for node in model.graph if node.op_type == "DequantizeLinear"
                    and node.inputs[0].const_value is not None]
    assert len(dequantizers) == len(result.plan.weights) == 5
    for node in dequantizers:
        codes = node.inputs[0].const_value.numpy()
        assert node.inputs[0].dtype == ir.DataType.INT8
        assert np.abs(codes.astype(np.int32)).max() == 63  # restricted 7-bit grid, both extremes
        assert node.metadata_props[metadata.BITS] == "7"
    assert constant_dq.full_range_int8_weights(model.graph, host.NON_SATURATING_CODE) == 0
    full, _ = _w8a8(tiny_path, sample_images, reduce_range=False)
    assert constant_dq.full_range_int8_weights(full.graph, host.NON_SATURATING_CODE) == 5


def test_eval_warns_where_int8_kernels_clip_the_models_weights(tiny_path, sample_images, monkeypatch):
    notes: list[str] = []
    monkeypatch.setattr(progress, "status", notes.append)
    monkeypatch.setattr(host, "int8_kernels_saturate", lambda: True)
    images = sample_images.head(4)
    warnings = {}
    for reduce_range in (False, True):
        model, _ = _w8a8(tiny_path, sample_images, reduce_range)
        notes.clear()
        evaluate.evaluate(model, images, modelio.get_preprocessing(model), ep="cpu")
        warnings[reduce_range] = [note for note in notes if "no VNNI" in note]
    assert warnings[True] == []
    assert len(warnings[False]) == 1 and "5 int8 weights use codes beyond ±64" in warnings[False][0]


def test_quantize_says_when_it_reduces_the_range_for_this_machine(tiny_path, sample_images, monkeypatch):
    notes: list[str] = []
    monkeypatch.setattr(progress, "status", notes.append)
    monkeypatch.setattr(host, "int8_kernels_saturate", lambda: True)
    _, result = _w8a8(tiny_path, sample_images, reduce_range=None)
    assert result.config.reduce_range and "8-bit weights in reduced range (±63)" in result.config.rounding_notes()
    assert any("--full-range" in note for note in notes)
    notes.clear()
    _, result = _w8a8(tiny_path, sample_images, reduce_range=False)
    assert not result.config.reduce_range and not any("--full-range" in note for note in notes)
