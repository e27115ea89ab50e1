"""Deployment forms of a quantized model for ONNX Runtime's CPU execution provider.

Every form computes with weights bit-identical to the quantized QDQ model's.

* default: weights with one scale per output channel, in layers that can run as integer kernels,
  become per-axis int8 (ONNX Runtime runs those layers as QLinearConv/QGemm, see
  ``WidenWeightsToInt8Pass``); every other weight DequantizeLinear (per-group weights, layers
  without quantized outputs) is folded into float.
* ``fold_weights``: every weight DequantizeLinear is folded into float; any runtime runs the result
  with float kernels, features keep their Q/DQ.

Folded layers are protected from ONNX Runtime's re-quantization of float weights
(``ProtectFloatWeightsPass``). The quantized file itself is a third form: packed int4 weights,
which ONNX Runtime folds at load when the session sets ``runtime.FOLD_WEIGHTS_AT_LOAD``.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxq.analysis.constant_dq import is_constant_dequantize, is_plain_int8
from onnxq.analysis.placement import runs_as_integer_kernel
from onnxq.base import metadata
from onnxq.base.constants import WEIGHT_OPS
from onnxq.io.runtime import check_runtime
from onnxq.passes import (
    FoldWeightDequantizePass,
    ProtectFloatWeightsPass,
    WidenWeightsToInt8Pass,
)


@dataclasses.dataclass(frozen=True)
class DeployResult:
    model: ir.Model
    integer_kernels: tuple[str, ...]  # layers ONNX Runtime can run as int8 kernels
    widened: tuple[str, ...]  # of those, the layers whose narrower codes became int8
    folded: tuple[str, ...]  # weights folded into float


def deploy(model: ir.Model, fold_weights: bool = False, runtime: str = "onnxruntime") -> DeployResult:
    """Rewrite the quantized ``model`` in place into its deployment form for ``runtime``.

    For OpenVINO, which decompresses int4 weights when it compiles a model (as fast as float
    weights, a quarter of the file), only the weights its reader refuses are folded.
    """
    check_runtime(runtime)  # one of io.runtime.RUNTIMES
    widened = () if fold_weights else WidenWeightsToInt8Pass()(model).widened
    keep_compressed = runtime == "openvino" and not fold_weights
    folded = FoldWeightDequantizePass(
        keep_integer_kernels=not fold_weights, only_partial_blocks=keep_compressed
    )(model).folded
    ProtectFloatWeightsPass()(model)
    form = "float-weights" if fold_weights else "int8-kernels"
    model.metadata_props[metadata.DEPLOYMENT] = form + (", openvino" if keep_compressed else "")
    return DeployResult(model, _integer_kernel_layers(model), widened, folded)


def _integer_kernel_layers(model: ir.Model) -> tuple[str, ...]:
    """Weighted layers in the pattern ONNX Runtime fuses, with plain int8 weights."""
    return tuple(
        node.name
        for node in model.graph
        if node.op_type in WEIGHT_OPS
        and runs_as_integer_kernel(node)
        and (weight := node.inputs[1].producer()) is not None
        and is_constant_dequantize(weight)
        and is_plain_int8(weight)
    )
