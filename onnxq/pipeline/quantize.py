"""The quantize job: plan → calibrate → insert Q/DQ → record the configuration."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import onnx_ir as ir

from onnxq import __version__
from onnxq.analysis.placement import has_transformer_ops
from onnxq.analysis.plan import QuantPlan, WeightTarget, make_plan
from onnxq.base import metadata, progress
from onnxq.base.constants import AUTO
from onnxq.base.errors import OnnxqError
from onnxq.calibration import streaming
from onnxq.calibration.cache import CalibrationCache
from onnxq.calibration.streaming import CALIBRATION_BATCH
from onnxq.core.config import QuantConfig
from onnxq.core.feature_quantization import FeatureParams
from onnxq.core.weight_quantization import (
    CodeChooser,
    QuantizedWeight,
    groups_per_channel,
)
from onnxq.io.data import ImageSet
from onnxq.io.preprocessing import Preprocessing
from onnxq.passes import (
    CorrectBiasPass,
    DecomposeScalesPass,
    InsertFeatureQDQPass,
    LayerShapedWeightsPass,
    QuantizeWeightsPass,
    RoundBiasesPass,
)
from onnxq.pipeline import (
    bit_allocation,
    block_reconstruction,
    layer_rounding,
    modelio,
    pass_selection,
)
from onnxq.pipeline.bit_allocation import Allocation
from onnxq.pipeline.channel_rewrites import ChannelSetReport, rewrite_channels
from onnxq.pipeline.pass_selection import Candidate, automatic_passes, select_passes


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
    channel_sets: list[ChannelSetReport] = dataclasses.field(default_factory=list)
    pass_selection: list[Candidate] = dataclasses.field(default_factory=list)
    blocks: list = dataclasses.field(default_factory=list)  # reconstruction's BlockRecords
    allocation: Allocation | None = None  # what --bit-budget measured and kept


def quantize(
    model: ir.Model,
    config: QuantConfig,
    calibration_images: ImageSet | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = CALIBRATION_BATCH,
    ep: str = "auto",
    calibration_cache: CalibrationCache | None = None,
    verify: bool = False,
    select: bool = True,
) -> QuantizeResult:
    """Quantize ``model`` in place as ``config`` says; features are calibrated on the images.

    Stages, in order: (1) function-preserving rewrites of the float model, (2) the plan of
    weights and features, (3) feature calibration, (4) the Q/DQ passes, (5) block
    reconstruction (``--rounding reconstruct``), (6) biases rounded to the int32 grid integer
    runtimes add them on, (7) metadata.
    ``calibration_cache`` reuses the feature parameters of an identical earlier calibration.
    ``verify`` makes the channel passes of stage (1) check that the outputs did not change.
    ``select`` first probes which automatic channel passes help
    (``onnxq.pipeline.pass_selection``); before that, ``config.bit_budget`` probes each layer's
    sensitivity and adds the layers it keeps at 8 bits to ``keep_8bit``
    (``onnxq.pipeline.bit_allocation``). Every ``auto`` of ``config`` is resolved first
    (``QuantConfig.resolved``); the returned and recorded ``config`` is the one applied.
    """
    start = time.perf_counter()
    name = model.graph.name or "the model"
    modelio.check_float_model(model, name)
    if calibration_images is not None:  # sessions will run images through it
        modelio.check_classifier(model, name)
    elif config.bit_budget is not None:
        raise OnnxqError("--bit-budget measures each layer on calibration images: give --calib DIR")
    config = _resolve(config, calibration_images is not None, has_transformer_ops(model.graph))
    preprocessing = modelio.choose_preprocessing(model, preprocessing, name)
    sample = (
        calibration_images.sample(config.calib_size, config.seed)
        if calibration_images is not None
        else None
    )
    allocation = None
    if config.bit_budget is not None:
        config, allocation = _allocate_bits(model, config, sample, preprocessing, ep)
    selection: list[Candidate] = []
    if select and sample is not None and automatic_passes(config):
        progress.status("probing the automatic channel passes on the calibration images")
        def probe(copy: ir.Model, probe_config: QuantConfig) -> QuantizeResult:
            spent = dataclasses.replace(probe_config, bit_budget=None)  # its layers are in keep_8bit
            return quantize(copy, spent, sample, preprocessing, batch_size, ep, select=False)

        chosen, selection = select_passes(model, config, sample, preprocessing, probe, ep)
        config = chosen.config
    if config.rounding == "reconstruct":
        block_reconstruction.require_torch()
    channel_sets = rewrite_channels(model, config, sample, preprocessing, batch_size, ep, verify)
    reference = layer_rounding.copy_model(model) if config.rounding == "reconstruct" else None
    plan = make_plan(model, config)
    if not plan.weights and not plan.features:
        raise OnnxqError("nothing to quantize: no Conv, Gemm or MatMul with constant weights")
    if plan.features and sample is None:
        raise OnnxqError("quantizing features needs calibration images (--calib DIR)")
    rounding = layer_rounding.prepare(model, plan, config, sample, ep)
    features = _calibrate(
        model, plan, rounding, sample, preprocessing, batch_size, ep, calibration_cache
    )
    if rounding is not None and rounding.sequential:
        weights = _quantize_in_stages(
            model, plan, config, rounding, sample, preprocessing, batch_size, ep
        )
    else:
        choosers = rounding.code_choosers() if rounding is not None else {}
        weights = _quantize_weights(model, plan, config, choosers)
        if rounding is not None and config.bias_correction:
            CorrectBiasPass(rounding.bias_shifts(weights))(model)
    InsertFeatureQDQPass(plan.features, features)(model)
    LayerShapedWeightsPass()(model)
    blocks = []
    if reference is not None:
        weights, blocks = block_reconstruction.reconstruct_blocks(
            model, reference, weights, config, sample, preprocessing, ep
        )
    RoundBiasesPass()(model)
    modelio.set_preprocessing(model, preprocessing)
    model.metadata_props[metadata.QUANTIZATION] = config.to_json()
    model.metadata_props[metadata.VERSION] = __version__
    if allocation is not None:
        model.metadata_props[metadata.BIT_ALLOCATION] = json.dumps(allocation.to_dict())
    if selection:
        model.metadata_props[metadata.PASS_SELECTION] = json.dumps(
            pass_selection.records(selection)
        )
    return QuantizeResult(
        model,
        config,
        plan,
        weights,
        features,
        len(sample) if plan.features or rounding is not None else 0,
        time.perf_counter() - start,
        channel_sets=channel_sets,
        pass_selection=selection,
        blocks=blocks,
        allocation=allocation,
    )


def _allocate_bits(
    model: ir.Model,
    config: QuantConfig,
    sample: ImageSet,
    preprocessing: Preprocessing,
    ep: str,
) -> tuple[QuantConfig, Allocation]:
    """``config`` with the layers ``--bit-budget`` keeps at 8 bits added to ``keep_8bit``."""
    allocation = bit_allocation.allocate(model, config, sample, preprocessing, ep)
    kept = allocation.kept
    progress.status(
        f"--bit-budget {allocation.budget:g}: {len(kept)} of {len(allocation.layers)} layers "
        f"kept at 8 bits by their sensitivity ({allocation.start_bits:.3f} → "
        f"{allocation.bits:.3f} equivalent bits)"
    )
    return dataclasses.replace(config, keep_8bit=config.keep_8bit + kept), allocation


def _resolve(config: QuantConfig, calibrated: bool, transformer: bool) -> QuantConfig:
    """``config.resolved`` for this machine, with a note when 4-bit weights lose GPTQ for want
    of images and when 8-bit weights are kept in the range int8 kernels here multiply safely."""
    resolved = config.resolved(calibrated, transformer)
    if calibrated and config.reduce_range is None and resolved.reduce_range:
        progress.status(
            "[yellow]note:[/] this x86 CPU has no VNNI, so ONNX Runtime's int8 kernels saturate "
            "on full-range int8 weights; 8-bit weights keep 7-bit codes (±63). --full-range "
            "keeps all 8 bits for CPUs with VNNI, GPUs and other runtimes."
        )
    if config.rounding == AUTO and config.weights.bits < 8 and not calibrated:
        progress.status(
            f"[yellow]note:[/] {config.weights.bits}-bit weights are rounded to nearest without "
            "calibration images; --calib DIR enables GPTQ rounding and bias correction."
        )
    return resolved


def _quantize_weights(
    model: ir.Model, plan: QuantPlan, config: QuantConfig, choosers: dict[str, CodeChooser]
) -> dict[str, QuantizedWeight]:
    """Quantize the plan's weights, then decompose the scales of those ``config`` decomposes.

    A decomposed weight gets its codes (``choosers``) once, on the decomposed grid;
    round-to-nearest codes stand in until then.
    """
    decomposed = _decomposed_targets(model, plan) if config.decompose_scales else []
    later = {target.weight for target in decomposed}
    first = {name: chooser for name, chooser in choosers.items() if name not in later}
    floats = {name: model.graph.initializers[name].const_value.numpy() for name in later}
    weights = QuantizeWeightsPass(plan.weights, first)(model).quantized
    if decomposed:
        scales = DecomposeScalesPass(decomposed, floats, config.scale_bits, choosers)(model)
        for name, stored in scales.decomposed.items():
            weights[name] = stored.replace_in(weights[name])
    return weights


def _quantize_in_stages(
    model: ir.Model,
    plan: QuantPlan,
    config: QuantConfig,
    rounding: layer_rounding.LayerRounding,
    images: ImageSet,
    preprocessing: Preprocessing,
    batch_size: int,
    ep: str,
) -> dict[str, QuantizedWeight]:
    """``_quantize_weights`` stage by stage (``--gptq-inputs quantized``): each stage's layer
    statistics come from the network whose earlier stages are quantized and bias-corrected."""
    weights: dict[str, QuantizedWeight] = {}
    count = len(rounding.stages)
    for index, stage in enumerate(rounding.stages):
        if index:
            description = f"GPTQ stage {index + 1}/{count}"
            rounding.observe_stage(model, stage, images, preprocessing, batch_size, ep, description)
        stage_plan = dataclasses.replace(plan, weights=stage)
        quantized = _quantize_weights(model, stage_plan, config, rounding.code_choosers(stage))
        if config.bias_correction:
            CorrectBiasPass(rounding.bias_shifts(quantized, stage))(model)
        rounding.release(stage)
        weights.update(quantized)
    return weights


def _decomposed_targets(model: ir.Model, plan: QuantPlan) -> list[WeightTarget]:
    """The weights whose scales can be decomposed: more than one group per output channel
    (a depthwise convolution's groups are its channels)."""
    initializers = model.graph.initializers
    return [
        target
        for target in plan.weights
        if groups_per_channel(initializers[target.weight].shape, target.out_axis, target.scheme) > 1
    ]


def _calibrate(
    model: ir.Model,
    plan: QuantPlan,
    rounding: layer_rounding.LayerRounding | None,
    images: ImageSet | None,
    preprocessing: Preprocessing,
    batch_size: int,
    ep: str,
    cache: CalibrationCache | None = None,
) -> dict[str, FeatureParams]:
    """One pass over ``images``: the feature parameters of the plan (unless ``cache`` has
    them) and, on the way, the layer inputs that ``rounding`` observes."""
    schemes = {target.tensor: target.scheme for target in plan.features}
    cached = None
    if cache is not None and schemes:
        key = cache.key(model, plan.features, images, preprocessing, batch_size)
        cached = cache.get(key)
    observers = streaming.make_observers(schemes) if cached is None else {}
    sinks = streaming.merge_sinks(
        streaming.observer_sinks(observers), rounding.sinks() if rounding is not None else {}
    )
    if sinks:
        streaming.feed(model, sinks, images, preprocessing, batch_size, ep)
    if cached is not None:
        return cached
    params = {
        name: FeatureParams.from_group_ranges(*observer.ranges(), observer.channels, schemes[name])
        for name, observer in observers.items()
    }
    if cache is not None and schemes:
        cache.put(key, params)
    return params


def quantize_file(
    source: str | Path,
    destination: str | Path,
    config: QuantConfig,
    calibration_images: ImageSet | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = CALIBRATION_BATCH,
    ep: str = "auto",
    verify: bool = False,
    select: bool = True,
) -> QuantizeResult:
    """Load ``source``, quantize it and write ``destination`` (atomically, checker-clean)."""
    model = modelio.load_model(source)
    modelio.check_float_model(model, source)
    if calibration_images is not None:
        modelio.check_classifier(model, source)
    preprocessing = modelio.choose_preprocessing(model, preprocessing, source)
    result = quantize(
        model, config, calibration_images, preprocessing, batch_size, ep, verify=verify,
        select=select,
    )
    modelio.save_model(result.model, destination)
    return result
