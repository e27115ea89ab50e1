"""Every scheme × bit width on a small CNN, graph outputs against the numpy reference."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from tiny_models import TINY_PREPROCESSING

from onnxq.analysis.graph import downsampling
from onnxq.analysis.plan import make_plan
from onnxq.base.errors import OnnxqError
from onnxq.core import quant_math
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Granularity, Scheme, scheme_names
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize

BITS = range(2, 9)
GROUP_SIZE = 3  # does not divide 8 or 16 input channels: exercises the short last group


def _scheme(name: str, bits: int, observer: str = "minmax") -> Scheme:
    return Scheme.parse(name, bits=bits, group_size=GROUP_SIZE if "group" in name else None, observer=observer)


def _run_with_outputs(model: ir.Model, names: list[str], pixels: np.ndarray) -> dict[str, np.ndarray]:
    proto = ir.serde.serialize_model(model)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"input": pixels})))


def _reference_weight(weight: np.ndarray, out_axis: int, scheme: Scheme) -> np.ndarray:
    """Min-max fake quantization written group by group, independently of the library's layout code."""
    rows = weight if out_axis == 0 else weight.T
    flat = rows.reshape(rows.shape[0], -1).copy()
    kernel = flat.shape[1] // rows.shape[1]
    if scheme.granularity is Granularity.TENSOR:
        spans = [(slice(None), slice(None))]
    elif scheme.granularity is Granularity.CHANNEL:
        spans = [(o, slice(None)) for o in range(flat.shape[0])]
    else:
        block = min(scheme.group_size, rows.shape[1]) * kernel
        spans = [(o, slice(s, s + block)) for o in range(flat.shape[0]) for s in range(0, flat.shape[1], block)]
    out = np.empty_like(flat)
    for span in spans:
        values = flat[span]
        scale, zero_point = quant_math.scale_and_zero_point(values.min(), values.max(), scheme.bits, scheme.symmetric, scheme.restricted)
        out[span] = quant_math.fake_quantize(values, scale, zero_point, scheme.bits, scheme.signed, scheme.restricted)
    out = out.reshape(rows.shape)
    return out if out_axis == 0 else out.T


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", scheme_names())
def test_dequantized_weights_match_reference(tiny_path, name, bits):
    model = modelio.load_model(tiny_path)
    floats = {v.name: v.const_value.numpy().copy() for v in model.graph.initializers.values()}
    result = quantize(model, QuantConfig(weights=_scheme(name, bits)))
    outputs = {}
    for target in result.plan.weights:
        node = next(n for n in model.graph if n.name == target.node)
        outputs[target.weight] = node.inputs[target.input_index].name
    graph_values = _run_with_outputs(model, list(outputs.values()), np.zeros((1, 3, 32, 32), np.float32))
    assert len(result.plan.weights) == 5
    for target in result.plan.weights:
        expected = _reference_weight(floats[target.weight], target.out_axis, target.scheme)
        np.testing.assert_array_equal(graph_values[outputs[target.weight]], expected, err_msg=target.weight)
        np.testing.assert_array_equal(result.weights[target.weight].dequantize(), expected)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("name", scheme_names())
