"""Fuse aligned depth into the initial point cloud RUN/points/init.ply.

Pipeline (run_fuse):
  1. Frames: the training views (split["train"]) that have aligned depth; test views never.
  2. Back-project every `stride`-th pixel with valid depth (and confidence >= min_confidence) with K
     and c2w into coloured world points.
  3. Multi-view consistency: each point is projected into up to `neighbors` nearby fusion views; a
     view agrees when its own depth at that pixel is valid, confident, and within `rel_depth_tol`
     (relative) of the point's depth in that view. Points seen consistently in fewer than
     `min_views` views (the source view counts) are dropped.
  4. Voxel downsampling: one point per voxel, the confidence-weighted mean of position, colour and
     viewing direction (numpy; open3d's voxel_down_sample averages uniformly), accumulated frame by
     frame (VoxelAccumulator) so memory grows with the occupied voxels, not with the video length.
     The voxel size is `voxel_size`, or the robust scene extent (from a coarse first pass) /
     `voxel_divisions`, enlarged until the point budget `max_points` holds.
  5. Statistical outlier removal and normal estimation with open3d; normals are flipped to face
     the cameras that saw the point.
  6. Written atomically as binary PLY: x y z float32, nx ny nz float32 (when estimated),
     red green blue uint8 (readable by open3d, trimesh, plyfile and splat viewers).

Conventions: OpenCV camera axes, c2w 4x4, K 3x3 at the stored frame size, pixel (col c, row r) has
its centre at image coordinates (c + 0.5, r + 0.5). Depth is z-depth in scene units, 0 = invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.atomic import atomic_path
from recon.artifacts.cameras import CameraSet
from depth.geometry import invert_pose
from recon.console import info, track, warn
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths
from recon.split import load_split


@dataclass
class FuseConfig:
    max_points: int = 300_000
    """Point budget of init.ply (the voxel size grows until it holds)."""
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


# --------------------------------------------------------------------------------------------
# Pure geometry


def backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """World points [N, 3] float64 of the pixels with depth > 0 (and `mask`), in row-major order.

    Args:
        depth: [H, W] z-depth in scene units, 0 = invalid.
        K: [3, 3] intrinsics in pixels (pixel centres at +0.5).
        c2w: [4, 4] camera-to-world, OpenCV axes.
        mask: optional [H, W] bool selecting pixels (e.g. a stride pattern).
    """
    depth = np.asarray(depth, dtype=np.float64)
    sel = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        sel &= mask
    rows, cols = np.nonzero(sel)
    z = depth[rows, cols]
    x = (cols + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (rows + 0.5 - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z], axis=1)
    return cam @ np.asarray(c2w)[:3, :3].T + np.asarray(c2w)[:3, 3]


def project(points: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points [N, 3] into a camera: (uv [N, 2] image coordinates in pixels, z [N] depth).

    Points behind the camera get z <= 0 (their uv is meaningless).
    """
    cam = np.asarray(points) @ np.asarray(w2c)[:3, :3].T + np.asarray(w2c)[:3, 3]
    z = cam[:, 2]
    zs = np.where(np.abs(z) > 1e-12, z, 1e-12)
    u = K[0, 0] * cam[:, 0] / zs + K[0, 2]
    v = K[1, 1] * cam[:, 1] / zs + K[1, 2]
    return np.stack([u, v], axis=1), z


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
    """Up to k frames of `candidates` (not `src`) nearest to camera `src` whose optical axes are within
    `max_angle_deg` of its own; c2w [T, 4, 4]."""
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
        raise ReconError(f"voxel size must be positive, got {voxel}")
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


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray, normals: np.ndarray | None = None) -> None:
    """Binary little-endian PLY, atomically: x y z float32, [nx ny nz float32], red green blue uint8.

    points [N, 3], colors [N, 3] uint8, normals [N, 3] or None.
    """
    from plyfile import PlyData, PlyElement

    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if normals is not None:
        fields += [("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    v = np.empty(len(points), dtype=fields)
    v["x"], v["y"], v["z"] = (np.asarray(points, np.float32)[:, k] for k in range(3))
    if normals is not None:
        v["nx"], v["ny"], v["nz"] = (np.asarray(normals, np.float32)[:, k] for k in range(3))
    v["red"], v["green"], v["blue"] = (np.asarray(colors, np.uint8)[:, k] for k in range(3))
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(v, "vertex")], text=False).write(str(tmp))


