"""Stage `report`: the self-contained RUN/report.html."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recon.report import write_report
from recon.stages import StageContext


@dataclass
class Config:
    """The report has no options yet."""


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    return {"report": str(write_report(ctx.paths))}
