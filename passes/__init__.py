"""Graph passes of onnxq, one per module, each an ``onnx_ir`` pass (installed as ``onnxq.passes``)."""

from onnxq.passes.fold_batchnorm import FoldBatchNormPass
from onnxq.passes.insert_feature_qdq import InsertFeatureQDQPass
from onnxq.passes.quantize_weights import QuantizeWeightsPass

__all__ = ["FoldBatchNormPass", "InsertFeatureQDQPass", "QuantizeWeightsPass"]
