"""Stage mesh (optional; `recon mesh RUN` or `recon run --mesh`): RUN/splat/gaussians.ply -> RUN/mesh/mesh.ply.

Renders the trained Gaussians' expected depth and colour at the training views (splat.trainer.render), drops
pixels whose accumulated alpha is below `min_alpha`, fuses them into a TSDF and extracts a triangle mesh with
vertex colours (splat.mesh.tsdf_mesh). The mesh is in the run's SfM frame and units (that of cameras.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from depth.checks import device as check_device
from depth.checks import number
from recon.artifacts import CameraSet, GaussiansFile, MeshFile, RunPaths, Split
from recon.console import info
from recon.errors import ReconError
from recon.stages import StageContext
from recon.stages.views import training_views
from splat.errors import SplatError
from splat.mesh import MeshConfig


@dataclass
class Config(MeshConfig):
    """TSDF meshing (splat.mesh.MeshConfig) plus how the stage renders the Gaussians."""

    min_alpha: float = 0.5
    """Fuse only pixels whose rendered accumulated alpha is at least this (the rest is empty space)."""
    max_size: int = 0
    """Render at most this many pixels on the longest side (0 = the frame resolution)."""
    device: str = "auto"
    """Torch device for rendering (auto, cpu, cuda, cuda:N)."""

    def validate(self, where: str = "mesh") -> Config:
        """ReconError unless every field is in range."""
        try:
            super().validate(where)
        except SplatError as e:
            raise ReconError(str(e)) from e
        number(self.min_alpha, f"{where}.min_alpha", ReconError, lo=0, hi=1, hi_open=True)
        number(self.max_size, f"{where}.max_size", ReconError, lo=0, hi=100_000, integer=True, note="0 = frames")
        if 0 < self.max_size < 8:
            raise ReconError(f"{where}.max_size must be 0 (frame resolution) or >= 8 pixels, got {self.max_size}")
        check_device(self.device, f"{where}.device", ReconError)
        return self


def render_views(
    gaussians: dict[str, np.ndarray], cams: CameraSet, views: list[int], cfg: Config
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(depth [V,H,W] scene units, 0 where alpha < min_alpha; colour [V,H,W,3] uint8; K [V,3,3] at the render size)."""
    import torch

    from depth.device import resolve_device
    from splat.gaussians import to_parameters
    from splat.trainer import params_sh_degree, render
    from splat.views import target_size

    dev = resolve_device(cfg.device)
    W, H = target_size(cams.width, cams.height, 1.0, cfg.max_size)
    scale = np.array([[W / cams.width, 0, 0], [0, H / cams.height, 0], [0, 0, 1]])
    K = np.stack([scale @ cams.K[i] for i in views])
    params = to_parameters(gaussians, dev)
    degree = params_sh_degree(params)
    depths, colors = [], []
    with torch.no_grad():
        for k, i in zip(K, views):
            viewmat = torch.as_tensor(cams.w2c[i], dtype=torch.float32, device=dev)
            Kt = torch.as_tensor(k, dtype=torch.float32, device=dev)
            rgb, depth, alpha, _ = render(params, viewmat, Kt, W, H, degree, torch.zeros(3, device=dev))
            d = depth.cpu().numpy()
            d[(alpha.cpu().numpy() < cfg.min_alpha) | ~np.isfinite(d)] = 0.0
            depths.append(d)
            colors.append(np.clip(np.round(rgb.cpu().numpy() * 255.0), 0, 255).astype(np.uint8))
    return np.stack(depths).astype(np.float32), np.stack(colors), K


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    """Render the training views, fuse, write RUN/mesh/mesh.ply; returns the summary (vertex/triangle counts)."""
    from splat.mesh import tsdf_mesh

    paths: RunPaths = ctx.paths
    cfg = cfg.validate()
    gaussians = GaussiansFile.load(paths.gaussians_ply)
    cams = CameraSet.load(paths.cameras_json)
    train, _ = training_views(paths, cams, Split.load(paths.split_json))
    depths, colors, K = render_views(gaussians.params, cams, train, cfg)
    covered = float((depths > 0).mean())
    info(f"mesh: fusing {len(train)} rendered views at {depths.shape[2]}x{depths.shape[1]} ({covered:.0%} covered)")
    try:
        verts, tris, cols = tsdf_mesh(depths, colors, K, cams.c2w[train], cfg)
    except SplatError as e:
        raise ReconError(f"mesh: {e}") from e
    MeshFile(verts, tris, cols).save(paths.mesh_ply)
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    return {
        "vertices": int(len(verts)),
        "triangles": int(len(tris)),
        "views": len(train),
        "covered": round(covered, 4),
        "extent": round(float(np.linalg.norm(hi - lo)), 6),
        "mesh": str(paths.mesh_ply.relative_to(paths.root)),
    }
