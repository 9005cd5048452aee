"""What every depth backend takes and returns: `DepthFrames` in, `DepthResult` out.

Disparity kinds tell the alignment what to fit (see depth.align):
  - KIND_RELATIVE "relative_disparity": affine-invariant disparity (DVD, user disparity maps): scale AND shift.
  - KIND_METRIC "metric_disparity": proportional to the true inverse depth (stereo in scene units, user depth
    e.g. in metres): scale only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from depth.errors import DepthError

KIND_RELATIVE = "relative_disparity"
KIND_METRIC = "metric_disparity"
DISPARITY_KINDS = (KIND_RELATIVE, KIND_METRIC)
DisparityKind = Literal["relative_disparity", "metric_disparity"]


@dataclass
class DepthFrames:
    """The frames a depth backend works on, in sequence order, with what each backend may need.

    Attributes:
        images: uint8 [T, H, W, 3] RGB frames.
        names: [T] frame names (file names in the run; the `file` backend matches its maps by them).
        K: [T, 3, 3] float64 intrinsics in pixels of `images`, or None (stereo needs them; DVD does not).
        c2w: [T, 4, 4] float64 camera-to-world (OpenCV), or None.
        points: [N, 3] float64 SfM points in world units (stereo bounds its depth range with them), or None.
        observed: [T] int arrays of indices into `points`: the points each frame observes (its SfM track
            entries), or None (stereo then bounds each frame by every point in front of it).
        index: [T] position of each frame in the whole sequence its names come from (e.g. the run's frames),
            or None (= 0..T-1); the `file` backend with match "order" uses it.
        sequence_length: frames in that whole sequence, or None (= T).
        bounds: [T, 2] float64 (near, far) scene z-depth bounds per frame from the pose source (LLFF
            poses_bounds.npy), or None; stereo sweeps between them instead of the SfM points' range.
    """

    images: np.ndarray
    names: list[str]
    K: np.ndarray | None = None
    c2w: np.ndarray | None = None
    points: np.ndarray | None = None
    observed: list[np.ndarray] | None = None
    index: list[int] | None = None
    sequence_length: int | None = None
    bounds: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DepthError(f"depth frames must be uint8 [T, H, W, 3], got {self.images.dtype} {self.images.shape}")
        if len(self.names) != len(self.images):
            raise DepthError(f"{len(self.names)} frame names for {len(self.images)} frames")
        for what, items in (("observed", self.observed), ("index", self.index)):
            if items is not None and len(items) != len(self.images):
                raise DepthError(f"{len(items)} {what} entries for {len(self.images)} frames")
        if self.bounds is not None:
            b = np.asarray(self.bounds, dtype=np.float64)
            if b.shape != (len(self.images), 2) or not np.all(np.isfinite(b)) or np.any(b[:, 0] <= 0):
                raise DepthError(f"depth bounds must be [T, 2] finite near > 0 per frame, got shape {b.shape}")
            if np.any(b[:, 1] <= b[:, 0]):
                raise DepthError("depth bounds must satisfy near < far for every frame")
            self.bounds = b

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[1])


def depth_to_disparity(depth: np.ndarray) -> np.ndarray:
    """float [..] z-depth (0 / non-finite / negative = invalid) -> float32 disparity 1/depth, 0 invalid."""
    depth = np.asarray(depth, dtype=np.float32)
    ok = np.isfinite(depth) & (depth > 0)
    out = np.zeros_like(depth)
    out[ok] = 1.0 / depth[ok]
    return out


def disparity_to_depth(disparity: np.ndarray) -> np.ndarray:
    """float [..] disparity (0 / non-finite / negative = invalid) -> float32 z-depth 1/disparity, 0 invalid."""
    return depth_to_disparity(disparity)


@dataclass
class DepthResult:
    """A backend's output for the frames it was given (same order).

    Attributes:
        disparity: float32 [T, H, W]; 0 = invalid. Relative or proportional to 1/depth (see `kind`).
        kind: KIND_RELATIVE or KIND_METRIC.
        backend: the backend's name ("dvd", "stereo", "file").
        confidence: float32 [T, H, W] in [0, 1], or None (= 1 everywhere).
        windows: DVD windows (start/end into the frames, scale/shift, overlap residuals); [] for other backends.
        report: backend-specific figures for the run's records (JSON-compatible after conversion).
    """

    disparity: np.ndarray
    kind: str
    backend: str
    confidence: np.ndarray | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def validate(self, num_frames: int, size: tuple[int, int]) -> DepthResult:
        """Check shapes and values against the request ((width, height)); clean invalid values to 0."""
        W, H = size
        disp = np.asarray(self.disparity, dtype=np.float32)
        if disp.shape != (num_frames, H, W):
            got = "x".join(map(str, disp.shape))
            raise DepthError(
                f"depth backend {self.backend} returned maps of shape {got}; expected {num_frames}x{H}x{W}"
            )
        if not np.all(np.isfinite(disp)):
            raise DepthError(f"depth backend {self.backend} returned NaN/inf disparity")
        if self.kind not in DISPARITY_KINDS:
            raise DepthError(f"depth backend {self.backend} returned unknown kind {self.kind!r}")
        self.disparity = np.where(disp > 0, disp, 0).astype(np.float32)
        if self.confidence is not None:
            conf = np.asarray(self.confidence, dtype=np.float32)
            if conf.shape != disp.shape:
                raise DepthError(f"depth backend {self.backend} returned confidence of shape {conf.shape}")
            self.confidence = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0)
        return self
