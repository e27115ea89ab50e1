"""Block reconstruction (``--rounding reconstruct``): blocks, the torch translation against ONNX
Runtime, the learned rounding and feature steps, and the stored model."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from elsewhere import light_sources, torch_sources
from random_cnns import random_cnn
from test_cli import assert_user_error, onnxq
from test_rounding import CALIBRATION, _pixels
from tiny_models import tiny_cnn

from onnxq.analysis.bias_grid import bias_grid
from onnxq.analysis.blocks import find_blocks
from onnxq.analysis.constant_dq import dequantize_constant, weight_dequantize
from onnxq.base import metadata
from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.quant_math import integer_range
from onnxq.core.schemes import Scheme
from onnxq.io import preprocessing
from onnxq.passes import RoundBiasesPass, StoreLearnedPass
from onnxq.pipeline import block_reconstruction, modelio
from onnxq.pipeline.quantize import quantize, quantize_file
from onnxq.reconstruction import reconstruct as rec
from onnxq.reconstruction.learned import FakeQuant, GridBias, SoftRounding
from onnxq.reconstruction import torch_graph
from onnxq.reconstruction.torch_graph import GraphModule

W3 = Scheme.parse("per-channel-affine", bits=3)
A4 = Scheme.parse("per-tensor-affine", bits=4)
A8 = Scheme.parse("per-tensor-affine", bits=8)
FAST = {"light_squeezenet", "resnet18_opset13_b1"}
SOURCES = light_sources() + torch_sources()


def _config(rounding: str = "gptq", **changes) -> QuantConfig:
    return QuantConfig(weights=W3, features=A4, calib_size=CALIBRATION, rounding=rounding,
                       **changes)


def _ort(model: ir.Model | onnx.ModelProto, x: np.ndarray,
         level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
         ) -> np.ndarray:
    """ONNX Runtime's outputs; by default every op as the standard defines it (no fusion into
    integer kernels, whose requantization rounds differently, and float biases)."""
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _whole(model: ir.Model, **supplied) -> GraphModule:
    graph = model.graph
    return GraphModule(graph, graph.inputs[0].name, graph.outputs[0].name, **supplied)


def _ranges(result) -> dict[str, tuple[int, int]]:
    return {
        name: integer_range(w.scheme.bits, w.scheme.signed, w.scheme.restricted)
        for name, w in result.weights.items()
    }


@pytest.fixture(scope="module")
def quantized_tiny(tiny_path, sample_images):
    """The tiny CNN quantized W3A4 with GPTQ, and its float model."""
    images = sample_images.head(CALIBRATION)
    reference = modelio.load_model(tiny_path)
    result = quantize(modelio.load_model(tiny_path), _config(), images, batch_size=8)
    return result, reference, _pixels(images)


def test_blocks_follow_residual_blocks_and_join_plain_layers():
    model = ir.serde.deserialize_model(tiny_cnn())
    blocks = find_blocks(model.graph)
    assert [block.layers for block in blocks] == [("conv1", "conv2"), ("dw3", "pw4"), ("fc",)]
    assert [(block.input, block.output) for block in blocks] == [
        ("input", "relu2.out"), ("relu2.out", "flat.out"), ("flat.out", "logits"),
    ]
    single = find_blocks(model.graph, max_layers=1)
    assert [block.layers for block in single] == [("conv1",), ("conv2",), ("dw3", "pw4"), ("fc",)]


@pytest.mark.parametrize("seed", range(6))
def test_torch_translation_matches_onnx_runtime(seed):
    rng = np.random.default_rng(seed)
    kinds = ["conv", "depthwise", "residual", "pool", "concat", "pad"]
    blocks = list(rng.choice(kinds, size=4))
    head = ["gap_flatten", "reducemean_reshape", "mlp"][seed % 3]
    proto = random_cnn(blocks, ["relu", "relu6", "none"], head, seed)
    model = ir.serde.deserialize_model(proto)
    x = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ours = _whole(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _ort(proto, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, -1), (1, 1280), (1, 20, -1), (-1, 1280), (0, -1)])
def test_reshape_of_a_batch_1_export_keeps_the_batch(shape):
    """A model exported for batch 1 reshapes to ``[1, -1]`` or ``[1, 1280]``: blocks run on
    batches of any size, so the leading 1 is the batch."""
    x = torch.arange(4 * 1280, dtype=torch.float32).reshape(4, 1280, 1, 1)
    reshaped = torch_graph._reshape(x, torch.tensor(shape))
    assert reshaped.shape[0] == 4
    torch.testing.assert_close(reshaped.reshape(4, -1), x.reshape(4, -1))


def test_reshape_that_does_not_keep_the_batch_is_left_alone():
    x = torch.zeros(4, 6)
    assert torch_graph._reshape(x, torch.tensor([2, -1])).shape == (2, 12)
    assert torch_graph._reshape(x, torch.tensor([3, 8])).shape == (3, 8)
    assert torch_graph._reshape(x, torch.tensor([1, 24])).shape == (1, 24)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_average_pool_with_asymmetric_pads_matches_onnx_runtime(count_include_pad, ceil_mode):
    """Inception-style pooling: pads only at the bottom and right."""
    node = onnx.helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1],
        count_include_pad=count_include_pad, ceil_mode=ceil_mode,
    )
    graph = onnx.helper.make_graph(
        [node], "pool", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 9)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    module = GraphModule(ir.serde.deserialize_model(model).graph, "x", "y")
    np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


def _off_grid(model: ir.Model) -> ir.Model:
    """A copy of ``model`` whose biases sit 0.3 of a step off their int32 grid."""
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    for node in copy.graph:
        grid = bias_grid(node)
        if grid is not None:
            bias = grid.bias.const_value.numpy() + 0.3 * grid.step()
            grid.bias.const_value = ir.tensor(bias.astype(np.float32), name=grid.bias.name)
    return copy


@pytest.mark.parametrize("int32_biases", [False, True])
def test_quantized_graph_in_torch_matches_onnx_runtime(quantized_tiny, int32_biases):
    """Hard codes and feature quantizers in eval mode compute what the QDQ graph computes; with
    the biases read on their int32 grid, what the graph computes with its biases rounded there
    (``RoundBiasesPass``; on this model a few hundredths of the logits' range away)."""
    result, reference, x = quantized_tiny
    model = _off_grid(result.model)
    roundings = rec._weight_sites(model.graph, reference.graph, _ranges(result))
    quantizers = rec._feature_sites(model.graph, drop=0.5)
    assert set(roundings) == {"conv1", "conv2", "dw3", "pw4", "fc"}
    weights = {name: rounding for name, rounding in roundings.values()}
    for rounding in weights.values():
        rounding.soft = False
    fake_quant = {out: module for outs, module in quantizers.values() for out in outs}
    biases = rec._bias_sites(model.graph, fake_quant, learn=False)
    assert set(biases) == {"conv1", "conv2", "dw3", "pw4", "fc"}
    if int32_biases:
        weights.update({name: bias for name, bias in biases.values()})
    module = _whole(model, weights=weights, fake_quant=fake_quant).eval()
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    plain = _ort(model, x)
    RoundBiasesPass()(model)
    rounded = _ort(model, x)
    assert np.abs(plain - rounded).max() > 0.02 * np.ptp(plain)
    np.testing.assert_allclose(ours, rounded if int32_biases else plain, rtol=1e-4, atol=1e-4)


def test_grid_bias_reads_its_bias_rounded_to_the_int32_grid():
    feature = FakeQuant(np.float32(0.5), np.float32(0), (0, 15))
    bias = GridBias(np.array([0.26, -0.74, 3.0], np.float32), feature,
                    np.array([0.1, 0.2, 0.3], np.float32))
    step = np.float32(0.5) * np.array([0.1, 0.2, 0.3], np.float32)
    np.testing.assert_array_equal(bias.stored(), np.round(bias.value.detach().numpy() / step)
                                  * step)
    np.testing.assert_allclose(bias.stored() / step, [5, -7, 20], atol=1e-5)
    bias().sum().backward()  # straight through to the float bias
    np.testing.assert_array_equal(bias.value.grad.numpy(), [1, 1, 1])
    fixed = GridBias(np.zeros(3, np.float32), feature, np.ones(3, np.float32), learn=False)
    assert not fixed.value.requires_grad


def test_soft_rounding_starts_at_the_given_codes_and_rounds_between_two():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 15, (6, 20)).astype(np.float32)
    codes = np.clip(np.round(target) + rng.integers(-2, 3, target.shape), 0, 15).astype(np.int32)
    scale = np.broadcast_to(np.linspace(0.1, 0.2, 6, dtype=np.float32)[:, None], target.shape)
    zero_point = np.full(target.shape, 7, np.float32)
    rounding = SoftRounding(target, codes, scale, zero_point, (0, 15), (6, 20))
    assert rounding.scale.shape == (6, 1) and rounding.zero_point.shape == (1, 1)
    np.testing.assert_array_equal(rounding.hard_codes(), codes)
    rounding.soft = False
    expected = (codes - 7).astype(np.float32) * scale
    np.testing.assert_array_equal(rounding().detach().numpy(), expected)
    with torch.no_grad():
        rounding.logits.neg_()  # every code flips to its other candidate
    other = rounding.hard_codes()
    assert (np.abs(other - codes) <= 1).all() and (other != codes).mean() > 0.8
    rounding.soft = True
    assert rounding.regularizer(2.0).item() > 0
    rounding.soft = False
    assert rounding.regularizer(2.0).item() == 0


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quant_has_lsq_gradients(per_channel):
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5) * 0.4).requires_grad_()
    scale = np.array([0.05, 0.1, 0.02], np.float32) if per_channel else np.float32(0.05)
    zero_point = np.full(np.shape(scale), 3, np.float32)
    quantizer = FakeQuant(scale, zero_point, (0, 15)).train()
    g = torch.randn(4, 3, 5, 5)
    (quantizer(x) * g).sum().backward()
    s = quantizer._broadcast(quantizer.scale.detach(), x)
    v = x.detach() / s
    codes = torch.round(v) + 3
    inside = (codes >= 0) & (codes <= 15)
    expected_y = (codes.clamp(0, 15) - 3) * s
    np.testing.assert_allclose(quantizer.eval()(x).detach(), expected_y, rtol=1e-6)
    np.testing.assert_allclose(x.grad, g * inside, rtol=1e-6)
    per_element = g * torch.where(inside, torch.round(v) - v, codes.clamp(0, 15) - 3)
    dims = [0, 2, 3] if per_channel else None
    expected_scale = per_element.sum(dims) if dims else per_element.sum()
    np.testing.assert_allclose(quantizer.scale.grad, expected_scale, rtol=1e-4, atol=1e-4)


