"""Gaussian parameters: initial points (given points, random fill in a box or frustums), kNN scales, extent.

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

from depth.geometry import invert_pose, project
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
    from splat.unpool import proximity

    n = len(xyz)
    if n < 2:
        return np.full(n, 1e-2, np.float32)
    return np.maximum(proximity(xyz, k)[0], 1e-7).astype(np.float32)


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


@dataclass(frozen=True)
class Frustums:
    """The view volumes of a set of cameras, where random points go when the cameras do not converge on an object
    (a forward-facing capture or a camera panning through a room), so that no box around an object exists.

    c2w [T,4,4] OpenCV camera-to-world, K [T,3,3] pixels, width / height pixels; depths: per camera, the z-depths
    (scene units) of the scene's points in its image (`visible_depths`), which set the fill's depths.
    """

    c2w: np.ndarray
    K: np.ndarray
    width: int
    height: int
    depths: tuple[np.ndarray, ...]


FillRegion = tuple[np.ndarray, np.ndarray] | Frustums
"""Where random points are drawn: a box (lo [3], hi [3]) or cameras' frustums."""


def visible_depths(
    xyz: np.ndarray, c2w: np.ndarray, K: np.ndarray, width: int, height: int, max_points: int = 20_000
) -> tuple[np.ndarray, ...]:
    """Per camera, the z-depths of the points in front of it that project into its image (occlusion ignored).

    Args:
        xyz: [N,3] points (scene units). c2w: [T,4,4] OpenCV camera-to-world. K: [T,3,3] pixels.
        max_points: at most this many depths per camera (evenly strided).
    Returns:
        T float64 arrays of depths (scene units); raises SplatError when no camera sees any point.
    """
    xyz = np.asarray(xyz, np.float64)
    out = []
    for w2c, k in zip(invert_pose(np.asarray(c2w, np.float64)), np.asarray(K, np.float64)):
        uv, z = project(xyz, k, w2c)
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= width) & (uv[:, 1] >= 0) & (uv[:, 1] <= height)
        zs = np.sort(z[ok])
        out.append(zs[:: max(1, len(zs) // max_points)])
    if not any(len(z) for z in out):
        raise SplatError("no point lies in the cameras' images: the depth of the random points is unknown")
    return tuple(out)


def frustum_points(
    region: Frustums, n: int, rng: np.random.Generator, jitter: float = 0.2, uniform_share: float = 0.5
) -> np.ndarray:
    """n points in the frustums: a camera drawn uniformly, a pixel uniform over its image, and a z-depth that is,
    with probability 1 - uniform_share, one of the camera's scene depths (a camera that sees no point: any
    camera's), else uniform between 0.8 x the nearest and 1.2 x the farthest of them; every depth then times a
    factor uniform in [1 - jitter, 1 + jitter].

    Why both: at the scene's depths alone the fill repeats what the points already hold; uniform in depth alone it
    lands mostly in the empty space in front of a room's walls, where the training views fit it as floaters; a box
    around the points leaves a forward-facing scene's near field empty (benchmarks/README.md, "init_random_fill":
    measured on LLFF fern and 7-Scenes).

    Returns:
        xyz float32 [n,3], scene units.
    """
    view = rng.integers(0, len(region.c2w), n)
    u, v = rng.random(n) * region.width, rng.random(n) * region.height
    pooled = np.concatenate(region.depths)
    z = np.empty(n)
    for t in range(len(region.c2w)):
        sel = np.flatnonzero(view == t)
        pool = region.depths[t] if len(region.depths[t]) else pooled
        z[sel] = pool[rng.integers(0, len(pool), len(sel))]
        lo, hi = 0.8 * pool.min(), 1.2 * pool.max()
        flat = sel[rng.random(len(sel)) < uniform_share]
        z[flat] = lo + rng.random(len(flat)) * (hi - lo)
    z *= 1.0 + jitter * (2.0 * rng.random(n) - 1.0)
    K, c2w = np.asarray(region.K, np.float64)[view], np.asarray(region.c2w, np.float64)[view]
    cam = np.stack([(u - K[:, 0, 2]) / K[:, 0, 0], (v - K[:, 1, 2]) / K[:, 1, 1], np.ones(n)], 1) * z[:, None]
    return (np.einsum("nij,nj->ni", c2w[:, :3, :3], cam) + c2w[:, :3, 3]).astype(np.float32)


@dataclass
class InitConfig:
    init: InitKind = "depth"
    """Where the Gaussians start: depth-fused cloud, SfM points, or random."""
    num_random: int = 50_000
    """Number of random points for --init random."""
    max_points: int = 0
    """Randomly keep at most this many initial points (0 = all); bounds CPU cost."""
    random_fill: int = 0
    """Add this many random points (in the box the training cameras look at, else in their frustums) to a
    depth or SfM init: Gaussians for what the depth prior or SfM does not cover (regions without valid depth,
    unseen space)."""
    sfm_min_train_views: int = 2
    """--init sfm keeps the SfM points seen by at least this many training views (0 = every point,
    including points only the held-out test views observed)."""


def random_points(region: FillRegion, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform in a box (lo [3], hi [3]) or in `Frustums` (`frustum_points`), with random colours:
    xyz float32 [n,3], rgb uint8 [n,3]."""
    if isinstance(region, Frustums):
        xyz = frustum_points(region, n, rng)
    else:
        lo, hi = region
        xyz = (lo + (hi - lo) * rng.random((n, 3))).astype(np.float32)
    rgb = (rng.random((n, 3)) * 255).astype(np.uint8)
    return xyz, rgb


def initial_points(
    cfg: InitConfig,
    points: tuple[np.ndarray, np.ndarray] | None,
    region: Callable[[], FillRegion],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The initial point cloud for training (`cfg.random_fill` random points added to a depth or SfM init).

    Args:
        cfg: the init settings.
        points: (xyz [N,3], rgb uint8 [N,3]) of the depth-fused cloud or the SfM points; None for --init random.
        region: () -> the box or frustums random points are drawn in; called only when one is needed.
        rng: draws the subset (max_points) and the random points, in that order.
    Returns:
        xyz float32 [N,3] scene units, rgb uint8 [N,3].
    """
    if cfg.init == "random":
        xyz, rgb = random_points(region(), cfg.num_random, rng)
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
        where = region()
        log.debug("random fill in %s", where if isinstance(where, Frustums) else np.round(where, 3).tolist())
        fx, frgb = random_points(where, cfg.random_fill, rng)
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
    """Numpy Gaussian dict -> ParameterDict on `device` (float32, requires_grad), copies that never share memory
    with the arrays (the optimisers update parameters in place; a twin field is built from the same arrays)."""
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(torch.tensor(np.asarray(v, np.float32), device=device)) for k, v in gaussians.items()}
    )


def to_numpy(params: torch.nn.ParameterDict | dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """ParameterDict -> numpy dict (float32, detached, on CPU)."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in params.items()}
