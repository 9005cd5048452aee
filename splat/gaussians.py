"""Gaussian parameters: initial points (given points, random fill), kNN scales, scene extent, containers.

The trainer keeps the Gaussians as a `torch.nn.ParameterDict` with gsplat's strategy names, all
stored before activation:
    means [N,3] (scene units), scales [N,3] (log sigma), quats [N,4] (wxyz, unnormalised),
    opacities [N] (logit), sh0 [N,1,3], shN [N,K-1,3] (SH coefficients, K = (sh_degree+1)^2).
`splat.ply` writes exactly these arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from splat.errors import SplatError

log = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))

InitKind = Literal["depth", "sfm", "random"]


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    """Colours in [0,1] [..., 3] -> degree-0 SH coefficients (0.5 offset as in 3DGS)."""
    return (np.asarray(rgb, np.float32) - 0.5) / SH_C0


def num_sh_bases(sh_degree: int) -> int:
    return (sh_degree + 1) ** 2


def knn_scales(xyz: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean distance of each point to its `k` nearest other points.

    Args:
        xyz: [N,3] points (scene units).
    Returns:
        [N] float32 distances (scene units), floored at 1e-7 so that log() is finite for duplicates.
    """
    from scipy.spatial import cKDTree

    xyz = np.asarray(xyz, np.float64)
    n = len(xyz)
    if n < 2:
        return np.full(n, 1e-2, np.float32)
    k = min(k, n - 1)
    dist, _ = cKDTree(xyz).query(xyz, k=k + 1)  # column 0 is the point itself
    return np.maximum(dist[:, 1:].mean(axis=1), 1e-7).astype(np.float32)


def scene_extent(c2w: np.ndarray, points: np.ndarray | None = None) -> float:
    """Scene scale for learning rates and densification thresholds.

    3DGS uses 1.1 x the largest distance of a camera centre from the mean centre. That collapses for a
    small-baseline capture (a few cm of camera motion in a room), so the scale is at least half the
    median distance of the initial points from the mean camera centre.

    Args:
        c2w: [T,4,4] camera-to-world of the training views. points: [N,3] initial points or None.
    Returns:
        scale in scene units (> 0).
    """
    centers = np.asarray(c2w)[:, :3, 3]
    mean = centers.mean(0)
    radius = float(np.linalg.norm(centers - mean, axis=1).max()) * 1.1
    if points is not None and len(points):
        radius = max(radius, 0.5 * float(np.median(np.linalg.norm(np.asarray(points, np.float64) - mean, axis=1))))
    return radius if radius > 1e-6 else 1.0


