"""Stage `poses`: intrinsics and camera poses (pycolmap SfM, or imported known poses) -> RUN/cameras.json."""

from __future__ import annotations

from typing import Any

from recon.poses import PosesConfig as Config
from recon.poses import run_poses
from recon.stages import StageContext


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    return run_poses(ctx.paths, cfg)