def test_mse_weights_stay_on_their_grid_and_beat_minmax(tiny_path, name, bits):
    model = modelio.load_model(tiny_path)
    floats = {v.name: v.const_value.numpy().copy() for v in model.graph.initializers.values()}
    result = quantize(model, QuantConfig(weights=_scheme(name, bits, "mse")))
    for target in result.plan.weights:
        weight = floats[target.weight]
        quantized = result.weights[target.weight]
        mse_error = ((quantized.dequantize() - weight) ** 2).sum()
        minmax_error = ((_reference_weight(weight, target.out_axis, quantized.scheme) - weight) ** 2).sum()
        assert mse_error <= minmax_error * (1 + 1e-5), target.weight
        qmin, qmax = quant_math.integer_range(bits, quantized.scheme.signed)
        assert quantized.codes.min() >= qmin and quantized.codes.max() <= qmax


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", scheme_names())
def test_feature_qdq_matches_reference(tiny_path, sample_images, name, bits):
    calibration = sample_images.head(6)
    scheme = _scheme(name, bits)
    model = modelio.load_model(tiny_path)
    float_model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=Scheme.parse("per-channel-symmetric", bits=8), features=scheme, calib_size=6,
                         placement="inputs")
    result = quantize(model, config, calibration, batch_size=4)
    assert len(result.plan.features) == 5

    # The calibrated parameters are the reference formulas applied to the float model's ranges.
    pixels = np.stack([TINY_PREPROCESSING.load(str(f)) for f in calibration.files])
    float_values = _run_with_outputs(float_model, [t.tensor for t in result.plan.features if t.tensor != "input"], pixels)
    float_values["input"] = pixels
    for target in result.plan.features:
        x = float_values[target.tensor]
        channels = x.shape[1]
        group_of = np.zeros(channels, int) if scheme.granularity is Granularity.TENSOR else (
            np.arange(channels) // (GROUP_SIZE if scheme.granularity is Granularity.GROUP else 1))
        lo = np.array([x[:, group_of == g].min() for g in range(group_of.max() + 1)])
        hi = np.array([x[:, group_of == g].max() for g in range(group_of.max() + 1)])
        scale, zero_point = quant_math.scale_and_zero_point(lo, hi, bits, scheme.symmetric, scheme.restricted)
        params = result.features[target.tensor]
        np.testing.assert_array_equal(params.scale.reshape(-1), np.broadcast_to(scale[group_of], params.scale.reshape(-1).shape) if params.per_axis else scale)
        np.testing.assert_array_equal(params.zero_point.reshape(-1), zero_point[group_of] if params.per_axis else zero_point)

    # Each Q/DQ pair in the graph computes exactly the numpy fake quantization of what reaches it.
    names = [t.tensor for t in result.plan.features] + [f"{t.tensor}_dq" for t in result.plan.features]
    graph_values = _run_with_outputs(model, [n for n in names if n != "input"], pixels)
    graph_values["input"] = pixels
    for target in result.plan.features:
        expected = result.features[target.tensor].fake_quantize(graph_values[target.tensor])
        np.testing.assert_array_equal(graph_values[f"{target.tensor}_dq"], expected, err_msg=target.tensor)


def test_storage_forms(tiny_path):
    """8-bit per-channel is a plain per-axis DQ; 4-bit per-group weights of a 3×3 Conv are
    uint4 codes one row per group, a per-axis DQ and a Reshape; a Gemm's are blocked in place."""
    model = modelio.load_model(tiny_path)
    quantize(model, QuantConfig(weights=Scheme.parse("per-channel-symmetric", bits=8)))
    dq = next(n for n in model.graph if n.name == "conv1.weight_dq")
    assert dq.attributes.get_int("axis") == 0 and "block_size" not in dq.attributes
    assert dq.inputs[0].dtype == ir.DataType.INT8 and len(dq.inputs) == 2

    model = modelio.load_model(tiny_path)
    quantize(model, QuantConfig(weights=Scheme.parse("per-group-affine", bits=4, group_size=4)))
    dq = next(n for n in model.graph if n.name == "conv2.weight_dq")
    assert dq.inputs[0].dtype == ir.DataType.UINT4
    assert dq.inputs[0].shape == ir.Shape([16 * 2, 4 * 9])  # 8 input channels / gs 4: 2 rows each
    assert dq.inputs[1].shape == ir.Shape([16 * 2])
    assert dq.attributes.get_int("axis") == 0 and "block_size" not in dq.attributes
    assert dq.inputs[2].name == "conv2.weight_zero_point"
    reshape = dq.outputs[0].consumers()[0]
    assert reshape.op_type == "Reshape" and reshape.outputs[0].shape == ir.Shape([16, 8, 3, 3])
    assert dq.metadata_props["onnxq.bits"] == "4"
    fc = next(n for n in model.graph if n.name == "fc.weight_dq")
    assert fc.inputs[1].shape == ir.Shape([10, 4])  # Gemm transB=1: [out, ceil(16 / 4)]
    assert "conv2.weight" not in model.graph.initializers


def test_narrow_features_clip_in_an_8bit_container(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=Scheme.parse("per-channel-symmetric", bits=8),
                         features=Scheme.parse("per-tensor-affine", bits=4), calib_size=4)
    quantize(model, config, sample_images.head(4))
    quantize_node = next(n for n in model.graph if n.name == "relu1.out_q")
    assert quantize_node.outputs[0].dtype == ir.DataType.UINT8
    clip = quantize_node.outputs[0].consumers()[0]
    assert clip.op_type == "Clip"
    assert clip.inputs[2].const_value.numpy().item() == 15


def test_keep_8bit_first_and_last(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=4),
                         features=Scheme.parse("per-tensor-affine", bits=4),
                         keep_8bit=("first", "last"), calib_size=4)
    result = quantize(model, config, sample_images.head(4))
    bits = {t.node: t.scheme.bits for t in result.plan.weights}
    assert bits == {"conv1": 8, "conv2": 4, "dw3": 4, "pw4": 4, "fc": 8}
    feature_bits = {t.tensor: t.scheme.bits for t in result.plan.features}
    assert feature_bits["input"] == 8 and feature_bits["flat.out"] == 8 and feature_bits["relu1.out"] == 4


