"""Pose stage: camera intrinsics and poses for every frame, by structure-from-motion (pycolmap).

Steps (COLMAP 4 on the CPU, through pycolmap):
    extract   SIFT features of RUN/frames/*.png into RUN/sfm_work/database.db. A video uses one shared
              camera (`camera_model`, SIMPLE_RADIAL by default) whose focal length starts from the EXIF
              focal length when the images carry one, else from 1.2 * max(W, H).
    match     sequential matching (video: frames 1, 2, 4, ..., 2^(sequential_overlap - 1) apart; optional
              loop detection with a vocabulary tree built from the video's own features) or exhaustive
              matching (image sets of at most 100 images).
    map       incremental (default) or global (GLOMAP) mapping; the model with the most registered
              images is kept (RUN/sfm_work/sparse/N). Sequential matching of more than `keyframes_above`
              (200) frames maps keyframes only (every s-th frame, s chosen from the feature motion), then
              places each other frame by PnP against that model and bundle-adjusts them all once (as COLMAP's
              mapper ends), dropping observations over 4 px: mapping time follows the camera's path,
              not the frame count (450 frames of 7-Scenes, benchmarks/poses.py: 114 keyframes, 98 s in all
              on an idle 2-core machine where mapping every frame takes 147 s, ATE 3.24 vs 3.19 cm).
    undistort every frame, registered or not, is warped to a PINHOLE camera of the same size W x H
              (square pixels; the distortion-free camera COLMAP's undistorter chooses, uniformly scaled
              and centre-cropped to W x H so that no blank border appears).

This module is the engine (pycolmap calls on folders and image names); recon.stages.poses runs it on a run
directory. Outputs of the stage (each written atomically; cameras.json last, so its presence means the stage
finished):
    RUN/images/NNNNNN.png  undistorted frames, same names and size as RUN/frames/. Every later stage
                           reads these, through the `file` field of cameras.json.
    RUN/sfm/               COLMAP binary model (cameras.bin, images.bin, points3D.bin, rigs.bin,
                           frames.bin) of the undistorted PINHOLE reconstruction: registered images
                           only, 2D observations mapped into the undistorted images.
    RUN/cameras.json       recon.artifacts.CameraSet: per frame `file` (images/NNNNNN.png),
                           `source_index`, `registered`, PINHOLE `K` at W x H, OpenCV `c2w`; frames
                           SfM could not place keep `registered: false`, c2w = identity, the shared K.
Pixel convention: COLMAP's (and nerfstudio's / gsplat's): the image origin is the top-left corner of
the top-left pixel, so pixel (i, j) has its centre at (i + 0.5, j + 0.5) in K's coordinates.

Resuming: RUN/sfm_work/state.json records each finished step with a key of the settings it used; a
re-run skips steps whose key is unchanged (COLMAP itself also skips images and pairs that are already
in the database), so a run killed during mapping resumes after matching.

Known poses (`cfg.poses`): recon.known_poses reads them instead of running SfM (same outputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import signal
import sqlite3
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from depth.geometry import invert_pose
from recon.artifacts import CameraSet, FramesIndex, read_json_object, read_rgb
from recon.atomic import atomic_dir, write_json
from recon.console import info, progress, set_verbosity, verbosity, warn
from recon.errors import ReconError

EXHAUSTIVE_MAX_IMAGES = 100


@dataclass
class PosesConfig:
    mapper: Literal["incremental", "global"] = "incremental"
    """Structure-from-motion mapper: COLMAP's incremental mapper, or the global (GLOMAP) one."""
    matcher: Literal["auto", "sequential", "exhaustive"] = "auto"
    """Image pairs to match. auto: sequential for a video, exhaustive for an image set of <= 100 images."""
    sequential_overlap: int = 10
    """Sequential matching: pairs per frame: frames 1, 2, 4, ... 2^(overlap-1) on (quadratic_overlap), else the next
    `overlap` frames."""
    quadratic_overlap: bool = True
    """Sequential matching: frames 2^k apart instead of the next ones (COLMAP 4 pairs only those; reaches far back
    over long videos, which helps against drift)."""
    camera_model: str = "SIMPLE_RADIAL"
    """COLMAP camera model estimated by SfM (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV...)."""
    single_camera: bool = True
    """One camera shared by all frames (always for a video); False gives each image its own intrinsics."""
    focal_px: float = 0.0
    """Initial focal length in pixels of the stored frames; 0 = from EXIF if present, else focal_factor * max(W, H)."""
    focal_factor: float = 1.2
    """Focal-length heuristic when neither focal_px nor EXIF gives one."""
    refine_focal: bool = True
    """False: a known focal length (focal_px or EXIF; needs one of them) stays fixed through mapping and bundle
    adjustment; the distortion of camera_model is still estimated (a PINHOLE / SIMPLE_PINHOLE camera_model has
    none). Self-calibration from a video with little rotation is weakly constrained: on the 7-Scenes clip (26 degrees
    of rotation) a 7 % longer focal length costs 0.02 px of reprojection error and makes the structure 7 % deeper
    against the trajectory (tests/test_poses.py::test_fixed_focal_sets_the_depth_scale). A focal length the images
    disagree with can bend the model when COLMAP runs on several threads (README, "Known focal length")."""
    max_num_features: int = 8192
    """SIFT features per image at most."""
    num_threads: int = -1
    """CPU threads for COLMAP (-1 = this process's share: torch.get_num_threads(), all cores unless a Ray task's
    CPUs or torch.set_num_threads say fewer; recon.poses.colmap_threads)."""
    seed: int = 0
    """Random seed for COLMAP's RANSAC and mappers (-1 = random)."""
    min_registered: int = 3
    """Fail when SfM places fewer frames than this ..."""
    min_registered_fraction: float = 0.3
    """... or fewer than this fraction of the frames."""
    poses: Path | None = None
    """Known poses instead of SfM: a COLMAP model folder or a transforms.json (nerfstudio/instant-ngp/Blender)."""
    retry: bool = True
    """When too few frames register, retry SfM with settings likely to help (recon.poses.sfm_attempts)."""
    keyframes_above: int = 200
    """Sequential matching of more frames than this: map keyframes only (`keyframe_motion`), then place each other
    frame against the keyframes' model from its matches (PnP); mapping time then follows the camera's motion, not
    the frame count (benchmarks/poses.py --table). 0 = map every frame."""
    keyframe_motion: float = 0.05
    """Keyframes: every s-th frame, s the largest stride at which features move at most this fraction of the
    frames' long side between keyframes (90th percentile over the video) and keyframes stay matched
    (recon.poses.keyframe_stride)."""
    loop_detection: bool = False
    """Sequential matching: also match every 10th frame with its most similar frames anywhere in the video
    (COLMAP's loop detection, with a vocabulary tree built from the video's own features: no download)."""
    points_llff_train_views: int = -1
    """Known poses (--poses): -1 triangulates the 3D points from the features of every frame; N >= 0 (set by
    --split-protocol llff --train-views N) only from the training views of that llff split
    (recon.stages.split.llff_split), since the protocol gives the method no other view."""

    CAMERA_MODELS = (
        "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE", "FULL_OPENCV", "FOV",
        "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "THIN_PRISM_FISHEYE",
    )  # fmt: skip

    def validate(self) -> PosesConfig:
        """ReconError unless every field is in range (see the field docs)."""
        from depth.checks import choice, flag, number, path_exists, rng_seed

        choice(self.mapper, "poses.mapper", ReconError, ("incremental", "global"))
        choice(self.matcher, "poses.matcher", ReconError, ("auto", "sequential", "exhaustive"))
        number(self.sequential_overlap, "poses.sequential_overlap", ReconError, lo=1, hi=10_000, integer=True)
        flag(self.quadratic_overlap, "poses.quadratic_overlap", ReconError)
        choice(self.camera_model, "poses.camera_model", ReconError, self.CAMERA_MODELS)
        flag(self.single_camera, "poses.single_camera", ReconError)
        flag(self.retry, "poses.retry", ReconError)
        number(self.keyframes_above, "poses.keyframes_above", ReconError, lo=0, integer=True, note="0 = never")
        number(self.keyframe_motion, "poses.keyframe_motion", ReconError, lo=0, hi=1, lo_open=True)
        flag(self.loop_detection, "poses.loop_detection", ReconError)
        number(self.points_llff_train_views, "poses.points_llff_train_views", ReconError, lo=-1, integer=True)
        number(self.focal_px, "poses.focal_px", ReconError, lo=0, hi=1e6, note="0 = from EXIF or focal_factor")
        number(self.focal_factor, "poses.focal_factor", ReconError, lo=0, hi=100, lo_open=True)
        flag(self.refine_focal, "poses.refine_focal", ReconError)
        number(self.max_num_features, "poses.max_num_features", ReconError, lo=16, hi=1_000_000, integer=True)
        number(self.num_threads, "poses.num_threads", ReconError, lo=-1, hi=1024, integer=True, note="-1 = all")
        if self.num_threads == 0:
            raise ReconError("poses.num_threads must be -1 (all) or >= 1, got 0")
        rng_seed(self.seed, "poses.seed", ReconError, allow_random=True)
        number(self.min_registered, "poses.min_registered", ReconError, lo=2, integer=True)
        number(self.min_registered_fraction, "poses.min_registered_fraction", ReconError, lo=0, hi=1)
        if self.poses is not None and not path_exists(self.poses):
            raise ReconError(f"--poses {self.poses} does not exist")
        return self


