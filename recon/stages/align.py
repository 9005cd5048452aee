"""Stage `align`: the depth prior fitted to the SfM scale -> RUN/depth/aligned.npz, alignment.json."""

from __future__ import annotations

from typing import Any

from depth.align import AlignConfig as Config
from depth.align import run_align
from recon.stages import StageContext


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    return run_align(ctx.paths, cfg)
