"""Biases on their int32 grid (``RoundBiasesPass``, ``analysis.bias_grid``): which layers have
one, and that a rounded model computes the same with and without ONNX Runtime's optimizer."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxq.passes import RoundBiasesPass
from tiny_models import tiny_cnn

from onnxq.analysis.bias_grid import bias_grid
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.pipeline.quantize import quantize

INPUT_SCALE = np.float32(0.37)
WEIGHT_SCALE = np.array([0.11, 0.07, 0.23], np.float32)


def _layer_model(op: str = "Conv", axis: int = 0, trans_b: int = 1, per_tensor_input: bool = True,
                 shared_bias: bool = False) -> onnx.ModelProto:
    """x → QuantizeLinear → DequantizeLinear → a Conv or Gemm with int8 weight codes (three
    output channels) and a float bias off its grid → QuantizeLinear → DequantizeLinear (the
    pattern ONNX Runtime runs as an integer kernel); with ``shared_bias`` a second layer reads
    the same bias."""
    rng = np.random.default_rng(0)
    conv = op == "Conv"
    codes = rng.integers(-8, 8, (3, 4, 1, 1) if conv else ((3, 4) if trans_b else (4, 3)))
    input_scale = INPUT_SCALE if per_tensor_input else np.full(4, INPUT_SCALE, np.float32)
    inits = [
        numpy_helper.from_array(np.asarray(input_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.uint8(0) if per_tensor_input else np.zeros(4, np.uint8),
                                "x_zero"),
        numpy_helper.from_array(codes.astype(np.int8), "w_codes"),
        numpy_helper.from_array(WEIGHT_SCALE, "w_scale"),
        numpy_helper.from_array(np.array([0.0123, -0.5, 0.3333], np.float32), "bias"),
        numpy_helper.from_array(np.float32(0.05), "y_scale"),
        numpy_helper.from_array(np.int8(0), "y_zero"),
    ]
    attributes = {} if conv else {"transB": trans_b}
    layer_input = ["x_dq", "w", "bias"]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="q", axis=1),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dq",
                         axis=1),
        helper.make_node("DequantizeLinear", ["w_codes", "w_scale"], ["w"], name="w_dq", axis=axis),
        helper.make_node(op, layer_input, ["y_float"], name="layer", **attributes),
        helper.make_node("QuantizeLinear", ["y_float", "y_scale", "y_zero"], ["y_q"], name="y_q"),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"], name="y_dq"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if shared_bias:
        nodes.append(helper.make_node(op, layer_input, ["y2"], name="twin", **attributes))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    shape = [2, 4, 3, 3] if conv else [2, 4]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape)], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _outputs(model: ir.Model | onnx.ModelProto, x: np.ndarray,
             level: ort.GraphOptimizationLevel) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _input(model: onnx.ModelProto) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(1).uniform(0, 5, shape).astype(np.float32)


@pytest.mark.parametrize(("op", "axis", "trans_b"), [("Conv", 0, 1), ("Gemm", 0, 1),
                                                     ("Gemm", 1, 0)])
def test_rounded_biases_make_the_optimizer_change_nothing(op, axis, trans_b):
    proto = _layer_model(op, axis, trans_b)
    x = _input(proto)
    plain = _outputs(proto, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)[0]
    optimized = _outputs(proto, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)[0]
    assert np.abs(plain - optimized).max() > 1e-3  # ONNX Runtime rounds this bias
    model = ir.serde.deserialize_model(proto)
    result = RoundBiasesPass()(model)
    assert result.modified and 0 < result.moved["layer"] <= 0.5
    step = INPUT_SCALE * WEIGHT_SCALE
    bias = model.graph.initializers["bias"].const_value.numpy()
    np.testing.assert_array_equal(bias, np.round(np.array([0.0123, -0.5, 0.3333], np.float32)
                                                 / step) * step)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        np.testing.assert_allclose(_outputs(model, x, level)[0], optimized, rtol=1e-6, atol=1e-6)
    again = RoundBiasesPass()(model)
    assert not again.modified and again.moved == {"layer": 0.0}


@pytest.mark.parametrize("changes", [{"axis": 1}, {"per_tensor_input": False},
                                     {"op": "Gemm", "axis": 1, "trans_b": 1}])
def test_layers_without_a_grid_keep_their_bias(changes):
    """A per-channel weight on the input axis, a per-channel input: no runtime rounds these."""
    model = ir.serde.deserialize_model(_layer_model(**changes))
    layer = next(node for node in model.graph if node.name == "layer")
    assert bias_grid(layer) is None
    result = RoundBiasesPass()(model)
    assert not result.modified and result.moved == {}


def test_a_shared_bias_is_rounded_in_a_copy_per_layer():
    model = ir.serde.deserialize_model(_layer_model(shared_bias=True))
    result = RoundBiasesPass()(model)
    assert set(result.moved) == {"layer", "twin"}
    layer, twin = (next(n for n in model.graph if n.name == name) for name in ("layer", "twin"))
    assert layer.inputs[2] is not twin.inputs[2]
    np.testing.assert_array_equal(layer.inputs[2].const_value.numpy(),
                                  twin.inputs[2].const_value.numpy())


def test_quantize_writes_biases_on_their_grid(tmp_path, sample_images):
    """A quantized model computes the same with ONNX Runtime's optimizations on and off."""
    images = sample_images.head(16)
    model = ir.serde.deserialize_model(tiny_cnn())
    config = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=3),
                         features=Scheme.parse("per-tensor-affine", bits=4), calib_size=16)
    result = quantize(model, config, images, batch_size=8)
    grids = [bias_grid(node) for node in result.model.graph]
    assert sum(grid is not None for grid in grids) == 5
    for grid in filter(None, grids):
        codes = grid.bias.const_value.numpy() / grid.step()
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    proto = ir.serde.serialize_model(result.model)
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    name = proto.graph.input[0].name
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {name: x})[0])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
