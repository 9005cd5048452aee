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

Outputs (each written atomically; cameras.json last, so its presence means the stage finished):
    RUN/images/NNNNNN.png  undistorted frames, same names and size as RUN/frames/. Every later stage
                           reads these, through the `file` field of cameras.json.
    RUN/sfm/               COLMAP binary model (cameras.bin, images.bin, points3D.bin, rigs.bin,
                           frames.bin) of the undistorted PINHOLE reconstruction: registered images
                           only, 2D observations mapped into the undistorted images.
    RUN/cameras.json       recon.cameras.CameraSet: per frame `file` (images/NNNNNN.png),
                           `source_index`, `registered`, PINHOLE `K` at W x H, OpenCV `c2w`; frames
                           SfM could not place keep `registered: false`, c2w = identity, the shared K.
Pixel convention: COLMAP's (and nerfstudio's / gsplat's): the image origin is the top-left corner of
the top-left pixel, so pixel (i, j) has its centre at (i + 0.5, j + 0.5) in K's coordinates.

Resuming: RUN/sfm_work/state.json records each finished step with a key of the settings it used; a
re-run skips steps whose key is unchanged (COLMAP itself also skips images and pairs that are already
in the database), so a run killed during mapping resumes after matching.

Known poses (`cfg.poses`): recon.known_poses imports them instead of running SfM (same outputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recon.atomic import atomic_dir, write_json
from recon.artifacts.cameras import CameraSet
from depth.geometry import invert_pose
from recon.console import debug, info, progress, verbosity, warn
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths

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
    cam.params = np.asarray(camera.params, dtype=np.float64).copy()
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
            if maps[key] is None and Path(f).suffix.lower() == ".png":
                shutil.copyfile(root / f, out_dir / name)
            else:
                img = np.asarray(Image.open(root / f).convert("RGB"))
                if maps[key] is not None:
                    mx, my = maps[key]
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
# the stage


def load_frames(paths: RunPaths) -> dict:
    if not paths.frames_json.exists():
        raise ReconError(f"{paths.frames_json} not found: run the frames stage first (recon frames)")
    try:
        meta = json.loads(paths.frames_json.read_text())
        frames = meta["frames"]
        W, H = meta["size"]
    except (ValueError, KeyError, TypeError) as e:
        raise ReconError(f"{paths.frames_json} is not a valid frames.json ({e}); re-run the frames stage") from e
    missing = [f["file"] for f in frames if not (paths.root / f["file"]).exists()]
    if missing:
        raise ReconError(
            f"{len(missing)} frame file(s) listed in frames.json are missing (first: {missing[0]}); re-run the frames stage"
        )
    if len(frames) < 2:
        raise ReconError(f"{paths.frames_json} lists {len(frames)} frame(s); poses need at least 2")
    return meta


def initial_focal_px(meta: dict, cfg: PosesConfig) -> tuple[float, str]:
    """Initial focal length (pixels at the stored size) and where it came from: "config", "exif" or
    "heuristic" (focal_factor * max(W, H)). Only "config" and "exif" are given to COLMAP as a known prior."""
    W, H = meta["size"]
    if cfg.focal_px and cfg.focal_px > 0:
        return float(cfg.focal_px), "config"
    exif = meta.get("exif_focal_px")
    if exif:
        W0 = (meta.get("original_size") or [W, H])[0]
        return float(exif) * W / W0, "exif"
    return cfg.focal_factor * max(W, H), "heuristic"


def resolve_matcher(meta: dict, cfg: PosesConfig) -> str:
    if cfg.matcher != "auto":
        return cfg.matcher
    if meta.get("source_type") == "images" and len(meta["frames"]) <= EXHAUSTIVE_MAX_IMAGES:
        return "exhaustive"
    return "sequential"


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _State:
    """RUN/sfm_work/state.json: finished steps with the key of their settings and their duration."""

    def __init__(self, work: Path):
        self.path = work / "state.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, step: str, key: str) -> bool:
        return self.data.get(step, {}).get("key") == key

    def mark(self, step: str, key: str, seconds: float, **extra: Any) -> None:
        self.data[step] = {"key": key, "seconds": round(seconds, 3), **extra}
        write_json(self.path, self.data)

    def forget(self, *steps: str) -> None:
        for s in steps:
            self.data.pop(s, None)
        write_json(self.path, self.data)


def _quiet_colmap() -> None:
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbosity() >= 2 else 2


def run_poses(paths: RunPaths, cfg: PosesConfig) -> dict:
    """Run the pose stage (SfM, or known poses when cfg.poses is set). Returns the CLI summary dict."""
    meta = load_frames(paths)
    if cfg.poses is not None:
        from recon.known_poses import import_known_poses

        return import_known_poses(paths, cfg, meta)
    return _run_sfm(paths, cfg, meta)


def _run_sfm(paths: RunPaths, cfg: PosesConfig, meta: dict) -> dict:
    import pycolmap

    _quiet_colmap()
    if cfg.seed >= 0:
        pycolmap.set_random_seed(cfg.seed)
    W, H = (int(v) for v in meta["size"])
    frame_files = [f["file"] for f in meta["frames"]]
    names = [Path(f).name for f in frame_files]
    T = len(names)
    matcher = resolve_matcher(meta, cfg)
    focal, focal_src = initial_focal_px(meta, cfg)
    single = cfg.single_camera or meta.get("source_type") == "video"

    work = paths.sfm_work_dir
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "database.db"
    state = _State(work)
    k_extract = _key(
        [(f["file"], f["source_index"]) for f in meta["frames"]],
        meta.get("source"),
        [W, H],
        cfg.camera_model,
        focal,
        focal_src,
        single,
        cfg.max_num_features,
    )
    k_match = _key(k_extract, matcher, cfg.sequential_overlap, cfg.quadratic_overlap)
    k_map = _key(k_match, cfg.mapper, cfg.seed, cfg.min_registered)
    seconds: dict[str, float] = {}

    with progress() as bar:
        task = bar.add_task("poses", total=4, status="extract")
        # --- extract
        if not state.done("extract", k_extract):
            state.forget("extract", "match", "map")
            db_path.unlink(missing_ok=True)
            shutil.rmtree(work / "sparse", ignore_errors=True)
            t0 = time.perf_counter()
            params = ""
            if focal_src != "heuristic":
                params = pycolmap.Camera.create_from_model_name(1, cfg.camera_model, focal, W, H).params_to_string()
            extract_sift(db_path, paths.frames_dir, names, cfg, cfg.camera_model, params, single)
            state.mark("extract", k_extract, time.perf_counter() - t0)
        seconds["extract"] = state.data["extract"]["seconds"]
        bar.update(task, advance=1, status=f"match ({matcher})")
        # --- match
        if not state.done("match", k_match):
            state.forget("match", "map")
            shutil.rmtree(work / "sparse", ignore_errors=True)
            t0 = time.perf_counter()
            match_features(db_path, matcher, cfg)
            state.mark("match", k_match, time.perf_counter() - t0)
        seconds["match"] = state.data["match"]["seconds"]
        bar.update(task, advance=1, status=f"map ({cfg.mapper})")
        # --- map
        if not state.done("map", k_map) or not (work / "sparse" / str(state.data["map"]["best"])).exists():
            state.forget("map")
            t0 = time.perf_counter()
            with atomic_dir(work / "sparse") as tmp:
                recs = _map(db_path, paths.frames_dir, tmp, cfg)
                best = max(recs, key=lambda k: recs[k].num_reg_images()) if recs else None
            state.mark(
                "map",
                k_map,
                time.perf_counter() - t0,
                best=best,
                models={str(k): r.num_reg_images() for k, r in recs.items()},
            )
        seconds["map"] = state.data["map"]["seconds"]
        best = state.data["map"]["best"]
        rec = pycolmap.Reconstruction(work / "sparse" / str(best)) if best is not None else None
        n_reg = rec.num_reg_images() if rec is not None else 0
        if len(state.data["map"].get("models", {})) > 1:
            debug(
                f"SfM made {len(state.data['map']['models'])} models (registered images per model: {state.data['map']['models']}); keeping the largest"
            )
        if n_reg < min_registered_frames(cfg, T):
            raise ReconError(
                f"structure-from-motion placed only {n_reg} of {T} frames: the camera barely moves (or the views do not overlap). "
                "Record with more camera motion (walk around the scene, don't just rotate), or pass known poses with --poses"
            )
        if n_reg < T:
            warn(f"SfM registered {n_reg} of {T} frames; the other frames are kept as unregistered and not used")
        bar.update(task, advance=1, status="undistort")
        # --- undistort and write outputs
        t0 = time.perf_counter()
        targets = {cid: pinhole_target(cam, W, H) for cid, cam in rec.cameras.items()}
        und = undistort_reconstruction(rec, targets)
        by_name = {rec.images[i].name: rec.images[i] for i in rec.images}
        first_cid = rec.images[sorted(rec.reg_image_ids())[0]].camera_id
        src_cams, dst_cams = [], []
        for n in names:
            im = by_name.get(n)
            cid = im.camera_id if (im is not None and im.has_pose and im.camera_id in targets) else first_cid
            src_cams.append(rec.cameras[cid])
            dst_cams.append(targets[cid])
        with atomic_dir(paths.images_dir) as tmp_img:
            out_names = write_undistorted_frames(paths.root, frame_files, src_cams, dst_cams, tmp_img, bar)
        with atomic_dir(paths.sfm_dir) as tmp_sfm:
            und.write(tmp_sfm)
        seconds["undistort"] = round(time.perf_counter() - t0, 3)
        bar.update(task, advance=1, status="done")

    cam0 = rec.cameras[first_cid]
    sfm = {
        "source": "sfm",
        "registered": int(n_reg),
        "total": int(T),
        "points": int(und.num_points3D()),
        "mean_reprojection_error_px": round(float(und.compute_mean_reprojection_error()), 4),
        "mapper": cfg.mapper,
        "matcher": matcher,
        "camera_model": cfg.camera_model,
        "initial_focal_px": round(focal, 3),
        "initial_focal_source": focal_src,
        "distorted_camera": {
            "model": cam0.model_name,
            "width": int(cam0.width),
            "height": int(cam0.height),
            "params": [float(v) for v in cam0.params],
        },
        "seconds": seconds,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    image_files = [f"{paths.images_dir.name}/{n}" for n in out_names]
    cs = camera_set_from_reconstruction(
        und, frame_files, image_files, [int(f["source_index"]) for f in meta["frames"]], W, H, sfm
    )
    cs.save(paths.cameras_json)
    info(
        f"poses: {n_reg}/{T} frames registered, {sfm['points']} points, reprojection error {sfm['mean_reprojection_error_px']:.3f} px"
    )
    return summary_from_sfm(sfm)


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


def _map(db_path: Path, image_dir: Path, out_dir: Path, cfg: PosesConfig) -> dict[int, Any]:
    import pycolmap

    if cfg.mapper == "incremental":
        opt = pycolmap.IncrementalPipelineOptions()
        opt.num_threads = cfg.num_threads
        opt.random_seed = cfg.seed
        opt.min_model_size = max(3, min(10, cfg.min_registered))
        return pycolmap.incremental_mapping(db_path, image_dir, out_dir, opt)
    if cfg.mapper == "global":
        opt = pycolmap.GlobalPipelineOptions()
        opt.num_threads = cfg.num_threads
        opt.random_seed = cfg.seed
        return pycolmap.global_mapping(db_path, image_dir, out_dir, opt)
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
