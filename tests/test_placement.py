"""Feature Q/DQ placement: the ``fused`` layout is the one ONNX Runtime runs as integer kernels."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from tiny_models import TINY_PREPROCESSING

from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize

W8 = Scheme.parse("per-channel-symmetric", bits=8)
A8 = Scheme.parse("per-tensor-affine", bits=8)


def _quantized(tiny_path, images, placement, weights=W8, features=A8, **options):
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=weights, features=features, calib_size=8, placement=placement, **options)
    return model, quantize(model, config, images.head(8))


def optimized_op_counts(model: ir.Model, tmp_path) -> collections.Counter:
    """The op types of the graph ONNX Runtime's CPU provider actually runs."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    proto = ir.serde.serialize_model(model).SerializeToString()
    ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_fused_placement_quantizes_inputs_and_outputs(tiny_path, sample_images):
    _, result = _quantized(tiny_path, sample_images, "fused")
    placed = {target.tensor: target.consumers for target in result.plan.features}
    assert placed == {
        "input": ("conv1",),
        "relu1.out": ("conv2",),  # conv1's output is quantized after its Relu
        "relu2.out": ("dw3", "add"),  # every reader takes the dequantized copy
        "relu3.out": ("pw4",),
        "pw4.out": ("add",),  # a Conv output feeding an Add
        "relu4.out": ("gap",),
        "gap.out": ("flatten",),
        "flat.out": ("fc",),
    }  # the logits, a graph output, stay float


def test_inputs_placement_quantizes_the_inputs_of_the_quantized_ops(tiny_path, sample_images):
    _, result = _quantized(tiny_path, sample_images, "inputs")
    placed = {target.tensor: target.consumers for target in result.plan.features}
    assert placed == {
        "input": ("conv1",),
        "relu1.out": ("conv2",),
        "relu2.out": ("dw3",),
        "relu3.out": ("pw4",),
        "flat.out": ("fc",),
    }


def test_onnxruntime_runs_fused_w8a8_as_integer_kernels(tiny_path, sample_images, tmp_path):
    fused, _ = _quantized(tiny_path, sample_images, "fused")
    ops = optimized_op_counts(fused, tmp_path)
    assert ops["QLinearConv"] == 4 and ops["Conv"] + ops["FusedConv"] == 0
    assert ops["QLinearAdd"] == 1 and ops["QLinearGlobalAveragePool"] == 1
    inputs, _ = _quantized(tiny_path, sample_images, "inputs")
    assert optimized_op_counts(inputs, tmp_path)["QLinearConv"] < 4


def test_integer_kernels_compute_the_fake_quantized_model(tiny_path, sample_images):
    model, _ = _quantized(tiny_path, sample_images, "fused")
    pixels = np.stack([TINY_PREPROCESSING.load(str(f)) for f in sample_images.files[100:132]])
    proto = ir.serde.serialize_model(model).SerializeToString()
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"input": pixels})[0])
    integer, fake = outputs
    assert np.abs(integer - fake).max() <= 0.02 * np.abs(fake).max()
    assert (integer.argmax(1) == fake.argmax(1)).mean() >= 0.9


def test_kept_layers_keep_8bit_features_on_both_sides(tiny_path, sample_images):
    _, result = _quantized(
        tiny_path, sample_images, "fused",
        weights=Scheme.parse("per-channel-affine", bits=4),
        features=Scheme.parse("per-tensor-affine", bits=4),
        keep_8bit=("first", "last"),
    )
    bits = {target.tensor: target.scheme.bits for target in result.plan.features}
    assert bits["input"] == bits["relu1.out"] == 8  # conv1's input and output
    assert bits["flat.out"] == 8  # fc's input
    assert bits["relu2.out"] == bits["pw4.out"] == 4


def test_placement_round_trips_and_rejects_unknown_names():
    config = QuantConfig(weights=W8, features=A8, placement="fused")
    assert QuantConfig.from_dict(config.to_dict()) == config
    old_record = {key: value for key, value in config.to_dict().items() if key != "placement"}
    assert QuantConfig.from_dict(old_record).placement == "inputs"
    with pytest.raises(OnnxqError, match="unknown feature placement 'outputs'"):
        QuantConfig(weights=W8, placement="outputs")


def resolve_placement(placement: str, weights: Scheme, features: Scheme | None) -> str:
    return QuantConfig(weights, features, placement=placement).resolved(calibrated=True).placement


def test_auto_placement_fuses_w8a8_only():
    w4 = Scheme.parse("per-group-affine", bits=4, group_size=8)
    assert QuantConfig(weights=W8, features=A8).placement == "auto"
    assert resolve_placement("auto", W8, A8) == "fused"
    assert resolve_placement("auto", w4, A8) == "inputs"
    assert resolve_placement("auto", W8, Scheme.parse("per-tensor-affine", bits=4)) == "inputs"
    assert resolve_placement("auto", W8, None) == "inputs"
    assert resolve_placement("inputs", W8, A8) == "inputs"


def _graph_with(op_type: str, output: bool) -> ir.Graph:
    """input → Relu → ``op_type`` (→ Relu unless ``output``): ``op_type`` writes the output."""
    x = ir.val("input", ir.DataType.FLOAT, ir.Shape([1, 4]))
    relu = ir.node("Relu", [x])
    special = ir.node(op_type, relu.outputs, {"axis": -1} if op_type == "Softmax" else {})
    nodes = [relu, special]
    if not output:
        nodes.append(ir.node("Relu", special.outputs))
    return ir.Graph([x], [nodes[-1].outputs[0]], nodes=nodes)


def test_auto_placement_keeps_transformers_on_inputs(tiny_path, sample_images):
    from onnxq.analysis.placement import has_transformer_ops

    assert resolve_placement_of(W8, A8, transformer=True) == "inputs"
    assert has_transformer_ops(_graph_with("LayerNormalization", output=False))
    assert has_transformer_ops(_graph_with("Softmax", output=False))  # attention
    assert not has_transformer_ops(_graph_with("Softmax", output=True))  # a classifier's head
    model = modelio.load_model(tiny_path)
    assert not has_transformer_ops(model.graph)
    result = quantize(model, QuantConfig(weights=W8, features=A8, calib_size=4),
                      sample_images.head(4), TINY_PREPROCESSING)
    assert result.config.placement == "fused"


def resolve_placement_of(weights: Scheme, features: Scheme, transformer: bool) -> str:
    config = QuantConfig(weights, features)
    return config.resolved(calibrated=True, transformer=transformer).placement


@pytest.mark.slow
def test_efficientnet_w8a8_fused_runs_as_integer_kernels(effnet_path, sample_images, tmp_path):
    from onnxq.reporting import evaluate

    calibration, held_out = sample_images.split(64, seed=1)
    held_out = held_out.head(128)
    float_model = modelio.load_model(effnet_path)
    preprocessing = modelio.get_preprocessing(float_model)
    fp32 = evaluate.evaluate(float_model, held_out, preprocessing, ep="cpu")
    model = modelio.load_model(effnet_path)
    quantize(model, QuantConfig(weights=W8, features=A8, calib_size=64, placement="fused"), calibration)
    assert optimized_op_counts(model, tmp_path)["QLinearConv"] == 49
    quantized = evaluate.evaluate(model, held_out, preprocessing, ep="cpu")
    assert quantized.top1 >= fp32.top1 - 2.0
    agreement = np.mean(np.asarray(quantized.predictions) == np.asarray(fp32.predictions))
    assert agreement >= 0.95
