"""Bring a model from anywhere into the form the quantization passes read.

Every input model goes through it: initializers listed as graph inputs stop being inputs,
``Constant`` nodes become initializers, Identity nodes go, every subgraph of constants (weights
computed by ConstantOfShape, Cast or Reshape chains, shape arithmetic of a fixed-shape model) is
folded into an initializer by onnxscript's constant folder, BatchNormalization is folded into the
Conv/Gemm before it, and a BatchNormalization that follows no such layer becomes a per-channel
``Mul`` and ``Add``. Quantization ops are never folded, so a quantized model stays recognisable.
Nodes and values get names and a topological order. A model already in this form is unchanged.
"""

from __future__ import annotations

__all__ = ["CanonicalizePass", "CanonicalizeResult"]

import collections
import dataclasses
import logging

import numpy as np
import onnx_ir as ir
from onnxq.passes.fold_batchnorm import FoldBatchNormPass
from onnxscript.optimizer import fold_constants

from onnxq.analysis.graph import add_initializer, name_output

logger = logging.getLogger(__name__)

#: Ops whose constant inputs are kept as they are: folding them would dequantize a quantized
#: model's weights and hide that it is quantized.
_NEVER_FOLDED = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})

#: Large enough for any weight: the folder's default limits keep big weights unfolded.
_SIZE_LIMIT = 2**40


@dataclasses.dataclass
class CanonicalizeResult(ir.passes.PassResult):
    """``removed``/``added``: by op type, how many nodes fewer or more there are (net)."""

    removed: dict[str, int]
    added: dict[str, int]

    def summary(self) -> str:
        """``"removed 53 BatchNormalization, 239 ConstantOfShape"`` (empty when unchanged)."""
        parts = []
        for verb, counts in (("removed", self.removed), ("added", self.added)):
            if counts:
                listed = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
                parts.append(f"{verb} {listed}")
        return "; ".join(parts)


class CanonicalizePass(ir.passes.InPlacePass):
    """Fold constants, Identity and BatchNormalization; name and sort the graph."""

    def call(self, model: ir.Model) -> CanonicalizeResult:
        before = _op_counts(model)
        common = ir.passes.common
        ir.passes.PassManager(
            [
                common.RemoveInitializersFromInputsPass(),
                common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0),
                common.IdentityEliminationPass(),
            ]
        )(model)
        if _has_constant_nodes(model):
            fold_constants(
                model,
                onnx_shape_inference=True,
                input_size_limit=_SIZE_LIMIT,
                output_size_limit=_SIZE_LIMIT,
                should_fold=_should_fold,
            )
        ir.passes.PassManager(
            [
                common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0),
                FoldBatchNormPass(),
                common.IdentityEliminationPass(),
                common.RemoveUnusedNodesPass(),
            ]
        )(model)
        for node in [n for n in model.graph if n.op_type == "BatchNormalization"]:
            _batchnorm_to_affine(model.graph, node)
        ir.passes.PassManager(
            [common.RemoveUnusedNodesPass(), common.NameFixPass(), common.TopologicalSortPass()]
        )(model)
        after = _op_counts(model)
        result = CanonicalizeResult(
            model, before != after, dict(before - after), dict(after - before)
        )
        if result.modified:
            logger.info("canonicalized: %s", result.summary())
        return result


def _op_counts(model: ir.Model) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph)


def _should_fold(node: ir.Node) -> bool:
    """Every node of constants folds (whatever its size), except the quantization ops."""
    return node.op_type not in _NEVER_FOLDED


def _has_constant_nodes(model: ir.Model) -> bool:
    """Whether some node reads only constants (so that folding has something to do)."""
    return any(
        node.op_type not in _NEVER_FOLDED
        and all(v is None or v.const_value is not None for v in node.inputs)
        for node in model.graph
    )


def _batchnorm_to_affine(graph: ir.Graph, node: ir.Node) -> None:
    """Replace an inference BatchNormalization with constant parameters by ``x·s + b``
    (``s = γ/√(σ²+ε)``, ``b = β − μ·s``, one per channel, broadcast over axis 1)."""
    params = node.inputs[1:5]
    if len(node.outputs) > 1 and any(v.uses() for v in node.outputs[1:]):
        return  # training mode: running statistics are outputs
    if any(v is None or v.const_value is None for v in params):
        return
    gamma, beta, mean, var = (v.const_value.numpy().astype(np.float64) for v in params)
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + epsilon)
    shift = beta - mean * scale
    x = node.inputs[0]
    rank = len(x.shape) if x.shape is not None else 4
    broadcast = (-1,) + (1,) * max(rank - 2, 0)
    name = node.name or x.name
    scale_value = add_initializer(
        graph, f"{name}.scale", scale.reshape(broadcast).astype(np.float32), ir.DataType.FLOAT
    )
    shift_value = add_initializer(
        graph, f"{name}.shift", shift.reshape(broadcast).astype(np.float32), ir.DataType.FLOAT
    )
    mul = ir.node("Mul", [x, scale_value], name=f"{name}.mul")
    scaled = name_output(mul, f"{name}.scaled", x.dtype, x.shape)
    add = ir.node("Add", [scaled, shift_value], name=f"{name}.add")
    output = node.outputs[0]
    graph.insert_before(node, [mul, add])
    out_name = output.name
    output.name = f"{out_name}.batchnorm"
    name_output(add, out_name, output.dtype, output.shape)
    ir.convenience.replace_all_uses_with(output, add.outputs[0], replace_graph_outputs=True)
    graph.remove(node, safe=True)
