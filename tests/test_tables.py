"""Tables in the seed log's format: every row of ../shared/seed-results.md is rewritten exactly."""

from __future__ import annotations

import re

import pytest
from markdown_tables import parse_tables

from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.tables import (
    HEADER,
    SWEEP_HEADER,
    Reference,
    Row,
    format_accuracy,
    format_wbit,
    markdown_table,
)
from onnxq.reporting.evaluate import EvalResult

_WITH_REFERENCE = re.compile(r"^(?P<value>\d+(?:\.\d+)?)\((?P<reference>[+-]?\d+(?:\.\d+)?)\)$")


def _number_and_reference(cell: str) -> tuple[float | None, float | None, str | None]:
    """``65.304(-0.054)`` → (65.304, 65.358, "delta"); ``4.06(4.14)`` → (4.06, 4.14, "value")."""
    match = _WITH_REFERENCE.match(cell)
    if match is None:
        return (float(cell) if cell else None), None, None
    value, reference = float(match["value"]), match["reference"]
    if reference[0] in "+-":
        return value, value - float(reference), "delta"
    return value, float(reference), "value"


def _row_from_seed(header: list[str], cells: list[str]) -> Row:
    cell = dict(zip(header, cells))
    top1, top1_reference, style = _number_and_reference(cell["top1 acc"])
    top5, top5_reference, _ = _number_and_reference(cell["top5 acc"])
    wbit, wbit_reference, _ = _number_and_reference(cell.get("Equivalent wbit", ""))
    reference = None
    if style is not None:
        shown = wbit_reference if wbit_reference is not None else wbit
        reference = Reference(top1_reference, top5_reference, shown, style)
    scheme = cell.get("w Qscheme", cell.get("f Qscheme"))
    return Row(
        cell["model"], cell["w_bit"], cell["f bit"], scheme, cell["groupsize"], top1, top5,
        cell.get("remark", ""), f_scheme=scheme, f_group_size=cell["groupsize"], wbit=wbit,
        reference=reference,
    )


def test_every_seed_row_is_rewritten_exactly(seed_results):
    tables = parse_tables(seed_results)
    assert len(tables) == 25
    styles = set()
    for table in tables:
        columns = tuple(table.header)
        rows = [_row_from_seed(table.header, cells) for cells in table.rows]
        styles.update(row.reference.style for row in rows if row.reference)
        assert parse_tables(markdown_table(rows, columns))[0].rows == table.rows
    assert styles == {"delta", "value"}


def test_seed_headers_are_the_table_columns(seed_results):
    headers = {tuple(table.header) for table in parse_tables(seed_results)}
    assert HEADER in headers
    assert SWEEP_HEADER[:-2] + ("Equivalent wbit",) in headers
    assert HEADER[:3] + ("f Qscheme",) + HEADER[4:] in headers


@pytest.mark.parametrize(
    "value, reference, style, text",
    [
        (65.304, None, "delta", "65.304"),
        (65.304, 65.358, "delta", "65.304(-0.054)"),
        (67.028, 67.006, "delta", "67.028(+0.022)"),
        (66.0, 66.0004, "delta", "66.000(+0.000)"),
        (65.304, 65.358, "value", "65.304(65.358)"),
    ],
)
def test_accuracy_cells(value, reference, style, text):
    assert format_accuracy(value, reference, style) == text


@pytest.mark.parametrize(
    "value, reference, style, text",
    [
        (32.0, None, "delta", "32"),
        (4.0212, None, "delta", "4.02"),
        (4.06, 4.14, "delta", "4.06(-0.08)"),
        (8.64, 24.54, "delta", "8.64(-15.9)"),
        (8.64, 24.54, "value", "8.64(24.54)"),
        (None, 4.0, "delta", ""),
    ],
)
def test_equivalent_wbit_cells(value, reference, style, text):
    assert format_wbit(value, reference, style) == text


def test_rows_from_configs_fill_the_scheme_columns():
    config = QuantConfig(
        weights=Scheme.parse("per-group-affine", bits=4, group_size=8),
        features=Scheme.parse("per-group-affine", bits=4, group_size=16),
    )
    result = EvalResult(images=10, top1=60.0, top5=80.0, images_per_second=1.0, provider="cpu")
    row = Row.from_config("resnet18", config, result, "w/f", 4.15, Reference(61.0, 80.5, 4.56))
    assert row.cells(SWEEP_HEADER) == (
        "resnet18", "4", "4", "per-group-affine", "8", "60.000(-1.000)", "80.000(-0.500)",
        "4.15(-0.41)", "w/f",
    )
    feature_columns = ("w_bit", "f bit", "f Qscheme", "groupsize")
    assert row.cells(feature_columns) == ("4", "4", "per-group-affine", "16")
    baseline = Row.float_baseline("resnet18", result)
    assert baseline.cells(SWEEP_HEADER)[:5] + baseline.cells(SWEEP_HEADER)[-2:] == (
        "resnet18", "float32", "float32", " /", "/", "32", "float baseline",
    )


def test_unknown_column_is_refused():
    with pytest.raises(ValueError, match="unknown table column"):
        markdown_table([], ("model", "top-1"))
