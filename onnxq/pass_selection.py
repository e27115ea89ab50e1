"""Keep the automatic channel passes only where they help the quantized network as a whole.

``--smooth`` (α ``auto``) and ``--reorder auto`` decide set by set from an estimate of each
consumer's own error (``onnxq.quant_error``); a change that lowers that estimate can still move
the network's output further from the float model's. So when either pass is automatic, onnxq
quantizes a copy of the model for every combination of the automatic passes switched on or
off, and keeps the combination whose outputs on the calibration images are closest to the
float model's: the smallest mean KL divergence between their softmax outputs. The probes round
weights to nearest without bias correction (seconds each, where GPTQ takes a minute); passes
given explicitly (``--alpha 0.5``, ``--reorder max``) are always applied.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import onnx_ir as ir

from onnxq import data, runtime
from onnxq.channels import AUTO
from onnxq.config import QuantConfig
from onnxq.preprocessing import Preprocessing

#: Logit batches for the comparison.
BATCH = 32
#: ``metadata_props`` key of the probes, as ``Candidate.to_dict`` records.
METADATA_KEY = "onnxq.pass_selection"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One combination of the automatic passes and how far its quantized outputs moved."""

    passes: tuple[str, ...]  # the automatic passes it keeps, e.g. ("smooth", "reorder")
    config: QuantConfig
    divergence: float  # mean KL(float ‖ quantized) over the calibration images

    @property
    def label(self) -> str:
        return " + ".join(self.passes) or "neither"

    def to_dict(self) -> dict:
        return {"passes": list(self.passes), "divergence": self.divergence}


def describe(probes: list[dict]) -> str:
    """``kept reorder (KL from fp32 on the calibration images: smooth + reorder 0.39, ...)``."""
    def label(probe: dict) -> str:
        return " + ".join(probe["passes"]) or "neither"

    kept = min(probes, key=lambda p: (p["divergence"], len(p["passes"])))
    listed = ", ".join(f"{label(p)} {p['divergence']:.4g}" for p in probes)
    return f"kept {label(kept)} (KL from fp32 on the calibration images: {listed})"


def automatic_passes(config: QuantConfig) -> tuple[str, ...]:
    """The channel passes that ``config`` leaves to ``auto``."""
    return tuple(
        name
        for name, automatic in (
            ("smooth", config.smooth_alpha == AUTO),
            ("reorder", config.reorder == AUTO),
        )
        if automatic
    )


def with_passes(config: QuantConfig, kept: tuple[str, ...]) -> QuantConfig:
    """``config`` with the automatic passes not in ``kept`` switched off."""
    dropped = set(automatic_passes(config)) - set(kept)
    changes: dict = {}
    if "smooth" in dropped:
        changes.update(smooth_alpha=None, act_scale="absmax", smooth_mul=False)
    if "reorder" in dropped:
        changes["reorder"] = None
    return dataclasses.replace(config, **changes)


def choose(candidates: list[Candidate]) -> Candidate:
    """The least divergent candidate; on a tie, the one with fewer passes."""
    return min(candidates, key=lambda c: (c.divergence, len(c.passes)))


def select_passes(
    model: ir.Model,
    config: QuantConfig,
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int,
    ep: str = "auto",
) -> tuple[Candidate, list[Candidate]]:
    """Probe every on/off combination of ``config``'s automatic passes on ``images``.

    Returns the chosen candidate and all of them (the first keeps every automatic pass).
    ``model`` is not modified.
    """
    from onnxq.quantize import quantize  # the probes run the whole pipeline

    automatic = automatic_passes(config)
    reference = _softmax_outputs(model, images, preprocessing, ep)
    candidates = []
    for count in range(len(automatic), -1, -1):
        for kept in itertools.combinations(automatic, count):
            candidate = with_passes(config, kept)
            probe = dataclasses.replace(candidate, rounding="nearest", bias_correction=False)
            copy = _clone(model)
            quantize(copy, probe, images, preprocessing, batch_size, ep, select=False)
            outputs = _softmax_outputs(copy, images, preprocessing, ep)
            candidates.append(Candidate(kept, candidate, _mean_kl(reference, outputs)))
    return choose(candidates), candidates


def _clone(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _softmax_outputs(
    model: ir.Model, images: data.ImageSet, preprocessing: Preprocessing, ep: str
) -> np.ndarray:
    """Softmax of the model's first output over ``images``, ``[N, classes]`` float64."""
    session = runtime.create_session(model, ep)
    input_name = session.get_inputs()[0].name
    parts = []
    for pixels, _ in data.iter_batches(images, preprocessing, BATCH):
        logits = session.run(None, {input_name: pixels})[0].astype(np.float64)
        logits = logits.reshape(len(logits), -1)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        parts.append(exp / exp.sum(axis=1, keepdims=True))
    return np.concatenate(parts)


def _mean_kl(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Mean over rows of ``KL(reference ‖ outputs)``."""
    tiny = np.finfo(np.float64).tiny
    ratio = np.log(np.maximum(reference, tiny)) - np.log(np.maximum(outputs, tiny))
    return float((reference * ratio).sum(axis=1).mean())
