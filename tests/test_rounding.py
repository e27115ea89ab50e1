"""GPTQ rounding and bias correction: layer-input statistics, codes on the observer's grid, and
the layer output error on real activations."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxq.passes import CorrectBiasPass
from test_cli import assert_user_error, onnxq
from tiny_models import TINY_PREPROCESSING

from onnxq.analysis.plan import make_plan
from onnxq.calibration.layer_inputs import (
    InputStatistics,
    LayerGeometry,
    LayerInputs,
    patch_sums,
    patches,
)
from onnxq.core import quant_math
from onnxq.core.config import QuantConfig
from onnxq.core.rounding import float_target, gptq_codes, output_error
from onnxq.core.schemes import Granularity, Scheme
from onnxq.core.weight_quantization import quantize_weight
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.pipeline.layer_rounding import LayerRounding
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import evaluate

CALIBRATION = 24


def _run(model: onnx.ModelProto | ir.Model, names: list[str], feeds: dict) -> dict[str, np.ndarray]:
    """Run ``model`` and return the tensors ``names`` (graph outputs replaced by them)."""
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    del proto.graph.output[:]
    proto.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds)))


def _pixels(images: data.ImageSet) -> np.ndarray:
    return np.stack([TINY_PREPROCESSING.load(str(path)) for path in images.files])


def _conv_model(kernel, strides, pads, dilations, groups) -> onnx.ModelProto:
    padding = {"auto_pad": pads} if isinstance(pads, str) else {"pads": pads}
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], name="conv", kernel_shape=kernel, strides=strides,
        dilations=dilations, group=groups, **padding,
    )
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize(
    "kernel, strides, pads, dilations, groups",
    [
        ([3, 3], [2, 2], [0, 0, 1, 1], [1, 1], 1),  # EfficientNet's "same" stride-2 padding
        ([3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 6),  # depthwise
        ([5, 3], [2, 1], [1, 2, 2, 0], [2, 1], 2),  # grouped, dilated, uneven
        ([1, 1], [1, 1], [0, 0, 0, 0], [1, 1], 1),  # pointwise
        ([1, 1], [2, 2], [0, 0, 0, 0], [1, 1], 3),  # strided grouped pointwise
        ([4, 3], [2, 3], "SAME_UPPER", [1, 1], 1),  # pads from the input size
        ([4, 2], [3, 1], "SAME_LOWER", [1, 1], 2),
    ],
)
def test_patches_reproduce_the_convolution(kernel, strides, pads, dilations, groups):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 11, 13)).astype(np.float32)
    w = rng.normal(size=(6, 6 // groups, *kernel)).astype(np.float32)
    proto = _conv_model(kernel, strides, pads, dilations, groups)
    y = _run(proto, ["y"], {"x": x, "w": w})["y"]
    node = ir.serde.deserialize_model(proto).graph[0]
    geometry = LayerGeometry.of(node, w.shape).for_input(x.shape[2:])
    columns = patches(x, geometry)  # [g, D, N·positions]
    rows = w.reshape(groups, 6 // groups, -1)
    out = np.matmul(rows, columns).reshape(6, 3, -1).transpose(1, 0, 2)
    np.testing.assert_allclose(out, y.reshape(3, 6, -1), atol=1e-4)
    np.testing.assert_allclose(patch_sums(x, geometry), columns.sum(axis=2), rtol=1e-4, atol=1e-3)
    # A subset of positions per image gives exactly those columns.
    chosen = np.sort(rng.choice(y.shape[2] * y.shape[3], 4, replace=False))
    subset = patches(x, geometry, np.broadcast_to(chosen, (3, 4)))
    expected = columns.reshape(groups, -1, 3, y.shape[2] * y.shape[3])[..., chosen]
    np.testing.assert_array_equal(subset, expected.reshape(groups, -1, 12))


def test_input_statistics_are_the_moments_of_the_patches(sample_images):
    x = _pixels(sample_images.head(6))
    geometry = LayerGeometry((3, 3), (2, 2), (1, 1), (1, 1, 1, 1), 1)
    statistics = InputStatistics(geometry)
    for start in range(0, 6, 4):
        statistics.update(x[start : start + 4])
    columns = patches(x, geometry)[0].astype(np.float64)
    np.testing.assert_allclose(statistics.hessian()[0], columns @ columns.T / columns.shape[1], rtol=1e-5)
    np.testing.assert_allclose(statistics.mean()[0], columns.mean(axis=1), rtol=1e-5)
    # With a quota of positions per image, H sees that many; the mean still sees all.
    sampled = InputStatistics(geometry, positions_per_image=50, seed=3)
    sampled.update(x)
    assert sampled.gram_count == 6 * 50 and sampled.count == columns.shape[1]
    np.testing.assert_allclose(sampled.mean(), statistics.mean())


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(2, 5, 12))
    hessian = np.stack([np.diag(rng.uniform(0.1, 3.0, 12)) for _ in range(2)])
    lo, hi = weight.min(axis=2, keepdims=True), weight.max(axis=2, keepdims=True)
    scale, zero_point = quant_math.scale_and_zero_point(lo, hi, 4, False)
    scale, zero_point = np.broadcast_to(scale, weight.shape), np.broadcast_to(zero_point, weight.shape)
    codes = gptq_codes(weight, hessian, scale, zero_point, 4, False)
    np.testing.assert_array_equal(codes, quant_math.quantize(weight, scale, zero_point, 4, False))


@pytest.mark.parametrize("seed", range(4))
def test_gptq_lowers_the_output_error_of_correlated_inputs(seed):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(32, 32))
    inputs = rng.normal(size=(4000, 32)) @ mixing  # strongly correlated, like real features
    hessian = (inputs.T @ inputs / len(inputs))[None]
    weight = rng.normal(size=(1, 16, 32))
    scale, zero_point = quant_math.scale_and_zero_point(weight.min(2), weight.max(2), 4, False)
    scale = np.repeat(scale[..., None], 32, axis=2)
    zero_point = np.repeat(zero_point[..., None], 32, axis=2)
    nearest = quant_math.quantize(weight, scale, zero_point, 4, False)
    codes = gptq_codes(weight, hessian, scale, zero_point, 4, False)
    assert codes.min() >= 0 and codes.max() <= 15
    error = output_error(quant_math.dequantize(codes, scale, zero_point) - weight, hessian)
    baseline = output_error(quant_math.dequantize(nearest, scale, zero_point) - weight, hessian)
    assert error[0] < 0.7 * baseline[0]


def _layer_inputs(model: ir.Model, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The float input of every Conv/Gemm of ``model``, by node name."""
    names = {node.name: node.inputs[0].name for node in model.graph if node.op_type in ("Conv", "Gemm")}
    values = _run(model, [n for n in set(names.values()) if n != "input"], {"input": pixels})
    values["input"] = pixels
    return {node: values[tensor] for node, tensor in names.items()}


