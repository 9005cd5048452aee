"""Pose stage: camera intrinsics and poses for every frame, by structure-from-motion (pycolmap).

Steps (COLMAP 4 on the CPU, through pycolmap):
    extract   SIFT features of RUN/frames/*.png into RUN/sfm_work/database.db. A video uses one shared
              camera (`camera_model`, SIMPLE_RADIAL by default) whose focal length starts from the EXIF
              focal length when the images carry one, else from 1.2 * max(W, H).
    match     sequential matching (video: neighbours within `sequential_overlap`, plus quadratic
              jumps) or exhaustive matching (image sets of at most 100 images).
    map       incremental (default) or global (GLOMAP) mapping; the model with the most registered
              images is kept (RUN/sfm_work/sparse/N).
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
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from depth.geometry import invert_pose
from recon.artifacts import CameraSet, FramesIndex, read_json_object, read_rgb
from recon.atomic import atomic_dir, write_json
from recon.console import progress, verbosity
from recon.errors import ReconError

EXHAUSTIVE_MAX_IMAGES = 100


@dataclass
class PosesConfig:
    mapper: Literal["incremental", "global"] = "incremental"
    """Structure-from-motion mapper: COLMAP's incremental mapper, or the global (GLOMAP) one."""
    matcher: Literal["auto", "sequential", "exhaustive"] = "auto"
    """Image pairs to match. auto: sequential for a video, exhaustive for an image set of <= 100 images."""
    sequential_overlap: int = 10
    """Sequential matching: match each frame with this many following frames."""
    quadratic_overlap: bool = True
    """Sequential matching: also match frames 2^k apart (helps to close drift over longer videos)."""
    camera_model: str = "SIMPLE_RADIAL"
    """COLMAP camera model estimated by SfM (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV...)."""
    single_camera: bool = True
    """One camera shared by all frames (always for a video); False gives each image its own intrinsics."""
    focal_px: float = 0.0
    """Initial focal length in pixels of the stored frames; 0 = from EXIF if present, else focal_factor * max(W, H)."""
    focal_factor: float = 1.2
    """Focal-length heuristic when neither focal_px nor EXIF gives one."""
    max_num_features: int = 8192
    """SIFT features per image at most."""
    num_threads: int = -1
    """CPU threads for COLMAP (-1 = all)."""
    seed: int = 0
    """Random seed for COLMAP's RANSAC and mappers (-1 = random)."""
    min_registered: int = 3
    """Fail when SfM places fewer frames than this ..."""
    min_registered_fraction: float = 0.3
    """... or fewer than this fraction of the frames."""
    poses: Path | None = None
    """Known poses instead of SfM: a COLMAP model folder or a transforms.json (nerfstudio/instant-ngp/Blender)."""


# --------------------------------------------------------------------------------------------------
# undistortion (pure functions on pycolmap cameras)


def min_registered_frames(cfg: PosesConfig, num_frames: int) -> int:
    """Fewest frames with a pose for a usable run (SfM or imported poses)."""
    return max(cfg.min_registered, int(np.ceil(cfg.min_registered_fraction * num_frames)))


def pinhole_target(camera: Any, width: int, height: int) -> Any:
    """The PINHOLE camera of size width x height that frames of `camera` are undistorted to.

    COLMAP's undistorter picks a distortion-free camera without blank pixels (its size may differ
    slightly from the input); it is scaled uniformly (square pixels kept) and centre-cropped to
    exactly width x height. An undistorted input camera maps to itself (after any resize).

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
    if cam.model_name in ("SIMPLE_PINHOLE", "PINHOLE"):
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


class StepState:
    """WORK/state.json: finished steps with the key of their settings and their duration."""

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


def quiet_colmap() -> None:
    """COLMAP's own log only with -v."""
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbosity() >= 2 else 2


def frames_key(frames: FramesIndex) -> list[Any]:
    """What the stored frames are, for the settings keys of the steps that read them."""
    return [[(f["file"], f["source_index"]) for f in frames.frames], frames.source, list(frames.size)]