def test_dropped_elements_keep_their_float_value():
    quantizer = FakeQuant(np.float32(0.5), np.float32(0), (0, 3), drop=0.5).train()
    x = torch.rand(2, 4, 16, 16) * 3
    y = quantizer(x)
    kept = y == x
    assert 0.3 < kept.float().mean() < 0.8  # about half kept (plus those already on the grid)
    assert torch.equal(quantizer.eval()(x), torch.clamp(torch.round(x / 0.5), 0, 3) * 0.5)


def _learned_step(magnitude: float) -> float:
    """The scale a lone feature quantizer learns, in 50 steps, on features of ``magnitude``."""
    torch.manual_seed(0)
    x = torch.rand(16, 3, 4, 4) * 3 * magnitude
    quantizer = FakeQuant(np.float32(0.5 * magnitude), np.float32(0), (0, 3))
    rec._optimise((quantizer, torch.nn.Identity()), rec._Learned([], [quantizer], []), (x, x),
                  x, rec.Settings(iterations=50, batch=4), "")
    return float(quantizer.scale.detach())


def test_feature_scales_learn_in_steps_relative_to_their_size():
    """Scales of 4-bit features are ten or more times those of 8-bit features: the same
    problem a hundred times larger learns a scale a hundred times larger, not one stuck near
    its start (an absolute learning rate moved 4-bit scales a seventeenth as far)."""
    small, large = _learned_step(1.0), _learned_step(100.0)
    assert abs(small - 0.5) > 0.05  # it moved
    assert large == pytest.approx(100 * small, rel=1e-4)


