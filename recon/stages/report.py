"""Stage `report`: the self-contained RUN/report.html (built by recon.report from the run's files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recon.artifacts import RunPaths
from recon.atomic import write_text
from recon.report import build_report_html
from recon.stages import StageContext


@dataclass
class Config:
    """The report has no options yet."""


def write_report(paths: RunPaths) -> Path:
    """Write RUN/report.html (atomically) and return its path."""
    write_text(paths.report_html, build_report_html(paths))
    return paths.report_html


def run(ctx: StageContext, cfg: Config | None = None) -> dict[str, Any]:
    return {"report": str(write_report(ctx.paths))}
