"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it."""

from __future__ import annotations

__all__ = ["FoldBatchNormPass", "FoldBatchNormResult"]

import dataclasses
import logging

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FoldBatchNormResult(ir.passes.PassResult):
    """``folded``: how many BatchNormalization nodes were folded; ``left``: how many remain."""

    folded: int
    left: int


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Fold every BatchNormalization that follows a Conv/ConvTranspose/Gemm with constant weights.

    Uses onnxscript's fusion rules: ``W' = W·γ/σ``, ``b' = (b − μ)·γ/σ + β``. A BatchNormalization
    that cannot be folded (no such producer, or the producer has other users) stays in place.
    """

    def call(self, model: ir.Model) -> FoldBatchNormResult:
        before = _count(model, "BatchNormalization")
        if before == 0:
            return FoldBatchNormResult(model, False, 0, 0)
        rules = [
            fuse_batchnorm_into_conv_rule,
            fuse_batchnorm_into_conv_transpose_rule,
            fuse_batchnorm_into_gemm_rule,
        ]
        rewriter.rewrite(model, pattern_rewrite_rules=rules)
        left = _count(model, "BatchNormalization")
        logger.info("folded %d of %d BatchNormalization nodes", before - left, before)
        return FoldBatchNormResult(model, left < before, before - left, left)


def _count(model: ir.Model, op_type: str) -> int:
    return sum(1 for node in model.graph if node.op_type == op_type)
