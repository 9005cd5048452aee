"""Depth targets at pseudo views, from the depth prior of the training views (FSGS's pseudo-view depth, weights-free).

FSGS (Zhu et al., ECCV 2024) renders a camera near the training ones every few steps and pulls its rendered
depth towards a monocular depth estimate of that render (1 - Pearson correlation). No monocular model with
weights can run here, but the depth prior already gives a surface for every pixel of the training views it
covers; seen from a pseudo camera, that surface is a depth target with occlusions handled, and its holes (what
no training view saw) are left out of the loss instead of guessed. The prior's surface is one triangle mesh
per view (neighbouring pixels joined unless they straddle a depth edge), ray-cast with open3d's
RaycastingScene; the mesh construction is written here because open3d builds meshes from point clouds or TSDF
volumes, not from a depth map's pixel grid with its depth edges cut.

Conventions as depth.geometry: OpenCV axes, pixel centres at +0.5, z-depth in scene units, 0 = invalid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGE_RATIO = 1.05
"""Two neighbouring pixels of a prior depth map belong to one surface when their depths differ by at most this
ratio; a triangle with a larger spread straddles a depth edge and is left out (its pixels are not one surface)."""


def depth_grid_mesh(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, edge_ratio: float = EDGE_RATIO):
    """The surface of one depth map as triangles over its pixel grid.

    Every 2x2 block of pixels gives two triangles; a triangle is kept when its three depths are valid (> 0,
    finite) and max / min <= edge_ratio.

    Args:
        depth: [H, W] z-depth in scene units, 0 = invalid.
        K: [3, 3] intrinsics in pixels at (W, H). c2w: [4, 4] camera-to-world.
    Returns:
        (vertices [H * W, 3] float32 world points, one per pixel in row-major order (an invalid pixel at depth 1,
        used by no triangle), triangles [F, 3] uint32 vertex indices).
    """
    from depth.geometry import backproject

    depth = np.asarray(depth, np.float64)
    H, W = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    z = np.where(valid, depth, 0.0)
    vertices = backproject(np.where(valid, depth, 1.0), K, c2w)  # every pixel, row-major; invalid ones at depth 1
    idx = np.arange(H * W).reshape(H, W)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]  # a b / c d
    tris = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    zt, vt = z.reshape(-1)[tris], valid.reshape(-1)[tris]
    keep = vt.all(1) & (zt.max(1) <= edge_ratio * np.where(vt.all(1), zt.min(1), np.inf))
    return vertices.astype(np.float32), tris[keep].astype(np.uint32)


def camera_rays(K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, 6] float32 rays (origin, direction) through the pixel centres, directions with camera z = 1, so a
    hit's ray parameter is its z-depth."""
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    d_cam = np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones_like(cols)], -1)
    d = d_cam @ np.asarray(c2w)[:3, :3].T
    o = np.broadcast_to(np.asarray(c2w)[:3, 3], d.shape)
    return np.concatenate([o, d], -1).astype(np.float32)


@dataclass
class PseudoTargets:
    """Depth targets at pseudo cameras.

    Attributes:
        c2w: [P, 4, 4] camera-to-world of the pseudo cameras. K: [3, 3] their intrinsics at (width, height).
        depth: [P, H, W] float32 z-depth of the prior's surface seen from each, 0 where no ray hits it.
        confidence: [P, H, W] float32 the prior's confidence at the hit, interpolated over the hit triangle's
            three pixels (1 where the prior gave none; 0 where there is no hit).
    """

    c2w: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray

    @property
    def coverage(self) -> float:
        """Fraction of the pseudo views' pixels that have a target."""
        return float((self.depth > 0).mean()) if self.depth.size else 0.0


def prior_depth_targets(
    prior: list[np.ndarray],
    K: np.ndarray,
    c2w: np.ndarray,
    pseudo_c2w: np.ndarray,
    pseudo_K: np.ndarray,
    confidence: list[np.ndarray] | None = None,
    edge_ratio: float = EDGE_RATIO,
) -> PseudoTargets:
    """The training views' prior surface seen from each pseudo camera (open3d ray casting, nearest hit).

    Args:
        prior: V depth maps [H, W] (scene units, 0 = invalid) of the training views.
        K: [V, 3, 3] their intrinsics at (W, H). c2w: [V, 4, 4] their camera-to-world.
        pseudo_c2w: [P, 4, 4] the pseudo cameras. pseudo_K: [3, 3] their intrinsics at (W, H).
        confidence: V maps [H, W] in [0, 1] of the prior's per-pixel confidence, or None (1 everywhere).
    Returns:
        PseudoTargets with depth and confidence [P, H, W] (both zero where the prior has no triangle).
    """
    import open3d as o3d

    H, W = np.asarray(prior[0]).shape
    scene = o3d.t.geometry.RaycastingScene()
    tris, conf = {}, {}  # geometry id -> its triangles [F, 3], its vertices' confidence [H * W]
    for v_, (d, k, t) in enumerate(zip(prior, K, c2w, strict=True)):
        v, f = depth_grid_mesh(d, k, t, edge_ratio)
        if len(f):
            g = scene.add_triangles(o3d.core.Tensor.from_numpy(v), o3d.core.Tensor.from_numpy(np.ascontiguousarray(f)))
            tris[g] = f
            conf[g] = (
                np.ones(H * W, np.float32) if confidence is None else np.asarray(confidence[v_], np.float32).ravel()
            )
    pseudo_c2w = np.asarray(pseudo_c2w, np.float64).reshape(-1, 4, 4)
    depth = np.zeros((len(pseudo_c2w), H, W), np.float32)
    weight = np.zeros_like(depth)
    for p, t in enumerate(pseudo_c2w):
        hits = scene.cast_rays(o3d.core.Tensor.from_numpy(camera_rays(pseudo_K, t, W, H)))
        depth[p], weight[p] = _hit_depth_and_confidence(hits, tris, conf, (H, W))
    return PseudoTargets(c2w=pseudo_c2w, K=np.asarray(pseudo_K, np.float64), depth=depth, confidence=weight)


def _hit_depth_and_confidence(
    hits: dict, tris: dict[int, np.ndarray], conf: dict[int, np.ndarray], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Depth [H, W] (0 = no hit) and the hit triangle's confidence interpolated at the hit (barycentric weights
    1 - u - v, u, v of its vertices, as open3d's primitive_uvs give them)."""
    t_hit = hits["t_hit"].numpy().reshape(-1)
    gid, pid = hits["geometry_ids"].numpy().reshape(-1), hits["primitive_ids"].numpy().reshape(-1)
    uv = hits["primitive_uvs"].numpy().reshape(-1, 2)
    hit = np.isfinite(t_hit) & (t_hit > 0)
    depth = np.where(hit, t_hit, 0.0).astype(np.float32)
    weight = np.zeros(t_hit.shape, np.float32)
    bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)
    for g, f in tris.items():
        m = hit & (gid == g)
        weight[m] = (conf[g][f[pid[m]]] * bary[m]).sum(1)
    return depth.reshape(shape), weight.reshape(shape)
