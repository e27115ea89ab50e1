"""Channel analysis: which tensors share a channel index space, and why a set is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import tiny_cnn

from onnxq.analysis import channels
from onnxq.pipeline import modelio


def _load(proto: onnx.ModelProto) -> ir.Model:
    model = ir.serde.deserialize_model(proto)
    modelio.canonicalize(model)
    return model


def _by_name(analysis: channels.ChannelAnalysis) -> dict[str, channels.ChannelSet]:
    return {channel_set.name: channel_set for channel_set in analysis.sets}


def _graph(nodes, inits, extra_outputs=()) -> ir.Model:
    """A model from ``x [N, 4, 6, 6]`` to ``y [N, 3]`` (plus rank-2 or rank-4 extra outputs)."""
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank)
                for name, rank in extra_outputs]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        outputs, inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(proto, full_check=True)
    return _load(proto)


def _conv(name, x, cin, cout, group=1, k=1, rng=np.random.default_rng(0)):
    weight = rng.normal(size=(cout, cin // group, k, k)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, f"{name}.w"),
             numpy_helper.from_array(rng.normal(size=cout).astype(np.float32), f"{name}.b")]
    node = helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name,
                            group=group, kernel_shape=[k, k], pads=[k // 2] * 4)
    return node, inits


def _head(x, channels_in):
    """GlobalAveragePool + Flatten + Gemm to 3 outputs named ``y``."""
    weight = numpy_helper.from_array(np.ones((3, channels_in), np.float32), "fc.w")
    return [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w"], ["y"], name="fc", transB=1),
    ], [weight]


def test_tiny_cnn_sets():
    analysis = channels.analyze(_load(tiny_cnn()))
    sets = _by_name(analysis)
    assert list(sets) == ["input", "conv1.out", "conv2.out", "dw3.out", "logits"]

    first = sets["conv1.out"]
    assert first.tensors == ["conv1.out", "relu1.out"]
    assert [p.node for p in first.producers] == ["conv1"]
    assert [c.node for c in first.consumers] == ["conv2"]
    assert first.smooth_blockers == [] and first.permute_blockers == []

    residual = sets["conv2.out"]  # conv2 → ReLU6 → (dw3 …) + pw4 → Add → Relu → GAP → fc
    assert [p.node for p in residual.producers] == ["conv2", "pw4"]
    assert [p.op_type for p in residual.passes] == ["Clip", "Add", "Relu", "GlobalAveragePool", "Flatten"]
    assert [(c.node, c.depthwise) for c in residual.consumers] == [("dw3", True), ("fc", False)]
    assert residual.smooth_blockers == ["Clip relu2 does not commute with scaling"]
    assert residual.permute_blockers == []

    index = {s.name: i for i, s in enumerate(analysis.sets)}
    assert analysis.links == [(index["conv2.out"], index["dw3.out"])]
    assert [index["conv2.out"], index["dw3.out"]] in analysis.domains()

    assert sets["input"].blocked == ["graph input input"]
    assert sets["logits"].blocked == ["graph output logits"]


def test_concat_places_sets_at_offsets():
    a, a_inits = _conv("a", "x", 4, 2)
    b, b_inits = _conv("b", "x", 4, 3)
    concat = helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1)
    c, c_inits = _conv("c", "cat", 5, 3, k=3)
    head, head_inits = _head("c", 3)
    sets = _by_name(channels.analyze(_graph([a, b, concat, c] + head, a_inits + b_inits + c_inits + head_inits)))
    assert sets["a"].tensors == ["a", "cat[0:2]"] and sets["b"].tensors == ["b", "cat[2:5]"]
    assert [(c.node, c.offset) for c in sets["a"].consumers] == [("c", 0)]
    assert [(c.node, c.offset) for c in sets["b"].consumers] == [("c", 2)]


def test_exported_head_and_clip_bounds():
    """ReduceMean over (-1, -2) + Reshape to [-1, C] keeps channels; Clip(0, inf) is homogeneous."""
    a, inits = _conv("a", "x", 4, 3)
    inits += [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([-1, -2], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 3], np.int64), "shape"),
        numpy_helper.from_array(np.ones((3, 3), np.float32), "fc.w"),
    ]
    nodes = [
        a,
        helper.make_node("Clip", ["a", "zero"], ["relu"], name="relu"),
        helper.make_node("ReduceMean", ["relu", "axes"], ["mean"], name="mean", keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "fc.w"], ["y"], name="fc", transB=1),
    ]
    channel_set = _by_name(channels.analyze(_graph(nodes, inits)))["a"]
    assert [p.op_type for p in channel_set.passes] == ["Clip", "ReduceMean", "Reshape"]
    assert [c.node for c in channel_set.consumers] == ["fc"]
    assert channel_set.smooth_blockers == [] and channel_set.permute_blockers == []


@pytest.mark.parametrize(
    "reader, rank, reason",
    [
        (helper.make_node("Softmax", ["a"], ["s"], name="soft", axis=1), 4,
         "read by unsupported Softmax soft"),
        (helper.make_node("ReduceMean", ["a", "axes"], ["s"], name="mean", keepdims=1), 4,
         "ReduceMean mean reduces over channels"),
        (helper.make_node("Flatten", ["a"], ["s"], name="flat"), 2,
         "Flatten flat mixes channels with other axes"),
    ],
)
def test_unknown_or_mixing_readers_block_the_set(reader, rank, reason):
    a, inits = _conv("a", "x", 4, 3)
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    head, head_inits = _head("a", 3)
    model = _graph([a, reader] + head, inits + head_inits, extra_outputs=[("s", rank)])
    assert reason in _by_name(channels.analyze(model))["a"].blocked


def test_grouped_conv_can_be_scaled_but_not_permuted():
    a, a_inits = _conv("a", "x", 4, 4)
    g, g_inits = _conv("g", "a", 4, 4, group=2, k=3)
    head, head_inits = _head("g", 4)
    sets = _by_name(channels.analyze(_graph([a, g] + head, a_inits + g_inits + head_inits)))
    assert sets["a"].smooth_blockers == []
    assert sets["a"].permute_blockers == ["read by grouped Conv g"]
    assert sets["g"].permute_blockers == ["output of grouped Conv g"]


def test_shared_weight_blocks_both_sets():
    a, inits = _conv("a", "x", 4, 4)
    b = helper.make_node("Conv", ["a", "a.w", "a.b"], ["b"], name="b", kernel_shape=[1, 1])
    head, head_inits = _head("b", 4)
    sets = _by_name(channels.analyze(_graph([a, b] + head, inits + head_inits)))
    assert "a.w is shared with other nodes" in sets["a"].blocked
    assert "a.w is shared with other nodes" in sets["b"].blocked


def test_input_channel_helpers_match_a_loop():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(6, 2, 3, 3)).astype(np.float32)  # group 2: 4 input channels
    consumer = channels.Consumer("c", "Conv", "x", 0, "w", 1, group=2)
    expected = np.zeros(4)
    for row in range(6):
        for column in range(2):
            channel = (row // 3) * 2 + column
            expected[channel] = max(expected[channel], np.abs(weight[row, column]).max())
    np.testing.assert_array_equal(channels.input_channel_absmax(consumer, weight), expected)
    factor = channels.input_channel_factor(consumer, weight, np.array([1, 2, 3, 4], np.float32))
    scaled = weight * factor
    np.testing.assert_array_equal(scaled[3:, 1], weight[3:, 1] * 4)
    np.testing.assert_array_equal(scaled[:3, 0], weight[:3, 0] * 1)
