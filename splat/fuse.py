"""Fuse per-view depth maps into one coloured point cloud (the initial points of the Gaussians).

`fuse_depth` (arrays in, `FusedCloud` out):
  1. Back-project every `stride`-th pixel with valid depth (and confidence >= min_confidence) of each view
     with K and c2w into coloured world points.
  2. Multi-view consistency: each point is projected into up to `neighbors` nearby views; a view agrees when
     its own depth at that pixel is valid, confident, and within `rel_depth_tol` (relative) of the point's
     depth in that view. Points seen consistently in fewer than `min_views` views (the source view counts)
     are dropped.
  3. Voxel downsampling: one point per voxel, the confidence-weighted mean of position, colour and viewing
     direction (numpy; open3d's voxel_down_sample averages uniformly), accumulated view by view
     (VoxelAccumulator) so memory grows with the occupied voxels, not with the video length. The voxel size
     is `voxel_size`, or the robust scene extent (from a coarse first pass) / `voxel_divisions`, enlarged
     until the point budget `max_points` holds.
  4. Statistical outlier removal and normal estimation with open3d; normals are flipped to face the cameras
     that saw the point.

Conventions (depth.geometry): OpenCV camera axes, c2w 4x4, K 3x3 at the depth maps' size, pixel (col c,
row r) has its centre at image coordinates (c + 0.5, r + 0.5). Depth is z-depth in scene units, 0 = invalid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from depth.checks import flag, number, rng_seed
from depth.geometry import backproject, invert_pose, project
from splat.errors import SplatError

log = logging.getLogger(__name__)

ImageSource = np.ndarray | Callable[[int], np.ndarray]
"""uint8 [V, H, W, 3] images, or a function view index -> uint8 [H, W, 3] (read only for views that keep points)."""


@dataclass
class FuseConfig:
    max_points: int = 300_000
    """Point budget of the fused cloud (the voxel size grows until it holds)."""
    voxel_size: float | None = None
    """Voxel edge in scene units; None = robust scene extent / voxel_divisions."""
    voxel_divisions: int = 512
    min_views: int = 2
    """Keep points that agree in at least this many views (the source view included)."""
    rel_depth_tol: float = 0.03
    """Relative depth difference under which a neighbour view agrees with a point."""
    neighbors: int = 6
    """Neighbour views each point is checked against (nearest cameras with similar viewing direction)."""
    max_view_angle_deg: float = 60.0
    """Neighbours must look within this angle of the source view's optical axis."""
    stride: int = 2
    """Back-project every stride-th pixel in x and y."""
    min_confidence: float = 0.1
    """Ignore depth pixels whose confidence is below this (stereo; DVD/file have confidence 1)."""
    sor_neighbors: int = 20
    sor_std: float = 2.0
    """Statistical outlier removal (open3d): neighbours considered and std-ratio threshold; 0 = off."""
    estimate_normals: bool = True
    seed: int = 0

    def validate(self, where: str = "fuse") -> FuseConfig:
        """SplatError unless every field is in range; `where` prefixes the field names in the message."""
        n = f"{where}."
        number(self.max_points, n + "max_points", SplatError, lo=1, hi=1_000_000_000, integer=True)
        number(self.voxel_size, n + "voxel_size", SplatError, lo=0, lo_open=True, optional=True)
        number(self.voxel_divisions, n + "voxel_divisions", SplatError, lo=1, hi=1_000_000, integer=True)
        number(self.min_views, n + "min_views", SplatError, lo=1, hi=1000, integer=True)
        number(self.rel_depth_tol, n + "rel_depth_tol", SplatError, lo=0, hi=1, lo_open=True)
        number(self.neighbors, n + "neighbors", SplatError, lo=0, hi=1000, integer=True)
        if self.neighbors < self.min_views - 1:
            raise SplatError(
                f"{n}min_views {self.min_views} needs {n}neighbors >= {self.min_views - 1}, got {self.neighbors}"
            )
        number(self.max_view_angle_deg, n + "max_view_angle_deg", SplatError, lo=0, hi=180, lo_open=True)
        number(self.stride, n + "stride", SplatError, lo=1, hi=1024, integer=True)
        number(self.min_confidence, n + "min_confidence", SplatError, lo=0, hi=1)
        number(self.sor_neighbors, n + "sor_neighbors", SplatError, lo=0, hi=10_000, integer=True, note="0 = off")
        number(self.sor_std, n + "sor_std", SplatError, lo=0, hi=100, note="0 = off")
        flag(self.estimate_normals, n + "estimate_normals", SplatError)
        rng_seed(self.seed, n + "seed", SplatError)
        return self