def _output_error(node: ir.Node, delta: np.ndarray, x: np.ndarray) -> float:
    """``‖ΔW X‖²`` of a layer over the actual inputs ``x``."""
    geometry = LayerGeometry.of(node, delta.shape)
    columns = patches(x, geometry).astype(np.float64)
    rows = delta.reshape(geometry.groups, -1, columns.shape[1])
    return float((np.matmul(rows, columns) ** 2).sum())


def _quantize_tiny(tiny_path, images, scheme: Scheme, rounding: str, bias: bool, features=None):
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=scheme, features=features, calib_size=CALIBRATION,
                         rounding=rounding, bias_correction=bias)
    return quantize(model, config, images, batch_size=8)


def _assert_on_minmax_grid(restored: np.ndarray, weight: np.ndarray, target) -> None:
    """Every restored value is ``(q − z)·s`` for an in-range integer ``q`` on the min-max grid
    of its tensor, channel or group, computed here from the float weight."""
    scheme = target.scheme
    rows = (weight if target.out_axis == 0 else weight.T).reshape(weight.shape[target.out_axis], -1)
    values = (restored if target.out_axis == 0 else restored.T).reshape(rows.shape)
    if scheme.granularity is Granularity.TENSOR:
        rows, values = rows.reshape(1, -1), values.reshape(1, -1)
    block = rows.shape[1]
    if scheme.granularity is Granularity.GROUP:
        inputs = weight.shape[1] if weight.ndim > 2 else rows.shape[1]
        block = min(scheme.group_size, inputs) * (rows.shape[1] // inputs)
    qmin, qmax = quant_math.integer_range(scheme.bits, scheme.signed, scheme.restricted)
    for start in range(0, rows.shape[1], block):
        span = slice(start, start + block)
        scale, zero_point = quant_math.scale_and_zero_point(
            rows[:, span].min(axis=1), rows[:, span].max(axis=1), scheme.bits, scheme.symmetric,
            scheme.restricted,
        )
        codes = values[:, span] / scale[:, None] + zero_point[:, None]
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert codes.min() > qmin - 1e-3 and codes.max() < qmax + 1e-3


@pytest.mark.parametrize(
    "scheme",
    [
        Scheme.parse("per-channel-affine", bits=4),
        Scheme.parse("per-group-symmetric", bits=4, group_size=3),
        Scheme.parse("per-tensor-affine", bits=3),
    ],
    ids=lambda s: s.name,
)
def test_gptq_codes_stay_on_the_grid_and_lower_the_error_on_unseen_images(
    tiny_path, sample_images, scheme
):
    calibration = sample_images.head(CALIBRATION)
    unseen = sample_images.subset(range(100, 132))
    float_model = modelio.load_model(tiny_path)
    nodes = {node.name: node for node in float_model.graph}
    floats = {node.inputs[1].name: node.inputs[1].const_value.numpy() for node in nodes.values()
              if node.op_type in ("Conv", "Gemm")}
    inputs = _layer_inputs(float_model, _pixels(unseen))
    nearest = _quantize_tiny(tiny_path, calibration, scheme, "nearest", False)
    result = _quantize_tiny(tiny_path, calibration, scheme, "gptq", False)
    quantized_nodes = {node.name: node for node in result.model.graph}
    dequantized = {t.weight: quantized_nodes[t.node].inputs[t.input_index].name
                   for t in result.plan.weights}
    graph = _run(result.model, list(dequantized.values()), {"input": _pixels(unseen.head(1))})
    changed = 0
    for target in result.plan.weights:
        ours, theirs = result.weights[target.weight], nearest.weights[target.weight]
        np.testing.assert_array_equal(graph[dequantized[target.weight]], ours.dequantize())
        _assert_on_minmax_grid(graph[dequantized[target.weight]], floats[target.weight], target)
        np.testing.assert_array_equal(ours.scale, theirs.scale)  # same grid, other codes
        if ours.zero_point is not None:
            np.testing.assert_array_equal(ours.zero_point, theirs.zero_point)
        changed += int((ours.codes != theirs.codes).any())
        node, weight = nodes[target.node], floats[target.weight]
        x = inputs[target.node]
        error = _output_error(node, ours.dequantize() - weight, x)
        baseline = _output_error(node, theirs.dequantize() - weight, x)
        if node.op_type == "Conv":
            assert error < baseline, target.node
        else:  # the classifier sees one vector per image: too few samples, round to nearest
            assert error == pytest.approx(baseline), target.node
    assert changed >= 4


def test_bias_correction_restores_each_layers_mean_output(tiny_path, sample_images):
    calibration = sample_images.head(CALIBRATION)
    float_model = modelio.load_model(tiny_path)
    nodes = {node.name: node for node in float_model.graph}
    inputs = _layer_inputs(float_model, _pixels(calibration))
    scheme = Scheme.parse("per-channel-affine", bits=3)
    plain = _quantize_tiny(tiny_path, calibration, scheme, "nearest", False)
    corrected = _quantize_tiny(tiny_path, calibration, scheme, "nearest", True)
    biases = {n.name: n.inputs[2].const_value.numpy() for n in corrected.model.graph
              if n.op_type in ("Conv", "Gemm")}
    for target in corrected.plan.weights:
        node = nodes[target.node]
        geometry = LayerGeometry.of(node, node.inputs[1].const_value.shape)
        columns = patches(inputs[target.node], geometry).astype(np.float64)
        mean_input = columns.mean(axis=2)[:, :, None]

        def mean_output(weight, bias):
            rows = np.asarray(weight, np.float64).reshape(geometry.groups, -1, columns.shape[1])
            return np.matmul(rows, mean_input).reshape(-1) + bias

        reference = mean_output(node.inputs[1].const_value.numpy(), node.inputs[2].const_value.numpy())
        weight = corrected.weights[target.weight].dequantize()
        np.testing.assert_array_equal(weight, plain.weights[target.weight].dequantize())
        shifted = np.abs(mean_output(weight, node.inputs[2].const_value.numpy()) - reference)
        restored = np.abs(mean_output(weight, biases[target.node]) - reference)
        assert restored.max() < 1e-4 * np.abs(reference).max() + 1e-5, target.node
        assert shifted.max() > 20 * restored.max(), target.node


def test_correct_bias_pass_creates_missing_biases_and_honours_gemm_scaling():
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.ones((1, 5), np.float32), "c"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("GlobalAveragePool", ["y"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "c"], ["z"], name="gemm", alpha=2.0, beta=0.5),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5])], inits,
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    before = _run(model, ["y", "z"], {"x": x})
    conv_shift, gemm_shift = rng.normal(size=4), rng.normal(size=5)
    ir.passes.PassManager([CorrectBiasPass({"conv": conv_shift, "gemm": gemm_shift})])(model)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    conv = next(n for n in model.graph if n.name == "conv")
    assert conv.inputs[2].name == "conv.bias_corrected"
    after = _run(model, ["y", "z"], {"x": x})
    np.testing.assert_allclose(after["y"], before["y"] - conv_shift[None, :, None, None], atol=1e-5)
    # The Gemm sees the corrected Conv output, whose mean dropped by conv_shift: fc^T·conv_shift
    # more output, scaled by alpha, minus the requested shift of the whole alpha·A·B term.
    fc = inits[1]
    expected = before["z"] - 2.0 * conv_shift @ numpy_helper.to_array(fc) - 2.0 * gemm_shift
    np.testing.assert_allclose(after["z"], expected, atol=1e-4)