# --------------------------------------------------------------------------------------------------
# undistortion (pure functions on pycolmap cameras)


def colmap_threads(num_threads: int) -> int:
    """COLMAP's thread count for poses.num_threads: itself when >= 1; for -1 torch's intra-op threads, which are
    all cores unless this process was given fewer (a Ray scene task sets them to its CPUs: COLMAP's own -1 would
    take every core of the machine whatever the task's share, and oversubscribe it)."""
    import torch

    return num_threads if num_threads >= 1 else max(1, torch.get_num_threads())


def min_registered_frames(cfg: PosesConfig, num_frames: int) -> int:
    """Fewest frames with a pose for a usable run (SfM or imported poses)."""
    return max(cfg.min_registered, int(np.ceil(cfg.min_registered_fraction * num_frames)))


def pinhole_target(camera: Any, width: int, height: int) -> Any:
    """The PINHOLE camera of size width x height that frames of `camera` are undistorted to.

    COLMAP's undistorter picks a distortion-free camera without blank pixels (its size may differ
    slightly from the input); it is scaled uniformly (square pixels kept) and centre-cropped to
    exactly width x height. A camera without distortion maps to itself (after any resize).

    Args:
        camera: pycolmap.Camera (any model) at its own resolution.
        width, height: output size in pixels.
    Returns:
        pycolmap.Camera, model PINHOLE (fx, fy, cx, cy), same camera_id as `camera`.
    """
    import pycolmap

    cam = _copy_camera(camera)
    if (cam.width, cam.height) != (width, height):
        if abs(cam.width / cam.height - width / height) > 0.01:
            raise ReconError(
                f"camera of {cam.width}x{cam.height} cannot describe {width}x{height} frames (different aspect ratio)"
            )
        cam.rescale(int(width), int(height))
    distortion = [cam.params[i] for i in cam.extra_params_idxs()]
    if cam.model_name in ("SIMPLE_PINHOLE", "PINHOLE") or not any(distortion):
        # a distortion-free camera of any model (e.g. SIMPLE_RADIAL with k1 = 0): COLMAP's
        # undistorter would still shrink it by a pixel, and the rescale back would change the focal length by ~0.4 %
        fx, fy = cam.focal_length_x, cam.focal_length_y
        cx, cy = cam.principal_point_x, cam.principal_point_y
        return _pinhole(cam.camera_id, width, height, fx, fy, cx, cy)
    und = pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), cam)
    s = max(width / und.width, height / und.height)
    fx, fy = und.focal_length_x * s, und.focal_length_y * s
    cx = und.principal_point_x * s - (und.width * s - width) / 2.0
    cy = und.principal_point_y * s - (und.height * s - height) / 2.0
    return _pinhole(cam.camera_id, width, height, fx, fy, cx, cy)


def _pinhole(camera_id: int, width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> Any:
    import pycolmap

    cam = pycolmap.Camera.create_from_model_name(int(camera_id), "PINHOLE", float(fx), int(width), int(height))
    cam.params = [float(fx), float(fy), float(cx), float(cy)]
    return cam


def _copy_camera(camera: Any) -> Any:
    import pycolmap

    cam = pycolmap.Camera.create_from_model_name(
        int(camera.camera_id), camera.model_name, 1.0, int(camera.width), int(camera.height)
    )
    # pycolmap's stub types the params setter as a Sequence; it takes float64 arrays
    cam.params = np.asarray(camera.params, dtype=np.float64).copy()  # type: ignore[assignment]
    return cam


def undistort_points(xy: np.ndarray, src_camera: Any, dst_camera: Any) -> np.ndarray:
    """Map pixel coordinates [N, 2] of `src_camera` (distorted) to `dst_camera` (COLMAP pixel convention)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return xy.copy()
    norm = src_camera.cam_from_img(xy)
    rays = np.concatenate([norm, np.ones((len(norm), 1))], axis=1)
    return dst_camera.img_from_cam(rays, check_cheirality=False)


def undistortion_maps(src_camera: Any, dst_camera: Any) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps [H, W] float32 (x, y) giving, per output pixel of `dst_camera`, where to sample the
    distorted image of `src_camera` (both in array-index convention, i.e. pixel centres at integers)."""
    W, H = int(dst_camera.width), int(dst_camera.height)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64) + 0.5, np.arange(H, dtype=np.float64) + 0.5)
    pix = np.stack([u.ravel(), v.ravel()], axis=1)
    rays = np.concatenate([dst_camera.cam_from_img(pix), np.ones((len(pix), 1))], axis=1)
    src = src_camera.img_from_cam(rays, check_cheirality=False) - 0.5
    return src[:, 0].reshape(H, W).astype(np.float32), src[:, 1].reshape(H, W).astype(np.float32)


def is_identity_warp(src_camera: Any, dst_camera: Any, tol: float = 1e-6) -> bool:
    """True when undistorting from src to dst changes no pixel (same size, PINHOLE-equivalent, same K)."""
    if src_camera.model_name not in ("SIMPLE_PINHOLE", "PINHOLE"):
        return False
    if (src_camera.width, src_camera.height) != (dst_camera.width, dst_camera.height):
        return False
    return bool(np.allclose(src_camera.calibration_matrix(), dst_camera.calibration_matrix(), atol=tol))


