"""GPTQ and bias correction on the inputs of the partly quantized network (``--gptq-inputs
quantized``): paired statistics, the float-output target, stages, and what the written model
does on real images."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from test_cli import assert_user_error, onnxq
from test_rounding import CALIBRATION, _pixels, _run

from onnxq.analysis.plan import WeightTarget
from onnxq.base import metadata
from onnxq.base.errors import OnnxqError
from onnxq.calibration.layer_inputs import InputStatistics, LayerGeometry, patches
from onnxq.core.config import QuantConfig
from onnxq.core.rounding import float_target
from onnxq.core.schemes import Scheme
from onnxq.pipeline import layer_rounding, modelio
from onnxq.pipeline.quantize import quantize

W3 = Scheme.parse("per-channel-affine", bits=3)


def _config(**changes) -> QuantConfig:
    return QuantConfig(weights=W3, calib_size=CALIBRATION, rounding="gptq", bias_correction=True,
                       **changes)


def _quantize(tiny_path, images, config: QuantConfig):
    return quantize(modelio.load_model(tiny_path), config, images, batch_size=8)


def test_paired_statistics_are_the_cross_moments_of_the_same_patches(sample_images):
    x = _pixels(sample_images.head(6))
    reference = x + np.random.default_rng(0).normal(0, 0.1, x.shape).astype(np.float32)
    geometry = LayerGeometry((3, 3), (2, 2), (1, 1), (1, 1, 1, 1), 1)
    statistics = InputStatistics(geometry, paired=True)
    for start in range(0, 6, 4):
        statistics.update(x[start : start + 4], reference[start : start + 4])
    ours = patches(x, geometry)[0].astype(np.float64)
    theirs = patches(reference, geometry)[0].astype(np.float64)
    count = ours.shape[1]
    np.testing.assert_allclose(statistics.hessian()[0], ours @ ours.T / count, rtol=1e-5)
    np.testing.assert_allclose(statistics.cross_moment()[0], theirs @ ours.T / count, rtol=1e-5)
    np.testing.assert_allclose(statistics.mean()[0], ours.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(statistics.reference.mean()[0], theirs.mean(axis=1), rtol=1e-5)
    # Sampled positions: both inputs at the same ones (the cross moment of equal inputs is H).
    same = InputStatistics(geometry, positions_per_image=40, seed=1, paired=True)
    same.update(x, x.copy())
    np.testing.assert_allclose(same.cross_moment(), same.hessian(), rtol=1e-6)
    with pytest.raises(ValueError, match="reference input"):
        same.update(x)
    statistics.release_moments()
    assert statistics.gram is None and statistics.cross is None
    np.testing.assert_allclose(statistics.mean()[0], ours.mean(axis=1), rtol=1e-5)


def test_float_target_is_the_least_squares_weight_on_quantized_inputs():
    rng = np.random.default_rng(2)
    inputs = np.einsum("gde,gep->gdp", rng.normal(size=(3, 12, 12)), rng.normal(size=(3, 12, 2000)))
    quantized = inputs + rng.normal(0, 0.3, inputs.shape)  # x̃: the float inputs plus error
    weight = rng.normal(size=(3, 5, 12))
    hessian = np.matmul(quantized, quantized.transpose(0, 2, 1)) / 2000
    cross = np.matmul(inputs, quantized.transpose(0, 2, 1)) / 2000
    target = float_target(weight, hessian, cross - hessian, damping=0.0)
    for group in range(3):  # W* = argmin ‖W X − W' X̃‖²
        wanted = (weight[group] @ inputs[group]).T
        solution = np.linalg.lstsq(quantized[group].T, wanted, rcond=None)[0]
        np.testing.assert_allclose(target[group], solution.T, rtol=1e-8, atol=1e-8)
    # Equal inputs: nothing to make up for.
    np.testing.assert_array_equal(float_target(weight, hessian, np.zeros_like(hessian)), weight)


def _chain_with_branch() -> ir.Model:
    """a → b → (c, and d via Relu) ; e reads the input: b, c, d depend on a, e on nothing."""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
        helper.make_node("Conv", ["a", "wb"], ["b"], name="b"),
        helper.make_node("Conv", ["b", "wc"], ["c"], name="c"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wd"], ["d"], name="d"),
        helper.make_node("Conv", ["x", "we"], ["e"], name="e"),
    ]
    weights = [helper.make_tensor(f"w{n}", TensorProto.FLOAT, [1, 1, 1, 1], [1.0]) for n in "abcde"]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "cde"], weights,
    )
    return ir.serde.deserialize_model(helper.make_model(graph))


def test_stages_keep_graph_order_and_entries_are_the_layers_no_stage_layer_reaches():
    def target(node):
        return WeightTarget(node, 1, f"w{node}", 0, W3)

    targets = [target(n) for n in "abcde"]
    stages = layer_rounding._stages(targets, 2)
    assert [[t.node for t in stage] for stage in stages] == [["a", "b", "c"], ["d", "e"]]
    assert [len(s) for s in layer_rounding._stages(targets, 9)] == [1] * 5
    model = _chain_with_branch()
    assert layer_rounding._stage_entries(model, stages[0]) == {"a"}
    assert layer_rounding._stage_entries(model, stages[1]) == {"d", "e"}
    assert layer_rounding._stage_entries(model, [target(n) for n in "bde"]) == {"b", "e"}


def test_one_stage_is_gptq_on_float_inputs(tiny_path, sample_images):
    images = sample_images.head(CALIBRATION)
    float_inputs = _quantize(tiny_path, images, _config())
    one_stage = _quantize(tiny_path, images, _config(gptq_inputs="quantized", gptq_stages=1))
    for name, weight in float_inputs.weights.items():
        np.testing.assert_array_equal(one_stage.weights[name].codes, weight.codes)
    biases = [
        {n.name: n.inputs[2].const_value.numpy() for n in r.model.graph if n.op_type == "Conv"}
        for r in (float_inputs, one_stage)
    ]
    for name, bias in biases[0].items():
        np.testing.assert_array_equal(biases[1][name], bias)


def _mean_outputs(model: ir.Model, nodes: list[str], pixels: np.ndarray) -> dict[str, np.ndarray]:
    tensors = {n.name: n.outputs[0].name for n in model.graph if n.name in nodes}
    values = _run(model, list(tensors.values()), {"input": pixels})
    return {node: values[tensor].mean(axis=(0, 2, 3)) for node, tensor in tensors.items()}


def test_layer_by_layer_bias_correction_restores_every_layers_float_mean(tiny_path, sample_images):
    """With a stage per layer, each layer's mean output in the quantized network (features in
    float) is the float network's: the earlier layers' error is made up for once, not twice."""
    images = sample_images.head(CALIBRATION)
    config = _config(gptq_inputs="quantized", gptq_stages=10)
    result = _quantize(tiny_path, images, config)
    convs = [t.node for t in result.plan.weights if t.node != "fc"]
    pixels = _pixels(images)
    reference = _mean_outputs(modelio.load_model(tiny_path), convs, pixels)
    ours = _mean_outputs(result.model, convs, pixels)
    floats = _quantize(tiny_path, images, _config())  # bias-corrected on float inputs only
    theirs = _mean_outputs(floats.model, convs, pixels)
    for node in convs:
        scale = np.abs(reference[node]).max()
        assert np.abs(ours[node] - reference[node]).max() < 1e-4 * scale + 1e-5, node
    later = convs[-1]
    assert np.abs(theirs[later] - reference[later]).max() > 1e-3 * np.abs(reference[later]).max()


@pytest.mark.parametrize("stages", [2, 10])
def test_quantized_inputs_write_a_model_that_stays_close_to_float(tiny_path, sample_images, stages):
    images = sample_images.head(CALIBRATION)
    unseen = _pixels(sample_images.subset(range(100, 132)))
    float_outputs = _run(modelio.load_model(tiny_path), ["logits"], {"input": unseen})["logits"]

    def error(config: QuantConfig) -> float:
        model = _quantize(tiny_path, images, config).model
        logits = _run(model, ["logits"], {"input": unseen})["logits"]
        return float(((logits - float_outputs) ** 2).mean())

    nearest = error(dataclasses.replace(_config(), rounding="nearest", bias_correction=False))
    sequential = error(_config(gptq_inputs="quantized", gptq_stages=stages))
    assert sequential < 0.7 * nearest


def test_gptq_inputs_are_checked_and_recorded(tiny_path, sample_images, tmp_path):
    with pytest.raises(OnnxqError, match="unknown --gptq-inputs 'fake'"):
        _config(gptq_inputs="fake")
    with pytest.raises(OnnxqError, match="--gptq-stages must be at least 1"):
        _config(gptq_stages=0)
    saved = _config(gptq_inputs="quantized").to_dict()
    assert QuantConfig.from_dict(saved).gptq_inputs == "quantized"
    legacy = _config().to_dict()
    del legacy["gptq_inputs"], legacy["gptq_stages"]
    assert QuantConfig.from_dict(legacy).gptq_inputs == "float"  # written before the option
    output = tmp_path / "q.onnx"
    result = onnxq(
        "quantize", str(tiny_path), "--wbits", "4", "--calib", str(sample_images.files[0].parent),
        "--calib-size", "16", "--gptq-inputs", "quantized", "--gptq-stages", "3",
        "-o", str(output),
    )
    assert "inputs from the quantized network in 3 stages" in result.stdout
    recorded = QuantConfig.from_dict(
        json.loads(modelio.load_model(output).metadata_props[metadata.QUANTIZATION])
    )
    assert (recorded.gptq_inputs, recorded.gptq_stages) == ("quantized", 3)
    assert_user_error(
        onnxq("quantize", tiny_path, "--gptq-inputs", "sideways", "-o", tmp_path / "x.onnx"),
        "unknown --gptq-inputs 'sideways'",
    )
