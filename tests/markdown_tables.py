"""Reading the markdown tables of the seed log and of sweep outputs, cell by cell."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class MarkdownTable:
    header: list[str]  # stripped cells
    rows: list[list[str]]  # stripped cells, blocks that continue the table included


def cells(line: str) -> list[str]:
    """The stripped cells of ``|a|b||`` (an empty last cell stays)."""
    return [cell.strip() for cell in line.strip()[1:-1].split("|")]


def parse_tables(text: str) -> list[MarkdownTable]:
    """Every table: a header line, a ``|---|`` line, then rows; rows that follow a blank line
    without a new header continue the table before them."""
    lines = text.splitlines()
    tables: list[MarkdownTable] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.startswith("|") and following.startswith("|---"):
            tables.append(MarkdownTable(cells(line), []))
            index += 2
            continue
        if line.startswith("|") and tables:
            tables[-1].rows.append(cells(line))
        index += 1
    return tables
