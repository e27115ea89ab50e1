"""Keep the automatic channel passes only where they help the quantized network as a whole.

``--smooth`` (α ``auto``) and ``--reorder auto`` decide set by set from an estimate of each
consumer's own error (``onnxq.calibration.quant_error``); a change that lowers that estimate
can still move the network's output further from the float model's. So when either pass is
automatic, onnxq quantizes a copy of the model for every combination of the automatic passes
switched on or off, and compares their outputs on the calibration images with the float model's:
the KL divergence between their softmax outputs, image by image. A combination is kept only when it
is clearly closer to fp32 than every combination with fewer passes: its mean KL is lower by at
least ``SIGNIFICANCE`` standard errors of the per-image paired difference. A pass whose gain is
within the probes' sampling noise is left out, and the simpler model is kept. The probes round
weights to nearest without bias correction (seconds each, where GPTQ takes a minute); passes
given explicitly (``--alpha 0.5``, ``--reorder max``) are always applied.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.base.constants import AUTO
from onnxq.core.config import QuantConfig
from onnxq.io import data, runtime
from onnxq.io.preprocessing import Preprocessing

#: Logit batches for the comparison.
BATCH = 32
#: Standard errors of the paired per-image KL difference a pass must gain to be kept.
SIGNIFICANCE = 2.0


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One combination of the automatic passes and how far its quantized outputs moved."""

    passes: tuple[str, ...]  # the automatic passes it keeps, e.g. ("smooth", "reorder")
    config: QuantConfig
    #: KL(float ‖ quantized) of every calibration image.
    divergences: np.ndarray = dataclasses.field(compare=False, repr=False)

    @property
    def divergence(self) -> float:
        """The mean KL divergence over the calibration images."""
        return float(np.mean(self.divergences))

    @property
    def label(self) -> str:
        return " + ".join(self.passes) or "neither"

    def to_dict(self) -> dict:
        return {"passes": list(self.passes), "divergence": self.divergence}


def describe(probes: list[dict]) -> str:
    """``kept reorder (KL from fp32 on the calibration images: smooth + reorder 0.39, ...)``."""
    def label(probe: dict) -> str:
        return " + ".join(probe["passes"]) or "neither"

    kept = next((label(p) for p in probes if p.get("kept")), "unrecorded")
    listed = ", ".join(f"{label(p)} {p['divergence']:.4g}" for p in probes)
    return f"kept {kept} (KL from fp32 on the calibration images: {listed})"


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


def clearly_closer(candidate: Candidate, other: Candidate) -> bool:
    """Whether ``candidate``'s mean KL is below ``other``'s by ``SIGNIFICANCE`` standard errors
    of their per-image difference (the same images in the same order)."""
    gain = np.asarray(other.divergences, np.float64) - np.asarray(candidate.divergences, np.float64)
    if gain.mean() <= 0:
        return False
    if len(gain) < 2:
        return True
    return bool(gain.mean() >= SIGNIFICANCE * gain.std(ddof=1) / np.sqrt(len(gain)))


def choose(candidates: list[Candidate]) -> Candidate:
    """The least divergent candidate that is clearly closer to fp32 than every candidate that
    keeps only some of its passes; the candidate without passes needs no such proof."""
    ranked = sorted(candidates, key=lambda c: (c.divergence, len(c.passes)))
    for candidate in ranked:
        simpler = [c for c in candidates if set(c.passes) < set(candidate.passes)]
        if all(clearly_closer(candidate, other) for other in simpler):
            return candidate
    return ranked[0]


def records(candidates: list[Candidate]) -> list[dict]:
    """The probes as the metadata and the summaries list them, the chosen one marked ``kept``."""
    chosen = choose(candidates) if candidates else None
    return [{**c.to_dict(), "kept": c is chosen} for c in candidates]


#: Quantizes a copy of the model in place with a probe's config (the whole pipeline, no
#: selection); ``onnxq.pipeline.quantize`` passes its own ``quantize``.
Quantizer = Callable[[ir.Model, QuantConfig], object]


def select_passes(
    model: ir.Model,
    config: QuantConfig,
    images: data.ImageSet,
    preprocessing: Preprocessing,
    quantize: Quantizer,
    ep: str = "auto",
) -> tuple[Candidate, list[Candidate]]:
    """Probe every on/off combination of ``config``'s automatic passes on ``images``.

    Returns the chosen candidate and all of them (the first keeps every automatic pass).
    ``model`` is not modified; each probe is a copy that ``quantize`` quantizes.
    """
    automatic = automatic_passes(config)
    reference = _logits(model, images, preprocessing, ep)
    candidates = []
    for count in range(len(automatic), -1, -1):
        for kept in itertools.combinations(automatic, count):
            candidate = with_passes(config, kept)
            probe = dataclasses.replace(candidate, rounding="nearest", bias_correction=False)
            copy = _clone(model)
            quantize(copy, probe)
            logits = _logits(copy, images, preprocessing, ep)
            candidates.append(Candidate(kept, candidate, kl_per_image(reference, logits)))
    return choose(candidates), candidates


def _clone(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _logits(
    model: ir.Model, images: data.ImageSet, preprocessing: Preprocessing, ep: str
) -> np.ndarray:
    """The model's first output over ``images``, ``[N, classes]`` float64."""
    session = runtime.create_session(model, ep)
    input_name = session.get_inputs()[0].name
    parts = []
    for pixels, _ in data.iter_batches(images, preprocessing, BATCH):
        logits = session.run(None, {input_name: pixels})[0].astype(np.float64)
        parts.append(logits.reshape(len(logits), -1))
    return np.concatenate(parts)


def kl_per_image(reference_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """``KL(softmax(reference_logits) ‖ softmax(logits))`` of every row, in nats, from
    log-softmaxes (no probability underflows to zero)."""
    log_p, log_q = _log_softmax(reference_logits), _log_softmax(logits)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
