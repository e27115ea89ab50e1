"""Fold the DequantizeLinear of quantized weights (and the Reshape after a blocked one) into float.

ONNX Runtime does not constant-fold DequantizeLinear while it looks for integer-kernel patterns,
so a 4-bit or per-group weight is dequantized again on every run. Folding it offline gives a
float initializer holding bit for bit the value the DequantizeLinear computed (decomposed scales
included): the same weights, run by plain float kernels, at the cost of fp32 weight storage.
"""

from __future__ import annotations

__all__ = ["FoldWeightDequantizePass", "FoldWeightDequantizeResult"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxq.analysis.constant_dq import (
    dequantize_constant,
    is_constant_dequantize,
    is_plain_int8,
    only_reshape_reader,
)
from onnxq.analysis.graph import add_initializer
from onnxq.analysis.placement import runs_as_integer_kernel
from onnxq.base.constants import WEIGHT_OPS

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FoldWeightDequantizeResult(ir.passes.PassResult):
    """``folded``: the float initializers that replaced weight DequantizeLinear nodes."""

    folded: tuple[str, ...]


class FoldWeightDequantizePass(ir.passes.InPlacePass):
    """Replace constant DequantizeLinear nodes (``[w]_dq`` → ``[w]_reshape``) by float initializers.

    With ``keep_integer_kernels``, plain int8 weights of layers that ONNX Runtime runs as integer
    kernels stay quantized. With ``only_partial_blocks``, only blocked weights whose last block
    is shorter than the others are folded (OpenVINO's ONNX reader refuses them; it reads every
    other form). The result names the initializers created.
    """

    def __init__(self, keep_integer_kernels: bool = False, only_partial_blocks: bool = False) -> None:
        super().__init__()
        self.keep_integer_kernels = keep_integer_kernels
        self.only_partial_blocks = only_partial_blocks

    def call(self, model: ir.Model) -> FoldWeightDequantizeResult:
        folded = []
        for node in list(model.graph):
            if self._wanted(node):
                folded.append(_fold(model.graph, node))
        if folded:
            ir.passes.common.RemoveUnusedNodesPass()(model)
            logger.info("folded %d weight DequantizeLinear nodes into float", len(folded))
        return FoldWeightDequantizeResult(model, bool(folded), tuple(folded))

    def _wanted(self, node: ir.Node) -> bool:
        """A weight DequantizeLinear (not one that only computes another one's scale)."""
        if not is_constant_dequantize(node) or node.outputs[0].is_graph_output():
            return False
        readers = list(node.outputs[0].consumers())
        if not readers or all(reader.op_type == "DequantizeLinear" for reader in readers):
            return False
        if self.only_partial_blocks and not _has_partial_block(node):
            return False
        return not (self.keep_integer_kernels and _feeds_integer_kernels(node))


def _has_partial_block(node: ir.Node) -> bool:
    """A blocked DequantizeLinear whose blocked axis is not a multiple of its block size."""
    block = node.attributes.get_int("block_size", 0)
    if not block or node.inputs[0].shape is None:
        return False
    axis = node.attributes.get_int("axis", 1)
    return int(node.inputs[0].shape[axis]) % block != 0


def _fold(graph: ir.Graph, node: ir.Node) -> str:
    value = dequantize_constant(node)
    last = node
    reshape = only_reshape_reader(node)
    if reshape is not None:
        value = value.reshape(reshape.inputs[1].const_value.numpy())
        last = reshape
    name = _weight_name(graph, node)
    folded = add_initializer(graph, name, value.astype(np.float32), ir.DataType.FLOAT)
    ir.convenience.replace_all_uses_with(last.outputs[0], folded)
    return name


def _feeds_integer_kernels(node: ir.Node) -> bool:
    """A plain int8 weight read only by layers that run as integer kernels."""
    readers = list(node.outputs[0].consumers())
    return (
        is_plain_int8(node)
        and bool(readers)
        and all(reader.op_type in WEIGHT_OPS and runs_as_integer_kernel(reader) for reader in readers)
    )


def _weight_name(graph: ir.Graph, node: ir.Node) -> str:
    """``conv1.weight`` for a DequantizeLinear named ``conv1.weight_dq`` (when that name is free)."""
    name = node.name.removesuffix("_dq")
    return name if name != node.name and name not in graph.initializers else f"{node.name}_folded"
