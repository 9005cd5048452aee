"""Stage `export`: nerfstudio transforms.json with depth PNGs and the fused cloud."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recon.ns_export import export_nerfstudio
from recon.stages import StageContext


@dataclass
class Config:
    """The export has no options yet."""


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    return {"transforms.json": str(export_nerfstudio(ctx.paths))}
