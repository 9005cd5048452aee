"""The views a trainer fits and scores: images, cameras and the depth prior at training resolution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from depth.device import resolve_device
from depth.errors import DepthError
from depth.geometry import invert_pose
from splat.errors import SplatError


def target_size(width: int, height: int, downscale: float = 1.0, max_size: int = 0) -> tuple[int, int]:
    """(width, height) of a frame shrunk by `downscale` (>= 1) and, when max_size > 0, to at most max_size
    pixels on its longest side."""
    s = max(downscale, 1.0)
    if max_size > 0:
        s = max(s, max(width, height) / max_size)
    return max(int(round(width / s)), 1), max(int(round(height / s)), 1)


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a [H, W] map (depth, confidence, mask) to size = (W', H'); keeps 0 = invalid
    exact, so no invalid pixel blends into a valid one."""
    h, w = a.shape
    W, H = size
    if (w, h) == (W, H):
        return a
    ys = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    xs = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    return a[ys][:, xs]


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    try:
        return resolve_device(device)
    except DepthError as e:
        raise SplatError(str(e)) from e


@dataclass
class TrainViews:
    """Images and cameras at training resolution, all tensors on one device.

    Attributes:
        width, height: training resolution in pixels.
        K: [T, 3, 3] float32 intrinsics in pixels at (width, height), one per frame of the scene.
        viewmats: [T, 4, 4] float32 world-to-camera (OpenCV axes). c2w: [T, 4, 4] float64 numpy camera-to-world.
        images: view index -> [H, W, 3] float32 in [0, 1] (the views that are trained on or scored).
        prior_depth: view index -> [H, W] z-depth prior in scene units, 0 = invalid.
        prior_confidence: view index -> [H, W] per-pixel weight of the depth prior in [0, 1]; a view without
            an entry has confidence 1 everywhere.
        names: view index -> a short name (file stem) for its renders.
    """

    width: int
    height: int
    K: torch.Tensor
    viewmats: torch.Tensor
    c2w: np.ndarray
    images: dict[int, torch.Tensor] = field(default_factory=dict)
    prior_depth: dict[int, torch.Tensor] = field(default_factory=dict)
    prior_confidence: dict[int, torch.Tensor] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    @classmethod
    def from_arrays(
        cls,
        images: Mapping[int, np.ndarray],
        K: np.ndarray,
        c2w: np.ndarray,
        prior_depth: Mapping[int, np.ndarray] | None = None,
        prior_confidence: Mapping[int, np.ndarray] | None = None,
        names: Mapping[int, str] | None = None,
        device: str | torch.device = "auto",
    ) -> TrainViews:
        """Views from numpy arrays, all at one resolution.

        Args:
            images: view index -> uint8 [H, W, 3] (or float in [0, 1]).
            K: [T, 3, 3] pixels at (W, H). c2w: [T, 4, 4] camera-to-world, OpenCV axes (T frames; views index them).
            prior_depth: view index -> [H, W] z-depth (scene units, 0 = invalid), or None without a depth prior.
            prior_confidence: view index -> [H, W] confidence in [0, 1] (default 1).
            device: "auto" | "cpu" | "cuda[:N]" (depth.device.resolve_device) or a torch.device.
        Raises:
            SplatError: no images, sizes that differ, or cameras that do not cover the views.
        """
        if not images:
            raise SplatError("no views: give at least one image")
        dev = _device(device)
        H, W = next(iter(images.values())).shape[:2]
        K, c2w = np.asarray(K, np.float64), np.asarray(c2w, np.float64)
        if K.ndim != 3 or K.shape[1:] != (3, 3) or c2w.shape != (len(K), 4, 4):
            raise SplatError(f"views: K {K.shape} and c2w {c2w.shape} must be [T, 3, 3] and [T, 4, 4]")
        out = cls(
            width=W,
            height=H,
            K=torch.as_tensor(K, dtype=torch.float32, device=dev),
            viewmats=torch.as_tensor(invert_pose(c2w), dtype=torch.float32, device=dev),
            c2w=c2w,
            names={int(i): str(n) for i, n in (names or {}).items()},
        )
        for i, img in images.items():
            out._add_image(int(i), np.asarray(img))
        for i, d in (prior_depth or {}).items():
            out.prior_depth[int(i)] = torch.as_tensor(out._check_map(i, d, "prior depth"), device=dev)
        for i, c in (prior_confidence or {}).items():
            c = out._check_map(i, c, "prior confidence")
            if not np.all(c == 1):  # confidence 1 (DVD / file priors) weighs nothing: leave it out
                out.prior_confidence[int(i)] = torch.as_tensor(np.clip(c, 0, 1), device=dev)
        return out

    def _add_image(self, i: int, img: np.ndarray) -> None:
        if img.shape != (self.height, self.width, 3):
            raise SplatError(f"view {i}: image is {img.shape}, expected ({self.height}, {self.width}, 3)")
        if not 0 <= i < len(self.K):
            raise SplatError(f"view {i} has no camera (the scene has {len(self.K)})")
        t = torch.from_numpy(np.array(img)).to(self.device).float()
        self.images[i] = t / 255.0 if img.dtype == np.uint8 else t

    def _check_map(self, i: int, a: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(a, np.float32)
        if a.shape != (self.height, self.width):
            raise SplatError(f"view {i}: {what} is {a.shape}, expected ({self.height}, {self.width})")
        return a
