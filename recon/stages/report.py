"""Stage `report`: RUN/report.html (built by recon.report from the run's files; the trained splat's depth at a few
training views is rendered here, by splat's renderer through recon.stages.mesh.render_views)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.artifacts import CameraSet, GaussiansFile, RunPaths
from recon.atomic import write_text
from recon.errors import ReconError
from recon.lock import run_lock
from recon.report import build_report_html
from recon.stages import StageContext


@dataclass
class Config:
    """The report has no options yet."""


def require_run(paths: RunPaths) -> RunPaths:
    """ReconError unless `paths` is a run directory (it holds manifest.json or frames.json); for `recon report
    DIR`, so that a mistyped directory is refused instead of getting an empty report written into it."""
    if not paths.root.is_dir():
        raise ReconError(f"run directory {paths.root} does not exist")
    if not (paths.manifest.is_file() or paths.frames_json.is_file()):
        raise ReconError(
            f"{paths.root} is not a run directory (no {paths.manifest.name} or {paths.frames_json.name}); "
            "make one with `recon run INPUT --out DIR`"
        )
    return paths


SPLAT_DEPTH_MIN_ALPHA = 0.2
"""The report shows the trained splat's depth where its accumulated opacity is at least this: lower than the mesh's
surface threshold, so that thin or half-transparent parts (floaters, an early checkpoint) still show."""


def splat_depth(paths: RunPaths, views: list[int], max_size: int) -> dict[int, np.ndarray]:
    """Expected z-depth [H, W] (scene units; 0 where the accumulated opacity is below SPLAT_DEPTH_MIN_ALPHA) of the
    trained Gaussians (splat/gaussians.ply) at frames `views`, rendered with their long side at most `max_size`
    pixels."""
    from recon.stages.mesh import Config as MeshStageConfig
    from recon.stages.mesh import render_views

    gaussians = GaussiansFile.load(paths.gaussians_ply).params
    cams = CameraSet.load(paths.cameras_json)
    depth, _, _ = render_views(
        gaussians, cams, views, MeshStageConfig(min_alpha=SPLAT_DEPTH_MIN_ALPHA, max_size=max_size)
    )
    return {int(i): d for i, d in zip(views, depth)}


def write_report(paths: RunPaths) -> Path:
    """Write RUN/report.html (atomically, holding RUN's writer lock) and return its path."""
    with run_lock(paths.root):
        write_text(paths.report_html, build_report_html(paths, lambda views, size: splat_depth(paths, views, size)))
    return paths.report_html


def run(ctx: StageContext, cfg: Config | None = None) -> dict[str, Any]:
    return {"report": str(write_report(ctx.paths))}
