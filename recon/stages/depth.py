"""Stage `depth`: the depth prior on the prior frames -> RUN/depth/disparity.npz, windows.json, depth.mp4."""

from __future__ import annotations

from typing import Any

from depth.stage import DepthConfig as Config
from depth.stage import run_depth
from recon.stages import StageContext


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    return run_depth(ctx.paths, cfg)