def _matmul_model() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    weight = (rng.normal(size=(12, 6)) * rng.uniform(0.2, 3.0, (1, 6))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
         helper.make_node("MatMul", ["flat", "w"], ["y"], name="matmul")],
        "matmul", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("name", ["per-tensor-symmetric", "per-channel-affine"])
def test_gptq_on_a_matmul_weight_keeps_its_layout(name):
    """MatMul weights are [K, N] (outputs along axis 1); per-tensor views are flattened."""
    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    model = ir.serde.deserialize_model(_matmul_model())
    weight = model.graph.initializers["w"].const_value.numpy().copy()
    scheme = Scheme.parse(name, bits=3)
    plan = make_plan(model, QuantConfig(weights=scheme, rounding="gptq"))
    statistics = InputStatistics(LayerGeometry())
    statistics.update(inputs.astype(np.float32))
    observed = LayerInputs({"matmul": statistics}, {"matmul": "flat"})
    rounding = LayerRounding(plan.weights, observed, {"w": weight}, set(), True)
    ours = quantize_weight(weight, 1, scheme, rounding.code_choosers()["w"])
    theirs = quantize_weight(weight, 1, scheme)
    np.testing.assert_array_equal(ours.scale, theirs.scale)
    assert ours.codes.shape == theirs.codes.shape and (ours.codes != theirs.codes).any()
    x = inputs.astype(np.float32).astype(np.float64)
    error = ((x @ (ours.dequantize() - weight)) ** 2).sum()
    baseline = ((x @ (theirs.dequantize() - weight)) ** 2).sum()
    assert error < 0.9 * baseline


