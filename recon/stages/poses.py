"""Stage `poses`: intrinsics and camera poses for every frame -> RUN/images/, RUN/sfm/, RUN/cameras.json.

By structure-from-motion (recon.poses, pycolmap), or from a known pose file (`--poses`, recon.known_poses).
Both paths undistort every frame to PINHOLE into RUN/images/, write the undistorted COLMAP model to RUN/sfm/
and cameras.json (recon.artifacts.CameraSet) last, so its presence means the stage finished.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recon.artifacts import CameraSet, FramesIndex, RunPaths
from recon.atomic import atomic_dir
from recon.console import debug, info, progress, warn
from recon.errors import ReconError
from recon.known_poses import (
    KnownCameras,
    PoseSource,
    frame_cameras,
    load_pose_source,
    match_pose_source,
    triangulate_known,
)
from recon.manifest import read_manifest
from recon.poses import PosesConfig as Config
from recon.poses import (
    SfmOutcome,
    camera_record,
    camera_set_from_reconstruction,
    colmap_threads,
    config_record,
    diagnose_sfm,
    frames_key,
    min_registered_frames,
    quiet_colmap,
    reconstruct_with_retries,
    resolve_matcher,
    summary_from_sfm,
    undistortion_plan,
    write_undistorted_frames,
)
from recon.stages import StageContext

__all__ = ["Config", "run"]


def load_frames(paths: RunPaths) -> FramesIndex:
    """The run's frames index, checked: every listed frame file exists and there are at least 2."""
    frames = FramesIndex.load(paths.frames_json)
    missing = [f for f in frames.files if not (paths.root / f).exists()]
    if missing:
        raise ReconError(
            f"{len(missing)} frame file(s) listed in frames.json are missing (first: {missing[0]}); "
            "re-run the frames stage"
        )
    if len(frames) < 2:
        raise ReconError(f"{paths.frames_json} lists {len(frames)} frame(s); poses need at least 2")
    return frames


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    frames = load_frames(ctx.paths)
    cfg = replace(cfg, num_threads=colmap_threads(cfg.num_threads))
    if cfg.poses is not None:
        return _run_known(ctx.paths, cfg, frames)
    return _run_sfm(ctx.paths, cfg, frames)


# --------------------------------------------------------------------------------------------------
# structure-from-motion


def _run_sfm(paths: RunPaths, cfg: Config, frames: FramesIndex) -> dict[str, Any]:
    quiet_colmap()
    if _forced(paths):
        debug(f"poses: re-running a finished stage: {paths.sfm_work_dir} is cleared")
        shutil.rmtree(paths.sfm_work_dir, ignore_errors=True)
    W, H = frames.size
    names = [Path(f).name for f in frames.files]
    with progress() as bar:
        task = bar.add_task("poses", total=4, status="extract")
        done = [0]  # steps finished; retries repeat match/map, so the bar stops at 3 until the undistortion

        def step(status: str) -> None:
            done[0] = min(3, done[0] + 1)
            bar.update(task, completed=done[0], status=status)

        out = reconstruct_with_retries(paths.sfm_work_dir, paths.frames_dir, frames, cfg, step)
        n_reg = _check_registered(out, cfg, len(names), paths.sfm_work_dir / "database.db", (W, H))
        rec, seconds = out.rec, out.seconds
        bar.update(task, completed=3, status="undistort")
        t0 = time.perf_counter()
        und, src_cams, dst_cams = undistortion_plan(rec, names, W, H)
        with atomic_dir(paths.images_dir) as tmp:
            out_names = write_undistorted_frames(paths.root, frames.files, src_cams, dst_cams, tmp, bar)
        with atomic_dir(paths.sfm_dir) as tmp:
            und.write(tmp)
        seconds["undistort"] = round(time.perf_counter() - t0, 3)
        bar.update(task, completed=4, status="done")
    first = rec.images[sorted(rec.reg_image_ids())[0]]
    sfm = {
        "source": "sfm",
        "registered": int(n_reg),
        "total": len(names),
        "points": int(und.num_points3D()),
        "mean_reprojection_error_px": round(float(und.compute_mean_reprojection_error()), 4),
        "mapper": out.plan.mapper,
        "matcher": out.plan.matcher,
        "attempt": out.plan.attempt,
        "attempts": out.tries,
        "camera_model": cfg.camera_model,
        "initial_focal_px": round(out.plan.focal, 3),
        "initial_focal_source": out.plan.focal_source,
        "distorted_camera": camera_record(rec.cameras[first.camera_id]),
        "seconds": seconds,
        "config": config_record(cfg),
    }
    image_files = [f"{paths.images_dir.name}/{n}" for n in out_names]
    source_index = [int(f["source_index"]) for f in frames.frames]
    camera_set_from_reconstruction(und, frames.files, image_files, source_index, W, H, sfm).save(paths.cameras_json)
    info(
        f"poses: {n_reg}/{len(names)} frames registered, {sfm['points']} points, "
        f"reprojection error {sfm['mean_reprojection_error_px']:.3f} px"
        + (f" (attempt: {out.plan.attempt})" if len(out.tries) > 1 else "")
    )
    return summary_from_sfm(sfm)


