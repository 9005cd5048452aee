"""Stage `frames`: decode the input video or image folder into RUN/frames/ and RUN/frames.json."""

from __future__ import annotations

from typing import Any

from recon.errors import ReconError
from recon.stages import StageContext
from recon.video import FramesConfig as Config
from recon.video import extract_frames


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    if ctx.input_path is None:
        raise ReconError("no INPUT given and the run has no frames yet: pass a video file or an image folder")
    return extract_frames(ctx.input_path, ctx.paths, cfg)
