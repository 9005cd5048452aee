"""Triangle meshes from rendered depth: TSDF fusion (open3d) of depth + colour maps at posed views.

Arrays only (no run directory): the recon mesh stage renders the trained Gaussians at the training views and
hands the maps here. Conventions as depth.geometry: OpenCV camera axes, `c2w` camera-to-world, `K` in pixels
with pixel centres at +0.5 (open3d puts them at integer coordinates; `tsdf_mesh` converts), z-depth in scene
units, 0 or non-finite = no depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depth.checks import number
from splat.errors import SplatError


@dataclass
class MeshConfig:
    """TSDF fusion and clean-up of the extracted mesh."""

    voxel_size: float | None = None
    """TSDF voxel edge in scene units (none = the scene extent / `resolution`)."""
    resolution: int = 256
    """Voxels along the scene extent (the diagonal of the 2-98 % box of the depth points) when voxel_size is none."""
    trunc_voxels: float = 4.0
    """TSDF truncation distance in voxels."""
    depth_max: float | None = None
    """Ignore depth beyond this (scene units; none = no limit)."""
    keep_fraction: float = 0.05
    """Keep connected components with at least this fraction of the largest component's triangles (0 = all)."""

    def validate(self, where: str = "mesh") -> MeshConfig:
        """SplatError unless every field is in range; `where` prefixes the field names in the message."""
        n = f"{where}."
        number(self.voxel_size, n + "voxel_size", SplatError, lo=0, lo_open=True, optional=True, note="none = auto")
        number(self.resolution, n + "resolution", SplatError, lo=16, hi=4096, integer=True)
        number(self.trunc_voxels, n + "trunc_voxels", SplatError, lo=1, hi=100)
        number(self.depth_max, n + "depth_max", SplatError, lo=0, lo_open=True, optional=True, note="none = no limit")
        number(self.keep_fraction, n + "keep_fraction", SplatError, lo=0, hi=1, note="0 = keep all")
        return self


def _check_inputs(depths: np.ndarray, colors: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> None:
    V = len(depths)
    if depths.ndim != 3 or V == 0:
        raise SplatError(f"depths must be [V, H, W] with V >= 1, got shape {depths.shape}")
    if colors.shape != (*depths.shape, 3) or colors.dtype != np.uint8:
        raise SplatError(f"colors must be uint8 [V, H, W, 3] = {(*depths.shape, 3)}, got {colors.dtype} {colors.shape}")
    if K.shape != (V, 3, 3) or c2w.shape != (V, 4, 4):
        raise SplatError(f"K must be [{V}, 3, 3] and c2w [{V}, 4, 4], got {K.shape} and {c2w.shape}")
    if not (np.isfinite(K).all() and np.isfinite(c2w).all()):
        raise SplatError("K or c2w has NaN or infinite values")


def scene_extent(depths: np.ndarray, K: np.ndarray, c2w: np.ndarray, max_points: int = 200_000) -> float:
    """Diagonal of the 2-98 percentile box of the back-projected valid depth (scene units); 0 when no depth."""
    rng = np.random.default_rng(0)
    pts = []
    per_view = max(1, max_points // len(depths))
    for d, k, T in zip(depths, K, c2w):
        v, u = np.nonzero(np.isfinite(d) & (d > 0))
        if len(v) == 0:
            continue
        pick = rng.choice(len(v), min(per_view, len(v)), replace=False)
        u, v = u[pick] + 0.5, v[pick] + 0.5
        z = d[v.astype(int), u.astype(int)]
        cam = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], axis=1)
        pts.append(cam @ T[:3, :3].T + T[:3, 3])
    if not pts:
        return 0.0
    p = np.concatenate(pts)
    lo, hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
    return float(np.linalg.norm(hi - lo))