def _forced(paths: RunPaths) -> bool:
    """True when this run of the stage repeats its last finished run with the same fingerprint: only
    `--force poses` does that, and then nothing of sfm_work is reused."""
    st = read_manifest(paths).get("stages", {}).get("poses", {})
    fp = st.get("fingerprint")
    return fp is not None and st.get("status") == "running" and st.get("attempt", {}).get("fingerprint") == fp


def _check_registered(out: SfmOutcome, cfg: Config, total: int, db_path: Path, size: tuple[int, int]) -> int:
    """Registered frames of the kept model; ReconError with the likely cause when too few for a usable run."""
    n_reg = out.rec.num_reg_images() if out.rec is not None else 0
    if len(out.models) > 1:
        debug(f"SfM made {len(out.models)} models (registered images per model: {out.models}); keeping the largest")
    if n_reg < min_registered_frames(cfg, total):
        tried = "; ".join(f"{t['attempt']}: {t['registered']}" for t in out.tries)
        raise ReconError(
            f"structure-from-motion placed only {n_reg} of {total} frames (tried {tried}): "
            + diagnose_sfm(db_path, size)
        )
    if n_reg < total:
        warn(f"SfM registered {n_reg} of {total} frames; the other frames are kept as unregistered and not used")
    return n_reg


# --------------------------------------------------------------------------------------------------
# known poses


def _match_pose_file(src: PoseSource, frames: FramesIndex, cfg: Config) -> tuple[list[int | None], str]:
    match, method = match_pose_source(src, frames)
    n_match, total = sum(m is not None for m in match), len(frames)
    if n_match < min_registered_frames(cfg, total):
        raise ReconError(
            f"--poses {src.path}: only {n_match} of the {total} frames have a pose (matched by {method}); "
            "the pose file must list the same images (same file names, or one pose per frame in order)"
        )
    if n_match < total:
        warn(
            f"--poses: {total - n_match} of {total} frames have no pose in {src.path.name}; "
            "they are kept as unregistered"
        )
    return match, method


def _point_views(match: list[int | None], cfg: Config) -> list[int | None]:
    """`match` with the frames whose features may not triangulate points set to None: under
    cfg.points_llff_train_views >= 0 every frame but the llff split's training views."""
    if cfg.points_llff_train_views < 0:
        return match
    from recon.stages.split import llff_split

    train = set(llff_split(len(match), cfg.points_llff_train_views)[0])
    return [m if i in train else None for i, m in enumerate(match)]


