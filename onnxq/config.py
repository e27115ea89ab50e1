"""The full description of one quantization run, recorded in the output model's metadata."""

from __future__ import annotations

import dataclasses
import json

from onnxq.errors import OnnxqError
from onnxq.schemes import Scheme

METADATA_KEY = "onnxq.quantization"

#: Ops whose constant weights are quantized and whose feature inputs get Q/DQ by default.
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
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


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    ``features`` is None for weight-only quantization. ``keep_8bit`` names layers that keep
    8-bit weights and features: ``first``, ``last``, node names, or op types (all nodes of that
    type). ``ops`` are the op types whose inputs are quantized.
    """

    weights: Scheme
    features: Scheme | None = None
    calib_size: int = 128
    keep_8bit: tuple[str, ...] = ()
    ops: tuple[str, ...] = WEIGHT_OPS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [op for op in self.ops if op not in WEIGHT_OPS + FEATURE_OPS]
        if unknown:
            raise OnnxqError(
                f"cannot quantize op type {unknown[0]!r} "
                f"(supported: {', '.join(WEIGHT_OPS + FEATURE_OPS)})"
            )
        if self.calib_size < 1:
            raise OnnxqError(f"calibration size must be at least 1, got {self.calib_size}")

    def to_dict(self) -> dict:
        return {
            "weights": self.weights.to_dict(),
            "features": self.features.to_dict() if self.features else None,
            "calib_size": self.calib_size,
            "keep_8bit": list(self.keep_8bit),
            "ops": list(self.ops),
            "seed": self.seed,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> QuantConfig:
        return cls(
            weights=Scheme.from_dict(data["weights"]),
            features=Scheme.from_dict(data["features"]) if data.get("features") else None,
            calib_size=data.get("calib_size", 128),
            keep_8bit=tuple(data.get("keep_8bit", ())),
            ops=tuple(data.get("ops", WEIGHT_OPS)),
            seed=data.get("seed", 0),
        )
