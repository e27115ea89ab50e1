"""Plots of sweep results: top-1 accuracy against equivalent weight bits."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from onnxq.calibration.cache import write_atomically


@dataclasses.dataclass(frozen=True)
class Point:
    series: str  # one line per series (scheme or technique)
    wbit: float
    top1: float
    label: str = ""  # written beside the marker, e.g. the group size


def plot_accuracy_vs_bits(
    points: Sequence[Point], float_top1: Mapping[str, float], title: str, path: Path
) -> None:
    """One line per series through its points (sorted by bits), a dashed line per float model."""
    figure = Figure(figsize=(7.5, 4.8), dpi=110)
    axes = figure.add_subplot()
    for series in dict.fromkeys(point.series for point in points):
        members = sorted((p for p in points if p.series == series), key=lambda p: p.wbit)
        axes.plot([p.wbit for p in members], [p.top1 for p in members], marker="o", label=series)
        for point in members:
            axes.annotate(
                point.label, (point.wbit, point.top1), textcoords="offset points",
                xytext=(3, 4), fontsize=7, alpha=0.8,
            )
    for model, top1 in float_top1.items():
        axes.axhline(top1, linestyle="--", color="0.4", linewidth=1)
        axes.annotate(
            f"fp32 {model}: {top1:.1f}", (0.01, top1), xycoords=("axes fraction", "data"),
            textcoords="offset points", xytext=(0, 3), fontsize=8, color="0.3",
        )
    axes.set_xscale("log", base=2)  # 4..5 bits matter more than 16..32
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xticks([b for b in (4, 5, 6, 8, 12, 16, 24, 32) if _within(b, points)])
    axes.set_xlabel("equivalent weight bits (log scale)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if points:
        axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    write_atomically(path, lambda file: file.write(buffer.getvalue()))


def _within(bits: float, points: Sequence[Point]) -> bool:
    low = min((p.wbit for p in points), default=4)
    high = max((p.wbit for p in points), default=32)
    return low / 1.1 <= bits <= high * 1.1
