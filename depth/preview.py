"""Colour-mapped depth preview frames (the application writes them as a video).

One normalisation for the whole video (robust percentiles of all valid values), never per frame, so
temporal flicker of the depth prior stays visible instead of being normalised away. Invalid pixels
(0) are black.
"""

from __future__ import annotations

import numpy as np

from depth.errors import DepthError


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
        raise DepthError("depth preview: no valid depth value to display")
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
        raise DepthError(f"depth preview expects [T,H,W] maps, got shape {d.shape}")
    lo, hi = value_range if value_range is not None else robust_range(d)
    lut = (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    valid = np.isfinite(d) & (d > 0)
    idx = np.clip((d - lo) / (hi - lo) * 255.0, 0, 255)
    idx = np.where(valid, idx, 0).astype(np.uint8)
    rgb = lut[idx]
    rgb[~valid] = 0
    return rgb


def preview_frames(disparity: np.ndarray, cmap: str = "turbo") -> tuple[np.ndarray, tuple[float, float]]:
    """Colour-map disparity [T, H, W] with one robust normalisation for the whole sequence.

    Returns (RGB uint8 [T, H, W, 3], the (lo, hi) disparity range mapped to the ends of the colour map).
    """
    value_range = robust_range(disparity)
    return colorize(disparity, value_range, cmap), value_range