def test_config_records_rounding_and_reads_old_configs():
    config = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=4), rounding="gptq",
                         bias_correction=True)
    assert QuantConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["rounding"], old["bias_correction"]
    restored = QuantConfig.from_dict(old)
    assert restored.rounding == "nearest" and not restored.bias_correction


def test_cli_rounding_flags(tmp_path, tiny_path, sample_dir):
    output = tmp_path / "out.onnx"
    assert_user_error(onnxq("quantize", tiny_path, "--rounding", "adaround", "-o", output), "--rounding")
    assert_user_error(
        onnxq("quantize", tiny_path, "--weight-only", "--bias-correction", "-o", output),
        "need calibration images",
    )
    assert not output.exists()
    outputs = []
    for run in range(2):
        path = tmp_path / f"q{run}.onnx"
        result = onnxq(
            "quantize", tiny_path, "-o", path, "--calib", sample_dir, "--calib-size", 8,
            "--wbits", 4, "--scheme", "per-channel-affine", "--rounding", "gptq",
            "--bias-correction",
        )
        assert result.returncode == 0, result.stderr
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]
    model = onnx.load_from_string(outputs[0])
    onnx.checker.check_model(model, full_check=True)
    metadata = {p.key: p.value for p in model.metadata_props}
    recorded = QuantConfig.from_dict(json.loads(metadata["onnxq.quantization"]))
    assert recorded.rounding == "gptq" and recorded.bias_correction


