"""A target for recon.poses.run_isolated in tests: writes one file in the child process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def write_file(path: str, *, on_step: Callable[[str], None], begin: Callable[[str], None]) -> None:
    begin("write")
    Path(path).write_text("child")