@dataclass
class FusedCloud:
    """The fused points: xyz float64 [N, 3] scene units, rgb uint8 [N, 3], normals float64 [N, 3] or None,
    and a JSON-compatible summary (views, points, backprojected, consistent, after_voxel, voxel_size, extent,
    min_views, normals)."""

    xyz: np.ndarray
    rgb: np.ndarray
    normals: np.ndarray | None
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Pure geometry


def depth_agreement(
    points: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray,
    w2c: np.ndarray,
    rel_tol: float,
    confidence: np.ndarray | None = None,
    min_confidence: float = 0.0,
) -> np.ndarray:
    """[N] bool: does a view's depth map agree with world points [N, 3]?

    A point agrees when it projects inside the view (in front of it) onto a pixel whose depth d is
    valid (and confident) and |z - d| <= rel_tol * d, z being the point's depth in that view.
    """
    H, W = depth.shape
    uv, z = project(points, K, w2c)
    col = np.floor(uv[:, 0]).astype(np.int64)
    row = np.floor(uv[:, 1]).astype(np.int64)
    inside = (z > 0) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    out = np.zeros(len(points), dtype=bool)
    r, c = row[inside], col[inside]
    d = depth[r, c].astype(np.float64)
    ok = d > 0
    if confidence is not None:
        ok &= confidence[r, c] >= min_confidence
    ok &= np.abs(z[inside] - d) <= rel_tol * d
    out[np.nonzero(inside)[0]] = ok
    return out


def select_neighbors(
    c2w: np.ndarray, src: int, candidates: list[int], k: int, max_angle_deg: float = 60.0
) -> list[int]:
    """Up to k views of `candidates` (not `src`) nearest to camera `src` whose optical axes are within
    `max_angle_deg` of its own; c2w [V, 4, 4]."""
    centres = c2w[:, :3, 3]
    axes = c2w[:, :3, 2]
    cos_max = np.cos(np.radians(max_angle_deg))
    cands = [j for j in candidates if j != src and float(axes[j] @ axes[src]) >= cos_max]
    cands.sort(key=lambda j: float(np.linalg.norm(centres[j] - centres[src])))
    return cands[:k]


