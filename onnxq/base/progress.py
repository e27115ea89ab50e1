"""Progress bars on stderr (rich), silenced by ``--quiet``; the log of what the graph passes
changed, shown by ``--verbose``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) progress bars and status messages."""
    _state["quiet"] = quiet


def set_verbose(verbose: bool) -> None:
    """Show (or hide) the ``onnxq`` loggers' INFO messages, on the progress console."""
    logger = logging.getLogger("onnxq")
    for handler in [h for h in logger.handlers if isinstance(h, RichHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)


def is_quiet() -> bool:
    return _state["quiet"]


def status(message: str) -> None:
    """One status line on stderr, unless quiet."""
    if not _state["quiet"]:
        console.print(message, highlight=False)


def track(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    size: Callable[[T], int] = lambda item: 1,
    note: Callable[[], str] | None = None,
) -> Iterator[T]:
    """Yield ``items`` while drawing a bar that advances by ``size(item)`` up to ``total``;
    ``note`` (called after each item) gives a text shown after the bar, e.g. a loss.

    Bars are drawn only on a terminal; logs and pipes get no progress output.
    """
    if _state["quiet"] or not console.is_terminal:
        yield from items
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, note="")
        for item in items:
            yield item
            bar.update(task, advance=size(item), note=note() if note is not None else "")
