"""Canonicalization of models from elsewhere: constant subgraphs, Identity-fed BatchNorm,
leftover BatchNorm, weights listed as inputs; function preserved, canonical models unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxq.passes import CanonicalizePass
from tiny_models import tiny_cnn

from onnxq.base.errors import OnnxqError
from onnxq.pipeline import modelio

RNG = np.random.default_rng(0)


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _zoo_style_model() -> onnx.ModelProto:
    """Conv whose weight is ConstantOfShape·Cast and whose BatchNorm parameters come through
    Identity nodes, then a BatchNorm after a Relu (no Conv to fold into), weights also listed
    as graph inputs (IR version 3 style), opset 9."""
    weight = RNG.normal(size=(8, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Mul", ["ones", "w_values"], ["w"]),
        helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
        *[helper.make_node("Identity", [f"bn_{p}_raw"], [f"bn_{p}"]) for p in "sbmv"],
        helper.make_node("BatchNormalization", ["conv", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("BatchNormalization", ["relu", "bn2_s", "bn2_b", "bn2_m", "bn2_v"],
                         ["logits"], epsilon=1e-3),
    ]
    params = {
        "w_shape": np.array(weight.shape, np.int64), "w_values": weight,
        **{f"bn_{p}_raw": RNG.uniform(0.5, 2, 8).astype(np.float32) for p in "sbmv"},
        **{f"bn2_{p}": RNG.uniform(0.5, 2, 8).astype(np.float32) for p in "sbmv"},
    }
    inits = [numpy_helper.from_array(v, k) for k, v in params.items()]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(k, numpy_helper.from_array(v).data_type, v.shape)
               for k, v in params.items()]
    graph = helper.make_graph(nodes, "zoo", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)


def test_zoo_style_model_is_canonical_after_loading(tmp_path):
    proto = _zoo_style_model()
    path = tmp_path / "zoo.onnx"
    onnx.save(proto, str(path))
    model, changes = modelio.load_model_and_changes(path)
    ops = [node.op_type for node in model.graph]
    assert ops == ["Conv", "Relu", "Mul", "Add"]
    conv = next(node for node in model.graph if node.op_type == "Conv")
    assert conv.inputs[1].const_value is not None and conv.inputs[2].const_value is not None
    assert [v.name for v in model.graph.inputs] == ["input"]
    assert changes == (
        "opset 9 converted to 21; canonicalized (removed 2 BatchNormalization, 1 ConstantOfShape, "
        "4 Identity; added 1 Add)"  # net counts: the folded weight's Mul went, a BatchNorm's came
    )
    assert model.graph.outputs[0].name == "logits"
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    canonical = ir.serde.serialize_model(model)
    np.testing.assert_allclose(_run(canonical, x), _run(proto, x), rtol=1e-4, atol=1e-5)


def test_a_canonical_model_is_unchanged(tiny_path):
    model = modelio.load_model(tiny_path)
    before = ir.serde.serialize_model(model).SerializeToString()
    result = CanonicalizePass()(model)
    assert not result.modified and result.summary() == ""
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_quantization_ops_are_not_folded(tmp_path):
    """A weight-only quantized model keeps its DequantizeLinear, so it is refused as such."""
    codes = numpy_helper.from_array(RNG.integers(-8, 8, size=(8, 3, 3, 3)).astype(np.int8), "codes")
    scale = numpy_helper.from_array(np.float32(0.1), "scale")
    nodes = [helper.make_node("DequantizeLinear", ["codes", "scale"], ["w"]),
             helper.make_node("Conv", ["input", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "q", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, 6, 6])], [codes, scale])
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    model = modelio.load_model(path)
    assert [node.op_type for node in model.graph] == ["DequantizeLinear", "Conv"]
    with pytest.raises(OnnxqError, match="already quantized"):
        modelio.check_float_model(model, path)


def test_tiny_cnn_with_identity_fed_batchnorm_folds(tmp_path):
    proto = tiny_cnn(batch_norm=True)
    for name in ("bn1.scale", "bn1.bias"):
        proto.graph.node.insert(0, helper.make_node("Identity", [name], [f"{name}.id"]))
    bn = next(node for node in proto.graph.node if node.op_type == "BatchNormalization")
    bn.input[1], bn.input[2] = "bn1.scale.id", "bn1.bias.id"
    path = tmp_path / "bn.onnx"
    onnx.save(proto, str(path))
    model = modelio.load_model(path)
    assert not any(node.op_type in ("BatchNormalization", "Identity") for node in model.graph)