@pytest.mark.slow
def test_gptq_and_bias_correction_rescue_4bit_efficientnet(effnet_path, sample_images):
    """W4A8 per-channel EfficientNet-Lite0: round-to-nearest keeps about 15 % top-1 on these
    images; GPTQ with bias correction stays within a few points of fp32 on unseen images."""
    calibration, evaluation = sample_images.split(128)
    model = modelio.load_model(effnet_path)
    preprocessing = modelio.get_preprocessing(model)
    fp32 = evaluate.evaluate(model, evaluation, preprocessing, ep="cpu")
    config = QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=4),
        features=Scheme.parse("per-tensor-affine", bits=8),
        keep_8bit=("last",),
        rounding="gptq",
        bias_correction=True,
    )
    result = quantize(model, config, calibration, ep="cpu")
    assert result.calibration_images == 128
    quantized = evaluate.evaluate(model, evaluation, preprocessing, ep="cpu")
    assert quantized.top1 >= fp32.top1 - 4.5
    assert quantized.top5 >= fp32.top5 - 3.0


def _reference_gptq(weight, hessian, scale, zero_point, bits, signed, damping=0.01):
    """Textbook GPTQ for one group, no lazy blocks, no column reordering: after each column
    the whole remaining weight gets its update (float64 throughout)."""
    work = np.array(weight, dtype=np.float64)
    damped = hessian + damping * np.diag(hessian).mean() * np.eye(len(hessian))
    upper = np.linalg.cholesky(np.linalg.inv(damped)).T
    codes = np.empty(work.shape, dtype=np.int32)
    for column in range(work.shape[1]):
        step, offset = scale[:, column], zero_point[:, column]
        code = quant_math.quantize(work[:, column], step.astype(np.float32), offset, bits, signed)
        codes[:, column] = code
        error = (work[:, column] - (code - offset) * step) / upper[column, column]
        work[:, column:] -= np.outer(error, upper[column, column:])
    return codes


def _grid(weight, bits=4):
    lo, hi = weight.min(axis=-1, keepdims=True), weight.max(axis=-1, keepdims=True)
    scale, zero_point = quant_math.scale_and_zero_point(lo, hi, bits, False)
    return np.broadcast_to(scale, weight.shape), np.broadcast_to(zero_point, weight.shape)


