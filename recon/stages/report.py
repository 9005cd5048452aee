"""Stage `report`: the self-contained RUN/report.html (built by recon.report from the run's files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recon.artifacts import RunPaths
from recon.atomic import write_text
from recon.errors import ReconError
from recon.lock import run_lock
from recon.report import build_report_html
from recon.stages import StageContext


@dataclass
class Config:
    """The report has no options yet."""


def require_run(paths: RunPaths) -> RunPaths:
    """ReconError unless `paths` is a run directory (it holds manifest.json or frames.json); for `recon report
    DIR`, so that a mistyped directory is refused instead of getting an empty report written into it."""
    if not paths.root.is_dir():
        raise ReconError(f"run directory {paths.root} does not exist")
    if not (paths.manifest.is_file() or paths.frames_json.is_file()):
        raise ReconError(
            f"{paths.root} is not a run directory (no {paths.manifest.name} or {paths.frames_json.name}); "
            "make one with `recon run INPUT --out DIR`"
        )
    return paths


def write_report(paths: RunPaths) -> Path:
    """Write RUN/report.html (atomically, holding RUN's writer lock) and return its path."""
    with run_lock(paths.root):
        write_text(paths.report_html, build_report_html(paths))
    return paths.report_html


def run(ctx: StageContext, cfg: Config | None = None) -> dict[str, Any]:
    return {"report": str(write_report(ctx.paths))}
