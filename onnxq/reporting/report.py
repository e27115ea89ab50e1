"""``onnxq report``: a quantized model's per-layer bits as a terminal table, markdown or JSON."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from onnxq.pipeline import pass_selection
from onnxq.reporting.accounting import ModelAccount, WeightAccount

COLUMNS = (
    "layer", "op", "shape", "scheme", "bits", "gs", "w/group",
    "scale b", "zp b", "channel b", "overhead b/w", "equiv bits",
)
#: Width of the table when printing to a file or pipe (a terminal uses its own width).
_PLAIN_WIDTH = 200


def layer_cells(weight: WeightAccount) -> tuple[str, ...]:
    """One table row; a layer outside the totals has its equivalent bits in parentheses."""
    equivalent = f"{weight.equivalent_bits:.2f}"
    return (
        weight.layer,
        weight.op,
        "×".join(str(d) for d in weight.shape),
        weight.scheme,
        str(weight.bits),
        str(weight.group_channels) if weight.group_channels else "/",
        str(weight.group_elements),
        str(weight.scale_bits) if weight.bits < 32 else "/",
        str(weight.zero_point_bits) if weight.bits < 32 else "/",
        str(weight.channel_bits) if weight.decomposed else "/",
        f"{weight.overhead_per_weight:.3f}",
        equivalent if weight.counted else f"({equivalent})",
    )


def summary_lines(report: ModelAccount) -> list[str]:
    """The totals, the uncounted layers, the feature schemes and the channel sets, as lines."""
    counted_ops = "Conv, Gemm and MatMul" if report.include_fc else "Conv"
    lines = [
        f"{counted_ops} weights: {report.elements:,} in {len(report.counted)} layers, "
        f"{report.equivalent_bits:.2f} equivalent bits per weight",
        f"size: fp32 {_size(report.float_bytes)}, packed {_size(report.packed_bytes)} "
        f"({report.compression:.2f}x smaller)",
    ]
    decomposed = [w for w in report.weights if w.decomposed]
    if decomposed:
        offset = " and offset" if decomposed[0].scheme.endswith("affine") else ""
        lines.append(
            f"decomposed scales in {len(decomposed)} layers: per group a "
            f"{decomposed[0].scale_bits}-bit scale code (scale b), per output channel a float "
            f"scale{offset} (channel b)"
        )
    uncounted = [w for w in report.weights if not w.counted]
    if uncounted:
        names = ", ".join(f"{w.layer} ({w.op}, {w.elements:,} weights)" for w in uncounted)
        lines.append(f"not counted: {names}; --include-fc counts them")
    schemes = report.feature_schemes()
    if schemes:
        described = ", ".join(f"{count} × {label}" for label, count in schemes.items())
        lines.append(f"features: {described}")
    else:
        lines.append("features: float (weight-only)")
    if report.channel_sets is not None:
        lines.append(f"channel sets: {_channel_sets(report.channel_sets)}")
    if report.pass_selection:
        lines.append(f"automatic channel passes: {pass_selection.describe(report.pass_selection)}")
    if report.bit_allocation:
        lines.append(f"bit budget: {_bit_allocation(report.bit_allocation)}")
    if report.config is None:
        lines.append("no onnxq configuration recorded: schemes and bits inferred from the graph")
    return lines


def markdown(report: ModelAccount) -> str:
    """The per-layer table and the summary in markdown."""
    lines = ["|" + "|".join(COLUMNS) + "|", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["|" + "|".join(layer_cells(weight)) + "|" for weight in report.weights]
    return "\n".join(lines + [""] + [f"- {line}" for line in summary_lines(report)]) + "\n"


def print_table(report: ModelAccount, title: str, console: Console | None = None) -> None:
    """A rich table on the terminal, then the summary lines."""
    table = Table(title=title, title_justify="left")
    numeric = set(COLUMNS[4:])
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in numeric else "left")
    for weight in report.weights:
        table.add_row(*layer_cells(weight), style=None if weight.counted else "dim")
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=_PLAIN_WIDTH, file=console.file)
    console.print(Group(table, *(Text(line) for line in summary_lines(report))))


def _size(size: float) -> str:
    if size >= 2**20:
        return f"{size / 2**20:.2f} MiB"
    return f"{size / 2**10:.2f} KiB"


def _bit_allocation(allocation: dict) -> str:
    """``4.3: 10 of 48 layers kept at 8 bits by sensitivity (4.228 → 4.276 equivalent bits)``."""
    layers = allocation["layers"]
    kept = sum(layer["kept"] for layer in layers)
    return (
        f"{allocation['budget']:g}: {kept} of {len(layers)} layers kept at 8 bits by sensitivity "
        f"({allocation['start_bits']:.3f} → {allocation['bits']:.3f} equivalent bits)"
    )


def _channel_sets(sets: Sequence[dict]) -> str:
    """``N sets; smooth: 12 applied, 3 skipped; reorder: ...`` from the recorded channel sets."""
    parts = [f"{len(sets)} sets"]
    for name in ("smooth", "reorder"):
        statuses: dict[str, int] = {}
        for record in sets:
            if isinstance(record.get(name), dict):
                status = str(record[name].get("status", "recorded"))
                statuses[status] = statuses.get(status, 0) + 1
        if statuses:
            parts.append(f"{name}: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    return "; ".join(parts)