def voxel_downsample(
    points: np.ndarray, voxel: float, weights: np.ndarray, *attributes: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Weighted mean per voxel.

    Args:
        points: [N, 3] positions; voxel: edge length (same units); weights: [N] > 0.
        attributes: arrays [N, ...] averaged with the same weights (e.g. colours, view directions).
    Returns:
        (points [M, 3], [attribute means [M, ...]], weight sums [M]) with M occupied voxels.
    """
    if voxel <= 0:
        raise SplatError(f"voxel size must be positive, got {voxel}")
    idx = np.floor((points - points.min(axis=0)) / voxel).astype(np.int64)
    dims = idx.max(axis=0) + 1
    key = (idx[:, 0] * dims[1] + idx[:, 1]) * dims[2] + idx[:, 2]
    _, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.ravel()
    M = int(inverse.max()) + 1
    wsum = np.bincount(inverse, weights=weights, minlength=M)

    def mean(a: np.ndarray) -> np.ndarray:
        a2 = a.reshape(len(a), -1).astype(np.float64)
        out = np.stack(
            [np.bincount(inverse, weights=weights * a2[:, c], minlength=M) for c in range(a2.shape[1])], axis=1
        )
        return (out / wsum[:, None]).reshape((M,) + a.shape[1:])

    return mean(points), [mean(a) for a in attributes], wsum


def robust_extent(points: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> float:
    """Diagonal of the lo..hi percentile box of points [N, 3] (scene units)."""
    a, b = np.percentile(points, [lo, hi], axis=0)
    return float(np.linalg.norm(b - a))


class VoxelAccumulator:
    """Confidence-weighted running sums per voxel of a fixed grid (origin, voxel), so that fusing a long
    video needs memory for the occupied voxels, not for every back-projected pixel.

    `add(points [N, 3], weights [N], colors [N, 3], views [N, 3])`; `means()` returns
    (points [M, 3], colors [M, 3], views [M, 3], weights [M]) with M occupied voxels.
    """

    _BITS = 21  # per axis: voxel indices within +-2^20 of the origin

    def __init__(self, origin: np.ndarray, voxel: float, flush_points: int = 2_000_000):
        self.origin = np.asarray(origin, dtype=np.float64)
        self.voxel = float(voxel)
        self.flush_points = flush_points
        self.keys = np.zeros(0, dtype=np.int64)
        self.sums = np.zeros((0, 10))  # w, w*xyz, w*rgb, w*view
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0

    def add(self, points: np.ndarray, weights: np.ndarray, colors: np.ndarray, views: np.ndarray) -> None:
        half = 1 << (self._BITS - 1)
        ijk = np.floor((points - self.origin) / self.voxel).astype(np.int64)
        ok = np.all(np.abs(ijk) < half, axis=1)  # farther than 2^20 voxels: discarded as absurd
        ijk = ijk[ok] + half
        key = (ijk[:, 0] << (2 * self._BITS)) | (ijk[:, 1] << self._BITS) | ijk[:, 2]
        w = weights[ok, None]
        rows = np.concatenate([w, w * points[ok], w * colors[ok], w * views[ok]], axis=1)
        self._pending.append((key, rows))
        self._pending_n += len(key)
        if self._pending_n >= self.flush_points:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self.keys] + [k for k, _ in self._pending])
        rows = np.concatenate([self.sums] + [r for _, r in self._pending])
        self._pending, self._pending_n = [], 0
        self.keys, inverse = np.unique(keys, return_inverse=True)
        inverse = inverse.ravel()
        self.sums = np.stack(
            [np.bincount(inverse, weights=rows[:, c], minlength=len(self.keys)) for c in range(rows.shape[1])], axis=1
        )

    def means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self._flush()
        w = self.sums[:, 0]
        m = self.sums[:, 1:] / w[:, None]
        return m[:, 0:3], m[:, 3:6], m[:, 6:9], w


# --------------------------------------------------------------------------------------------
# Fusion


def _check_inputs(depth: np.ndarray, confidence: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: FuseConfig) -> None:
    cfg.validate()
    if depth.ndim != 3 or confidence.shape != depth.shape:
        raise SplatError(f"fuse: depth {depth.shape} and confidence {confidence.shape} must both be [V, H, W]")
    V = len(depth)
    if K.shape != (V, 3, 3) or c2w.shape != (V, 4, 4):
        raise SplatError(f"fuse: {V} depth maps but K {K.shape} and c2w {c2w.shape}")
    if not np.all(np.isfinite(depth)):
        raise SplatError("fuse: the depth maps contain NaN or infinite depth")


def _voxel_grid(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: FuseConfig) -> tuple[VoxelAccumulator, float]:
    """Pass 1 (cheap): the scene extent from a coarse back-projection fixes the voxel grid; (grid, extent)."""
    V, H, W = depth.shape
    coarse = np.zeros((H, W), dtype=bool)
    coarse[:: 8 * cfg.stride, :: 8 * cfg.stride] = True
    sample = np.concatenate([backproject(depth[v], K[v], c2w[v], coarse) for v in range(V)] + [np.zeros((0, 3))])
    if len(sample) < 2:
        sample = np.concatenate([backproject(depth[v], K[v], c2w[v]) for v in range(V)])
    extent = max(robust_extent(sample), 1e-9)
    voxel = float(cfg.voxel_size) if cfg.voxel_size else extent / cfg.voxel_divisions
    return VoxelAccumulator(np.percentile(sample, 1.0, axis=0), voxel), extent


def _consistent_points(
    v: int, depth: np.ndarray, confidence: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: FuseConfig, min_views: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """View v's strided, confident pixels that agree in >= min_views views: (points [M, 3], rows [M],
    cols [M], number back-projected before the check)."""
    H, W = depth.shape[1:]
    grid = np.zeros((H, W), dtype=bool)
    grid[cfg.stride // 2 :: cfg.stride, cfg.stride // 2 :: cfg.stride] = True
    sel = grid & (confidence[v] >= cfg.min_confidence)
    p = backproject(depth[v], K[v], c2w[v], sel)
    rows, cols = np.nonzero(sel & (depth[v] > 0))
    if not len(p):
        return p, rows, cols, 0
    w2c = invert_pose(c2w)
    count = np.ones(len(p), dtype=np.int64)
    for j in select_neighbors(c2w, v, list(range(len(depth))), cfg.neighbors, cfg.max_view_angle_deg):
        count += depth_agreement(p, depth[j], K[j], w2c[j], cfg.rel_depth_tol, confidence[j], cfg.min_confidence)
    keep = count >= min_views
    return p[keep], rows[keep], cols[keep], len(p)


def _accumulate(
    depth: np.ndarray,
    confidence: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    images: ImageSource,
    cfg: FuseConfig,
    min_views: int,
    acc: VoxelAccumulator,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """Pass 2: back-project, keep multi-view consistent points, accumulate per voxel; (backprojected, consistent)."""
    n_backprojected = n_consistent = 0
    V = len(depth)
    for v in range(V):
        p, rows, cols, n = _consistent_points(v, depth, confidence, K, c2w, cfg, min_views)
        n_backprojected += n
        if len(p):
            n_consistent += len(p)
            rgb = images(v) if callable(images) else images[v]
            if rgb.shape[:2] != depth.shape[1:]:
                raise SplatError(
                    f"fuse: image {v} is {rgb.shape[1]}x{rgb.shape[0]}, its depth map {depth.shape[2]}x{depth.shape[1]}"
                )
            view = c2w[v][:3, 3] - p
            view /= np.linalg.norm(view, axis=1, keepdims=True)
            weight = np.maximum(confidence[v][rows, cols].astype(np.float64), 1e-6)
            acc.add(p, weight, rgb[rows, cols].astype(np.float64), view)
        if progress is not None:
            progress(v + 1, V)
    return n_backprojected, n_consistent


def _fit_budget(
    P: np.ndarray, C: np.ndarray, Vd: np.ndarray, W: np.ndarray, voxel: float, cfg: FuseConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Point budget: coarser voxels (surfaces: count ~ 1 / voxel^2), then a random subset if needed."""
    for _ in range(8):
        if len(P) <= cfg.max_points:
            break
        voxel *= 1.05 * np.sqrt(len(P) / cfg.max_points)
        P, (C, Vd), W = voxel_downsample(P, voxel, W, C, Vd)
    if len(P) > cfg.max_points:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(P), cfg.max_points, replace=False))
        P, C, Vd = P[pick], C[pick], Vd[pick]
    return P, C, Vd, voxel


