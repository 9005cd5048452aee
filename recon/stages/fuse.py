"""Stage `fuse`: aligned depth of the training views -> fused point cloud RUN/points/init.ply."""

from __future__ import annotations

from typing import Any

import numpy as np

from recon.artifacts import AlignedDepth, CameraSet, PointCloud, Split, read_rgb
from recon.console import info, progress
from recon.errors import ReconError
from recon.stages import StageContext
from recon.stages.views import training_views
from splat.errors import SplatError
from splat.fuse import FuseConfig as Config
from splat.fuse import fuse_depth

__all__ = ["Config", "run"]


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    """Fuse the aligned depth of the training views (those with valid depth) into RUN/points/init.ply."""
    paths = ctx.paths
    try:
        cfg.validate()
    except SplatError as e:
        raise ReconError(str(e)) from e
    cams = CameraSet.load(paths.cameras_json)
    train, _ = training_views(paths, cams, Split.load(paths.split_json))
    aligned = AlignedDepth.load(paths.aligned_npz, (len(cams), cams.height, cams.width))
    views = [i for i in train if np.any(aligned.depth[i] > 0)]
    if not views:
        raise ReconError("fuse: no training view has valid aligned depth (check the depth and align stages)")
    size = (cams.width, cams.height)
    with progress() as bar:
        task = bar.add_task("fusing depth", total=len(views), status="")
        try:
            cloud = fuse_depth(
                aligned.depth[views],
                aligned.confidence[views],
                cams.K[views],
                cams.c2w[views],
                lambda v: read_rgb(paths.root / cams.files[views[v]], size, resize=False),
                cfg,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        except SplatError as e:
            raise ReconError(str(e)) from e
    PointCloud(cloud.xyz, cloud.rgb, cloud.normals).save(paths.init_ply)
    s = cloud.summary
    info(
        f"fuse: {s['frames']} views, {s['backprojected']} back-projected -> {s['consistent']} consistent -> "
        f"{s['points']} points (voxel {s['voxel_size']:.4g})"
    )
    return s
