"""Result rows and markdown tables in the seed log's format."""

from __future__ import annotations

import dataclasses

from onnxq.core.config import QuantConfig
from onnxq.reporting.evaluate import EvalResult

HEADER = ("model", "w_bit", "f bit", "w Qscheme", "groupsize", "top1 acc", "top5 acc", "remark")
#: The sweep's default columns: the seed's, with the equivalent weight bits before the remark.
SWEEP_HEADER = HEADER[:-1] + ("Equivalent wbit", "remark")
#: The demo's columns: the sweep's, with top-1 agreement with the float model (few images show
#: that better than top-1).
DEMO_HEADER = SWEEP_HEADER[:-1] + ("fp32 agreement", "remark")
#: Every column a sweep table may show (``f Qscheme`` in place of ``w Qscheme`` for feature
#: studies); sweep records keep a digest of the predictions, not the predictions themselves.
SPEC_COLUMNS = SWEEP_HEADER + ("f Qscheme",)
#: Every column a table may show.
COLUMNS = SPEC_COLUMNS + ("fp32 agreement",)
#: How a cell shows its reference: ``65.304(-0.054)`` (delta) or ``65.304(65.358)`` (value).
REFERENCE_STYLES = ("delta", "value")


@dataclasses.dataclass(frozen=True)
class Reference:
    """The numbers a row is compared with, and how the comparison is written."""

    top1: float
    top5: float
    wbit: float | None = None
    style: str = "delta"


def format_accuracy(value: float, reference: float | None = None, style: str = "delta") -> str:
    """``65.304``, ``65.304(-0.054)`` or ``65.304(65.358)``: three decimals, as in the seed."""
    text = f"{value:.3f}"
    if reference is None:
        return text
    if style == "value":
        return f"{text}({reference:.3f})"
    return f"{text}({_signed(round(value, 3) - round(reference, 3), 3)})"


def format_wbit(value: float | None, reference: float | None = None, style: str = "delta") -> str:
    """``4.06``, ``4.06(-0.08)``, ``8.64(-15.9)`` or ``4.06(4.14)``; whole numbers (32) bare."""
    if value is None:
        return ""
    text = _bits(value)
    if reference is None:
        return text
    if style == "value":
        return f"{text}({_bits(reference)})"
    difference = round(value, 2) - round(reference, 2)
    return f"{text}({_signed(difference, 1 if abs(difference) >= 10 else 2)})"


def _bits(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _signed(difference: float, decimals: int) -> str:
    difference = round(difference, decimals) or 0.0  # never "-0.000"
    return f"{difference:+.{decimals}f}"


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
    f_scheme: str = " /"
    f_group_size: str = "/"
    wbit: float | None = None  # equivalent weight bits
    reference: Reference | None = None
    agreement: float | None = None  # percent of images where the float model's top-1 is kept

    @classmethod
    def float_baseline(cls, model: str, result: EvalResult) -> Row:
        return cls(
            model, "float32", "float32", " /", "/", result.top1, result.top5, "float baseline",
            wbit=32.0,
        )

    @classmethod
    def from_config(
        cls,
        model: str,
        config: QuantConfig,
        result: EvalResult,
        remark: str = "",
        wbit: float | None = None,
        reference: Reference | None = None,
    ) -> Row:
        weights, features = config.weights, config.features
        return cls(
            model,
            str(weights.bits),
            str(features.bits) if features else "float32",
            weights.name,
            _group_size(weights.group_size),
            result.top1,
            result.top5,
            remark,
            features.name if features else " /",
            _group_size(features.group_size) if features else "/",
            wbit,
            reference,
        )

    def cells(self, columns: tuple[str, ...] = HEADER) -> tuple[str, ...]:
        """The row's text under ``columns`` (names from ``COLUMNS``).

        ``groupsize`` is that of the features when the table shows ``f Qscheme`` and not
        ``w Qscheme``, else that of the weights.
        """
        feature_table = "f Qscheme" in columns and "w Qscheme" not in columns
        ref, style = self.reference, self.reference.style if self.reference else "delta"
        texts = {
            "model": self.model,
            "w_bit": self.w_bit,
            "f bit": self.f_bit,
            "w Qscheme": self.w_scheme,
            "f Qscheme": self.f_scheme,
            "groupsize": self.f_group_size if feature_table else self.group_size,
            "top1 acc": format_accuracy(self.top1, ref.top1 if ref else None, style),
            "top5 acc": format_accuracy(self.top5, ref.top5 if ref else None, style),
            "Equivalent wbit": format_wbit(self.wbit, self._wbit_reference(), style),
            "fp32 agreement": "" if self.agreement is None else f"{self.agreement:.1f}%",
            "remark": self.remark,
        }
        return tuple(texts[column] for column in columns)

    def _wbit_reference(self) -> float | None:
        """The reference's bits, shown only when they differ from the row's (as the seed does)."""
        ref = self.reference
        if ref is None or ref.wbit is None or self.wbit is None:
            return None
        return None if round(ref.wbit, 2) == round(self.wbit, 2) else ref.wbit


def _group_size(size: int | None) -> str:
    return str(size) if size else "/"


def markdown_table(
    rows: list[Row], columns: tuple[str, ...] = HEADER, header: bool = True
) -> str:
    """``|model|w_bit|f bit|w Qscheme|groupsize|top1 acc|top5 acc|remark|`` with one line per row.

    ``columns`` picks and orders the columns (see ``COLUMNS``); ``header=False`` continues a
    table (the seed writes some tables as blocks separated by blank lines).
    """
    unknown = [column for column in columns if column not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown table column {unknown[0]!r}")
    lines = ["|" + "|".join(columns) + "|", "|" + "|".join("---" for _ in columns) + "|"]
    lines = lines if header else []
    lines += ["|" + "|".join(row.cells(columns)) + "|" for row in rows]
    return "\n".join(lines)