@pytest.fixture(scope="module")
def learned_tiny(quantized_tiny):
    """A copy of the quantized tiny CNN and what reconstruction learned for it."""
    result, reference, x = quantized_tiny
    model = ir.serde.deserialize_model(ir.serde.serialize_model(result.model))
    settings = rec.Settings(iterations=300, batch=8, crop=16, regularizer=0.1)
    return model, rec.reconstruct(model, reference, _ranges(result), x, settings)


def test_reconstruction_lowers_every_block_error_below_gptq(learned_tiny):
    _, learned = learned_tiny
    assert [block.layers for block in learned.blocks] == [("conv1", "conv2"), ("dw3", "pw4"),
                                                           ("fc",)]
    for block in learned.blocks:
        assert block.kept and block.error < block.start_error, block


def test_outputs_too_large_to_square_in_float32_reconstruct_finitely(tmp_path, sample_images):
    """Logits of about 1e30 square beyond float32 (a network of constant weights, such as the
    light VGG19 of ONNX's model zoo, grows its features to 1e27): errors and codes stay finite."""
    proto = tiny_cnn()
    fc = next(t for t in proto.graph.initializer if t.name == "fc.weight")
    fc.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(fc) * 1e30, fc.name))
    onnx.save(proto, tmp_path / "huge.onnx")
    images = sample_images.head(CALIBRATION)
    result = quantize(modelio.load_model(tmp_path / "huge.onnx"), _config(), images, batch_size=8)
    settings = rec.Settings(iterations=20, batch=8, crop=16)
    learned = rec.reconstruct(result.model, modelio.load_model(tmp_path / "huge.onnx"),
                              _ranges(result), _pixels(images), settings)
    for block in learned.blocks:
        assert 0 < block.error <= block.start_error < 1, block
    assert all(np.isfinite(weight).all() for weight in learned.weights.values())
    assert all(np.isfinite(scale).all() for scale in learned.scales.values())


