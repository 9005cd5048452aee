"""Stage `frames`: decode the input video or image folder into RUN/frames/NNNNNN.png and RUN/frames.json.

Frames are sampled (stride / target fps / max frames), composited on white where transparent, resized so the
long side is at most `max_size`, and near-duplicates (camera not moving) are dropped. The frames folder is
written to a temporary directory and renamed, so it is either complete or absent; frames.json
(recon.artifacts.FramesIndex) is written last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depth.checks import flag, number
from recon.artifacts import FramesIndex
from recon.atomic import atomic_dir
from recon.console import debug, progress
from recon.errors import ReconError
from recon.stages import StageContext
from recon.video import (
    COMPOSITE_BACKGROUND,
    FrameSource,
    open_input,
    probe_input,
    resize_to,
    select_indices,
    target_size,
    thumbnail,
    to_rgb,
)

MIN_SIZE = 16
"""Smallest frames.max_size (pixels) other than 0: smaller frames leave SfM nothing to match."""


@dataclass
class Config:
    stride: int = 1
    """Keep every N-th frame of the video (applied before --max-frames)."""
    max_frames: int = 0
    """Keep at most N frames, spread evenly over the (strided) video; 0 = no limit."""
    target_fps: float = 0.0
    """Sample the video at about this rate (frames per second); 0 = the source rate."""
    max_size: int = 0
    """Resize so that the long side is at most this many pixels; 0 = keep the source size."""
    dedup: bool = True
    """Drop near-duplicate frames (camera not moving) with a cheap motion test."""
    dedup_threshold: float = 1.0
    """Mean absolute grey-level difference (0-255, on a 64-px thumbnail) below which a frame counts as a duplicate."""

    def validate(self) -> Config:
        """ReconError unless every field is in range (see the field docs)."""
        number(self.stride, "frames.stride", ReconError, lo=1, integer=True)
        number(self.max_frames, "frames.max_frames", ReconError, lo=0, integer=True, note="0 = no limit")
        number(self.target_fps, "frames.target_fps", ReconError, lo=0, hi=1000, note="0 = the source rate")
        number(self.max_size, "frames.max_size", ReconError, lo=0, integer=True, note="0 = the source size")
        if 0 < self.max_size < MIN_SIZE:
            raise ReconError(
                f"frames.max_size must be 0 (the source size) or >= {MIN_SIZE} pixels, got {self.max_size}"
            )
        flag(self.dedup, "frames.dedup", ReconError)
        number(self.dedup_threshold, "frames.dedup_threshold", ReconError, lo=0, hi=255)
        return self


@dataclass
class _Kept:
    entries: list[dict[str, Any]]
    dropped: int
    composited: bool


def _write_frames(source: FrameSource, size: tuple[int, int], out_dir: Path, cfg: Config) -> _Kept:
    """Write the source's frames (RGB, at `size`, near-duplicates dropped) as out_dir/NNNNNN.png."""
    kept: list[dict[str, Any]] = []
    dropped, composited, last_thumb = 0, False, None
    with progress() as bar:
        task = bar.add_task("frames", total=source.count, status="")
        for i, ts, img in source.frames:
            bar.advance(task)
            img, had_alpha = to_rgb(img)
            composited |= had_alpha
            img = resize_to(img, size)
            th = thumbnail(img)
            if cfg.dedup and last_thumb is not None and float(np.abs(th - last_thumb).mean()) < cfg.dedup_threshold:
                dropped += 1
                debug(f"frame {i}: near-duplicate of the previous kept frame, dropped")
                continue
            last_thumb = th
            name = f"{len(kept):06d}.png"
            img.save(out_dir / name, compress_level=1)
            entry: dict[str, Any] = {"file": f"frames/{name}", "source_index": int(i), "timestamp": ts}
            if source.names is not None:
                entry["source_name"] = source.names[len(kept) + dropped]
            kept.append(entry)
            bar.update(task, status=f"kept {len(kept)}")
    return _Kept(kept, dropped, composited)


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    if ctx.input_path is None:
        raise ReconError("no INPUT given and the run has no frames yet: pass a video file or an image folder")
    paths = ctx.paths
    src = probe_input(ctx.input_path)
    source = open_input(src, lambda n, fps: select_indices(n, fps, cfg.stride, cfg.target_fps, cfg.max_frames))
    W, H = target_size(*source.original_size, cfg.max_size)
    with atomic_dir(paths.frames_dir) as tmp:
        kept = _write_frames(source, (W, H), tmp, cfg)
        if len(kept.entries) < 2:
            raise ReconError(
                f"{src}: only {len(kept.entries)} distinct frame(s) after dropping {kept.dropped} near-duplicates; "
                "the camera does not move. Record with more camera motion, or pass known poses with --poses"
            )
    FramesIndex(
        source=str(src),
        source_type=source.source_type,
        size=(W, H),
        frames=kept.entries,
        original_size=source.original_size,
        fps=source.fps,
        exif_focal_px=source.exif_focal_px,
        composited_on=COMPOSITE_BACKGROUND if kept.composited else None,
        extra={"dropped_duplicates": kept.dropped},
    ).save(paths.frames_json)
    return {
        "frames": len(kept.entries),
        "size": f"{W}x{H}",
        "source": src.name,
        "dropped near-duplicates": kept.dropped,
        "source fps": (round(source.fps, 3) if source.fps else "-"),
    }
