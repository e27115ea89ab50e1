"""Deployment forms: the same weights bit for bit, in forms ONNX Runtime runs fast."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnxq.passes import FoldWeightDequantizePass
from test_placement import optimized_op_counts
from tiny_models import TINY_PREPROCESSING

from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.io import runtime
from onnxq.pipeline import modelio
from onnxq.pipeline.deploy import deploy
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import evaluate

A8 = Scheme.parse("per-tensor-affine", bits=8)
WEIGHT_SCHEMES = [
    Scheme.parse("per-group-affine", bits=4, group_size=3),
    Scheme.parse("per-channel-affine", bits=4),
    Scheme.parse("per-channel-symmetric", bits=8),
    Scheme.parse("per-tensor-symmetric", bits=3),
]


@pytest.fixture(scope="module")
def pixels(sample_images) -> np.ndarray:
    return np.stack([TINY_PREPROCESSING.load(str(f)) for f in sample_images.files[100:132]])


def _quantized(tiny_path, images, weights, features=A8, placement="fused") -> ir.Model:
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=weights, features=features, calib_size=8, placement=placement)
    quantize(model, config, images.head(8) if features else None)
    return model


def _run(model: ir.Model, pixels: np.ndarray, disabled=(), **options) -> np.ndarray:
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    for key, value in options.items():
        setattr(session_options, key, value)
    proto = ir.serde.serialize_model(model).SerializeToString()
    session = ort.InferenceSession(
        proto, session_options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled)
    )
    return session.run(None, {"input": pixels})[0]


def _layer_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """The weight each Conv/Gemm reads, as ONNX Runtime computes it (no graph optimizations)."""
    weights = {node.name: node.inputs[1].name for node in model.graph if node.op_type in ("Conv", "Gemm")}
    proto = ir.serde.serialize_model(model)
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    computed = [name for name in weights.values() if name not in constants]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in computed)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = np.zeros((1, 3, 32, 32), np.float32)
    constants.update(zip(computed, session.run(computed, {"input": pixels})))
    return {layer: constants[name] for layer, name in weights.items()}


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("scheme", WEIGHT_SCHEMES, ids=lambda s: s.describe())
def test_folded_weights_are_what_dequantize_linear_computes(tiny_path, sample_images, pixels, scheme):
    model = _quantized(tiny_path, sample_images, scheme)
    expected = _layer_weights(model)
    reference = _run(model, pixels, graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    result = deploy(model, fold_weights=True)
    assert len(result.folded) == 5
    assert not [n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None]
    for layer, weight in _layer_weights(model).items():
        np.testing.assert_array_equal(_bits(weight), _bits(expected[layer]), err_msg=layer)
    # Float kernels on the folded weights compute exactly the fake-quantized model.
    np.testing.assert_array_equal(_run(model, pixels), reference)


@pytest.mark.parametrize("bits", [2, 4, 7])
def test_per_channel_weights_become_int8_kernels_with_the_same_values(tiny_path, sample_images, tmp_path, bits):
    model = _quantized(tiny_path, sample_images, Scheme.parse("per-channel-affine", bits=bits))
    expected = _layer_weights(model)
    result = deploy(model)
    assert result.widened == result.integer_kernels == ("conv1", "conv2", "dw3", "pw4")
    assert result.folded == ("fc.weight",)  # the logits stay float, so fc is no integer kernel
    for layer in result.widened:
        dq = next(n for n in model.graph if n.name == f"{layer}.weight_dq")
        assert dq.inputs[0].dtype == ir.DataType.INT8 and len(dq.inputs) == 2
        assert dq.attributes.get_int("axis") == 0 and "block_size" not in dq.attributes
    for layer, weight in _layer_weights(model).items():
        np.testing.assert_array_equal(_bits(weight), _bits(expected[layer]), err_msg=layer)
    assert optimized_op_counts(model, tmp_path)["QLinearConv"] == 4


def test_per_group_weights_are_folded_not_requantized(tiny_path, sample_images, pixels):
    scheme = Scheme.parse("per-group-affine", bits=4, group_size=4)
    result = deploy(_quantized(tiny_path, sample_images, scheme))
    assert result.widened == ("conv1", "dw3")  # one group per output channel: per-channel
    assert set(result.folded) == {"conv2.weight", "pw4.weight", "fc.weight"}
    # ONNX Runtime quantizes a float weight behind a per-tensor DequantizeLinear again (to
    # per-tensor int8, its WeightBiasQuantization rewrite); deployed graphs keep it from that.
    unprotected = _quantized(tiny_path, sample_images, scheme)
    FoldWeightDequantizePass()(unprotected)
    requantized = _run(unprotected, pixels)
    as_folded = _run(unprotected, pixels, disabled=["WeightBiasQuantization"])
    assert not np.array_equal(requantized, as_folded)
    protected = _quantized(tiny_path, sample_images, scheme)
    deploy(protected, fold_weights=True)
    np.testing.assert_array_equal(_run(protected, pixels), as_folded)


def test_weight_only_models_fold_at_load_to_the_same_predictions(tiny_path, sample_images):
    model = _quantized(tiny_path, sample_images, Scheme.parse("per-group-affine", bits=4, group_size=4), None)
    images = sample_images.subset(range(100, 164))
    quantized = evaluate.evaluate(model, images, TINY_PREPROCESSING, ep="cpu")
    at_load = evaluate.evaluate(
        model, images, TINY_PREPROCESSING, ep="cpu", session_config=runtime.FOLD_WEIGHTS_AT_LOAD
    )
    deploy(model, fold_weights=True)
    folded = evaluate.evaluate(model, images, TINY_PREPROCESSING, ep="cpu")
    assert quantized.predictions == at_load.predictions == folded.predictions


def onnxq(*args):
    return subprocess.run([sys.executable, "-m", "onnxq", *map(str, args)], capture_output=True, text=True)


def test_deploy_command(tmp_path, tiny_path, sample_dir):
    quantized = tmp_path / "w4a8.onnx"
    result = onnxq(
        "-q", "quantize", tiny_path, "-o", quantized, "--calib", sample_dir, "--calib-size", 8,
        "--wbits", 4, "--scheme", "per-channel-affine", "--f-placement", "fused",
    )
    assert result.returncode == 0, result.stderr
    outputs = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for output in outputs:
        result = onnxq("deploy", quantized, "-o", output)
        assert result.returncode == 0, result.stderr
        assert "4 layers run as int8 kernels (4 re-stored as int8), 1 weights folded" in result.stdout
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    deployed = onnx.load(str(outputs[0]))
    onnx.checker.check_model(deployed, full_check=True)
    assert {p.key: p.value for p in deployed.metadata_props}["onnxq.deployment"] == "int8-kernels"
    result = onnxq("-q", "eval", quantized, "--data", sample_dir, "--limit", 8, "--ep", "cpu", "--fold-weights")
    assert result.returncode == 0 and "8 images" in result.stdout, result.stderr
    w8a8 = tmp_path / "w8a8.onnx"
    result = onnxq("-q", "quantize", tiny_path, "-o", w8a8, "--calib", sample_dir, "--calib-size", 8)
    assert result.returncode == 0, result.stderr
    record = json.loads({p.key: p.value for p in onnx.load(str(w8a8)).metadata_props}["onnxq.quantization"])
    assert record["placement"] == "fused"  # the command line's default for W8A8


def test_deploy_user_errors(tmp_path, tiny_path):
    result = onnxq("deploy", tmp_path / "missing.onnx", "-o", tmp_path / "out.onnx")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"onnxq: error: {tmp_path / 'missing.onnx'}: no such file"]
    result = onnxq("quantize", tiny_path, "--weight-only", "--f-placement", "outputs", "-o", tmp_path / "q.onnx")
    assert result.returncode == 2 and "unknown feature placement 'outputs'" in result.stderr
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "q.onnx").exists()