def test_relative_error_is_taken_in_float64():
    target = torch.full((2, 3), 1e25)
    assert rec._ratio(*rec._squares(target * 1.001, target)) == pytest.approx(1e-6, rel=1e-3)
    assert rec._ratio(*rec._squares(torch.zeros(4), torch.zeros(4))) == 0
    assert rec._ratio(*rec._squares(torch.ones(4), torch.zeros(4))) == float("inf")
    assert rec._mean_square(target) == pytest.approx(1e50, rel=1e-6)


def test_a_block_whose_steps_diverge_keeps_its_starting_codes(quantized_tiny, monkeypatch):
    result, reference, x = quantized_tiny
    model = ir.serde.deserialize_model(ir.serde.serialize_model(result.model))

    def diverge(blocks, learned, *_):
        with torch.no_grad():
            for parameter in learned.parameters():
                parameter.fill_(float("nan"))

    monkeypatch.setattr(rec, "_optimise", diverge)
    learned = rec.reconstruct(model, reference, _ranges(result), x, rec.Settings(iterations=1))
    assert not any(block.kept for block in learned.blocks)
    for name, codes in learned.codes.items():
        np.testing.assert_array_equal(codes, _codes(model, name))
    assert all(np.isfinite(scale).all() for scale in learned.scales.values())
    assert all(np.isfinite(bias).all() for bias in learned.biases.values())


