"""Weights stored in their layer's shape: the same weights bit for bit, without a Reshape where
the scales allow it (per-channel, per-tensor, pointwise per-group, decomposed included)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnxq.passes import DecomposeScalesPass, LayerShapedWeightsPass, QuantizeWeightsPass
from test_deploy import _layer_weights

from onnxq.analysis.plan import make_plan
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import _decomposed_targets

CASES = {
    # scheme, group size, decomposed: the DequantizeLinear layout of each tiny layer afterwards
    "per-channel 4-bit": ("per-channel-affine", None, False,
                          {"conv1": "axis", "conv2": "axis", "dw3": "axis", "pw4": "axis", "fc": "axis"}),
    "per-tensor 4-bit": ("per-tensor-symmetric", None, False,
                         {"conv1": "tensor", "conv2": "tensor", "dw3": "tensor", "pw4": "tensor",
                          "fc": "tensor"}),
    "per-group gs 2": ("per-group-affine", 2, False,
                       {"conv1": "reshape", "conv2": "rows", "dw3": "axis", "pw4": "block",
                        "fc": "block"}),
    "decomposed gs 2": ("per-group-affine", 2, True,
                        {"conv1": "reshape", "conv2": "rows", "dw3": "axis", "pw4": "block",
                         "fc": "block"}),
}


def _weights_only(tiny_path, scheme: str, group_size: int | None, decomposed: bool) -> ir.Model:
    """The tiny CNN with weights as ``QuantizeWeightsPass`` (and DecomposeScalesPass) lay them out."""
    model = modelio.load_model(tiny_path)
    weights = Scheme.parse(scheme, bits=4, group_size=group_size)
    config = QuantConfig(weights=weights, decompose_scales=decomposed)
    plan = make_plan(model, config)
    targets = _decomposed_targets(model, plan) if decomposed else []
    floats = {t.weight: model.graph.initializers[t.weight].const_value.numpy() for t in targets}
    QuantizeWeightsPass(plan.weights, {})(model)
    if targets:
        DecomposeScalesPass(targets, floats, 4, {})(model)
    return model


def _layout(model: ir.Model) -> dict[str, str]:
    """How each layer's weight is dequantized: ``reshape`` (blocked 2-D view and a Reshape),
    ``rows`` (one row per group, per-axis, and a Reshape), ``block`` (blocked, in layer shape),
    ``axis`` (per-axis) or ``tensor`` (one scale)."""
    layouts = {}
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        producer = node.inputs[1].producer()
        if producer.op_type == "Reshape":
            blocked = producer.inputs[0].producer().attributes.get_int("block_size", 0)
            layouts[node.name] = "reshape" if blocked else "rows"
        elif producer.attributes.get_int("block_size", 0):
            layouts[node.name] = "block"
        else:
            layouts[node.name] = "axis" if "axis" in producer.attributes else "tensor"
    return layouts


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_shaped_weights_are_bit_identical(case, tiny_path):
    scheme, group_size, decomposed, expected = CASES[case]
    model = _weights_only(tiny_path, scheme, group_size, decomposed)
    before = _layer_weights(model)
    first = _layout(model)
    assert set(first.values()) <= {"reshape", "block"}  # as QuantizeWeightsPass lays them out
    result = LayerShapedWeightsPass()(model)
    assert _layout(model) == expected
    rewritten = {f"{layer}.weight_dq" for layer, form in expected.items() if form != first[layer]}
    assert set(result.reshaped) == rewritten
    after = _layer_weights(model)
    for layer, weight in before.items():
        assert after[layer].shape == weight.shape
        assert np.array_equal(after[layer].view(np.uint32), weight.view(np.uint32)), layer
    assert not LayerShapedWeightsPass()(model).modified  # a second run has nothing left to do