def tsdf_mesh(
    depths: np.ndarray, colors: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: MeshConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse V depth + colour maps into a TSDF (open3d ScalableTSDFVolume) and extract its mesh.

    Args:
        depths: [V, H, W] z-depth (scene units; 0 / non-finite = none). colors: [V, H, W, 3] uint8 RGB.
        K: [V, 3, 3] pixels (centres at +0.5). c2w: [V, 4, 4] camera-to-world, OpenCV axes.
    Returns:
        (vertices [M, 3] float64 scene units, triangles [F, 3] int32, vertex colours [M, 3] uint8), only the
        connected components with at least cfg.keep_fraction of the largest one's triangles.
    Raises:
        SplatError: bad shapes, no valid depth, or an empty mesh.
    """
    import open3d as o3d
    import open3d.core as o3c

    cfg.validate()
    depths = np.where(np.isfinite(depths), depths, 0.0).astype(np.float32)
    _check_inputs(depths, colors, np.asarray(K, np.float64), np.asarray(c2w, np.float64))
    voxel = cfg.voxel_size
    if voxel is None:
        extent = scene_extent(depths, K, c2w)
        if extent <= 0:
            raise SplatError("no valid depth in any view: nothing to fuse into a mesh")
        voxel = extent / cfg.resolution
    # open3d's tensor VoxelBlockGrid (a scalable, hashed TSDF): the legacy ScalableTSDFVolume returns empty
    # meshes in the installed open3d 0.20 build (measured: a plane seen head-on gives 0 triangles).
    dev = o3c.Device("CPU:0")
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=[o3c.SizeVector([1]), o3c.SizeVector([1]), o3c.SizeVector([3])],
        voxel_size=float(voxel),
        block_resolution=8,
        block_count=50_000,
        device=dev,
    )
    depth_max = cfg.depth_max if cfg.depth_max is not None else float(depths.max()) * 1.01 + 1e-6
    for d, c, k, T in zip(depths, colors, K, c2w):
        # open3d's pixel centres are at integer coordinates, ours at +0.5: shift the principal point.
        k_o3d = np.asarray(k, np.float64).copy()
        k_o3d[:2, 2] -= 0.5
        intr = o3c.Tensor.from_numpy(k_o3d)
        w2c = o3c.Tensor.from_numpy(np.linalg.inv(np.asarray(T, np.float64)))  # open3d's extrinsic is w2c
        dimg = o3d.t.geometry.Image(o3c.Tensor.from_numpy(np.ascontiguousarray(d[..., None])))
        cimg = o3d.t.geometry.Image(o3c.Tensor.from_numpy(np.ascontiguousarray(c / np.float32(255.0), np.float32)))
        args = dict(depth_scale=1.0, depth_max=float(depth_max), trunc_voxel_multiplier=float(cfg.trunc_voxels))
        blocks = grid.compute_unique_block_coordinates(dimg, intr, w2c, **args)
        if blocks.shape[0] == 0:
            continue
        grid.integrate(blocks, dimg, cimg, intr, intr, w2c, **args)
    mesh = grid.extract_triangle_mesh(weight_threshold=1.0).to_legacy()
    if len(mesh.triangles) == 0:
        raise SplatError("the fused TSDF has no surface (too little depth, or voxel_size too large)")
    mesh = _keep_main_components(mesh, cfg.keep_fraction)
    verts = np.asarray(mesh.vertices, np.float64)
    tris = np.asarray(mesh.triangles, np.int32)
    cols = np.clip(np.round(np.asarray(mesh.vertex_colors) * 255.0), 0, 255).astype(np.uint8)
    return verts, tris, cols


def _keep_main_components(mesh, keep_fraction: float):
    """Drop connected components with fewer triangles than keep_fraction x the largest (floaters)."""
    clusters, n_tris, _ = mesh.cluster_connected_triangles()
    clusters, n_tris = np.asarray(clusters), np.asarray(n_tris)
    small = n_tris < keep_fraction * n_tris.max()
    mesh.remove_triangles_by_mask(small[clusters])
    mesh.remove_unreferenced_vertices()
    return mesh


def write_mesh_ply(path: str | Path, vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian triangle-mesh PLY: vertex x y z float32 + red green blue uint8, face vertex_indices.

    Written with plyfile (not open3d's writer) so the property types are fixed and readable by open3d,
    trimesh, MeshLab and Blender alike.
    """
    from plyfile import PlyData, PlyElement

    v = np.empty(
        len(vertices), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    for i, name in enumerate("xyz"):
        v[name] = np.asarray(vertices, np.float32)[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        v[name] = np.asarray(colors, np.uint8)[:, i]
    f = np.empty(len(triangles), dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = np.asarray(triangles, np.int32)
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")], text=False, byte_order="<").write(
        str(path)
    )
