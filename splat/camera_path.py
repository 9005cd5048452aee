"""A smooth camera path through a scene's cameras, and its frames rendered (arrays; writing a video is the caller's)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from splat.errors import SplatError


def interpolate_path(c2w: np.ndarray, num_frames: int) -> np.ndarray:
    """Camera path through the key poses in their order: slerp for rotation, linear for position.

    Args:
        c2w: [T,4,4] key camera-to-world poses (OpenCV axes), T >= 1.
        num_frames: number of output poses (>= 1).
    Returns:
        [num_frames,4,4] float64 c2w, starting at c2w[0] and ending at c2w[-1].
    """
    from scipy.spatial.transform import Rotation, Slerp

    c2w = np.asarray(c2w, np.float64)
    if len(c2w) == 0:
        raise SplatError("no cameras to build a camera path from")
    if len(c2w) == 1:
        return np.repeat(c2w, num_frames, axis=0)
    # Parametrise by travelled distance + rotation so speed is even along the path.
    step = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)
    rot = Rotation.from_matrix(c2w[:, :3, :3])
    ang = (rot[:-1].inv() * rot[1:]).magnitude()
    scale = (
        np.median(step[step > 0]) / max(np.median(ang[ang > 0]), 1e-9) if (step > 0).any() and (ang > 0).any() else 1.0
    )
    seg = step + ang * scale + 1e-9
    t_key = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, t_key[-1], num_frames)
    out = np.tile(np.eye(4), (num_frames, 1, 1))
    out[:, :3, :3] = Slerp(t_key, rot)(t).as_matrix()
    for k in range(3):
        out[:, k, 3] = np.interp(t, t_key, c2w[:, k, 3])
    return out


def render_path(
    render_pose: Callable[[np.ndarray], np.ndarray], key_c2w: np.ndarray, num_frames: int = 120
) -> np.ndarray:
    """Render `num_frames` poses along the path through `key_c2w`.

    Args:
        render_pose: c2w [4,4] -> uint8 [H,W,3] image.
        key_c2w: [T,4,4] key poses in path order.
    Returns:
        uint8 [num_frames, H, W, 3].
    """
    return np.stack([render_pose(p) for p in interpolate_path(key_c2w, num_frames)])