def camera_lookat_bounds(
    c2w: np.ndarray, K: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds of the region the cameras look at, for cameras that converge on an object.

    The point closest (least squares) to all optical axes is the centre; the half size is the image
    half-width seen at the median camera distance to it. Returns None when the axes are near
    parallel (forward-facing capture) or the point lies behind the cameras.

    Args:
        c2w: [T,4,4] OpenCV camera-to-world. K: [T,3,3] pixels.
    Returns:
        (lo [3], hi [3]) world-space box, or None.
    """
    c2w = np.asarray(c2w, np.float64)
    origins = c2w[:, :3, 3]
    dirs = c2w[:, :3, 2] / np.linalg.norm(c2w[:, :3, 2], axis=1, keepdims=True)
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(origins, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ o
    eig = np.linalg.eigvalsh(A)
    if len(origins) < 2 or eig[0] < 0.05 * len(origins):
        return None
    center = np.linalg.solve(A, b)
    along = np.einsum("ij,ij->i", center - origins, dirs)
    if np.median(along) <= 0:
        return None
    dist = float(np.median(np.linalg.norm(center - origins, axis=1)))
    half = dist * 0.5 * max(width, height) / float(np.median(np.asarray(K)[:, 0, 0]))
    return center - half, center + half


def points_bounds(xyz: np.ndarray, pad: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Robust (1st-99th percentile) box of a point cloud, grown by `pad` of its size each side."""
    lo, hi = np.percentile(np.asarray(xyz, np.float64), [1, 99], axis=0)
    size = np.maximum(hi - lo, 1e-6)
    return lo - pad * size, hi + pad * size


@dataclass
class InitConfig:
    init: InitKind = "depth"
    """Where the Gaussians start: depth-fused cloud, SfM points, or random."""
    num_random: int = 50_000
    """Number of random points for --init random."""
    max_points: int = 0
    """Randomly keep at most this many initial points (0 = all); bounds CPU cost."""
    random_fill: int = 0
    """Add this many random points (in the training cameras' view box) to a depth or SfM init: Gaussians
    for what the depth prior or SfM does not cover (regions without valid depth, unseen space)."""
    sfm_min_train_views: int = 2
    """--init sfm keeps the SfM points seen by at least this many training views (0 = every point,
    including points only the held-out test views observed)."""


def random_points(
    bounds: tuple[np.ndarray, np.ndarray], n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform in the box bounds = (lo [3], hi [3]) with random colours: xyz float32 [n,3], rgb uint8 [n,3]."""
    lo, hi = bounds
    xyz = (lo + (hi - lo) * rng.random((n, 3))).astype(np.float32)
    rgb = (rng.random((n, 3)) * 255).astype(np.uint8)
    return xyz, rgb


def initial_points(
    cfg: InitConfig,
    points: tuple[np.ndarray, np.ndarray] | None,
    bounds: Callable[[], tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The initial point cloud for training (`cfg.random_fill` random points added to a depth or SfM init).

    Args:
        cfg: the init settings.
        points: (xyz [N,3], rgb uint8 [N,3]) of the depth-fused cloud or the SfM points; None for --init random.
        bounds: () -> (lo [3], hi [3]), the box random points are drawn in; called only when one is needed.
        rng: draws the subset (max_points) and the random points, in that order.
    Returns:
        xyz float32 [N,3] scene units, rgb uint8 [N,3].
    """
    if cfg.init == "random":
        xyz, rgb = random_points(bounds(), cfg.num_random, rng)
    elif cfg.init in ("depth", "sfm"):
        if points is None:
            raise SplatError(f"--init {cfg.init} needs its points")
        xyz, rgb = np.asarray(points[0], np.float32), np.asarray(points[1], np.uint8)
    else:
        raise SplatError(f"unknown init '{cfg.init}' (choose depth, sfm or random)")
    if cfg.max_points and len(xyz) > cfg.max_points:
        keep = np.sort(rng.choice(len(xyz), cfg.max_points, replace=False))
        xyz, rgb = xyz[keep], rgb[keep]
    if cfg.random_fill > 0 and cfg.init != "random":
        box = bounds()
        log.debug("random fill in box %s .. %s", np.round(box[0], 3).tolist(), np.round(box[1], 3).tolist())
        fx, frgb = random_points(box, cfg.random_fill, rng)
        xyz, rgb = np.concatenate([xyz, fx]), np.concatenate([rgb, frgb])
    return xyz, rgb


def gaussians_from_points(
    xyz: np.ndarray, rgb: np.ndarray, sh_degree: int, init_opacity: float = 0.1, init_scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Isotropic Gaussians at the points: sigma = init_scale x mean kNN(3) distance, identity rotation.

    Args:
        xyz: [N,3] scene units. rgb: [N,3] uint8 or float in [0,1].
    Returns:
        dict of float32 arrays (pre-activation, `splat.ply` layout).
    """
    xyz = np.asarray(xyz, np.float32)
    n = len(xyz)
    if n == 0:
        raise SplatError("no initial points to create Gaussians from")
    colors = np.asarray(rgb, np.float32)
    if np.asarray(rgb).dtype == np.uint8:
        colors = colors / 255.0
    log_scale = np.log(knn_scales(xyz) * init_scale)
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    return {
        "means": xyz,
        "scales": np.repeat(log_scale[:, None], 3, axis=1).astype(np.float32),
        "quats": quats,
        "opacities": np.full(n, np.log(init_opacity / (1 - init_opacity)), np.float32),
        "sh0": rgb_to_sh0(colors).reshape(n, 1, 3),
        "shN": np.zeros((n, num_sh_bases(sh_degree) - 1, 3), np.float32),
    }


def to_parameters(gaussians: dict[str, np.ndarray], device: torch.device | str) -> torch.nn.ParameterDict:
    """Numpy Gaussian dict -> ParameterDict on `device` (float32, requires_grad)."""
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(torch.as_tensor(np.asarray(v, np.float32)).to(device)) for k, v in gaussians.items()}
    )


def to_numpy(params: torch.nn.ParameterDict | dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """ParameterDict -> numpy dict (float32, detached, on CPU)."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in params.items()}
