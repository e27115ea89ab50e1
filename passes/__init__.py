"""Graph passes of onnxq, one per module, each an ``onnx_ir`` pass (installed as ``onnxq.passes``)."""

from onnxq.passes.correct_bias import CorrectBiasPass
from onnxq.passes.decompose_scales import DecomposeScalesPass
from onnxq.passes.fold_batchnorm import FoldBatchNormPass
from onnxq.passes.fold_weight_dequantize import FoldWeightDequantizePass
from onnxq.passes.insert_feature_qdq import InsertFeatureQDQPass
from onnxq.passes.protect_float_weights import ProtectFloatWeightsPass
from onnxq.passes.quantize_weights import QuantizeWeightsPass
from onnxq.passes.reorder import ReorderPass
from onnxq.passes.smooth import SmoothPass
from onnxq.passes.widen_weights_to_int8 import WidenWeightsToInt8Pass

__all__ = [
    "CorrectBiasPass",
    "DecomposeScalesPass",
    "FoldBatchNormPass",
    "FoldWeightDequantizePass",
    "InsertFeatureQDQPass",
    "ProtectFloatWeightsPass",
    "QuantizeWeightsPass",
    "ReorderPass",
    "SmoothPass",
    "WidenWeightsToInt8Pass",
]