# --------------------------------------------------------------------------------------------
# Stage


def _read_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))
    except Exception as e:
        raise ReconError(f"cannot read frame {path} ({e})") from e
    if (rgb.shape[1], rgb.shape[0]) != size:
        raise ReconError(f"frame {path} is {rgb.shape[1]}x{rgb.shape[0]} but cameras.json says {size[0]}x{size[1]}")
    return rgb


def _load_aligned(paths: RunPaths, cams: CameraSet) -> tuple[np.ndarray, np.ndarray]:
    if not paths.aligned_npz.exists():
        raise ReconError(f"{paths.aligned_npz} not found: run the align stage first (recon align)")
    with np.load(paths.aligned_npz, allow_pickle=False) as z:
        if "depth" not in z.files:
            raise ReconError(f"{paths.aligned_npz} has no 'depth' array")
        depth = z["depth"]
    T = len(cams)
    if depth.shape != (T, cams.height, cams.width):
        got = "x".join(map(str, depth.shape))
        raise ReconError(
            f"aligned depth is {got} but the run has {T} frames of {cams.width}x{cams.height}: re-run align"
        )
    if not np.all(np.isfinite(depth)):
        raise ReconError(f"{paths.aligned_npz} contains NaN or infinite depth")
    conf = np.ones_like(depth, dtype=np.float32)
    if paths.disparity_npz.exists():
        with np.load(paths.disparity_npz, allow_pickle=False) as z:
            if "confidence" in z.files and z["confidence"].shape == depth.shape:
                conf = z["confidence"].astype(np.float32)
    return depth.astype(np.float32, copy=False), conf


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