@dataclass
class SfmPlan:
    """The settings of one SfM run, resolved from the frames and the config, with the key of each step."""

    matcher: str
    focal: float
    focal_source: str
    single_camera: bool
    keys: dict[str, str]

    @classmethod
    def make(cls, frames: FramesIndex, cfg: PosesConfig) -> SfmPlan:
        matcher = resolve_matcher(frames, cfg)
        focal, focal_src = initial_focal_px(frames, cfg)
        single = cfg.single_camera or frames.source_type == "video"
        k_extract = settings_key(*frames_key(frames), cfg.camera_model, focal, focal_src, single, cfg.max_num_features)
        k_match = settings_key(k_extract, matcher, cfg.sequential_overlap, cfg.quadratic_overlap)
        k_map = settings_key(k_match, cfg.mapper, cfg.seed, cfg.min_registered)
        return cls(matcher, focal, focal_src, single, {"extract": k_extract, "match": k_match, "map": k_map})


def reconstruct(
    work: Path,
    image_dir: Path,
    names: list[str],
    size: tuple[int, int],
    plan: SfmPlan,
    cfg: PosesConfig,
    on_step: Callable[[str], None] = lambda status: None,
) -> tuple[Any, dict[str, float], dict[str, int]]:
    """Extract, match and map `image_dir/names` (resuming finished steps recorded in work/state.json).

    Returns the largest model (pycolmap.Reconstruction, distorted cameras, or None when mapping made none), the
    seconds of each step, and the registered-image count of every model made. `on_step(status)` is called
    after each step.
    """
    import pycolmap

    work.mkdir(parents=True, exist_ok=True)
    db_path, state, keys = work / "database.db", StepState(work), plan.keys
    if not state.done("extract", keys["extract"]):
        state.forget("extract", "match", "map")
        db_path.unlink(missing_ok=True)
        shutil.rmtree(work / "sparse", ignore_errors=True)
        t0 = time.perf_counter()
        params = ""
        if plan.focal_source != "heuristic":
            cam = pycolmap.Camera.create_from_model_name(1, cfg.camera_model, plan.focal, size[0], size[1])
            params = cam.params_to_string()
        extract_sift(db_path, image_dir, names, cfg, cfg.camera_model, params, plan.single_camera)
        state.mark("extract", keys["extract"], time.perf_counter() - t0)
    on_step(f"match ({plan.matcher})")
    if not state.done("match", keys["match"]):
        state.forget("match", "map")
        shutil.rmtree(work / "sparse", ignore_errors=True)
        t0 = time.perf_counter()
        match_features(db_path, plan.matcher, cfg)
        state.mark("match", keys["match"], time.perf_counter() - t0)
    on_step(f"map ({cfg.mapper})")
    if not state.done("map", keys["map"]) or not (work / "sparse" / str(state.data["map"]["best"])).exists():
        state.forget("map")
        t0 = time.perf_counter()
        with atomic_dir(work / "sparse") as tmp:
            recs = map_features(db_path, image_dir, tmp, cfg)
            best = max(recs, key=lambda k: recs[k].num_reg_images()) if recs else None
        models = {str(k): r.num_reg_images() for k, r in recs.items()}
        state.mark("map", keys["map"], time.perf_counter() - t0, best=best, models=models)
    seconds = {step: state.seconds(step) for step in ("extract", "match", "map")}
    best = state.data["map"]["best"]
    rec = pycolmap.Reconstruction(work / "sparse" / str(best)) if best is not None else None
    return rec, seconds, dict(state.data["map"].get("models", {}))


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
        pycolmap.match_sequential(db_path, matching_options=mopt, pairing_options=pair, device=pycolmap.Device.auto)
    elif matcher == "exhaustive":
        pycolmap.match_exhaustive(db_path, matching_options=mopt, device=pycolmap.Device.auto)
    else:
        raise ReconError(f"unknown matcher {matcher!r}: use 'auto', 'sequential' or 'exhaustive'")


def map_features(db_path: Path, image_dir: Path, out_dir: Path, cfg: PosesConfig) -> dict[int, Any]:
    """Incremental or global mapping of the matched database into out_dir/N; returns {N: reconstruction}."""
    import pycolmap

    if cfg.mapper == "incremental":
        opt = pycolmap.IncrementalPipelineOptions()
        opt.num_threads = cfg.num_threads
        opt.random_seed = cfg.seed
        opt.min_model_size = max(3, min(10, cfg.min_registered))
        return pycolmap.incremental_mapping(db_path, image_dir, out_dir, opt)
    if cfg.mapper == "global":
        global_opt = pycolmap.GlobalPipelineOptions()
        global_opt.num_threads = cfg.num_threads
        global_opt.random_seed = cfg.seed
        return pycolmap.global_mapping(db_path, image_dir, out_dir, global_opt)
    raise ReconError(f"unknown mapper {cfg.mapper!r}: use 'incremental' or 'global'")


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