def test_keep_8bit_depthwise_names_every_depthwise_conv(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=4),
                         keep_8bit=("depthwise", "last"))
    result = quantize(model, config)
    bits = {t.node: t.scheme.bits for t in result.plan.weights}
    assert bits == {"conv1": 4, "conv2": 4, "dw3": 8, "pw4": 4, "fc": 8}


def test_keep_8bit_depthwise3x3_names_the_3x3_depthwise_convs(effnet_path):
    """EfficientNet-Lite0 has 16 depthwise Convs: 7 with 3×3 kernels, 9 with 5×5."""
    model = modelio.load_model(effnet_path)
    kernels = {n.name: tuple(n.inputs[1].shape[2:]) for n in model.graph
               if n.op_type == "Conv" and n.attributes.get_int("group", 1) > 1}
    config = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=4),
                         keep_8bit=("depthwise3x3",))
    eight_bit = {t.node for t in make_plan(model, config).weights if t.scheme.bits == 8}
    assert eight_bit == {name for name, kernel in kernels.items() if kernel == (3, 3)}
    assert len(eight_bit) == 7 and len(kernels) == 16


def test_keep_8bit_highres_names_the_layers_on_112_and_56_pixel_maps(effnet_path):
    """Against ONNX shape inference: the weighted layers whose output is at least 224/4 pixels
    high are the stem and blocks 0-2 (and block 3's expansion), ten Convs; not the classifier."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(effnet_path)))
    heights = {info.name: info.type.tensor_type.shape.dim[2].dim_value
               for info in proto.graph.value_info if len(info.type.tensor_type.shape.dim) == 4}
    large = {node.name for node in proto.graph.node
             if node.op_type == "Conv" and heights[node.output[0]] >= 224 // 4}
    config = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=4), keep_8bit=("highres",))
    model = modelio.load_model(effnet_path)
    eight_bit = {t.node for t in make_plan(model, config).weights if t.scheme.bits == 8}
    assert eight_bit == large
    assert len(eight_bit) == 10 and "_conv_stem" in eight_bit and "_blocks.3._expand_conv" in eight_bit


def test_keep_8bit_unknown_name_lists_the_keywords(tiny_path):
    config = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=4), keep_8bit=("highress",))
    with pytest.raises(OnnxqError, match=r"named 'highress' \(use first, last, depthwise, "
                                         r"depthwise3x3, highres, a node name or an op type\)"):
        make_plan(modelio.load_model(tiny_path), config)


def test_downsampling_follows_strides_and_ends_at_global_pools():
    """A gate from a global pool does not shrink the map it multiplies; the head is not a map."""
    helper = onnx.helper
    weights = [onnx.numpy_helper.from_array(np.ones(shape, np.float32), name)
               for name, shape in [("w1", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)), ("w3", (4, 4, 3, 3)),
                                   ("fc", (4, 2))]]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["a"], name="stem", strides=[2, 2], pads=[1] * 4),
        helper.make_node("MaxPool", ["a"], ["b"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["b"], ["s"], name="squeeze"),
        helper.make_node("Conv", ["s", "w2"], ["g"], name="excite"),
        helper.make_node("Mul", ["b", "g"], ["c"], name="gate"),
        helper.make_node("Conv", ["c", "w3"], ["d"], name="down", strides=[1, 2], pads=[1] * 4),
        helper.make_node("Flatten", ["d"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)], weights)
    model = ir.serde.deserialize_model(helper.make_model(graph))
    assert downsampling(model.graph) == {
        "stem": 2, "pool": 4, "squeeze": math.inf, "excite": math.inf, "gate": 4, "down": 8,
        "flatten": math.inf, "head": math.inf,
    }


def test_extra_ops_quantize_their_inputs(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=Scheme.parse("per-channel-symmetric", bits=8),
                         features=Scheme.parse("per-tensor-affine", bits=8),
                         ops=("Conv", "Gemm", "Add", "GlobalAveragePool"), calib_size=4)
    result = quantize(model, config, sample_images.head(4))
    consumers = {t.tensor: t.consumers for t in result.plan.features}
    assert consumers["relu2.out"] == ("dw3", "add")
    assert consumers["pw4.out"] == ("add",)
    assert consumers["relu4.out"] == ("gap",)