def run_fuse(paths: RunPaths, cfg: FuseConfig) -> dict[str, Any]:
    """Fuse the aligned depth of the training views into RUN/points/init.ply; returns a summary dict."""
    if cfg.stride < 1 or cfg.min_views < 1 or cfg.max_points < 1 or not cfg.rel_depth_tol > 0:
        raise ReconError("fuse: stride, min_views and max_points must be >= 1 and rel_depth_tol > 0")
    cams = CameraSet.load(paths.cameras_json)
    split = load_split(paths.split_json)
    depth, conf = _load_aligned(paths, cams)
    T, H, W = depth.shape
    test = {int(i) for i in split.get("test", [])}
    train = [int(i) for i in split.get("train", []) if 0 <= int(i) < T]
    frames = [i for i in train if i not in test and cams.registered[i] and np.any(depth[i] > 0)]
    if not frames:
        raise ReconError("fuse: no training view has valid aligned depth (check the depth and align stages)")
    min_views = cfg.min_views
    if len(frames) < min_views:
        warn(
            f"fuse: only {len(frames)} view(s) with depth; multi-view check needs {min_views}, keeping single-view points"
        )
        min_views = len(frames)

    # Pass 1 (cheap): the scene extent from a coarse back-projection fixes the voxel grid.
    coarse = np.zeros((H, W), dtype=bool)
    coarse[:: 8 * cfg.stride, :: 8 * cfg.stride] = True
    sample = np.concatenate(
        [backproject(depth[i], cams.K[i], cams.c2w[i], coarse) for i in frames] + [np.zeros((0, 3))]
    )
    if len(sample) < 2:
        sample = np.concatenate([backproject(depth[i], cams.K[i], cams.c2w[i]) for i in frames])
    extent = max(robust_extent(sample), 1e-9)
    voxel = float(cfg.voxel_size) if cfg.voxel_size else extent / cfg.voxel_divisions
    acc = VoxelAccumulator(np.percentile(sample, 1.0, axis=0), voxel)

    # Pass 2: back-project, keep multi-view consistent points, accumulate per voxel.
    w2c = invert_pose(cams.c2w)
    grid = np.zeros((H, W), dtype=bool)
    grid[cfg.stride // 2 :: cfg.stride, cfg.stride // 2 :: cfg.stride] = True
    n_backprojected = n_consistent = 0
    for i in track(frames, "fusing depth"):
        sel = grid & (conf[i] >= cfg.min_confidence)
        p = backproject(depth[i], cams.K[i], cams.c2w[i], sel)
        n_backprojected += len(p)
        if not len(p):
            continue
        rows, cols = np.nonzero(sel & (depth[i] > 0))
        count = np.ones(len(p), dtype=np.int64)
        for j in select_neighbors(cams.c2w, i, frames, cfg.neighbors, cfg.max_view_angle_deg):
            count += depth_agreement(p, depth[j], cams.K[j], w2c[j], cfg.rel_depth_tol, conf[j], cfg.min_confidence)
        keep = count >= min_views
        if not keep.any():
            continue
        n_consistent += int(keep.sum())
        rgb = _read_rgb(paths.root / cams.files[i], (W, H))
        view = cams.c2w[i][:3, 3] - p[keep]
        view /= np.linalg.norm(view, axis=1, keepdims=True)
        weight = np.maximum(conf[i][rows[keep], cols[keep]].astype(np.float64), 1e-6)
        acc.add(p[keep], weight, rgb[rows[keep], cols[keep]].astype(np.float64), view)
    if n_consistent == 0:
        raise ReconError(
            f"fuse: no point is consistent in {min_views} views (rel_depth_tol {cfg.rel_depth_tol}); "
            "the aligned depth disagrees between views"
        )
    Pv, Cv, Vv, Wv = acc.means()

    # Point budget: coarser voxels (surfaces: count ~ 1 / voxel^2), then a random subset if needed.
    for _ in range(8):
        if len(Pv) <= cfg.max_points:
            break
        voxel *= 1.05 * np.sqrt(len(Pv) / cfg.max_points)
        Pv, (Cv, Vv), Wv = voxel_downsample(Pv, voxel, Wv, Cv, Vv)
    if len(Pv) > cfg.max_points:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(Pv), cfg.max_points, replace=False))
        Pv, Cv, Vv = Pv[pick], Cv[pick], Vv[pick]
    n_voxel = len(Pv)

    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(Pv))
    if cfg.sor_neighbors > 0 and cfg.sor_std > 0 and len(Pv) > cfg.sor_neighbors:
        _, ind = pcd.remove_statistical_outlier(nb_neighbors=cfg.sor_neighbors, std_ratio=cfg.sor_std)
        ind = np.asarray(ind, dtype=np.int64)
        Pv, Cv, Vv = Pv[ind], Cv[ind], Vv[ind]
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(Pv))
    normals = None
    if cfg.estimate_normals and len(Pv) >= 3:
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4.0 * voxel, max_nn=30))
        normals = np.asarray(pcd.normals)
        flip = np.sum(normals * Vv, axis=1) < 0
        normals[flip] *= -1
    colors = np.clip(np.round(Cv), 0, 255).astype(np.uint8)
    write_ply(paths.init_ply, Pv, colors, normals)

    summary = {
        "frames": len(frames),
        "points": int(len(Pv)),
        "backprojected": int(n_backprojected),
        "consistent": int(n_consistent),
        "after_voxel": int(n_voxel),
        "voxel_size": float(voxel),
        "extent": float(extent),
        "min_views": int(min_views),
        "normals": normals is not None,
    }
    info(
        f"fuse: {len(frames)} views, {n_backprojected} back-projected -> {n_consistent} consistent -> "
        f"{len(Pv)} points (voxel {voxel:.4g})"
    )
    return summary


def read_ply_points(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(points [N, 3] float32, colors [N, 3] uint8, normals [N, 3] float32 or None) from a point PLY."""
    from plyfile import PlyData

    path = Path(path)
    if not path.exists():
        raise ReconError(f"point cloud {path} not found: run the fuse stage first (recon fuse)")
    v = PlyData.read(str(path))["vertex"].data
    names = v.dtype.names
    pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    cols = (
        np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
        if "red" in names
        else np.full((len(v), 3), 128, np.uint8)
    )
    nrm = np.stack([v["nx"], v["ny"], v["nz"]], axis=1).astype(np.float32) if "nx" in names else None
    return pts, cols, nrm
