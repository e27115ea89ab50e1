"""``--bit-budget``: the layers kept at 8 bits for an equivalent-bits budget, chosen by how far
each layer's low-bit weights alone move the network's output on the calibration images."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_cli import assert_user_error, onnxq
from tiny_models import tiny_cnn

from onnxq.base import metadata
from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.pipeline import bit_allocation, modelio
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import accounting, report

CALIBRATION = 16
W4 = Scheme.parse("per-channel-affine", bits=4)
A8 = Scheme.parse("per-tensor-affine", bits=8)
#: Conv weights of the tiny CNN: conv1 216, conv2 1152, dw3 144, pw4 256.
ELEMENTS = 1768


def _quantize(proto: onnx.ModelProto, config: QuantConfig, images, tmp_path):
    onnx.save(proto, tmp_path / "model.onnx")
    return quantize(modelio.load_model(tmp_path / "model.onnx"), config, images.head(CALIBRATION))


def _layer_bits(model) -> dict[str, int]:
    return {w.layer: w.bits for w in accounting.account(model).counted}


@pytest.mark.parametrize(
    "weights, decompose",
    [(W4, False), (Scheme.parse("per-group-symmetric", bits=4, group_size=4), True)],
)
def test_the_budget_is_spent_as_report_counts_it(tmp_path, sample_images, weights, decompose):
    """The estimate is exactly what ``report`` counts; no layer left at 4 bits would still fit;
    the kept layers are 8-bit in the model and named in the recorded config, and quantizing
    again from that config keeps the same layers."""
    config = QuantConfig(weights=weights, features=A8, bit_budget=6.0, decompose_scales=decompose)
    result = _quantize(tiny_cnn(), config, sample_images, tmp_path)
    allocation = result.allocation
    bits = accounting.account(result.model).equivalent_bits
    assert bits == pytest.approx(allocation.bits, abs=1e-9)
    assert allocation.start_bits < bits <= 6.0
    left = (6.0 - bits) * ELEMENTS
    assert 0 < len(allocation.kept) < len(allocation.layers) == 4
    for layer in allocation.layers:
        assert layer.kept or layer.added_bits > left, layer
    assert {n for n, b in _layer_bits(result.model).items() if b == 8} == set(allocation.kept)
    recorded = json.loads(result.model.metadata_props[metadata.QUANTIZATION])
    assert recorded["keep_8bit"] == list(allocation.kept) and recorded["bit_budget"] == 6.0
    stored = json.loads(result.model.metadata_props[metadata.BIT_ALLOCATION])
    assert stored["bits"] == pytest.approx(bits)
    line = f"bit budget: 6: {len(allocation.kept)} of 4 layers kept at 8 bits by sensitivity"
    assert any(x.startswith(line) for x in report.summary_lines(accounting.account(result.model)))
    again = _quantize(tiny_cnn(), QuantConfig.from_dict(recorded), sample_images, tmp_path)
    assert not again.allocation.kept and _layer_bits(again.model) == _layer_bits(result.model)


def test_the_layer_that_moves_the_output_most_per_bit_is_kept(tmp_path, sample_images):
    """conv2 with one weight per output channel 40 times its others: its 4-bit grid rounds the
    rest to a few levels, so it alone moves the output most, and a budget that affords exactly
    conv2 at 8 bits keeps conv2 and nothing else, although other layers cost less."""
    proto = tiny_cnn()
    weight = next(t for t in proto.graph.initializer if t.name == "conv2.weight")
    values = numpy_helper.to_array(weight).copy()
    values[:, 0, 0, 0] = 40 * np.abs(values).max(axis=(1, 2, 3))
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    start = 216 * 4 + 8 * 36 + 1152 * 4 + 16 * 36 + 144 * 4 + 16 * 36 + 256 * 4 + 16 * 36
    conv2 = 4 * (1152 + 16)  # 4 more bits per code and per zero point
    config = QuantConfig(weights=W4, features=A8, bit_budget=(start + conv2) / ELEMENTS)
    allocation = _quantize(proto, config, sample_images, tmp_path).allocation
    assert allocation.start_bits == pytest.approx(start / ELEMENTS)
    divergences = {layer.node: layer.divergence for layer in allocation.layers}
    assert max(divergences, key=divergences.get) == "conv2"
    assert allocation.kept == ("conv2",)


def test_a_budget_below_the_plan_names_the_bits_it_has(tmp_path, sample_images):
    config = QuantConfig(weights=W4, features=A8, keep_8bit=("conv2",), bit_budget=5.0)
    with pytest.raises(OnnxqError, match=r"--bit-budget 5 is below the 7\.\d{3} equivalent bits"):
        _quantize(tiny_cnn(), config, sample_images, tmp_path)


def test_a_budget_of_8_bit_weights_has_nothing_to_spend(tmp_path, sample_images):
    config = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=8), bit_budget=9.0)
    with pytest.raises(OnnxqError, match="already at 8 bits"):
        _quantize(tiny_cnn(), config, sample_images, tmp_path)


def test_a_budget_must_be_positive():
    with pytest.raises(OnnxqError, match="--bit-budget must be a positive number of bits"):
        QuantConfig(weights=W4, bit_budget=0.0)


def test_a_budget_without_calibration_images_is_a_user_error(tmp_path, tiny_path):
    result = onnxq("quantize", tiny_path, "--weight-only", "--wbits", 4, "--bit-budget", 5,
                   "-o", tmp_path / "out.onnx")
    assert_user_error(result, "--bit-budget measures each layer on calibration images")
    assert not (tmp_path / "out.onnx").exists()


def test_measuring_leaves_the_float_weights_as_they_were(tmp_path, sample_images):
    onnx.save(tiny_cnn(), tmp_path / "model.onnx")
    model = modelio.load_model(tmp_path / "model.onnx")
    initializers = model.graph.initializers
    before = {name: value.const_value.numpy().copy() for name, value in initializers.items()}
    config = QuantConfig(weights=W4, features=A8, bit_budget=6.0)
    preprocessing = modelio.get_preprocessing(model)
    bit_allocation.allocate(model, config, sample_images.head(CALIBRATION), preprocessing, "cpu")
    for name, value in model.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), before[name])


def test_the_pass_selection_probes_do_not_measure_again(tmp_path, sample_images, monkeypatch):
    """With --reorder auto every probe quantizes a copy; the layers are chosen once, before."""
    calls = []
    measure = bit_allocation.allocate

    def counted(*args):
        calls.append(args[1])
        return measure(*args)

    monkeypatch.setattr(bit_allocation, "allocate", counted)
    weights = Scheme.parse("per-group-affine", bits=4, group_size=4)
    config = QuantConfig(weights=weights, features=A8, reorder="auto", bit_budget=7.0)
    result = _quantize(tiny_cnn(), config, sample_images, tmp_path)
    assert len(calls) == 1 and result.pass_selection
    assert list(result.config.keep_8bit) == list(result.allocation.kept)


def test_reduced_range_8_bit_weights_have_nothing_to_spend(tmp_path, sample_images):
    """8-bit symmetric weights in reduced range are 7-bit, and 8 bits keep them at 7."""
    weights = Scheme.parse("per-channel-symmetric", bits=8)
    config = QuantConfig(weights=weights, features=A8, reduce_range=True, bit_budget=9.0)
    with pytest.raises(OnnxqError, match="already at 8 bits"):
        _quantize(tiny_cnn(), config, sample_images, tmp_path)
