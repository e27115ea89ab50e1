import dataclasses

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


def _with_input_size(proto: onnx.ModelProto, size: int) -> onnx.ModelProto:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = size
    del proto.metadata_props[:]  # no recorded preprocessing
    return proto


def test_preprocessing_follows_a_fixed_input_size_and_is_recorded(tmp_path, sample_images, capsys):
    from onnxq.base import progress
    from onnxq.core.config import QuantConfig
    from onnxq.core.schemes import Scheme
    from onnxq.io.preprocessing import PRESETS
    from onnxq.pipeline.quantize import quantize_file

    source, output = tmp_path / "net.onnx", tmp_path / "q.onnx"
    onnx.save(_with_input_size(tiny_cnn(), 227), str(source))
    model = modelio.load_model(source)
    progress.set_quiet(False)
    try:
        chosen = modelio.choose_preprocessing(model, None, source)
    finally:
        progress.set_quiet(True)
    assert (chosen.crop, chosen.resize) == (227, 259)
    assert "crop 227 from the input shape" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(OnnxqError, match="input is 227×227 but the preprocessing crops 224×224"):
        modelio.choose_preprocessing(model, PRESETS["caffe"], source)

    config = QuantConfig(weights=Scheme.parse("per-channel-symmetric", bits=8),
                         features=Scheme.parse("per-tensor-affine", bits=8), calib_size=2)
    caffe_227 = dataclasses.replace(PRESETS["caffe"], crop=227)
    quantize_file(source, output, config, sample_images.head(2), caffe_227)
    assert modelio.get_preprocessing(modelio.load_model(output)) == caffe_227
