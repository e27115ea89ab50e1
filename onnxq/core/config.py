"""The full description of one quantization run, recorded in the output model's metadata."""

from __future__ import annotations

import dataclasses
import json

from onnxq.base.constants import (
    ACT_SCALES,
    AUTO,
    FEATURE_OPS,
    GPTQ_INPUTS,
    PLACEMENTS,
    RECONSTRUCT_ITERATIONS,
    REORDER_KEYS,
    ROUNDINGS,
    WEIGHT_OPS,
)
from onnxq.base import host
from onnxq.base.errors import OnnxqError
from onnxq.core.schemes import MAX_BITS, MIN_BITS, Granularity, Scheme, reduced_range


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    ``features`` is None for weight-only quantization. ``keep_8bit`` names layers that keep
    8-bit weights and features: ``first``, ``last``, ``depthwise`` (every depthwise Conv),
    ``depthwise3x3`` (those with 3×3 kernels), ``highres`` (layers whose output is at most 4×
    smaller per side than the image: the stem and the first stage), node names, or op types
    (all nodes of that type). ``bit_budget`` (equivalent weight bits, as ``report`` counts them)
    adds the layers whose low-bit weights move the network's output most per added bit, measured
    on the calibration images, while the budget allows (``onnxq.pipeline.bit_allocation``); the
    recorded config lists them in ``keep_8bit``.
    ``ops`` are the op types whose inputs are quantized. ``placement`` says where feature
    Q/DQ pairs go (see ``onnxq.analysis.placement``): on the ``inputs`` of those ops, or
    ``fused``, the layout ONNX Runtime runs as integer kernels.

    The channel passes run first, on the float model: ``smooth_alpha`` (None: off; ``"auto"``:
    searched per set) migrates activation range into weights with ``s = (absmax·k)^α /
    w^(1-α)`` (``act_scale`` picks ``k``), folded into the producers, or with an explicit Mul
    where folding is impossible if ``smooth_mul``; ``reorder`` (None: off) sorts the channels of
    every set by that key (``"auto"``: the key, if any, that lowers the estimated error most).

    ``decompose_scales`` stores per-group weight scales as a per-channel float times
    ``scale_bits``-bit integer codes (see ``onnxq.core.scale_decomposition``).

    ``rounding`` chooses weight codes on the observer's grid: ``nearest``, or ``gptq`` (error
    compensation over each layer's calibration inputs); ``bias_correction`` subtracts each
    layer's mean output shift from its bias (see ``onnxq.pipeline.layer_rounding``). Both
    measure each layer's inputs in the float network (``gptq_inputs`` ``float``, one pass), or
    in ``gptq_stages`` stages, each from the network whose earlier stages are quantized, fitted
    to the float network's output (``quantized``, one more pass per stage). ``reconstruct``
    starts from GPTQ's codes and bias correction and learns each block's rounding and feature
    scales against the float block's output, ``reconstruct_iterations`` steps per block
    (``onnxq.reconstruction``; needs torch), its random batches, crops and QDrop masks drawn
    from ``reconstruct_seed`` (None: ``seed``).

    ``reduce_range`` limits 8-bit symmetric weights to 7-bit codes (±63), so that ONNX Runtime's
    u8×s8 kernels cannot saturate on x86 CPUs without VNNI (``onnxq.base.host``).

    ``placement``, ``rounding``, ``bias_correction`` and ``reduce_range`` default to ``auto``
    (None for the last two): ``resolved`` turns them into what a run applies, the same for the command line,
    this API, sweeps and the demo. ``quantize`` resolves its config first and records the result.
    """

    weights: Scheme
    features: Scheme | None = None
    calib_size: int = 128
    keep_8bit: tuple[str, ...] = ()
    bit_budget: float | None = None
    ops: tuple[str, ...] = WEIGHT_OPS
    seed: int = 0
    placement: str = AUTO
    smooth_alpha: float | str | None = None
    act_scale: str = "absmax"
    smooth_mul: bool = False
    reorder: str | None = None
    decompose_scales: bool = False
    scale_bits: int = 4
    rounding: str = AUTO
    bias_correction: bool | None = None
    reduce_range: bool | None = None
    gptq_inputs: str = "float"
    gptq_stages: int = 4
    reconstruct_iterations: int = RECONSTRUCT_ITERATIONS
    reconstruct_seed: int | None = None

    def __post_init__(self) -> None:
        unknown = [op for op in self.ops if op not in WEIGHT_OPS + FEATURE_OPS]
        if unknown:
            raise OnnxqError(
                f"cannot quantize op type {unknown[0]!r} "
                f"(supported: {', '.join(WEIGHT_OPS + FEATURE_OPS)})"
            )
        if self.placement not in PLACEMENTS + (AUTO,):
            choices = ", ".join(PLACEMENTS + (AUTO,))
            raise OnnxqError(f"unknown feature placement {self.placement!r} (choose from {choices})")
        if self.bit_budget is not None and not self.bit_budget > 0:
            raise OnnxqError(f"--bit-budget must be a positive number of bits, got {self.bit_budget}")
        if self.calib_size < 1:
            raise OnnxqError(f"calibration size must be at least 1, got {self.calib_size}")
        if self.smooth_alpha not in (None, AUTO) and not 0.0 <= self.smooth_alpha <= 1.0:
            raise OnnxqError(f"--alpha must be 'auto' or between 0 and 1, got {self.smooth_alpha}")
        if self.act_scale not in ACT_SCALES:
            raise OnnxqError(
                f"unknown --act-scale {self.act_scale!r} (choose from {', '.join(ACT_SCALES)})"
            )
        if self.reorder not in (None, AUTO) + REORDER_KEYS:
            raise OnnxqError(
                f"unknown --reorder key {self.reorder!r} "
                f"(choose from {', '.join((AUTO,) + REORDER_KEYS)})"
            )
        if self.decompose_scales and self.weights.granularity is not Granularity.GROUP:
            raise OnnxqError(
                f"--decompose-scales needs a per-group weight scheme ({self.weights.name} has "
                "one scale per output channel or tensor: nothing to decompose)"
            )
        if not MIN_BITS <= self.scale_bits <= MAX_BITS:
            raise OnnxqError(
                f"--scale-bits must be between {MIN_BITS} and {MAX_BITS}, got {self.scale_bits}"
            )
        if self.reduce_range not in (None, True, False):
            raise OnnxqError(f"reduce_range must be true or false, got {self.reduce_range!r}")
        if self.gptq_inputs not in GPTQ_INPUTS:
            raise OnnxqError(
                f"unknown --gptq-inputs {self.gptq_inputs!r} (choose from {', '.join(GPTQ_INPUTS)})"
            )
        if self.gptq_stages < 1:
            raise OnnxqError(f"--gptq-stages must be at least 1, got {self.gptq_stages}")
        if self.reconstruct_iterations < 0:
            raise OnnxqError(
                f"--reconstruct-iters must be at least 0, got {self.reconstruct_iterations}"
            )
        if self.rounding not in ROUNDINGS + (AUTO,):
            raise OnnxqError(
                f"unknown --rounding {self.rounding!r} (choose from {', '.join(ROUNDINGS + (AUTO,))})"
            )

    def resolved(
        self, calibrated: bool, transformer: bool = False, int8_saturates: bool | None = None
    ) -> QuantConfig:
        """This config with every ``auto`` decided; ``calibrated``: calibration images are given;
        ``transformer``: the graph has transformer ops (``placement.TRANSFORMER_OPS``);
        ``int8_saturates``: int8 kernels saturate (None: on this machine,
        ``host.int8_kernels_saturate``).

        * placement ``auto``: ``fused`` (the layout ONNX Runtime runs as int8 kernels) when
          weights and features are both 8-bit and the graph is no transformer, else ``inputs``
          (fused per-tensor ranges on a transformer's residual stream, attention and GELU drop
          ViT-B/16's worst-image logit cosine with fp32 to 0.84; ``inputs`` keeps 0.9988);
        * reduce range unset: on where int8 kernels saturate, features are quantized and weights
          are symmetric (int8 codes that such kernels read); elsewhere the full 8 bits;
        * rounding ``auto``: ``gptq`` for weights under 8 bits (reduced-range 8-bit weights are
          7-bit) when calibrated, else ``nearest``;
        * bias correction unset: on with ``gptq`` and ``reconstruct`` rounding.
        """
        placement = self.placement
        if placement == AUTO:
            eight_bit = self.features is not None and self.weights.bits == self.features.bits == 8
            placement = "fused" if eight_bit and not transformer else "inputs"
        reduce_range = self.reduce_range
        if reduce_range is None:
            if int8_saturates is None:
                int8_saturates = host.int8_kernels_saturate()
            reduce_range = int8_saturates and self.features is not None and self.weights.symmetric
        rounding = self.rounding
        if rounding == AUTO:
            weights = reduced_range(self.weights) if reduce_range else self.weights
            rounding = "gptq" if weights.bits < 8 and calibrated else "nearest"
        bias_correction = self.bias_correction
        if bias_correction is None:
            bias_correction = rounding in ("gptq", "reconstruct")
        return dataclasses.replace(
            self, placement=placement, rounding=rounding, bias_correction=bias_correction,
            reduce_range=reduce_range,
        )

    def rounding_notes(self) -> list[str]:
        """What this (resolved) config does beyond round-to-nearest, e.g. ``gptq rounding``."""
        notes = [f"{self.rounding} rounding"] if self.rounding != "nearest" else []
        if self.rounding == "reconstruct":
            seed = "" if self.reconstruct_seed is None else f", seed {self.reconstruct_seed}"
            notes[-1] += f" ({self.reconstruct_iterations} steps per block{seed}, from gptq)"
        notes += ["bias correction"] * bool(self.bias_correction)
        if self.gptq_inputs == "quantized" and (self.rounding != "nearest" or self.bias_correction):
            notes.append(f"inputs from the quantized network in {self.gptq_stages} stages")
        return notes + ["8-bit weights in reduced range (±63)"] * bool(self.reduce_range)

    @property
    def is_resolved(self) -> bool:
        """No setting is left to ``resolved``."""
        return (
            AUTO not in (self.placement, self.rounding)
            and self.bias_correction is not None
            and self.reduce_range is not None
        )

    def to_dict(self) -> dict:
        return {
            "weights": self.weights.to_dict(),
            "features": self.features.to_dict() if self.features else None,
            "calib_size": self.calib_size,
            "keep_8bit": list(self.keep_8bit),
            "bit_budget": self.bit_budget,
            "ops": list(self.ops),
            "seed": self.seed,
            "placement": self.placement,
            "smooth_alpha": self.smooth_alpha,
            "act_scale": self.act_scale,
            "smooth_mul": self.smooth_mul,
            "reorder": self.reorder,
            "decompose_scales": self.decompose_scales,
            "scale_bits": self.scale_bits,
            "rounding": self.rounding,
            "bias_correction": self.bias_correction,
            "reduce_range": self.reduce_range,
            "gptq_inputs": self.gptq_inputs,
            "gptq_stages": self.gptq_stages,
            "reconstruct_iterations": self.reconstruct_iterations,
            "reconstruct_seed": self.reconstruct_seed,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> QuantConfig:
        """The inverse of ``to_dict``, for recorded (resolved) configs: a key that a record
        written before its setting existed lacks takes the value that leaves the technique off
        (``techniques_off``)."""
        fields = {field.name for field in dataclasses.fields(cls)} - {"weights", "features"}
        settings = {key: value for key, value in data.items() if key in fields}
        for key in ("keep_8bit", "ops"):
            if key in settings:
                settings[key] = tuple(settings[key])
        return cls(
            weights=Scheme.from_dict(data["weights"]),
            features=Scheme.from_dict(data["features"]) if data.get("features") else None,
            **{**_TECHNIQUES_OFF, **settings},
        )


#: The settings of ``techniques_off`` that differ from the fields' defaults.
_TECHNIQUES_OFF = {
    "placement": "inputs", "rounding": "nearest", "bias_correction": False, "reduce_range": False,
}


def techniques_off(weights: Scheme, features: Scheme | None = None) -> QuantConfig:
    """The resolved config with every technique off: round-to-nearest, no bias correction,
    feature Q/DQ on the inputs. Run ids and plot labels name what a config changes from this,
    so they stay the same when a default changes."""
    return QuantConfig(weights=weights, features=features, **_TECHNIQUES_OFF)
