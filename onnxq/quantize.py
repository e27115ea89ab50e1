"""The quantize job: plan → calibrate → insert Q/DQ → record the configuration."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import onnx_ir as ir

from onnxq import __version__, calibration, modelio, progress
from onnxq.config import METADATA_KEY, QuantConfig
from onnxq.data import ImageSet
from onnxq.errors import OnnxqError
from onnxq.passes import InsertFeatureQDQPass, QuantizeWeightsPass
from onnxq.passes.insert_feature_qdq import FeatureParams
from onnxq.passes.quantize_weights import QuantizedWeight
from onnxq.plan import QuantPlan, make_plan
from onnxq.preprocessing import PRESETS, Preprocessing

VERSION_KEY = "onnxq.version"


@dataclasses.dataclass
class QuantizeResult:
    """The quantized model and what was done to it."""

    model: ir.Model
    config: QuantConfig
    plan: QuantPlan
    weights: dict[str, QuantizedWeight]
    features: dict[str, FeatureParams]
    calibration_images: int
    seconds: float


def quantize(
    model: ir.Model,
    config: QuantConfig,
    calibration_images: ImageSet | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    ep: str = "auto",
) -> QuantizeResult:
    """Quantize ``model`` in place as ``config`` says; features are calibrated on the images.

    Stages, in order: (1) function-preserving rewrites of the float model, (2) the plan of
    weights and features, (3) feature calibration, (4) the Q/DQ passes, (5) metadata.
    """
    start = time.perf_counter()
    preprocessing = preprocessing or modelio.get_preprocessing(model) or PRESETS["torchvision"]
    sample = (
        calibration_images.sample(config.calib_size, config.seed)
        if calibration_images is not None
        else None
    )
    plan = make_plan(model, config)
    if not plan.weights and not plan.features:
        raise OnnxqError("nothing to quantize: no Conv, Gemm or MatMul with constant weights")
    features: dict[str, FeatureParams] = {}
    if plan.features:
        if sample is None:
            raise OnnxqError("quantizing features needs calibration images (--calib DIR)")
        features = _calibrate(model, plan, sample, preprocessing, batch_size, ep)
    weights_pass = QuantizeWeightsPass(plan.weights)
    ir.passes.PassManager([weights_pass, InsertFeatureQDQPass(plan.features, features)])(model)
    model.metadata_props[METADATA_KEY] = config.to_json()
    model.metadata_props[VERSION_KEY] = __version__
    return QuantizeResult(
        model,
        config,
        plan,
        weights_pass.quantized,
        features,
        len(sample) if plan.features else 0,
        time.perf_counter() - start,
    )


def _calibrate(
    model: ir.Model,
    plan: QuantPlan,
    images: ImageSet,
    preprocessing: Preprocessing,
    batch_size: int,
    ep: str,
) -> dict[str, FeatureParams]:
    schemes = {target.tensor: target.scheme for target in plan.features}
    observers = calibration.collect(model, schemes, images, preprocessing, batch_size, ep)
    return {
        name: FeatureParams.from_group_ranges(*observer.ranges(), observer.channels, schemes[name])
        for name, observer in observers.items()
    }


def quantize_file(
    source: str | Path,
    destination: str | Path,
    config: QuantConfig,
    calibration_images: ImageSet | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    ep: str = "auto",
) -> QuantizeResult:
    """Load ``source``, quantize it and write ``destination`` (atomically, checker-clean)."""
    model = modelio.load_model(source)
    if preprocessing is None and modelio.get_preprocessing(model) is None:
        progress.status(
            "[yellow]note:[/] the model records no preprocessing; using torchvision's "
            "(resize 256, crop 224, ImageNet mean/std). Pass --preprocess to change it."
        )
    result = quantize(model, config, calibration_images, preprocessing, batch_size, ep)
    modelio.save_model(result.model, destination)
    return result
