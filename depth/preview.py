"""Colour-mapped depth preview video (RUN/depth/depth.mp4).

One normalisation for the whole video (robust percentiles of all valid values), never per frame, so
temporal flicker of the depth prior stays visible instead of being normalised away. Invalid pixels
(0) are black.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.atomic import atomic_path
from recon.errors import ReconError


def robust_range(
    values: np.ndarray, lo_pct: float = 2.0, hi_pct: float = 98.0, max_samples: int = 2_000_000
) -> tuple[float, float]:
    """(lo, hi) percentiles of the valid (> 0, finite) entries of `values` (any shape).

    At most `max_samples` evenly strided entries are used, so the cost stays bounded on long videos.
    """
    flat = np.asarray(values).ravel()
    step = max(1, flat.size // max_samples)
    v = flat[::step]
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        raise ReconError("depth preview: no valid depth value to display")
    lo, hi = np.percentile(v, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-12)
    return float(lo), float(hi)


def colorize(disparity: np.ndarray, value_range: tuple[float, float] | None = None, cmap: str = "turbo") -> np.ndarray:
    """Map disparity [T, H, W] (0 = invalid; larger = nearer) to RGB uint8 [T, H, W, 3].

    `value_range` (lo, hi) is shared by all frames; by default the 2nd-98th percentile of the valid
    values of the whole array. Invalid pixels are black.
    """
    import matplotlib

    d = np.asarray(disparity, dtype=np.float32)
    if d.ndim == 2:
        d = d[None]
    if d.ndim != 3:
        raise ReconError(f"depth preview expects [T,H,W] maps, got shape {d.shape}")
    lo, hi = value_range if value_range is not None else robust_range(d)
    lut = (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    valid = np.isfinite(d) & (d > 0)
    idx = np.clip((d - lo) / (hi - lo) * 255.0, 0, 255)
    idx = np.where(valid, idx, 0).astype(np.uint8)
    rgb = lut[idx]
    rgb[~valid] = 0
    return rgb


def write_video(path: str | Path, frames: np.ndarray, fps: float = 10.0, crf: int = 18) -> None:
    """Write RGB uint8 frames [T, H, W, 3] to an H.264 mp4 with PyAV, atomically.

    Odd sizes are padded by one black row/column (yuv420p needs even sizes).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ReconError(f"video writer expects [T,H,W,3] frames with T > 0, got shape {frames.shape}")
    T, H, W, _ = frames.shape
    H2, W2 = H + H % 2, W + W % 2
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=max(1, int(round(fps))))
            stream.width, stream.height, stream.pix_fmt = W2, H2, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "veryfast"}
            buf = np.zeros((H2, W2, 3), dtype=np.uint8)
            for f in frames:
                buf[:H, :W] = f
                for packet in stream.encode(av.VideoFrame.from_ndarray(buf, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def write_depth_preview(
    path: str | Path, disparity: np.ndarray, fps: float = 10.0, cmap: str = "turbo"
) -> tuple[float, float]:
    """Colour-map disparity [T, H, W] with one robust normalisation and write it as an mp4.

    Returns the (lo, hi) disparity range that was mapped to the ends of the colour map.
    """
    value_range = robust_range(disparity)
    write_video(path, colorize(disparity, value_range, cmap), fps=fps)
    return value_range
