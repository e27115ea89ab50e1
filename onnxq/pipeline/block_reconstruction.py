"""``--rounding reconstruct``: the quantize stage that refines GPTQ's model block by block.

It runs after the Q/DQ passes, on the finished QDQ model and the float model as the channel
rewrites left it (same tensor and layer names), with the calibration images; torch does the
learning (``onnxq.reconstruction``), on the GPU where ``layer_rounding.accelerator`` finds one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from onnxq.base import progress
from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.quant_math import integer_range
from onnxq.core.weight_quantization import QuantizedWeight
from onnxq.io import data
from onnxq.io.data import ImageSet
from onnxq.io.preprocessing import Preprocessing
from onnxq.passes import StoreLearnedPass
from onnxq.pipeline.layer_rounding import accelerator

if TYPE_CHECKING:
    from onnxq.reconstruction.reconstruct import BlockRecord

#: Images per batch while the calibration images are read into memory.
_READ_BATCH = 32


def require_torch() -> None:
    """Fail early, with the way out, when torch (the ``reconstruct`` extra) is missing."""
    if importlib.util.find_spec("torch") is None:
        raise OnnxqError("--rounding reconstruct needs torch: pip install 'onnxq[reconstruct]'")


def reconstruct_blocks(
    model: ir.Model,
    reference: ir.Model,
    weights: dict[str, QuantizedWeight],
    config: QuantConfig,
    images: ImageSet,
    preprocessing: Preprocessing,
    ep: str,
) -> tuple[dict[str, QuantizedWeight], list[BlockRecord]]:
    """Learn and store ``model``'s codes, feature scales and biases (see
    ``onnxq.reconstruction``); returns ``weights`` with the stored codes, and what happened in
    each block."""
    from onnxq.reconstruction.reconstruct import Settings, reconstruct

    pixels = np.concatenate(
        [batch for batch, _ in data.iter_batches(images, preprocessing, _READ_BATCH)]
    )
    ranges = {
        name: integer_range(w.scheme.bits, w.scheme.signed, w.scheme.restricted)
        for name, w in weights.items()
    }
    seed = config.seed if config.reconstruct_seed is None else config.reconstruct_seed
    settings = Settings(iterations=config.reconstruct_iterations, seed=seed)
    result = reconstruct(model, reference, ranges, pixels, settings, accelerator(ep) or "cpu")
    kept = sum(block.kept for block in result.blocks)
    progress.status(
        f"reconstruction: learned values kept in {kept} of {len(result.blocks)} blocks, output "
        f"error {_mean(b.start_error for b in result.blocks):.4g} → "
        f"{_mean(b.error for b in result.blocks):.4g} on average (GPTQ → reconstructed)"
    )
    StoreLearnedPass(result.codes, result.scales, result.biases)(model)
    return _with_codes(reference, weights, result.codes), result.blocks


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


def _with_codes(
    reference: ir.Model,
    weights: dict[str, QuantizedWeight],
    codes: dict[str, np.ndarray],
) -> dict[str, QuantizedWeight]:
    """``weights`` (by float weight name) with the learned ``codes`` (by layer name)."""
    weight_of = {
        node.name: node.inputs[1].name for node in reference.graph if len(node.inputs) > 1
    }
    updated = dict(weights)
    for layer, layer_codes in codes.items():
        name = weight_of.get(layer)
        if name in updated and updated[name].codes.shape == layer_codes.shape:
            updated[name] = dataclasses.replace(updated[name], codes=layer_codes)
    return updated