def test_stored_model_dequantizes_to_the_learned_weights(learned_tiny, quantized_tiny, tmp_path):
    """The written model holds the learned codes, scales and biases, and its biases lie on their
    int32 grid: ONNX Runtime's optimizer, which rounds them there, changes nothing."""
    model, learned = learned_tiny
    x = quantized_tiny[2]
    assert any((learned.codes[name] != _codes(model, name)).any() for name in learned.codes)
    StoreLearnedPass(learned.codes, learned.scales, learned.biases)(model)
    stored = modelio.load_model(_saved(model, tmp_path / "learned.onnx"))
    nodes = {node.name: node for node in stored.graph}
    for name, weight in learned.weights.items():
        dequantize = weight_dequantize(nodes[name].inputs[1])
        np.testing.assert_array_equal(dequantize_constant(dequantize).reshape(weight.shape), weight)
    assert set(learned.biases) == {"conv1", "conv2", "dw3", "pw4", "fc"}
    for name, bias in learned.biases.items():
        np.testing.assert_array_equal(nodes[name].inputs[2].const_value.numpy(), bias)
    np.testing.assert_allclose(_ort(stored, x), _ort(stored, x, ort.GraphOptimizationLevel
                                                     .ORT_ENABLE_ALL), rtol=1e-5, atol=1e-5)
    for tensor, scale in learned.scales.items():
        for node in stored.graph:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.inputs[0].name in (
                tensor, f"{tensor}_quantized"
            ):
                np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), scale)


def _saved(model: ir.Model, path) -> str:
    modelio.save_model(model, path)
    return str(path)


def _codes(model: ir.Model, layer: str) -> np.ndarray:
    node = next(node for node in model.graph if node.name == layer)
    return weight_dequantize(node.inputs[1]).inputs[0].const_value.numpy().astype(np.int32)


def test_store_learned_checks_its_targets(quantized_tiny):
    result, _, _ = quantized_tiny
    model = ir.serde.deserialize_model(ir.serde.serialize_model(result.model))
    with pytest.raises(ir.passes.PreconditionError, match="relu1: no quantized weight"):
        StoreLearnedPass({"relu1": np.zeros(3, np.int32)}, {})(model)
    with pytest.raises(ir.passes.PreconditionError, match="conv1: codes shaped"):
        StoreLearnedPass({"conv1": np.zeros(3, np.int32)}, {})(model)
    with pytest.raises(ir.passes.PreconditionError, match="nowhere: no quantized feature"):
        StoreLearnedPass({}, {"nowhere": np.float32(1)})(model)
    with pytest.raises(ir.passes.PreconditionError, match="relu1: no constant bias"):
        StoreLearnedPass({}, {}, {"relu1": np.zeros(3, np.float32)})(model)
    with pytest.raises(ir.passes.PreconditionError, match="conv1: bias shaped"):
        StoreLearnedPass({}, {}, {"conv1": np.zeros(3, np.float32)})(model)


def test_quantize_with_reconstruct_records_and_improves(tiny_path, sample_images):
    images = sample_images.head(CALIBRATION)
    gptq = quantize(modelio.load_model(tiny_path), _config(), images, batch_size=8)
    config = _config("reconstruct", reconstruct_iterations=150)
    learned = quantize(modelio.load_model(tiny_path), config, images, batch_size=8)
    recorded = json.loads(learned.model.metadata_props[metadata.QUANTIZATION])
    assert recorded["rounding"] == "reconstruct" and recorded["reconstruct_iterations"] == 150
    assert recorded["bias_correction"] is True
    assert learned.blocks and all(b.error <= b.start_error for b in learned.blocks)
    x = _pixels(images)
    float_out = _ort(modelio.load_model(tiny_path), x)
    gptq_error = np.mean((_ort(gptq.model, x) - float_out) ** 2)
    learned_error = np.mean((_ort(learned.model, x) - float_out) ** 2)
    assert learned_error < gptq_error


