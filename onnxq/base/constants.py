"""The op types and option values that several layers share, defined once (imports nothing)."""

from __future__ import annotations

#: Ops whose constant weights are quantized and whose feature inputs get Q/DQ by default.
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
#: Weight ops with a bias input (bias correction adjusts it).
BIASED_OPS = ("Conv", "Gemm")
#: Further ops whose feature inputs may be quantized on request (``--ops``).
FEATURE_OPS = (
    "Add",
    "Mul",
    "Concat",
    "AveragePool",
    "GlobalAveragePool",
    "MaxPool",
    "ReduceMean",
)
#: Op types with integer kernels in ONNX Runtime's CPU execution provider; the ``fused``
#: placement quantizes their inputs and outputs.
INTEGER_KERNEL_OPS = WEIGHT_OPS + tuple(op for op in FEATURE_OPS if op != "ReduceMean")

#: Ops whose weights equivalent bits count (``report``, and the ``--bit-budget`` they bound).
COUNTED_OPS = ("Conv",)
#: Bits charged for the per-channel offset of decomposed affine scales (a float, as in the seed).
OFFSET_BITS = 32

#: A setting decided by onnxq: placement, rounding, smooth α and reorder key.
AUTO = "auto"
#: Where feature Q/DQ pairs go (``onnxq.analysis.placement``).
PLACEMENTS = ("inputs", "fused")
#: How weight codes are chosen on their grid (``onnxq.pipeline.layer_rounding``).
ROUNDINGS = ("nearest", "gptq", "reconstruct")
#: Optimisation steps per block of ``--rounding reconstruct`` (``onnxq.reconstruction``).
RECONSTRUCT_ITERATIONS = 1000
#: Where GPTQ and bias correction take each layer's inputs from (``QuantConfig.gptq_inputs``).
GPTQ_INPUTS = ("float", "quantized")
#: Multipliers of the activation ranges in the smoothing scale (the seed log's ablation).
ACT_SCALES = {"absmax": 1.0, "absmax*10": 10.0, "absmax/10": 0.1}
#: Reorder sort keys: calibrated activation ranges, or the consumers' weight ranges.
ACTIVATION_KEYS = ("absmax", "max")
REORDER_KEYS = ACTIVATION_KEYS + ("weight-absmax", "weight-max")
