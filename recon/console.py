"""One place for terminal output: a rich console, verbosity, and progress bars.

Stages call `info`, `debug`, `warn` and `track` instead of print/tqdm so that `-v` / `--quiet`
apply everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

console = Console(stderr=True, highlight=False)
_verbosity = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(level: int) -> None:
    global _verbosity
    _verbosity = int(level)


def verbosity() -> int:
    return _verbosity


def info(msg: str) -> None:
    if _verbosity >= 1:
        console.print(msg)


def debug(msg: str) -> None:
    if _verbosity >= 2:
        console.print(f"[dim]{msg}[/dim]")


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}")


def progress() -> Progress:
    """A rich Progress with the project's columns; disabled when quiet or not a terminal-less CI log."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=_verbosity < 1,
        transient=False,
    )


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (`total` defaults to len(iterable) where it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress() as p:
        task = p.add_task(description, total=total, status="")
        for item in iterable:
            yield item
            p.advance(task)