def write_undistorted_frames(
    root: Path, files: list[str], src_cameras: list[Any], dst_cameras: list[Any], out_dir: Path, bar: Any = None
) -> list[str]:
    """Undistort frames `root/files[i]` from src_cameras[i] to dst_cameras[i] and write PNGs to out_dir.

    Identity warps are copied byte for byte. Returns the output file names (same names as the inputs).
    `bar`: an open recon.console progress to report on (one live display at a time); None opens one.
    """
    import cv2
    from PIL import Image

    maps: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}
    names = []
    with contextlib.ExitStack() as stack:
        if bar is None:
            bar = stack.enter_context(progress())
        task = bar.add_task("undistort", total=len(files), status="")
        for f, src, dst in zip(files, src_cameras, dst_cameras):
            key = (
                src.model_name,
                tuple(np.round(src.params, 9)),
                src.width,
                src.height,
                tuple(np.round(dst.params, 9)),
                dst.width,
                dst.height,
            )
            if key not in maps:
                maps[key] = None if is_identity_warp(src, dst) else undistortion_maps(src, dst)
            name = Path(f).name
            names.append(name)
            warp = maps[key]
            if warp is None and Path(f).suffix.lower() == ".png":
                shutil.copyfile(root / f, out_dir / name)
            else:
                img = read_rgb(root / f)
                if warp is not None:
                    mx, my = warp
                    img = cv2.remap(img, mx, my, interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
                Image.fromarray(img).save(out_dir / (Path(name).stem + ".png"), compress_level=1)
                names[-1] = Path(name).stem + ".png"
            bar.advance(task)
    return names


def undistort_reconstruction(rec: Any, targets: dict[int, Any]) -> Any:
    """A new pycolmap.Reconstruction with PINHOLE cameras `targets` (camera_id -> Camera), the registered
    images of `rec` with their poses and 2D points mapped into the undistorted images, and its 3D points
    (ids renumbered; reprojection errors recomputed)."""
    import pycolmap

    out = pycolmap.Reconstruction()
    used = sorted({rec.images[i].camera_id for i in rec.reg_image_ids()})
    for cid in used:
        out.add_camera_with_trivial_rig(targets[cid])
    for iid in sorted(rec.reg_image_ids()):
        im = rec.images[iid]
        xy = np.array([p.xy for p in im.points2D], dtype=np.float64).reshape(-1, 2)
        new_xy = undistort_points(xy, rec.cameras[im.camera_id], targets[im.camera_id])
        new_im = pycolmap.Image(name=im.name, keypoints=new_xy, camera_id=im.camera_id, image_id=iid)
        out.add_image_with_trivial_frame(new_im, im.cam_from_world())
    for p3d in rec.points3D.values():
        track = pycolmap.Track()
        for el in p3d.track.elements:
            track.add_element(el.image_id, el.point2D_idx)
        out.add_point3D(p3d.xyz, track, p3d.color)
    out.update_point_3d_errors()
    return out


def camera_set_from_reconstruction(
    rec: Any,
    frame_files: list[str],
    image_files: list[str],
    source_index: list[int],
    width: int,
    height: int,
    sfm: dict,
) -> CameraSet:
    """CameraSet for all frames: registered ones from the (undistorted) reconstruction `rec`, matched by
    image name = basename of frame_files[i]; the rest unregistered with the first camera's K."""
    by_name = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
    default_K = next(iter(rec.cameras.values())).calibration_matrix() if rec.num_cameras() else np.eye(3)
    T = len(frame_files)
    K = np.repeat(default_K[None], T, axis=0).astype(np.float64)
    c2w = np.repeat(np.eye(4)[None], T, axis=0)
    reg = np.zeros(T, dtype=bool)
    for i, f in enumerate(frame_files):
        im = by_name.get(Path(f).name)
        if im is None:
            continue
        w2c = np.eye(4)
        w2c[:3, :4] = im.cam_from_world().matrix()
        c2w[i] = invert_pose(w2c)
        K[i] = rec.cameras[im.camera_id].calibration_matrix()
        reg[i] = True
    return CameraSet(
        width=width,
        height=height,
        files=image_files,
        source_index=list(source_index),
        K=K,
        c2w=c2w,
        registered=reg,
        sfm=sfm,
    )


# --------------------------------------------------------------------------------------------------
# SfM settings and resumable steps


def initial_focal_px(frames: FramesIndex, cfg: PosesConfig) -> tuple[float, str]:
    """Initial focal length (pixels at the stored size) and where it came from: "config", "exif" or
    "heuristic" (focal_factor * max(W, H)). Only "config" and "exif" are given to COLMAP as a known prior."""
    W, H = frames.size
    if cfg.focal_px and cfg.focal_px > 0:
        return float(cfg.focal_px), "config"
    if frames.exif_focal_px:
        W0 = (frames.original_size or (W, H))[0]
        return float(frames.exif_focal_px) * W / W0, "exif"
    return cfg.focal_factor * max(W, H), "heuristic"


def resolve_matcher(frames: FramesIndex, cfg: PosesConfig) -> str:
    """The matcher `cfg.matcher` asks for; "auto": exhaustive for image sets of <= 100 images, else sequential."""
    if cfg.matcher != "auto":
        return cfg.matcher
    if frames.source_type == "images" and len(frames) <= EXHAUSTIVE_MAX_IMAGES:
        return "exhaustive"
    return "sequential"


def settings_key(*parts: Any) -> str:
    """A short hash of JSON-able settings: a step re-runs when the key of its settings changes."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def database_counts(db_path: Path) -> dict[str, int] | None:
    """What a COLMAP database holds: images, keypoints (sum over images), verified image pairs and their
    inlier matches. Read with Python's sqlite3 (read-only), so a damaged file gives None, never a native crash."""
    if not db_path.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
        try:
            images = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            keypoints = con.execute("SELECT COALESCE(SUM(rows), 0) FROM keypoints").fetchone()[0]
            pairs, inliers = con.execute(
                "SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM two_view_geometries WHERE rows > 0"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return {"images": int(images), "keypoints": int(keypoints), "pairs": int(pairs), "inliers": int(inliers)}


class StepState:
    """WORK/state.json: finished steps with the key of their settings, their duration and (extract, match)
    the database counts they left, so that a state the database does not back up is not trusted."""

    def __init__(self, work: Path):
        self.path = work / "state.json"
        self.data: dict = read_json_object(self.path, "SfM state") if self.path.exists() else {}

    def done(self, step: str, key: str) -> bool:
        return self.data.get(step, {}).get("key") == key

    def mark(self, step: str, key: str, seconds: float, **extra: Any) -> None:
        self.data[step] = {"key": key, "seconds": round(seconds, 3), **extra}
        write_json(self.path, self.data)

    def forget(self, *steps: str) -> None:
        for s in steps:
            self.data.pop(s, None)
        write_json(self.path, self.data)

    def seconds(self, step: str) -> float:
        return self.data[step]["seconds"]

    def verify(self, db_path: Path, num_images: int) -> str | None:
        """Forget the finished steps that the database does not back up (another writer, a crash, a deleted
        or replaced file); returns why, or None when state and database agree."""
        counts = database_counts(db_path)
        ext, match = self.data.get("extract"), self.data.get("match")
        if ext is not None:
            if counts is None:
                why = f"{db_path.name} is missing or unreadable"
            elif counts["images"] != num_images or any(counts[k] != ext.get(k) for k in ("images", "keypoints")):
                why = (
                    f"it holds {counts['images']} images / {counts['keypoints']} keypoints, "
                    f"not {num_images} / {ext.get('keypoints')}"
                )
            else:
                why = None
            if why is not None:
                self.forget("extract", "match", "map")
                return why
        if match is not None and (counts is None or any(counts[k] != match.get(k) for k in ("pairs", "inliers"))):
            self.forget("match", "map")
            have = (counts or {}).get("pairs")
            return f"it holds {have} verified image pairs, not the {match.get('pairs')} that matching left"
        return None


def quiet_colmap() -> None:
    """COLMAP's own log (glog) only with -v; without it not even its ERROR lines (recon reports errors itself)."""
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbosity() >= 2 else 3


def frames_key(frames: FramesIndex) -> list[Any]:
    """What the stored frames are, for the settings keys of the steps that read them."""
    return [[(f["file"], f["source_index"]) for f in frames.frames], frames.source, list(frames.size)]


@dataclass(frozen=True)
class Attempt:
    """One try of structure-from-motion: what it changes from the configured settings (None = as configured)."""

    name: str
    matcher: str | None = None
    mapper: str | None = None
    init_min_tri_angle: float | None = None
    """Incremental mapper: smallest triangulation angle (degrees) of the initial image pair (COLMAP: 16)."""
    min_tri_angle: float | None = None
    """Incremental mapper: smallest triangulation angle (degrees) of a new point and of a kept one (COLMAP: 1.5)."""
    seed_offset: int = 0
    """Added to poses.seed for the mapper's random choices (RANSAC, initial pair); ignored when the seed is -1."""

    def mapper_seed(self, seed: int) -> int:
        """COLMAP's random seed for this try from poses.seed (-1 stays -1: random)."""
        return seed + self.seed_offset if seed >= 0 else seed


AS_CONFIGURED = Attempt("as configured")
RELAXED_INIT_DEG = 4.0
RELAXED_TRI_DEG = 0.5
EXHAUSTIVE_RETRY_MAX_IMAGES = 200


def sfm_attempts(frames: FramesIndex, cfg: PosesConfig) -> list[Attempt]:
    """The ladder of tries when too few frames register, cheapest first (features are always reused).

    Measured on the shared clips (benchmarks/poses.py --ladder): a panning camera (little parallax between
    frames) finds no initial pair with COLMAP's 16-degree triangulation angle; 4 degrees is enough.
    Exhaustive matching adds the far-apart pairs that sequential matching never compares; with it, points down to
    0.5 degrees of triangulation angle are kept: on the roller-coaster clip COLMAP's 1.5-degree filter emptied every
    model it made in 4 of 4 seeds (frames kept, 0-3 points: no usable pose), 0.5 degrees gave 23-48 supported frames
    in 10 of 10 seeds (the sequential matches gained nothing from it: 2 of 4 seeds failed either way).
    The last rung is tried once more with the next COLMAP seed: the mapper's random choices (RANSAC, the initial
    pair) decide a panning clip, and its threads make even one seed vary from run to run (the roller-coaster's
    exhaustive rung placed 0 of 48 frames once under load, 28-48 in the seeds measured).
    """
    if not cfg.retry:
        return [AS_CONFIGURED]
    relaxed = Attempt(
        f"relaxed initial pair (>= {RELAXED_INIT_DEG:g} deg)", mapper="incremental", init_min_tri_angle=RELAXED_INIT_DEG
    )
    out = [AS_CONFIGURED, relaxed]
    if resolve_matcher(frames, cfg) != "exhaustive" and len(frames) <= EXHAUSTIVE_RETRY_MAX_IMAGES:
        name = f"exhaustive matching, relaxed initial pair and triangulation (>= {RELAXED_TRI_DEG:g} deg)"
        out.append(Attempt(name, "exhaustive", "incremental", RELAXED_INIT_DEG, RELAXED_TRI_DEG))
    if cfg.seed >= 0:
        out.append(replace(out[-1], name=f"{out[-1].name}, COLMAP seed {cfg.seed + 1}", seed_offset=1))
    return out


@dataclass
class SfmPlan:
    """The settings of one SfM run, resolved from the frames, the config and the attempt, with each step's key."""

    matcher: str
    mapper: str
    focal: float
    focal_source: str
    single_camera: bool
    attempt_settings: Attempt
    keys: dict[str, str]
    keyframe_motion_px: float = 0.0
    """Map keyframes only, at most this feature motion (pixels; keyframe_stride) apart; 0 = map every frame."""

    @property
    def attempt(self) -> str:
        return self.attempt_settings.name

    @classmethod
    def make(cls, frames: FramesIndex, cfg: PosesConfig, attempt: Attempt = AS_CONFIGURED) -> SfmPlan:
        matcher = attempt.matcher or resolve_matcher(frames, cfg)
        mapper = attempt.mapper or cfg.mapper
        focal, focal_src = initial_focal_px(frames, cfg)
        if not cfg.refine_focal and focal_src == "heuristic":
            raise ReconError(
                "poses.refine_focal=false keeps the focal length fixed, but none is known: set poses.focal_px "
                "(pixels at the stored frame size) or give images with an EXIF focal length"
            )
        single = cfg.single_camera or frames.source_type == "video"
        kf_px = keyframe_motion_px(len(frames), max(frames.size), matcher, cfg)
        k_extract = settings_key(*frames_key(frames), cfg.camera_model, focal, focal_src, single, cfg.max_num_features)
        match_settings: list[Any] = [k_extract, matcher, cfg.sequential_overlap, cfg.quadratic_overlap]
        if cfg.loop_detection and matcher == "sequential":
            match_settings.append("loop detection")
        k_match = settings_key(*match_settings)
        map_settings: list[Any] = [k_match, mapper, cfg.seed, cfg.min_registered, attempt.init_min_tri_angle]
        if attempt.min_tri_angle is not None:
            map_settings.append(attempt.min_tri_angle)
        if attempt.seed_offset:
            map_settings.append(("seed", attempt.mapper_seed(cfg.seed)))
        map_settings.append(f"frames observe >= {MIN_IMAGE_POINTS} points")  # models mapped before this rule are redone
        if kf_px > 0:
            map_settings += ["keyframes", kf_px, cfg.sequential_overlap]
        if not cfg.refine_focal:
            map_settings.append("fixed focal length")
        k_map = settings_key(*map_settings)
        keys = {"extract": k_extract, "match": k_match, "map": k_map}
        return cls(matcher, mapper, focal, focal_src, single, attempt, keys, kf_px)


def keyframe_motion_px(num_frames: int, long_side: int, matcher: str, cfg: PosesConfig) -> float:
    """The keyframe rule: sequential matching of more than cfg.keyframes_above frames maps keyframes at most
    cfg.keyframe_motion * long_side pixels of feature motion apart (keyframe_stride); returns that bound in pixels,
    or 0 = map every frame. The mapper stays cfg.mapper either way."""
    if matcher != "sequential" or cfg.keyframes_above <= 0 or num_frames <= cfg.keyframes_above:
        return 0.0
    return float(cfg.keyframe_motion * long_side)


# --------------------------------------------------------------------------------------------------
# keyframes of a long video: map a subset, place the other frames against its model


@dataclass
class MatchGraph:
    """What matching left in a COLMAP database: image ids and names in name (= video) order, keypoint positions
    [K_i, 2] (pixels, COLMAP convention) per image id, and the inlier matches [M, 2] (keypoint index in the
    first image, in the second) of every verified pair (id1, id2), id1 < id2."""

    ids: list[int]
    names: list[str]
    keypoints: dict[int, np.ndarray]
    pairs: dict[tuple[int, int], np.ndarray]

    @classmethod
    def read(cls, db_path: Path) -> MatchGraph:
        import pycolmap

        db = pycolmap.Database.open(db_path)
        try:
            images = sorted(db.read_all_images(), key=lambda im: im.name)
            kps = {im.image_id: np.asarray(db.read_keypoints(im.image_id))[:, :2].astype(np.float64) for im in images}
            pair_ids, geoms = db.read_two_view_geometries()
        finally:
            db.close()
        pairs = {}
        for pair_id, geom in zip(pair_ids, geoms):
            m = np.asarray(geom.inlier_matches, dtype=np.int64).reshape(-1, 2)
            if len(m):
                pairs[pycolmap.pair_id_to_image_pair(pair_id)] = m
        return cls([im.image_id for im in images], [im.name for im in images], kps, pairs)

    def matches(self, a: int, b: int) -> np.ndarray | None:
        """Inlier matches [M, 2] of images a and b (columns in the order a, b), or None when not a verified pair."""
        if (a, b) in self.pairs:
            return self.pairs[(a, b)]
        m = self.pairs.get((b, a))
        return None if m is None else m[:, ::-1]

    def motion(self, a: int, b: int, min_inliers: int) -> float | None:
        """Median image motion (pixels) of the features matched between a and b; None below min_inliers matches."""
        m = self.matches(a, b)
        if m is None or len(m) < min_inliers:
            return None
        return float(np.median(np.linalg.norm(self.keypoints[b][m[:, 1]] - self.keypoints[a][m[:, 0]], axis=1)))


KEYFRAME_MIN_INLIERS = 100
"""Frames one keyframe stride apart need this many inlier matches (COLMAP's initial pair needs 100) ..."""
KEYFRAME_MIN_MATCHED = 0.9
"""... in this fraction of such pairs at least."""


def keyframe_strides(cfg: PosesConfig) -> list[int]:
    """Keyframe strides whose keyframes are matched to each other by sequential matching, ascending. COLMAP's
    sequential matcher (pycolmap 4.2.1) pairs frames 2^k apart (k < overlap) with quadratic_overlap, else 1..overlap
    apart: so powers of two (up to 64), or strides that leave each keyframe two matched keyframes ahead."""
    if cfg.quadratic_overlap:
        return [2**k for k in range(min(cfg.sequential_overlap, 7))]
    return list(range(1, max(1, cfg.sequential_overlap // 2) + 1))


def keyframe_stride(graph: MatchGraph, max_motion_px: float, strides: list[int]) -> int:
    """The largest stride s of `strides` (ascending) at which frames s apart are still matched (KEYFRAME_MIN_INLIERS
    in KEYFRAME_MIN_MATCHED of the pairs) and move at most max_motion_px (90th percentile over the video of each
    pair's median feature motion); 1 when none is. One stride for the whole video keeps every keyframe matched to
    its keyframe neighbours."""
    ids, best = graph.ids, 1
    for s in strides:
        motions = [graph.motion(ids[i], ids[i + s], KEYFRAME_MIN_INLIERS) for i in range(len(ids) - s)]
        found = [m for m in motions if m is not None]
        if not found or len(found) < KEYFRAME_MIN_MATCHED * len(motions) or np.percentile(found, 90) > max_motion_px:
            break
        best = s
    return best


def select_keyframes(graph: MatchGraph, max_motion_px: float, strides: list[int]) -> list[int]:
    """Indices (into graph.ids, video order) of the keyframes: every keyframe_stride-th frame, and the last one."""
    s = keyframe_stride(graph, max_motion_px, strides)
    keys = list(range(0, len(graph.ids), s))
    return keys if keys[-1] == len(graph.ids) - 1 else [*keys, len(graph.ids) - 1]


PNP_MIN_INLIERS = 30
"""Placing a frame against the keyframes' model needs this many 2D-3D inliers (COLMAP's abs_pose_min_num_inliers)."""


def register_remaining(rec: Any, graph: MatchGraph) -> int:
    """Give every frame of `graph` that `rec` lacks a pose from its matches to the frames with a pose (the 3D points
    those features see; LO-RANSAC PnP + refinement, the shared camera held fixed) and add its inlier observations to
    the points' tracks; passes in video order until no frame is added (a frame matched to no keyframe is placed from
    the frames placed before it). COLMAP's mapper would also re-run bundle adjustment per frame; the keyframes'
    model is already adjusted, so one PnP per frame suffices. Returns how many frames were placed."""
    import pycolmap

    cam_id = rec.images[next(iter(rec.reg_image_ids()))].camera_id
    camera = rec.cameras[cam_id]
    point_of = {
        i: np.array([p.point3D_id if p.has_point3D() else -1 for p in rec.images[i].points2D])
        for i in rec.reg_image_ids()
    }
    neighbours: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for (a, b), m in graph.pairs.items():
        neighbours.setdefault(a, []).append((b, m[:, 0], m[:, 1]))
        neighbours.setdefault(b, []).append((a, m[:, 1], m[:, 0]))
    placed, before = 0, -1
    while placed > before:
        before = placed
        for i, name in zip(graph.ids, graph.names):
            if i in point_of:
                continue
            links = [(mine, point_of[j][other]) for j, mine, other in neighbours.get(i, []) if j in point_of]
            if not links:
                continue
            mine = np.concatenate([k[p >= 0] for k, p in links])
            pids = np.concatenate([p[p >= 0] for _, p in links])
            mine, first = np.unique(mine, return_index=True)  # a feature seen by several frames: its first 3D point
            pids = pids[first]
            if len(mine) < PNP_MIN_INLIERS:
                continue
            xyz = np.array([rec.points3D[int(p)].xyz for p in pids])
            est = pycolmap.estimate_and_refine_absolute_pose(graph.keypoints[i][mine], xyz, camera)
            if est is None or est["num_inliers"] < PNP_MIN_INLIERS:
                continue
            image = pycolmap.Image(name=name, keypoints=graph.keypoints[i], camera_id=cam_id, image_id=i)
            rec.add_image_with_trivial_frame(image, est["cam_from_world"])
            inl = np.asarray(est["inlier_mask"], dtype=bool)
            point_of[i] = np.full(len(graph.keypoints[i]), -1, dtype=np.int64)
            point_of[i][mine[inl]] = pids[inl]
            for k, p in zip(mine[inl], pids[inl]):
                rec.add_observation(int(p), pycolmap.TrackElement(i, int(k)))
            placed += 1
    return placed


FILTER_MAX_REPROJ_PX = 4.0
"""After the final adjustment, observations farther than this from their point's projection are dropped (COLMAP's
mapper filter_max_reproj_error)."""


def adjust_placed(rec: Any, num_threads: int = -1, refine_focal: bool = True) -> dict[str, float]:
    """The global bundle adjustment COLMAP's mapper ends with, over the keyframes and the placed frames together
    (Ceres, soft-L1 loss so that a wrong PnP inlier does not pull a pose), then observations reprojecting farther
    than FILTER_MAX_REPROJ_PX dropped (points left with < 2 views deleted) and the points adjusted once more.
    pycolmap exposes bundle adjustment but not the mapper's observation filter, hence the few lines here.
    Returns the mean reprojection error (px) before and after and the observations dropped."""
    import pycolmap

    rec.update_point_3d_errors()  # the placed frames' new observations carry no error yet
    before = rec.compute_mean_reprojection_error()
    opts = pycolmap.BundleAdjustmentOptions()
    opts.print_summary = False
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.SOFT_L1
    opts.ceres.solver_options.num_threads = num_threads
    opts.ceres.solver_options.max_num_iterations = 50  # COLMAP's ba_global_max_num_iterations
    opts.refine_focal_length = refine_focal
    pycolmap.bundle_adjustment(rec, opts)
    dropped = drop_far_observations(rec, FILTER_MAX_REPROJ_PX)
    if dropped:
        pycolmap.bundle_adjustment(rec, opts)
    after = rec.compute_mean_reprojection_error()
    return {"reproj_before_px": round(before, 4), "reproj_after_px": round(after, 4), "dropped": dropped}


def drop_far_observations(rec: Any, max_px: float) -> int:
    """Delete every observation whose point projects more than max_px from it (or behind the camera); a point left
    with fewer than two observations is deleted. Returns how many observations were removed."""
    removed = 0
    for pid in list(rec.point3D_ids()):
        point = rec.points3D[pid]
        far = []
        for el in point.track.elements:
            image = rec.images[el.image_id]
            xy = image.project_point(point.xyz)
            if xy is None or np.linalg.norm(xy - image.points2D[el.point2D_idx].xy) > max_px:
                far.append((el.image_id, el.point2D_idx))
        if len(far) > point.track.length() - 2:
            removed += point.track.length()
            rec.delete_point3D(pid)
            continue
        for image_id, idx in far:
            rec.delete_observation(image_id, idx)
        removed += len(far)
    return removed


MIN_IMAGE_POINTS = 15
"""A registered frame must observe at least this many triangulated points to keep its pose. COLMAP registers a
frame with >= 30 PnP inliers, but its later filters (triangulation angle, reprojection error) can strip a panning
camera's points afterwards: the roller-coaster clip has given models of 9 and of 19 frames with 1 and 3 points in
all, whose poses nothing constrains; healthy models of the same clip see 265-326 points per frame."""


def drop_unsupported_frames(rec: Any, min_points: int = MIN_IMAGE_POINTS) -> int:
    """Deregister every frame of `rec` that observes fewer than min_points triangulated points, repeatedly (a
    deregistered frame takes its observations along, and points left with < 2 views go); returns how many went."""
    dropped = 0
    while weak := [i for i in rec.reg_image_ids() if rec.images[i].num_points3D < min_points]:
        for i in weak:
            rec.deregister_frame(rec.images[i].frame_id)
        dropped += len(weak)
    return dropped


def map_step(db_path: Path, image_dir: Path, out_dir: Path, cfg: PosesConfig, plan: SfmPlan) -> tuple[dict, dict]:
    """The map step (`map_models`), then every model's frames without support dropped (drop_unsupported_frames;
    the models changed are rewritten). Returns {N: reconstruction} and what to record of it."""
    recs, record = map_models(db_path, image_dir, out_dir, cfg, plan)
    unsupported = {str(k): n for k, rec in recs.items() if (n := drop_unsupported_frames(rec))}
    for k in unsupported:
        recs[int(k)].write(out_dir / k)
    if unsupported:
        record["unsupported_frames_dropped"] = unsupported
    return recs, record


def map_models(db_path: Path, image_dir: Path, out_dir: Path, cfg: PosesConfig, plan: SfmPlan) -> tuple[dict, dict]:
    """All frames mapped, or (plan.keyframe_motion_px > 0) the keyframes and then the other frames placed against
    the largest model, which is rewritten. Returns {N: reconstruction} and what to record of it."""
    if plan.keyframe_motion_px <= 0:
        return map_features(db_path, image_dir, out_dir, cfg, plan.mapper, plan.attempt_settings), {}
    graph = MatchGraph.read(db_path)
    keys = select_keyframes(graph, plan.keyframe_motion_px, keyframe_strides(cfg))
    names = [graph.names[k] for k in keys]
    recs = map_features(db_path, image_dir, out_dir, cfg, plan.mapper, plan.attempt_settings, names)
    record: dict[str, Any] = {"keyframes": len(keys)}
    if recs:
        best = max(recs, key=lambda k: recs[k].num_reg_images())
        t0 = time.perf_counter()
        record["placed"] = register_remaining(recs[best], graph)
        record["register_seconds"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        record["adjusted"] = adjust_placed(recs[best], cfg.num_threads, cfg.refine_focal)
        record["adjust_seconds"] = round(time.perf_counter() - t0, 3)
        recs[best].write(out_dir / str(best))
    return recs, record


# --------------------------------------------------------------------------------------------------
# the SfM steps: resumable, run in a child process (recon.native) so that a native crash is reported


def sfm_space_needed(work: Path, num_images: int, size: tuple[int, int], cfg: PosesConfig, matcher: str) -> int:
    """Bytes the SfM steps may still write: database (keypoints + descriptors ~152 B per feature, matches and
    inliers 8 B each per pair), model and undistorted frames, minus a database already there."""
    W, H = size
    feats = min(cfg.max_num_features, max(1000, W * H // 64))  # SIFT finds ~1 feature per 130-220 px here
    n = max(num_images, 1)
    pairs = n * (n - 1) // 2 if matcher == "exhaustive" else n * (cfg.sequential_overlap + int(np.log2(n)) + 1)
    database = n * feats * 152 + pairs * feats * 8
    model_and_images = n * feats * 40 + n * W * H * 3
    db = work / "database.db"
    existing = db.stat().st_size if db.is_file() else 0
    return max(0, database - existing) + model_and_images + (16 << 20)


def ensure_free_space(run_root: Path, need: int) -> None:
    """ReconError (one line) when the file system of run_root has less than `need` bytes free."""
    free = shutil.disk_usage(run_root).free
    if free < need:
        raise ReconError(
            f"not enough free space in {run_root} for the SfM database: need ~{need / 2**20:.0f} MB, "
            f"{free / 2**20:.0f} MB free"
        )


def sfm_steps(
    work: Path,
    image_dir: Path,
    names: list[str],
    size: tuple[int, int],
    plan: SfmPlan,
    cfg: PosesConfig,
    on_step: Callable[[str], None],
    begin: Callable[[str], None],
) -> None:
    """Extract, match and map `image_dir/names` into work/ (database.db, sparse/N, state.json), skipping the
    steps state.json records as done with the same key. Runs in the SfM child process (pycolmap's native
    code); `begin(step)` is called before each native step, `on_step(status)` after each step."""
    import pycolmap

    if cfg.seed >= 0:
        pycolmap.set_random_seed(cfg.seed)
    db_path, state, keys = work / "database.db", StepState(work), plan.keys
    if not state.done("extract", keys["extract"]):
        state.forget("extract", "match", "map")
        db_path.unlink(missing_ok=True)
        shutil.rmtree(work / "sparse", ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        params = ""
        if plan.focal_source != "heuristic":
            cam = pycolmap.Camera.create_from_model_name(1, cfg.camera_model, plan.focal, size[0], size[1])
            params = cam.params_to_string()
        begin("extract")
        extract_sift(db_path, image_dir, names, cfg, cfg.camera_model, params, plan.single_camera)
        counts = _pick(database_counts(db_path) or {}, "images", "keypoints")
        state.mark("extract", keys["extract"], time.perf_counter() - t0, cpu_seconds=_cpu_since(c0), **counts)
    on_step(f"match ({plan.matcher})")
    if not state.done("match", keys["match"]):
        state.forget("match", "map")
        shutil.rmtree(work / "sparse", ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        begin("match")
        match_features(db_path, plan.matcher, cfg)
        counts = _pick(database_counts(db_path) or {}, "pairs", "inliers")
        state.mark("match", keys["match"], time.perf_counter() - t0, cpu_seconds=_cpu_since(c0), **counts)
    on_step(f"map ({plan.mapper})")
    if not state.done("map", keys["map"]) or not (work / "sparse" / str(state.data["map"]["best"])).exists():
        state.forget("map")
        t0, c0 = time.perf_counter(), time.process_time()
        begin("map")
        with atomic_dir(work / "sparse") as tmp:
            recs, record = map_step(db_path, image_dir, tmp, cfg, plan)
            best = max(recs, key=lambda k: recs[k].num_reg_images()) if recs else None
        models = {str(k): r.num_reg_images() for k, r in recs.items()}
        record.update(best=best, models=models, attempt=plan.attempt, cpu_seconds=_cpu_since(c0))
        state.mark("map", keys["map"], time.perf_counter() - t0, **record)


def _pick(d: dict, *keys: str) -> dict:
    return {k: d[k] for k in keys if k in d}


def _cpu_since(c0: float) -> float:
    """CPU seconds of this process (all its threads) since time.process_time() was c0: a measure of the work that
    a loaded machine distorts far less than wall time."""
    return round(time.process_time() - c0, 3)


def reconstruct(
    work: Path,
    image_dir: Path,
    names: list[str],
    size: tuple[int, int],
    plan: SfmPlan,
    cfg: PosesConfig,
    on_step: Callable[[str], None] = lambda status: None,
) -> tuple[Any, dict[str, float], dict[str, int]]:
    """Extract, match and map `image_dir/names` (resuming the finished steps that work/state.json records and
    the database backs up), in a child process (`run_isolated`).

    Returns the largest model (pycolmap.Reconstruction, distorted cameras, or None when mapping made none), the
    seconds of each step, and the registered-image count of every model made. `on_step(status)` is called
    after each step. ReconError when the disk is too full to start or COLMAP fails or crashes.
    """
    import pycolmap

    work.mkdir(parents=True, exist_ok=True)
    why = StepState(work).verify(work / "database.db", len(names))
    if why is not None:
        warn(f"the SfM work state in {work} does not match its database ({why}): redoing those steps")
    ensure_free_space(work.parent, sfm_space_needed(work, len(names), size, cfg, plan.matcher))
    run_isolated(sfm_steps, (work, image_dir, names, size, plan, cfg), on_step, work / "colmap.log", NATIVE_STEPS)
    state = StepState(work)
    seconds = {step: state.seconds(step) for step in ("extract", "match", "map")}
    best = state.data["map"]["best"]
    rec = pycolmap.Reconstruction(work / "sparse" / str(best)) if best is not None else None
    return rec, seconds, dict(state.data["map"].get("models", {}))


NATIVE_STEPS = {"extract": "feature extraction", "match": "feature matching", "map": "mapping"}


# --------------------------------------------------------------------------------------------------
# native work in a child process

FAULT_ENV = "RECON_SFM_FAULT"
"""Test hook: a step name (extract, match, map); the SfM child process aborts (os.abort) as it begins it."""


def run_isolated(
    target: Callable[..., None],
    args: tuple,
    on_step: Callable[[str], None],
    log_path: Path,
    step_names: dict[str, str],
) -> None:
    """Run `target(*args, on_step=..., begin=...)` in a spawned child process.

    A native crash there (abort, segfault, out of memory) becomes a one-line ReconError naming the step
    (`step_names[step]` of the last `begin(step)`), the signal and COLMAP's last error line, instead of
    killing this process. The child's stdout/stderr (COLMAP's glog) go to `log_path`, or to the terminal's
    stderr with -v. A ReconError or exception in the child is re-raised here as a ReconError.
    """
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    level = verbosity()
    log_path.write_bytes(b"")
    proc = ctx.Process(target=_child_main, args=(send, target, args, log_path, level), daemon=True)
    with _main_hidden_from_children():
        proc.start()
    send.close()
    step, outcome = "", None
    try:
        while True:
            try:
                kind, value = recv.recv()
            except EOFError:
                break
            if kind == "begin":
                step = value
            elif kind == "status":
                on_step(value)
            else:
                outcome = (kind, value)
        proc.join(timeout=60)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        recv.close()
    what = f"COLMAP ({step_names.get(step, 'starting')})"
    if outcome is not None and outcome[0] == "ok":
        return
    if outcome is not None:
        raise ReconError(outcome[1] if outcome[0] == "recon_error" else f"{what} failed: {outcome[1]}")
    raise ReconError(_crash_message(what, proc.exitcode, log_path, level))


@contextlib.contextmanager
def _main_hidden_from_children() -> Iterator[None]:
    """While a spawned child starts, hide this process's `__main__` from multiprocessing.

    A spawned child first runs its parent's main script again (as `__mp_main__`), to find functions defined
    there. The COLMAP child needs nothing from it (its target lives in this module), and in a Ray worker that
    script is Ray's default_worker.py, whose `import ray` costs ~2.9 s of CPU per scene here. multiprocessing
    has no switch for this; a bare stand-in module (no file, no spec) during `start()` is what it checks.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _crash_message(what: str, exitcode: int | None, log_path: Path, level: int) -> str:
    """One line for a child that died without reporting: signal or exit status, COLMAP's last error line,
    a full-disk hint, and where the log is."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        msg = f"{what} crashed with signal {-exitcode} ({name})"
    else:
        msg = f"{what} exited with status {exitcode} without a result"
    last = _last_error_line(log_path)
    if last:
        msg += f": {last}"
    free = shutil.disk_usage(log_path.parent).free
    if free < (64 << 20):
        msg += f"; only {free / 2**20:.0f} MB free on the disk (full?)"
    if level < 2:
        msg += f"; COLMAP's log: {log_path}"
    return msg + "; re-run the poses stage (finished steps are kept)"


def _last_error_line(log_path: Path) -> str:
    """The text of the last glog ERROR/FATAL line (or 'Check failed') in the log, shortened; '' if none."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    for line in reversed(lines):
        if line[:1] in ("E", "F") and line[1:5].isdigit() or "Check failed" in line:
            text = line.split("] ", 1)[-1].strip()
            return text[:200]
    return ""


def _child_main(conn: Any, target: Callable[..., None], args: tuple, log_path: Path, level: int) -> None:
    """Entry point of the SfM child process (see run_isolated)."""
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an abort must not leave a core file behind
    if level < 2:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    else:
        os.dup2(2, 1)  # recon's stdout is its result table
    set_verbosity(0)
    import pycolmap

    pycolmap.logging.minloglevel = 0
    pycolmap.logging.logtostderr = True

    def begin(step: str) -> None:
        conn.send(("begin", step))
        if os.environ.get(FAULT_ENV) == step:
            os.abort()

    try:
        target(*args, on_step=lambda status: conn.send(("status", status)), begin=begin)
        conn.send(("ok", None))
    except ReconError as e:
        conn.send(("recon_error", str(e)))
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# retries and the diagnosis of a failed SfM


@dataclass
class SfmOutcome:
    """The kept model of the SfM tries (None: no model), its plan, seconds per step and models, and one record
    per try (attempt, registered, seconds)."""

    rec: Any
    plan: SfmPlan
    seconds: dict[str, float]
    models: dict[str, int]
    tries: list[dict[str, Any]]


def reconstruct_with_retries(
    work: Path,
    image_dir: Path,
    frames: FramesIndex,
    cfg: PosesConfig,
    on_step: Callable[[str], None] = lambda status: None,
) -> SfmOutcome:
    """SfM on the frames (`reconstruct`), retried along `sfm_attempts` while fewer than min_registered_frames
    register; each retry reuses the features (and the matches when the matcher is unchanged) and says so.
    Keeps the model with the most registered frames."""
    names = [Path(f).name for f in frames.files]
    need = min_registered_frames(cfg, len(names))
    best: SfmOutcome | None = None
    tries: list[dict[str, Any]] = []
    for attempt in sfm_attempts(frames, cfg):
        plan = SfmPlan.make(frames, cfg, attempt)
        if tries:
            info(f"poses: SfM placed {tries[-1]['registered']} of {len(names)} frames; retrying: {attempt.name}")
        t0 = time.perf_counter()
        rec, seconds, models = reconstruct(work, image_dir, names, frames.size, plan, cfg, on_step)
        n = rec.num_reg_images() if rec is not None else 0
        tries.append({"attempt": attempt.name, "registered": n, "seconds": round(time.perf_counter() - t0, 3)})
        if best is None or n > (best.rec.num_reg_images() if best.rec is not None else 0):
            best = SfmOutcome(rec, plan, seconds, models, tries)
        if n >= need:
            break
    assert best is not None, "sfm_attempts gives at least one attempt"
    best.tries = tries
    return best


def diagnose_sfm(db_path: Path, size: tuple[int, int]) -> str:
    """Why SfM could not place the frames, from what its database holds, with what to do about it (one line)."""
    W, H = size
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
        try:
            feats = [r[0] for r in con.execute("SELECT rows FROM keypoints")]
            geoms = con.execute("SELECT config, rows FROM two_view_geometries").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        feats, geoms = [], []
    median_feats = int(np.median(feats)) if feats else 0
    verified = [c for c, rows in geoms if rows >= 15]
    rotation_only = sum(c in (4, 5, 6) for c in verified)  # COLMAP: PLANAR, PANORAMIC, PLANAR_OR_PANORAMIC
    if feats and median_feats < 300:
        return (
            f"the frames show little texture (median {median_feats} features per {W}x{H} frame): "
            "use larger frames (--max-size) or a more textured view"
        )
    if geoms and len(verified) < 0.5 * len(geoms):
        return (
            f"only {len(verified)} of {len(geoms)} frame pairs share enough features (fast motion, blur or moving "
            "objects): sample frames more densely (--target-fps, --max-frames) or record more slowly"
        )
    if verified and rotation_only >= 0.8 * len(verified):
        return (
            "the camera turns more than it moves (a pan), stands still or sees a flat scene, so no pair of frames "
            "has enough parallax: record with more camera motion (walk around the scene), use more and larger "
            "frames (--max-frames, --max-size), or pass known poses with --poses"
        )
    return (
        "the camera barely moves or the views do not overlap: record with more camera motion (walk around the "
        "scene, don't just rotate), or pass known poses with --poses"
    )


def undistortion_plan(rec: Any, names: list[str], width: int, height: int) -> tuple[Any, list[Any], list[Any]]:
    """The undistorted (PINHOLE, width x height) model of `rec`, and per image name the source camera and the
    PINHOLE camera it is warped to (images `rec` did not register use its first registered image's camera)."""
    targets = {cid: pinhole_target(cam, width, height) for cid, cam in rec.cameras.items()}
    und = undistort_reconstruction(rec, targets)
    by_name = {rec.images[i].name: rec.images[i] for i in rec.images}
    first_cid = rec.images[sorted(rec.reg_image_ids())[0]].camera_id
    src_cams, dst_cams = [], []
    for n in names:
        im = by_name.get(n)
        cid = im.camera_id if (im is not None and im.has_pose and im.camera_id in targets) else first_cid
        src_cams.append(rec.cameras[cid])
        dst_cams.append(targets[cid])
    return und, src_cams, dst_cams


def camera_record(camera: Any, width: int | None = None, height: int | None = None) -> dict[str, Any]:
    """A pycolmap camera as the `distorted_camera` entry of cameras.json's `sfm` block."""
    return {
        "model": camera.model_name,
        "width": int(camera.width if width is None else width),
        "height": int(camera.height if height is None else height),
        "params": [float(v) for v in camera.params],
    }


def config_record(cfg: PosesConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


def extract_sift(
    db_path: Path,
    image_dir: Path,
    names: list[str],
    cfg: PosesConfig,
    camera_model: str,
    camera_params: str = "",
    single_camera: bool = True,
) -> None:
    """SIFT features of image_dir/names into the COLMAP database (images already there are skipped).

    camera_params: COLMAP parameter string of a known initial camera ("" = focal from focal_factor).
    """
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    reader.default_focal_length_factor = cfg.focal_factor
    reader.camera_params = camera_params
    ext = pycolmap.FeatureExtractionOptions()
    ext.num_threads = cfg.num_threads
    ext.sift.max_num_features = cfg.max_num_features
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    # Device.auto: the PyPI wheel is CPU-only; a CUDA build of pycolmap would use the GPU
    pycolmap.extract_features(
        db_path,
        image_dir,
        image_names=names,
        camera_mode=mode,
        reader_options=reader,
        extraction_options=ext,
        device=pycolmap.Device.auto,
    )


def match_features(db_path: Path, matcher: str, cfg: PosesConfig) -> None:
    """Match and geometrically verify image pairs of the database (previous matches are cleared first)."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    db.clear_matches()
    db.clear_two_view_geometries()
    db.close()
    mopt = pycolmap.FeatureMatchingOptions()
    mopt.num_threads = cfg.num_threads
    if matcher == "sequential":
        pair = pycolmap.SequentialPairingOptions()
        pair.overlap = cfg.sequential_overlap
        pair.quadratic_overlap = cfg.quadratic_overlap
        if cfg.loop_detection:
            pair.loop_detection = True
            pair.vocab_tree_path = str(build_vocab_tree(db_path, db_path.parent / "vocab_tree.bin", cfg.num_threads))
        pycolmap.match_sequential(db_path, matching_options=mopt, pairing_options=pair, device=pycolmap.Device.auto)
    elif matcher == "exhaustive":
        pycolmap.match_exhaustive(db_path, matching_options=mopt, device=pycolmap.Device.auto)
    else:
        raise ReconError(f"unknown matcher {matcher!r}: use 'auto', 'sequential' or 'exhaustive'")


VOCAB_TREE_MAX_DESCRIPTORS = 100_000
VOCAB_TREE_DESCRIPTORS_PER_WORD = 40
"""Own vocabulary tree: k-means on up to 100k of the video's SIFT descriptors, one visual word per 40 of them
(faiss, which pycolmap's VisualIndex uses, wants at least 39 training points per centroid)."""


def build_vocab_tree(db_path: Path, out_path: Path, num_threads: int = -1) -> Path:
    """A vocabulary tree (pycolmap.VisualIndex) for COLMAP's loop detection, built from the SIFT descriptors of the
    database's own images and written to out_path. COLMAP's pretrained trees are downloads (none offline); a tree
    of the video's own features serves to find which frames look alike within that video."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        descs = [np.asarray(db.read_descriptors(im.image_id).data) for im in db.read_all_images()]
    finally:
        db.close()
    every = np.concatenate(descs)
    sample = every[:: max(1, len(every) // VOCAB_TREE_MAX_DESCRIPTORS)].astype(np.float32)
    index = pycolmap.VisualIndex.create(128, 64)  # SIFT descriptors (128-D), COLMAP's 64-D Hamming embedding
    opt = pycolmap.VisualIndex.BuildOptions()
    opt.num_visual_words = int(min(65536, max(16, len(sample) // VOCAB_TREE_DESCRIPTORS_PER_WORD)))
    opt.num_iterations, opt.num_rounds, opt.num_threads = 25, 1, num_threads
    index.build(opt, pycolmap.FeatureDescriptorsFloat(pycolmap.FeatureExtractorType.SIFT, sample))
    index.write(out_path)
    return out_path


def map_features(
    db_path: Path,
    image_dir: Path,
    out_dir: Path,
    cfg: PosesConfig,
    mapper: str | None = None,
    attempt: Attempt = AS_CONFIGURED,
    image_names: list[str] | None = None,
) -> dict[int, Any]:
    """Incremental or global mapping (`mapper`, default cfg.mapper) of the matched database into out_dir/N;
    returns {N: reconstruction}. attempt: the incremental mapper's triangulation angles when not None (degrees).
    image_names: map only these images (None = all)."""
    import pycolmap

    mapper = mapper or cfg.mapper
    if mapper == "incremental":
        opt = pycolmap.IncrementalPipelineOptions()
        opt.num_threads = cfg.num_threads
        opt.random_seed = attempt.mapper_seed(cfg.seed)
        opt.min_model_size = max(3, min(10, cfg.min_registered))
        if image_names is not None:
            opt.image_names = list(image_names)
        if attempt.init_min_tri_angle is not None:
            opt.mapper.init_min_tri_angle = float(attempt.init_min_tri_angle)
        if attempt.min_tri_angle is not None:
            opt.triangulation.min_angle = opt.mapper.filter_min_tri_angle = float(attempt.min_tri_angle)
        if not cfg.refine_focal:
            opt.ba_refine_focal_length = opt.mapper.abs_pose_refine_focal_length = False
        return pycolmap.incremental_mapping(db_path, image_dir, out_dir, opt)
    if mapper == "global":
        global_opt = pycolmap.GlobalPipelineOptions()
        global_opt.num_threads = cfg.num_threads
        global_opt.random_seed = attempt.mapper_seed(cfg.seed)
        if image_names is not None:
            global_opt.image_names = list(image_names)
        if not cfg.refine_focal:
            global_opt.mapper.bundle_adjustment.refine_focal_length = False
        return pycolmap.global_mapping(db_path, image_dir, out_dir, global_opt)
    raise ReconError(f"unknown mapper {mapper!r}: use 'incremental' or 'global'")


def summary_from_sfm(sfm: dict) -> dict:
    """The CLI table of the pose stage from the `sfm` block of cameras.json."""
    out = {
        "registered": f"{sfm['registered']}/{sfm['total']}",
        "points": sfm["points"],
        "mean reprojection error (px)": sfm["mean_reprojection_error_px"],
        "mapper": sfm["mapper"],
    }
    for step, s in sfm.get("seconds", {}).items():
        out[f"{step} (s)"] = round(float(s), 2)
    return out