def _clean_and_orient(
    P: np.ndarray, C: np.ndarray, Vd: np.ndarray, voxel: float, cfg: FuseConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Statistical outlier removal and normals facing the viewing direction (open3d): (points, colours, normals)."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(P))
    if cfg.sor_neighbors > 0 and cfg.sor_std > 0 and len(P) > cfg.sor_neighbors:
        _, ind = pcd.remove_statistical_outlier(nb_neighbors=cfg.sor_neighbors, std_ratio=cfg.sor_std)
        kept = np.asarray(ind, dtype=np.int64)
        P, C, Vd = P[kept], C[kept], Vd[kept]
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(P))
    normals = None
    if cfg.estimate_normals and len(P) >= 3:
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4.0 * voxel, max_nn=30))
        normals = np.asarray(pcd.normals)
        flip = np.sum(normals * Vd, axis=1) < 0
        normals[flip] *= -1
    return P, C, normals


def fuse_depth(
    depth: np.ndarray,
    confidence: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    images: ImageSource,
    cfg: FuseConfig,
    progress: Callable[[int, int], None] | None = None,
) -> FusedCloud:
    """Fuse V depth maps into one coloured, multi-view consistent point cloud.

    Args:
        depth: [V, H, W] z-depth in scene units, 0 = invalid (views without any valid pixel are allowed).
        confidence: [V, H, W] per-pixel confidence in [0, 1] (1 where the depth source has none).
        K: [V, 3, 3] intrinsics in pixels at (W, H). c2w: [V, 4, 4] camera-to-world, OpenCV axes.
        images: uint8 [V, H, W, 3], or a function view -> uint8 [H, W, 3] (called once per view that keeps points).
        cfg: fusion settings. progress: called as progress(done, V) after each view.
    Raises:
        SplatError: bad settings or shapes, no valid depth, or no point consistent in enough views.
    """
    depth = np.asarray(depth, np.float32)
    confidence = np.asarray(confidence, np.float32)
    K, c2w = np.asarray(K, np.float64), np.asarray(c2w, np.float64)
    _check_inputs(depth, confidence, K, c2w, cfg)
    if not len(depth) or not np.any(depth > 0):
        raise SplatError("fuse: no training view has valid aligned depth (check the depth and align stages)")
    min_views = cfg.min_views
    if len(depth) < min_views:
        log.warning(
            "fuse: only %d view(s) with depth; multi-view check needs %d, keeping single-view points",
            len(depth),
            min_views,
        )
        min_views = len(depth)
    acc, extent = _voxel_grid(depth, K, c2w, cfg)
    n_back, n_consistent = _accumulate(depth, confidence, K, c2w, images, cfg, min_views, acc, progress)
    if n_consistent == 0:
        raise SplatError(
            f"fuse: no point is consistent in {min_views} views (rel_depth_tol {cfg.rel_depth_tol}); "
            "the aligned depth disagrees between views"
        )
    P, C, Vd, W = acc.means()
    P, C, Vd, voxel = _fit_budget(P, C, Vd, W, acc.voxel, cfg)
    n_voxel = len(P)
    P, C, normals = _clean_and_orient(P, C, Vd, voxel, cfg)
    summary = {
        "frames": len(depth),
        "points": int(len(P)),
        "backprojected": int(n_back),
        "consistent": int(n_consistent),
        "after_voxel": int(n_voxel),
        "voxel_size": float(voxel),
        "extent": float(extent),
        "min_views": int(min_views),
        "normals": normals is not None,
    }
    rgb = np.clip(np.round(C), 0, 255).astype(np.uint8)
    return FusedCloud(xyz=P, rgb=rgb, normals=normals, summary=summary)
