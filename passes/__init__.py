"""Graph passes of onnxq, one per module, each an ``onnx_ir`` pass (installed as ``onnxq.passes``)."""

from onnxq.passes.canonicalize import CanonicalizePass, CanonicalizeResult
from onnxq.passes.correct_bias import CorrectBiasPass, CorrectBiasResult
from onnxq.passes.decompose_scales import DecomposeScalesPass, DecomposeScalesResult
from onnxq.passes.fold_batchnorm import FoldBatchNormPass, FoldBatchNormResult
from onnxq.passes.fold_weight_dequantize import (
    FoldWeightDequantizePass,
    FoldWeightDequantizeResult,
)
from onnxq.passes.insert_feature_qdq import InsertFeatureQDQPass
from onnxq.passes.layer_shaped_weights import LayerShapedWeightsPass, LayerShapedWeightsResult
from onnxq.passes.protect_float_weights import (
    ProtectFloatWeightsPass,
    ProtectFloatWeightsResult,
)
from onnxq.passes.quantize_weights import QuantizeWeightsPass, QuantizeWeightsResult
from onnxq.passes.reorder import ReorderPass, ReorderResult
from onnxq.passes.round_biases import RoundBiasesPass, RoundBiasesResult
from onnxq.passes.smooth import SmoothPass, SmoothResult
from onnxq.passes.store_learned import StoreLearnedPass, StoreLearnedResult
from onnxq.passes.widen_weights_to_int8 import (
    WidenWeightsToInt8Pass,
    WidenWeightsToInt8Result,
)

__all__ = [
    "CanonicalizePass",
    "CanonicalizeResult",
    "CorrectBiasPass",
    "CorrectBiasResult",
    "DecomposeScalesPass",
    "DecomposeScalesResult",
    "FoldBatchNormPass",
    "FoldBatchNormResult",
    "FoldWeightDequantizePass",
    "FoldWeightDequantizeResult",
    "InsertFeatureQDQPass",
    "LayerShapedWeightsPass",
    "LayerShapedWeightsResult",
    "ProtectFloatWeightsPass",
    "ProtectFloatWeightsResult",
    "QuantizeWeightsPass",
    "QuantizeWeightsResult",
    "ReorderPass",
    "ReorderResult",
    "RoundBiasesPass",
    "RoundBiasesResult",
    "SmoothPass",
    "SmoothResult",
    "StoreLearnedPass",
    "StoreLearnedResult",
    "WidenWeightsToInt8Pass",
    "WidenWeightsToInt8Result",
]
