"""Stage `fuse`: aligned depth of the training views -> fused point cloud RUN/points/init.ply."""

from __future__ import annotations

from typing import Any

from recon.stages import StageContext
from splat.init import FuseConfig as Config
from splat.init import run_fuse


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    return run_fuse(ctx.paths, cfg)
