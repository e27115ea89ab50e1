"""Export of real architectures: opset 21, BatchNorm folded, dynamic batch, preprocessing recorded."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxq.models.export import export_model

from onnxq.base.errors import OnnxqError
from onnxq.pipeline import modelio

pytestmark = pytest.mark.slow


def _check_exported(path, crop):
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 21
    ops = {node.op_type for node in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert all(not node.metadata_props for node in proto.graph.node)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        logits = session.run(None, {"input": np.zeros((batch, 3, crop, crop), np.float32)})[0]
        assert logits.shape == (batch, 1000)
    return proto


@pytest.mark.parametrize("name, convs", [("resnet18", 20), ("resnet50", 53)])
def test_torchvision_export_with_random_weights(tmp_path, name, convs):
    result = export_model(name, tmp_path / f"{name}.onnx", random_weights=True)
    assert result.max_abs_difference < 1e-3
    proto = _check_exported(result.path, 224)
    assert sum(node.op_type == "Conv" for node in proto.graph.node) == convs
    names = {node.name for node in proto.graph.node}
    assert {"conv1", "layer1.0.conv1", "fc"} <= names
    preprocessing = modelio.get_preprocessing(modelio.load_model(result.path))
    assert preprocessing.crop == 224 and preprocessing.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("name", ["convnext_tiny", "swin_t", "vit_b_16"])
def test_transformer_style_exports_keep_a_dynamic_batch(tmp_path, name):
    """Traced on one image, torch specialised these to a batch of 1 (or failed)."""
    result = export_model(name, tmp_path / f"{name}.onnx", random_weights=True)
    assert result.max_abs_difference < 1e-3
    proto = _check_exported(result.path, 224)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(OnnxqError, match="no pretrained weights for resnet18.*--random-weights"):
        export_model("resnet18", tmp_path / "r.onnx")
    assert not (tmp_path / "r.onnx").exists()


def test_export_loads_a_state_dict_file(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(1)
    module = torchvision.models.resnet18()
    torch.save(module.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    result = export_model("resnet18", tmp_path / "r.onnx", weights=str(tmp_path / "resnet18-f37072fd.pth"))
    model = modelio.load_model(result.path)
    fc = model.graph.initializers["fc.weight"].const_value.numpy()
    np.testing.assert_array_equal(fc, module.fc.weight.detach().numpy())
    assert result.preprocessing.resize == 256  # IMAGENET1K_V1's preprocessing, matched by file name


def test_efficientnet_lite0_export(effnet_path):
    proto = _check_exported(effnet_path, 224)
    assert sum(node.op_type == "Conv" for node in proto.graph.node) == 49
    preprocessing = modelio.get_preprocessing(modelio.load_model(effnet_path))
    assert preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert preprocessing.std == pytest.approx((128 / 255,) * 3)


def test_models_over_the_onnx_size_limit_are_not_offered(tmp_path):
    from onnxq.models.export import model_names

    names = model_names()
    assert "vit_l_16" in names and "regnet_y_32gf" in names
    assert "vit_h_14" not in names and "regnet_y_128gf" not in names
    with pytest.raises(OnnxqError, match="633 million parameters.*2 GiB"):
        export_model("vit_h_14", tmp_path / "vit_h_14.onnx", random_weights=True)
