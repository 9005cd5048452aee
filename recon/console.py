"""One place for terminal output: a rich console, verbosity, progress bars, and the libraries' logging.

Stages call `info`, `debug`, `warn` and `track` instead of print/tqdm so that `-v` / `--quiet`
apply everywhere. The libraries (depth/, splat/) log through the standard `logging` module;
`configure_logging()` prints their records on the same console: INFO at normal verbosity, DEBUG with -v,
WARNING and above only with -q.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

console = Console(stderr=True, highlight=False)
_verbosity = 1  # 0 quiet, 1 normal, 2 verbose


LIBRARY_LOGGERS = ("depth", "splat")
"""Top-level loggers of the libraries whose records `configure_logging` prints."""


def set_verbosity(level: int) -> None:
    """0 quiet, 1 normal, 2 verbose; also re-levels the library loggers once `configure_logging` ran."""
    global _verbosity
    _verbosity = int(level)
    if _handler is not None:
        _level_loggers()


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


class _ConsoleHandler(logging.Handler):
    """A logging handler that prints each record on the rich console, styled like info / debug / warn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = escape(self.format(record))
            if record.levelno >= logging.ERROR:
                console.print(f"[red]error:[/red] {msg}")
            elif record.levelno >= logging.WARNING:
                console.print(f"[yellow]warning:[/yellow] {msg}")
            elif record.levelno >= logging.INFO:
                console.print(msg)
            else:
                console.print(f"[dim]{msg}[/dim]")
        except Exception:  # logging must never break the program
            self.handleError(record)


_handler: _ConsoleHandler | None = None


def _level_loggers() -> None:
    assert _handler is not None, "configure_logging() creates the handler before levelling the loggers"
    level = logging.WARNING if _verbosity <= 0 else (logging.INFO if _verbosity == 1 else logging.DEBUG)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
        logger.propagate = False  # printed here once, not again by a root handler


def configure_logging(level: int | None = None) -> None:
    """Print the depth and splat loggers through the rich console at `level` (default: the current verbosity).

    Idempotent: calling it again only changes the level.
    """
    global _handler
    if _handler is None:
        _handler = _ConsoleHandler()
        _handler.setFormatter(logging.Formatter("%(message)s"))
    if level is not None:
        set_verbosity(level)
    _level_loggers()


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
