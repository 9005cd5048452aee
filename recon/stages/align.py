"""Stage `align`: the depth prior fitted to the SfM scale -> RUN/depth/aligned.npz, alignment.json.

Reads RUN/depth/disparity.npz (depth stage), RUN/cameras.json and RUN/sfm (pose stage), RUN/split.json and,
for --align-mode per-window, RUN/depth/windows.json; fits with depth.align.align_disparity on the registered,
non-test prior frames (test views in the prior are only scored). Writes `AlignedDepth` (depth, mask, the
confidence carried from disparity.npz, per-frame scale/shift) and the fit's report as alignment.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from depth.align import AlignConfig as Config
from depth.align import align_disparity
from recon.artifacts import AlignedDepth, CameraSet, DisparityMaps, RunPaths, Split, read_json_object
from recon.atomic import write_json
from recon.console import debug, info
from recon.errors import ReconError
from recon.sfm import load_reconstruction, sfm_observations
from recon.stages import StageContext

__all__ = ["Config", "run"]


def _load_disparity(paths: RunPaths, cams: CameraSet) -> DisparityMaps:
    """disparity.npz, checked against the run's frame count and size."""
    dd = DisparityMaps.load(paths.disparity_npz)
    T = len(cams)
    if dd.disparity.shape != (T, cams.height, cams.width):
        got = "x".join(str(s) for s in dd.disparity.shape)
        raise ReconError(
            f"depth maps in {paths.disparity_npz} are {got} but the run has {T} frames of "
            f"{cams.width}x{cams.height} (expected {T}x{cams.height}x{cams.width}): re-run the depth stage"
        )
    return dd


def _load_windows(paths: RunPaths, frames_with_depth: list[int]) -> list[list[int]]:
    """DVD windows as lists of cameras.json frame indices (from RUN/depth/windows.json)."""
    if not paths.windows_json.exists():
        raise ReconError(f"per-window alignment needs {paths.windows_json}; use --align-mode global or per-frame")
    d = read_json_object(paths.windows_json, "DVD windows file", rerun="depth")
    frames = d.get("frames", frames_with_depth)
    out = []
    for w in d.get("windows", []):
        if "frames" in w:
            out.append([int(f) for f in w["frames"]])
        else:
            out.append([int(f) for f in frames[int(w["start"]) : int(w["end"])]])
    if not out:
        raise ReconError(
            f"per-window alignment needs DVD windows, but {paths.windows_json} lists none "
            f"(backend {d.get('backend', '?')}); use --align-mode global or per-frame"
        )
    return out


def _frames(paths: RunPaths, cams: CameraSet, split: Split, dd: DisparityMaps) -> tuple[list[int], list[int]]:
    """(prior frames with depth, those of them the fit may use: registered and not test views)."""
    T = len(cams)
    prior = sorted(split.prior)
    bad = [i for i in prior if not 0 <= i < T]
    if bad:
        raise ReconError(f"split.json names prior frames {bad[:5]} but the run has {T} frames")
    with_depth = [i for i in prior if dd.computed[i] and np.any(dd.disparity[i] > 0)]
    if not with_depth:
        raise ReconError(f"{paths.disparity_npz} has no valid depth on any prior frame (all invalid)")
    test = set(split.test)
    fit_frames = [i for i in with_depth if i not in test and cams.registered[i]]
    if not fit_frames:
        raise ReconError("no registered, non-test prior frame has depth to align")
    return with_depth, fit_frames


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    """Align RUN/depth/disparity.npz to the SfM model; write aligned.npz and alignment.json.

    Returns a summary dict (mode, fit, scale, shift, points, inlier ratio, median AbsRel vs SfM).
    """
    paths = ctx.paths
    cams = CameraSet.load(paths.cameras_json)
    split = Split.load(paths.split_json)
    dd = _load_disparity(paths, cams)
    with_depth, fit_frames = _frames(paths, cams, split, dd)
    rec = load_reconstruction(paths.sfm_dir)
    if rec.num_points3D() == 0:
        raise ReconError(f"the SfM model in {paths.sfm_dir} has no 3D points: cannot align depth to it")
    obs = sfm_observations(rec, cams, with_depth, cfg.max_reproj_error, cfg.min_track_length)
    windows = _load_windows(paths, with_depth) if cfg.mode == "per-window" else None
    observations = {i: (o.xy, o.depth) for i, o in obs.items()}
    a = align_disparity(dd.disparity, dd.confidence, dd.kind, observations, with_depth, fit_frames, cfg, windows)
    report = {**a.report, "backend": dd.backend}
    AlignedDepth(depth=a.depth, mask=a.mask, confidence=dd.confidence, scale=a.scale, shift=a.shift).save(
        paths.aligned_npz
    )
    write_json(paths.alignment_json, report)
    abs_rel = report["abs_rel_sfm_median"]
    info(
        f"align: {cfg.mode} {report['fit']} fit on {report['points']} SfM points in {len(report['frames_fitted'])} "
        f"frames: scale {report['scale']:.4g}, shift {report['shift']:.4g}, inliers {report['inlier_ratio'] or 0:.0%}, "
        f"AbsRel vs SfM {abs_rel if abs_rel is not None else float('nan'):.3f}"
    )
    valid = float(a.mask[with_depth].mean())
    debug(f"align: max depth {report['max_depth']:.3g}, valid pixels {valid:.1%}")
    keys = ("mode", "fit", "scale", "shift", "points", "inliers", "inlier_ratio", "abs_rel_sfm_median")
    return {k: report[k] for k in keys} | {"valid_fraction": valid}
