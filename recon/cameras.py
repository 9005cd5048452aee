"""Camera sets: intrinsics K and camera-to-world poses for every frame of a run.

Conventions (one set everywhere): OpenCV camera axes (x right, y down, z forward); `c2w` is a 4x4
float64 camera-to-world matrix; `K` is 3x3 in pixels of the stored frame resolution. OpenGL /
nerfstudio / Blender axes appear only at file boundaries, converted by `opengl_to_opencv` /
`opencv_to_opengl`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon.atomic import write_json
from recon.errors import ReconError

# Flipping y and z turns OpenGL camera axes (x right, y up, looking along -z) into OpenCV ones.
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """c2w [..., 4, 4] with OpenGL camera axes -> c2w with OpenCV camera axes (same world frame)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """c2w [..., 4, 4] with OpenCV camera axes -> OpenGL camera axes (the flip is its own inverse)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Invert rigid transforms [..., 4, 4] (c2w <-> w2c) without a general matrix inverse."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


@dataclass
class CameraSet:
    """All frames of a run with their cameras.

    Attributes:
        width, height: stored frame resolution in pixels.
        files: [T] frame paths relative to the run directory (e.g. "frames/000000.png").
        source_index: [T] index of each frame in the source video / image list.
        K: [T, 3, 3] float64 intrinsics in pixels.
        c2w: [T, 4, 4] float64 camera-to-world, OpenCV axes. Identity for unregistered frames.
        registered: [T] bool, False where SfM could not place the frame.
        sfm: SfM statistics dict (registered, total, points, mean_reprojection_error_px, mapper).
    """

    width: int
    height: int
    files: list[str]
    source_index: list[int]
    K: np.ndarray
    c2w: np.ndarray
    registered: np.ndarray
    sfm: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def w2c(self) -> np.ndarray:
        return invert_pose(self.c2w)

    @property
    def centers(self) -> np.ndarray:
        """[T, 3] camera centres in world units."""
        return self.c2w[:, :3, 3].copy()

    def to_json(self) -> dict[str, Any]:
        return {
            "width": int(self.width),
            "height": int(self.height),
            "frames": [
                {
                    "file": f,
                    "source_index": int(s),
                    "registered": bool(r),
                    "K": np.asarray(k, dtype=float).tolist(),
                    "c2w": np.asarray(c, dtype=float).tolist(),
                }
                for f, s, r, k, c in zip(self.files, self.source_index, self.registered, self.K, self.c2w)
            ],
            "sfm": self.sfm,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> CameraSet:
        path = Path(path)
        if not path.exists():
            raise ReconError(f"{path} not found: run the pose stage first (recon poses)")
        try:
            d = json.loads(path.read_text())
            frames = d["frames"]
            return cls(
                width=int(d["width"]),
                height=int(d["height"]),
                files=[f["file"] for f in frames],
                source_index=[int(f.get("source_index", i)) for i, f in enumerate(frames)],
                K=np.array([f["K"] for f in frames], dtype=np.float64).reshape(-1, 3, 3),
                c2w=np.array([f["c2w"] for f in frames], dtype=np.float64).reshape(-1, 4, 4),
                registered=np.array([bool(f.get("registered", True)) for f in frames], dtype=bool),
                sfm=dict(d.get("sfm", {})),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ReconError(f"{path} is not a valid cameras.json ({e})") from e
