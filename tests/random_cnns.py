"""Random small CNNs for property-based tests of the channel passes (no torch needed).

A network is a list of block kinds applied in order to an ``[N, 3, 8, 8]`` input, then a head:

* ``conv``: 1×1 or 3×3 Conv, then Relu, ReLU6 (Clip 0..6) or nothing;
* ``depthwise``: 3×3 depthwise Conv and an activation;
* ``residual``: Conv (+ activation) added to the block's input, then maybe Relu;
* ``pool``: MaxPool or AveragePool (3×3, stride 1, padded);
* ``concat``: two Convs of the input joined along channels;
* ``pad``: zero Pad of the spatial axes followed by a 3×3 unpadded Conv.

Heads: GlobalAveragePool + Flatten, or the exporter's ReduceMean(axes -1, -2) + Reshape, then a
Gemm (optionally through a hidden Gemm + Relu). Weights have uneven channel ranges, as real nets.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCKS = ("conv", "depthwise", "residual", "pool", "concat", "pad")
ACTIVATIONS = ("relu", "relu6", "none")
HEADS = ("gap_flatten", "reducemean_reshape", "mlp")


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.array(0.0, np.float32), "relu6.min"),
            numpy_helper.from_array(np.array(6.0, np.float32), "relu6.max"),
        ]
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def constant(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        name = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, group: int = 1, pad: bool = True) -> str:
        weight = self.rng.normal(0, 1 / np.sqrt(cin // group * k * k), (cout, cin // group, k, k))
        weight *= self.rng.uniform(0.2, 4.0, (cout, 1, 1, 1))
        weight *= self.rng.uniform(0.2, 4.0, (1, cin // group, 1, 1))
        name = self.name("conv")
        inputs = [x, self.constant(f"{name}.weight", weight.astype(np.float32))]
        if self.rng.random() < 0.8:
            inputs.append(self.constant(f"{name}.bias", self.rng.normal(0, 0.3, cout).astype(np.float32)))
        self.nodes.append(helper.make_node(
            "Conv", inputs, [name], name=name, kernel_shape=[k, k], group=group,
            pads=[k // 2 if pad else 0] * 4,
        ))
        return name

    def activation(self, x: str, kind: str) -> str:
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "relu6":
            return self.node("Clip", [x, "relu6.min", "relu6.max"])
        return x

    def gemm(self, x: str, cin: int, cout: int) -> str:
        name = self.name("fc")
        weight = self.rng.normal(0, 1 / np.sqrt(cin), (cout, cin)) * self.rng.uniform(0.3, 3.0, (1, cin))
        self.nodes.append(helper.make_node(
            "Gemm",
            [x, self.constant(f"{name}.weight", weight.astype(np.float32)),
             self.constant(f"{name}.bias", self.rng.normal(0, 0.1, cout).astype(np.float32))],
            [name], name=name, transB=1,
        ))
        return name


def random_cnn(blocks: list[str], activations: list[str], head: str, seed: int) -> onnx.ModelProto:
    """A checked opset-21 model; ``activations[i]`` goes with ``blocks[i]`` (cycled)."""
    b = _Builder(seed)
    x, channels = "input", 3
    for index, kind in enumerate(blocks):
        act = activations[index % len(activations)] if activations else "none"
        width = int(b.rng.integers(2, 9))
        if kind == "conv" or (kind in ("depthwise", "residual") and channels == 3):
            x = b.activation(b.conv(x, channels, width, int(b.rng.choice([1, 3]))), act)
            channels = width
        elif kind == "depthwise":
            x = b.activation(b.conv(x, channels, channels, 3, group=channels), act)
        elif kind == "residual":
            branch = b.activation(b.conv(x, channels, channels, int(b.rng.choice([1, 3]))), act)
            x = b.node("Add", [branch, x])
            if b.rng.random() < 0.5:
                x = b.node("Relu", [x])
        elif kind == "pool":
            op = "MaxPool" if b.rng.random() < 0.5 else "AveragePool"
            x = b.node(op, [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        elif kind == "concat":
            other = int(b.rng.integers(2, 9))
            first = b.activation(b.conv(x, channels, width, 1), act)
            second = b.activation(b.conv(x, channels, other, 3), act)
            x = b.node("Concat", [first, second], axis=1)
            channels = width + other
        elif kind == "pad":
            pads = b.constant(b.name("pads"), np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
            x = b.conv(b.node("Pad", [x, pads]), channels, width, 3, pad=False)
            x = b.activation(x, act)
            channels = width
    if head == "reducemean_reshape":
        axes = b.constant(b.name("axes"), np.array([-1, -2], np.int64))
        shape = b.constant(b.name("shape"), np.array([-1, channels], np.int64))
        x = b.node("Reshape", [b.node("ReduceMean", [x, axes], keepdims=1), shape])
    else:
        x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    if head == "mlp":
        x = b.node("Relu", [b.gemm(x, channels, 12)])
        channels = 12
    b.gemm(x, channels, 5)
    b.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        b.nodes,
        "random_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model