def test_gptq_across_lazy_blocks_equals_the_column_by_column_algorithm():
    # 300 columns: three lazy blocks of at most 128, so the deferred update between blocks runs.
    rng = np.random.default_rng(7)
    depth = 300
    inputs = rng.normal(size=(3000, depth)) @ rng.normal(size=(depth, depth)) / np.sqrt(depth)
    hessian = inputs.T @ inputs / len(inputs)
    weight = rng.normal(size=(6, depth))
    scale, zero_point = _grid(weight)
    expected = _reference_gptq(weight, hessian, scale, zero_point, 4, False)
    codes = gptq_codes(
        weight[None], hessian[None], scale[None], zero_point[None], 4, False, act_order=False
    )[0]
    assert (codes != quant_math.quantize(weight, scale, zero_point, 4, False)).mean() > 0.05
    mismatches = (codes != expected).mean()
    assert mismatches < 0.002, f"{mismatches:.2%} of codes differ from the reference"


def test_an_indefinite_second_moment_gets_more_damping_until_it_factorizes():
    # Eigenvalues 3 and -1 (mean diagonal 1): damping 0.01, 0.1 and 1 fail, 10 succeeds.
    hessian = np.array([[[1.0, 2.0], [2.0, 1.0]]])
    weight = np.array([[[0.31, -0.52], [0.77, 0.12], [-0.9, 0.4]]])
    scale, zero_point = _grid(weight)
    fallback = gptq_codes(weight, hessian, scale, zero_point, 4, False, damping=0.01)
    direct = gptq_codes(weight, hessian, scale, zero_point, 4, False, damping=10.0)
    np.testing.assert_array_equal(fallback, direct)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        hopeless = np.array([[[1.0, 1e7], [1e7, 1.0]]])  # eigenvalue -1e7: beyond 1000× damping
        gptq_codes(weight, hopeless, scale, zero_point, 4, False)


def _reference_layer(weight, hessian, scale, zero_point, bits, signed):
    """Textbook GPTQ with act-order, group by group: columns sorted by falling input energy,
    rounded one after another with the whole rest updated each time, then put back in place."""
    codes = np.empty(weight.shape, dtype=np.int32)
    for group in range(weight.shape[0]):
        order = np.argsort(-np.diag(hessian[group]), kind="stable")
        permuted = _reference_gptq(
            weight[group][:, order], hessian[group][np.ix_(order, order)],
            scale[group][:, order], zero_point[group][:, order], bits, signed,
        )
        codes[group][:, order] = permuted
    return codes


def _moments(rng, groups, depth, samples):
    """``[groups, depth, depth]`` second moments of correlated inputs from ``samples`` vectors."""
    mixing = rng.normal(size=(groups, depth, depth)) / np.sqrt(depth)
    inputs = rng.normal(size=(groups, samples, depth)) @ mixing + rng.normal(size=(groups, 1, depth))
    return np.einsum("gsd,gse->gde", inputs, inputs) / samples


@pytest.mark.parametrize(
    ("case", "groups", "rows", "depth", "samples"),
    [
        ("dense, 200 columns over two lazy blocks", 1, 5, 200, 4000),
        ("grouped convolution, 4 groups of 3×3 over 6 channels", 4, 3, 54, 2000),
        ("depthwise 3×3, one input channel per group", 16, 1, 9, 500),
        ("singular moment: fewer samples than inputs", 2, 4, 40, 25),
    ],
)
def test_fast_gptq_gives_the_textbook_codes(case, groups, rows, depth, samples):
    rng = np.random.default_rng(depth)
    hessian = _moments(rng, groups, depth, samples)
    if samples < depth:
        assert np.linalg.matrix_rank(hessian[0]) < depth  # the damping alone makes it invertible
    weight = rng.normal(size=(groups, rows, depth))
    scale, zero_point = _grid(weight)
    expected = _reference_layer(weight, hessian, scale, zero_point, 4, False)
    codes = gptq_codes(weight, hessian, scale, zero_point, 4, False)
    nearest = quant_math.quantize(weight, scale, zero_point, 4, False)
    assert (codes != nearest).mean() > 0.05  # error compensation changed codes ...
    np.testing.assert_array_equal(codes, expected)  # ... exactly as the textbook algorithm


