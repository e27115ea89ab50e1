import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from tiny_models import tiny_cnn

from onnxq.base.errors import OnnxqError
from onnxq.pipeline import modelio


def _run(model_bytes, x):
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_batchnorm_is_folded_and_function_preserved(tmp_path):
    proto = tiny_cnn(batch_norm=True)
    path = tmp_path / "bn.onnx"
    onnx.save(proto, str(path))
    model = modelio.load_model(path)
    assert not any(node.op_type == "BatchNormalization" for node in model.graph)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    import onnx_ir as ir

    folded = ir.serde.serialize_model(model).SerializeToString()
    np.testing.assert_allclose(_run(folded, x), _run(proto.SerializeToString(), x), rtol=1e-4, atol=1e-5)


def test_old_opset_is_converted(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(tiny_cnn(opset=13), str(path))
    model = modelio.load_model(path)
    assert model.opset_imports[""] == 21 and model.ir_version >= 10


def test_unconvertible_opset_is_a_user_error(tmp_path):
    node = helper.make_node("Upsample", ["input", "scales"], ["logits"], mode="nearest")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)], ir_version=3)
    path = tmp_path / "ancient.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(OnnxqError, match="could not be converted"):
        modelio.load_model(path)


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"not a model at all", "not an ONNX model")])
def test_bad_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OnnxqError, match=message):
        modelio.load_model(path)


def test_save_is_atomic_and_checked(tmp_path, tiny_path):
    model = modelio.load_model(tiny_path)
    target = tmp_path / "out.onnx"
    next(n for n in model.graph if n.op_type == "Conv").attributes.pop("kernel_shape")
    model.graph.node(0).op_type = "NoSuchOp"
    with pytest.raises(Exception):
        modelio.save_model(model, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
