"""RUN/cameras.json: intrinsics K and camera-to-world poses for every frame of a run.

Conventions (depth.geometry): OpenCV camera axes; `c2w` 4x4 float64 camera-to-world; `K` 3x3 in pixels of the
stored frame resolution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from depth.geometry import invert_pose
from recon.atomic import write_json
from recon.errors import ReconError


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

    def run_id(self) -> str:
        """16 hex digits identifying these cameras: frame size, files, registration, K and c2w (rounded to 1e-9).

        A checkpoint stores the run id of the cameras it was trained on. Derived from the content rather than
        drawn at random, it needs no extra file, survives copying a run, and also changes when the poses are
        recomputed (a checkpoint fit to the old poses does not belong to the new ones)."""
        import hashlib

        h = hashlib.sha256(json.dumps([int(self.width), int(self.height), list(map(str, self.files))]).encode())
        h.update(np.asarray(self.registered, bool).tobytes())
        for a in (self.K, self.c2w):
            h.update(np.ascontiguousarray(np.round(np.asarray(a, np.float64), 9) + 0.0).tobytes())
        return h.hexdigest()[:16]

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
            cams = cls(
                width=int(d["width"]),
                height=int(d["height"]),
                files=[f["file"] for f in frames],
                source_index=[int(f.get("source_index", i)) for i, f in enumerate(frames)],
                K=np.array([f["K"] for f in frames], dtype=np.float64).reshape(-1, 3, 3),
                c2w=np.array([f["c2w"] for f in frames], dtype=np.float64).reshape(-1, 4, 4),
                registered=np.array([bool(f.get("registered", True)) for f in frames], dtype=bool),
                sfm=dict(d.get("sfm", {})),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise ReconError(f"{path} is not a valid cameras.json ({e})") from e
        return cams.validate(path)

    def validate(self, where: str | Path = "cameras.json") -> CameraSet:
        """Shapes, finite values and positive sizes; ReconError naming `where` otherwise."""
        T = len(self.files)
        if self.width <= 0 or self.height <= 0:
            raise ReconError(f"{where}: image size {self.width}x{self.height} is not positive")
        if self.K.shape != (T, 3, 3) or self.c2w.shape != (T, 4, 4) or len(self.source_index) != T:
            raise ReconError(f"{where}: {T} frames but K {self.K.shape}, c2w {self.c2w.shape}")
        if not (np.isfinite(self.K).all() and np.isfinite(self.c2w).all()):
            raise ReconError(f"{where} has NaN or infinite camera values")
        if T and not ((self.K[:, 0, 0] > 0).all() and (self.K[:, 1, 1] > 0).all()):
            raise ReconError(f"{where} has non-positive focal lengths")
        return self
