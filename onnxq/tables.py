"""Result rows and markdown tables in the seed log's format."""

from __future__ import annotations

import dataclasses

from onnxq.config import QuantConfig
from onnxq.evaluate import EvalResult

HEADER = ("model", "w_bit", "f bit", "w Qscheme", "groupsize", "top1 acc", "top5 acc", "remark")


@dataclasses.dataclass(frozen=True)
class Row:
    model: str
    w_bit: str
    f_bit: str
    w_scheme: str
    group_size: str
    top1: float
    top5: float
    remark: str = ""

    @classmethod
    def float_baseline(cls, model: str, result: EvalResult) -> Row:
        return cls(model, "float32", "float32", " /", "/", result.top1, result.top5, "float baseline")

    @classmethod
    def from_config(cls, model: str, config: QuantConfig, result: EvalResult, remark: str = "") -> Row:
        weights = config.weights
        return cls(
            model,
            str(weights.bits),
            str(config.features.bits) if config.features else "float32",
            weights.name,
            str(weights.group_size) if weights.group_size else "/",
            result.top1,
            result.top5,
            remark,
        )

    def cells(self) -> tuple[str, ...]:
        return (
            self.model, self.w_bit, self.f_bit, self.w_scheme, self.group_size,
            f"{self.top1:.3f}", f"{self.top5:.3f}", self.remark,
        )


def markdown_table(rows: list[Row]) -> str:
    """``|model|w_bit|f bit|w Qscheme|groupsize|top1 acc|top5 acc|remark|`` with one line per row."""
    lines = ["|" + "|".join(HEADER) + "|", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["|" + "|".join(row.cells()) + "|" for row in rows]
    return "\n".join(lines)