def _run_known(paths: RunPaths, cfg: Config, frames: FramesIndex) -> dict[str, Any]:
    """The pose stage with cfg.poses: the same outputs as SfM, with the given poses."""
    assert cfg.poses is not None, "run() calls _run_known only when cfg.poses is set"
    quiet_colmap()
    t_start = time.perf_counter()
    W, H = frames.size
    src = load_pose_source(cfg.poses, frames.original_size or (W, H))
    match, method = _match_pose_file(src, frames, cfg)
    cams = frame_cameras(src, match, W, H)
    matcher = resolve_matcher(frames, cfg)
    point_match = _point_views(match, cfg)
    rec, out_names, seconds = _undistort_and_triangulate(paths, frames, cfg, src, cams, point_match, matcher)
    if rec.num_points3D() == 0:
        warn("--poses: no 3D points could be triangulated; depth alignment will have no SfM points to use")
    with atomic_dir(paths.sfm_dir) as tmp:
        rec.write(tmp)
    n_match = sum(m is not None for m in match)
    sfm = {
        "source": f"known poses: {src.path}",
        "registered": int(n_match),
        "total": len(frames),
        "points": int(rec.num_points3D()),
        "mean_reprojection_error_px": round(float(rec.compute_mean_reprojection_error()), 4)
        if rec.num_points3D()
        else None,
        "mapper": f"known ({src.kind})",
        "points_from": [i for i, m in enumerate(point_match) if m is not None],
        "matched_by": method,
        "matcher": matcher,
        "distorted_camera": camera_record(cams.source[0], W, H),
        "seconds": {**seconds, "total": round(time.perf_counter() - t_start, 3)},
        "config": config_record(cfg),
    }
    if src.bounds is not None:
        # per frame (cameras.json order) the pose file's (near, far) scene depth bounds (LLFF), null without a pose
        sfm["bounds"] = [[float(v) for v in src.bounds[m]] if m is not None else None for m in match]
    # cameras.json: the given poses (not re-read from the model, so they round-trip exactly)
    CameraSet(
        width=W,
        height=H,
        files=[f"{paths.images_dir.name}/{n}" for n in out_names],
        source_index=[int(f["source_index"]) for f in frames.frames],
        K=np.stack([cams.targets[c].calibration_matrix() for c in cams.ids]).astype(np.float64),
        c2w=np.stack([src.c2w[m] if m is not None else np.eye(4) for m in match]).astype(np.float64),
        registered=np.array([m is not None for m in match]),
        sfm=sfm,
    ).save(paths.cameras_json)
    info(
        f"poses: {n_match}/{len(frames)} frames posed from {src.path} (matched by {method}), "
        f"{sfm['points']} triangulated points"
    )
    return summary_from_sfm(sfm)


def _undistort_and_triangulate(
    paths: RunPaths,
    frames: FramesIndex,
    cfg: Config,
    src: PoseSource,
    cams: KnownCameras,
    point_match: list[int | None],
    matcher: str,
) -> tuple[Any, list[str], dict[str, float]]:
    """RUN/images undistorted to the given cameras, then points triangulated from the `point_match` views with
    the poses held fixed. Returns (the pycolmap.Reconstruction, the image names, seconds per step)."""
    with progress() as bar:
        # always rewritten (cheap, deterministic): RUN/images may have been replaced by an SfM run since
        t0 = time.perf_counter()
        dst = [cams.targets[c] for c in cams.ids]
        with atomic_dir(paths.images_dir) as tmp:
            out_names = write_undistorted_frames(paths.root, frames.files, cams.source, dst, tmp, bar)
        undistort_s = round(time.perf_counter() - t0, 3)
        task = bar.add_task("triangulate", total=3, status="extract")
        step = lambda status: bar.update(task, advance=1, status=status)  # noqa: E731
        work = paths.sfm_work_dir / "known"
        rec, seconds = triangulate_known(
            work, paths.images_dir, out_names, point_match, cams, src.c2w, frames_key(frames), cfg, matcher, step
        )
        step("done")
    return rec, out_names, {"undistort": undistort_s, **seconds}