def test_a_wide_indefinite_second_moment_is_restored_between_damping_attempts():
    # 80 inputs (factorized in place by LAPACK): one eigenvalue of -2 with a mean diagonal
    # near 1 needs damping 10; the failed attempts must leave the matrix as it was.
    rng = np.random.default_rng(3)
    basis, _ = np.linalg.qr(rng.normal(size=(80, 80)))
    eigenvalues = np.concatenate([[-2.0], rng.uniform(0.5, 2.0, 79)])
    hessian = (basis * eigenvalues) @ basis.T
    weight = rng.normal(size=(1, 5, 80))
    scale, zero_point = _grid(weight)
    fallback = gptq_codes(weight, hessian[None], scale, zero_point, 4, False, damping=0.01)
    direct = gptq_codes(weight, hessian[None], scale, zero_point, 4, False, damping=10.0)
    np.testing.assert_array_equal(fallback, direct)


@pytest.mark.parametrize(
    ("groups", "rows", "depth", "samples"),
    [(1, 5, 200, 4000), (16, 1, 9, 500), (2, 4, 40, 25)],
    ids=["dense", "depthwise", "singular"],
)
def test_gptq_on_torch_tensors_gives_numpys_codes(groups, rows, depth, samples):
    """One implementation for both array libraries (GPTQ on the GPU runs it on CUDA tensors):
    torch tensors in, torch tensors out, the same codes and float targets as NumPy's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(depth)
    hessian = _moments(rng, groups, depth, samples)
    weight = rng.normal(size=(groups, rows, depth))
    scale, zero_point = (np.ascontiguousarray(a) for a in _grid(weight))
    expected = gptq_codes(weight, hessian, scale, zero_point, 4, False)
    tensors = [torch.from_numpy(a) for a in (weight, hessian, scale, zero_point)]
    codes = gptq_codes(*tensors, 4, False)
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.int32
    np.testing.assert_array_equal(codes.numpy(), expected)
    difference = _moments(rng, groups, depth, samples) - hessian
    target = float_target(*tensors[:2], torch.from_numpy(difference))
    np.testing.assert_allclose(target.numpy(), float_target(weight, hessian, difference), rtol=1e-9)
    indefinite = torch.tensor([[[1.0, 2.0], [2.0, 1.0]]], dtype=torch.float64)
    small = weight[:1, :3, :2]
    grid = [torch.from_numpy(np.ascontiguousarray(a)) for a in _grid(small)]
    fallback = gptq_codes(torch.from_numpy(small), indefinite, *grid, 4, False)
    np.testing.assert_array_equal(
        fallback.numpy(), gptq_codes(small, indefinite.numpy(), *(g.numpy() for g in grid), 4, False)
    )


def test_quantize_with_gptq_on_a_torch_device_writes_numpys_model(tiny_path, sample_images, monkeypatch):
    """The device path end to end (here torch's CPU device stands in for CUDA): statistics
    summed and codes chosen in torch, the same codes as NumPy's."""
    torch = pytest.importorskip("torch")
    import onnxq.pipeline.layer_rounding as layer_rounding

    calibration = sample_images.head(CALIBRATION)
    scheme = Scheme.parse("per-channel-affine", bits=3)
    expected = _quantize_tiny(tiny_path, calibration, scheme, "gptq", True)
    monkeypatch.setattr(layer_rounding, "accelerator", lambda ep: "cpu")
    seen = []
    real = layer_rounding.gptq_codes

    def spy(weight, *args, **kwargs):
        seen.append(type(weight))
        return real(weight, *args, **kwargs)

    monkeypatch.setattr(layer_rounding, "gptq_codes", spy)
    result = _quantize_tiny(tiny_path, calibration, scheme, "gptq", True)
    assert seen and all(kind is torch.Tensor for kind in seen)
    for name, weight in expected.weights.items():
        np.testing.assert_array_equal(result.weights[name].codes, weight.codes)


def test_gptq_stays_in_numpy_without_a_gpu_or_with_ep_cpu(monkeypatch):
    import onnxq.pipeline.layer_rounding as layer_rounding

    assert layer_rounding.accelerator("cpu") is None
    monkeypatch.setattr(layer_rounding.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(layer_rounding.runtime, "providers", lambda ep: ["CPUExecutionProvider"])
    assert layer_rounding.accelerator("auto") is None
