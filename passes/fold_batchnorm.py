"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it."""

from __future__ import annotations

__all__ = ["FoldBatchNormPass"]

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Fold every BatchNormalization that follows a Conv/ConvTranspose/Gemm with constant weights.

    Uses onnxscript's fusion rules: ``W' = W·γ/σ``, ``b' = (b − μ)·γ/σ + β``. A BatchNormalization
    that cannot be folded (no such producer, or the producer has other users) stays in place.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _count(model, "BatchNormalization")
        if before == 0:
            return ir.passes.PassResult(model, modified=False)
        rules = [
            fuse_batchnorm_into_conv_rule,
            fuse_batchnorm_into_conv_transpose_rule,
            fuse_batchnorm_into_gemm_rule,
        ]
        rewriter.rewrite(model, pattern_rewrite_rules=rules)
        return ir.passes.PassResult(model, modified=_count(model, "BatchNormalization") < before)


def _count(model: ir.Model, op_type: str) -> int:
    return sum(1 for node in model.graph if node.op_type == op_type)