def _initializers(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}


def test_reconstruct_seed_repeats_a_run_and_another_seed_draws_another(tiny_path, sample_images):
    """The optimisation's random batches, crops and drop masks come from one seed: the same
    seed writes the same model, another seed other learned values (its own noise)."""
    images = sample_images.head(CALIBRATION)
    runs = [quantize(modelio.load_model(tiny_path),
                     _config("reconstruct", reconstruct_iterations=30, reconstruct_seed=seed),
                     images, batch_size=8).model
            for seed in (1, 1, 2)]
    first, again, other = (_initializers(model) for model in runs)
    assert first.keys() == again.keys() == other.keys()
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert any(not np.array_equal(first[name], other[name]) for name in first)
    recorded = json.loads(runs[2].metadata_props[metadata.QUANTIZATION])
    assert recorded["reconstruct_seed"] == 2 and recorded["seed"] == 0


def test_reconstruct_iterations_are_checked():
    with pytest.raises(OnnxqError, match="--reconstruct-iters must be at least 0"):
        _config("reconstruct", reconstruct_iterations=-1)


def test_missing_torch_is_one_line_with_the_way_out(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *args: None if name == "torch" else real_find_spec(name, *args),
    )
    with pytest.raises(OnnxqError, match=r"pip install 'onnxq\[reconstruct\]'"):
        block_reconstruction.require_torch()


def test_cli_reconstruct(tiny_path, sample_dir, tmp_path):
    output = tmp_path / "tiny_rec.onnx"
    result = onnxq("quantize", tiny_path, "-o", output, "--calib", sample_dir, "--calib-size", 16,
                   "--wbits", 3, "--scheme", "per-channel-affine", "--rounding", "reconstruct",
                   "--reconstruct-iters", 2)
    assert result.returncode == 0, result.stderr
    model = modelio.load_model(output)
    config = json.loads(model.metadata_props[metadata.QUANTIZATION])
    assert config["rounding"] == "reconstruct" and config["reconstruct_iterations"] == 2
    assert config["reconstruct_seed"] is None
    assert_user_error(
        onnxq("quantize", tiny_path, "--calib", sample_dir, "--rounding", "reconstruct",
              "--reconstruct-iters", -1),
        "--reconstruct-iters",
    )


@pytest.mark.parametrize(
    "source",
    [s if s.name in FAST else pytest.param(s, marks=[pytest.mark.slow, pytest.mark.corpus])
     for s in SOURCES],
    ids=lambda s: s.name,
)
def test_reconstruct_on_models_from_elsewhere(source, tmp_path_factory, sample_images):
    """Every corpus model reconstructs (a few steps per block), and the written model computes
    in torch what it computes in ONNX Runtime."""
    folder = tmp_path_factory.mktemp(f"reconstruct_{source.name}")
    images = sample_images.head(8)
    given = preprocessing.resolve(source.preprocess) if source.preprocess else None
    config = QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=4), features=A8, calib_size=8,
        keep_8bit=("first", "last"), rounding="reconstruct", reconstruct_iterations=3,
    )
    output = folder / "reconstructed.onnx"
    result = quantize_file(source.path(folder), output, config, images, given)
    assert len(result.blocks) >= 3
    model = modelio.load_model(output)
    x = np.stack([modelio.get_preprocessing(model).load(str(p)) for p in images.files[:2]])
    quantizers = rec._feature_sites(model.graph, drop=0.0)
    fake_quant = {out: module for outs, module in quantizers.values() for out in outs}
    with torch.no_grad():
        ours = _whole(model, fake_quant=fake_quant).eval()(torch.from_numpy(x)).numpy()
    theirs = np.concatenate([_ort(model, image[None]) for image in x])
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.999, cosine
