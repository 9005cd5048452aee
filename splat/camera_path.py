"""A smooth camera path through the run's cameras and its rendering to RUN/splat/renders.mp4 (PyAV)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from recon.atomic import atomic_path
from recon.errors import ReconError


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
        raise ReconError("no cameras to build a camera path from")
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


def write_video(path: Path, frames: list[np.ndarray] | np.ndarray, fps: float = 30.0) -> None:
    """Encode uint8 [T,H,W,3] frames as H.264 mp4 (MPEG-4 part 2 if libx264 is missing), atomically.

    Odd sizes are padded by one pixel (yuv420p needs even dimensions).
    """
    from fractions import Fraction

    import av

    if len(frames) == 0:
        raise ReconError("no frames to write")
    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "20"}
            for f in frames:
                f = np.asarray(f, np.uint8)
                if f.shape[:2] != (H, W):
                    f = np.pad(f, ((0, H - h), (0, W - w), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def render_path_video(
    render_pose: Callable[[np.ndarray], np.ndarray],
    key_c2w: np.ndarray,
    path: Path,
    num_frames: int = 120,
    fps: float = 30.0,
) -> int:
    """Render `num_frames` poses along the path through `key_c2w` and write them to `path`.

    Args:
        render_pose: c2w [4,4] -> uint8 [H,W,3] image.
        key_c2w: [T,4,4] key poses in path order.
    Returns:
        number of frames written.
    """
    poses = interpolate_path(key_c2w, num_frames)
    frames = [render_pose(p) for p in poses]
    write_video(path, frames, fps)
    return len(frames)
