"""Small generated CNNs for fast, exact tests (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.base import metadata
from onnxq.io.preprocessing import Preprocessing

TINY_PREPROCESSING = Preprocessing(resize=36, crop=32)


def _conv(rng, name, cin, cout, k, group=1, stride=1):
    weight = rng.normal(0, 1.0 / np.sqrt(cin // group * k * k), (cout, cin // group, k, k))
    weight *= rng.uniform(0.3, 3.0, (cout, 1, 1, 1))  # uneven channel ranges, as in real nets
    bias = rng.normal(0, 0.1, cout)
    inits = [
        numpy_helper.from_array(weight.astype(np.float32), f"{name}.weight"),
        numpy_helper.from_array(bias.astype(np.float32), f"{name}.bias"),
    ]
    node = helper.make_node(
        "Conv",
        ["", f"{name}.weight", f"{name}.bias"],
        [f"{name}.out"],
        name=name,
        kernel_shape=[k, k],
        pads=[k // 2] * 4,
        strides=[stride, stride],
        group=group,
    )
    return node, inits


def tiny_cnn(
    seed: int = 0, classes: int = 10, batch_norm: bool = False, opset: int = 21
) -> onnx.ModelProto:
    """conv-relu, strided conv-relu6, depthwise, pointwise + residual add, GAP, flatten, Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def add_conv(x, name, cin, cout, k, group=1, stride=1):
        node, tensors = _conv(rng, name, cin, cout, k, group, stride)
        node.input[0] = x
        nodes.append(node)
        inits.extend(tensors)
        return node.output[0]

    x = add_conv("input", "conv1", 3, 8, 3)
    if batch_norm:
        inits += [
            numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "bn1.scale"),
            numpy_helper.from_array(rng.normal(0, 0.2, 8).astype(np.float32), "bn1.bias"),
            numpy_helper.from_array(rng.normal(0, 0.2, 8).astype(np.float32), "bn1.mean"),
            numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "bn1.var"),
        ]
        nodes.append(helper.make_node(
            "BatchNormalization", [x, "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["bn1.out"],
            name="bn1",
        ))
        x = "bn1.out"
    nodes.append(helper.make_node("Relu", [x], ["relu1.out"], name="relu1"))
    x = add_conv("relu1.out", "conv2", 8, 16, 3, stride=2)
    inits += [
        numpy_helper.from_array(np.array(0.0, np.float32), "clip.min"),
        numpy_helper.from_array(np.array(6.0, np.float32), "clip.max"),
    ]
    nodes.append(helper.make_node("Clip", [x, "clip.min", "clip.max"], ["relu2.out"], name="relu2"))
    x = add_conv("relu2.out", "dw3", 16, 16, 3, group=16)
    nodes.append(helper.make_node("Relu", [x], ["relu3.out"], name="relu3"))
    x = add_conv("relu3.out", "pw4", 16, 16, 1)
    nodes.append(helper.make_node("Add", [x, "relu2.out"], ["add.out"], name="add"))
    nodes.append(helper.make_node("Relu", ["add.out"], ["relu4.out"], name="relu4"))
    nodes.append(helper.make_node("GlobalAveragePool", ["relu4.out"], ["gap.out"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap.out"], ["flat.out"], name="flatten"))
    fc = rng.normal(0, 0.3, (classes, 16)).astype(np.float32)
    inits += [
        numpy_helper.from_array(fc, "fc.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, classes).astype(np.float32), "fc.bias"),
    ]
    nodes.append(helper.make_node(
        "Gemm", ["flat.out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1
    ))
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10 if opset >= 21 else 8
    )
    helper.set_model_props(model, {metadata.PREPROCESSING: TINY_PREPROCESSING.to_json()})
    onnx.checker.check_model(model, full_check=True)
    return model
