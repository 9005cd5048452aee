"""Known poses (`--poses PATH`): use given cameras instead of structure-from-motion.

PATH is either
  * a COLMAP model folder (cameras/images/points3D as .bin or .txt; a project folder holding
    sparse/0 or sparse/ is accepted too), read with pycolmap, or
  * a transforms.json in the nerfstudio / instant-ngp / Blender (NeRF-synthetic) layout: c2w
    `transform_matrix` with OpenGL camera axes (converted with depth.geometry.opengl_to_opencv),
    intrinsics from fl_x/fl_y/cx/cy/w/h (global or per frame) or from camera_angle_x/y, distortion
    k1 k2 (k3 k4) p1 p2 (OPENCV / FULL_OPENCV, or OPENCV_FISHEYE when camera_model says so). Missing
    w/h default to the source frames' original size; missing cx/cy to the image centre.

Frames are matched to poses by file stem (frames.json `source_name` of an image set against the pose
file's image names, e.g. "0001.jpg" <-> "images/0001.jpg", "r_0.png" <-> "./train/r_0"); else by the
`source_index` the pose file records per frame (a transforms.json exported by recon.stages.export, so a
run's own export can be re-imported); else by order: the frame with source_index i (its index in the
video) gets pose i of the file (transforms.json in listed order, COLMAP images sorted by name).
Intrinsics are rescaled from the pose file's image size to the stored frame size, and frames are
undistorted to PINHOLE exactly as the SfM path does (recon.poses.pinhole_target), so downstream always
sees PINHOLE frames in RUN/images/.

This module reads the pose file and triangulates; recon.stages.poses writes the run's files.
Frames without a pose stay in cameras.json with registered: false. RUN/sfm gets a COLMAP model with
the given poses and, where features match, 3D points triangulated with those poses held fixed
(pycolmap.triangulate_points), which the depth-alignment stage needs.
RGBA images (Blender renders) are composited on white by the frames stage before they get here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depth.geometry import invert_pose, opengl_to_opencv
from recon.atomic import atomic_dir
from recon.console import warn
from recon.errors import ReconError


@dataclass
class PoseSource:
    """Poses read from a file, in the file's own resolution.

    Attributes:
        names: [N] image names as the file lists them (e.g. "images/0001.jpg", "./train/r_0").
        c2w: [N, 4, 4] float64 camera-to-world, OpenCV axes, in the file's world units.
        cameras: [N] pycolmap.Camera of each image, at the file's image size (may be distorted).
        kind: "colmap" or "transforms".
        path: the file or folder read.
        source_index: [N] source frame index per entry where the file records it (our own export
            writes `source_index` per frame), else None.
    """

    names: list[str]
    c2w: np.ndarray
    cameras: list[Any]
    kind: str
    path: Path
    source_index: list[int | None] | None = None


# --------------------------------------------------------------------------------------------------
# readers


def find_colmap_model(path: Path) -> Path | None:
    """The folder holding cameras.{bin,txt} + images.{bin,txt}: `path` itself, or path/sparse/0, path/sparse, path/0."""
    for cand in (path, path / "sparse" / "0", path / "sparse", path / "0"):
        for ext in (".bin", ".txt"):
            if (cand / f"cameras{ext}").exists() and (cand / f"images{ext}").exists():
                return cand
    return None


def read_colmap_model(path: Path) -> PoseSource:
    """Registered images of a COLMAP model (any camera model), c2w from cam_from_world, sorted by name."""
    import pycolmap

    model = find_colmap_model(path)
    if model is None:
        raise ReconError(
            f"--poses {path}: no COLMAP model found (expected cameras.bin/images.bin or .txt, or sparse/0/)"
        )
    try:
        rec = pycolmap.Reconstruction(model)
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError on malformed files
        raise ReconError(f"--poses {model}: cannot read the COLMAP model ({type(e).__name__}: {e})") from e
    ids = sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name)
    if not ids:
        raise ReconError(f"--poses {model}: the COLMAP model has no registered images")
    names, c2w, cams = [], [], []
    for iid in ids:
        im = rec.images[iid]
        w2c = np.eye(4)
        w2c[:3, :4] = im.cam_from_world().matrix()
        names.append(im.name)
        c2w.append(invert_pose(w2c))
        cams.append(rec.cameras[im.camera_id])
    return PoseSource(names=names, c2w=np.stack(c2w), cameras=cams, kind="colmap", path=model)


_DIST_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def camera_from_transforms(entry: dict, default_size: tuple[int, int], where: str) -> Any:
    """pycolmap.Camera from nerfstudio/instant-ngp intrinsics keys (`entry` = global keys updated by per-frame ones).

    Args:
        entry: dict with any of fl_x fl_y cx cy w h camera_angle_x camera_angle_y k1 k2 k3 k4 p1 p2 camera_model.
        default_size: (W, H) used when the file gives no w/h (Blender files).
    """
    import pycolmap

    w = int(round(float(entry.get("w", default_size[0]))))
    h = int(round(float(entry.get("h", default_size[1]))))
    fx = entry.get("fl_x")
    if fx is None and "camera_angle_x" in entry:
        fx = 0.5 * w / math.tan(0.5 * float(entry["camera_angle_x"]))
    fy = entry.get("fl_y")
    if fy is None and "camera_angle_y" in entry and entry.get("fl_x") is None:
        fy = 0.5 * h / math.tan(0.5 * float(entry["camera_angle_y"]))
    if fx is None and fy is not None:
        fx = fy
    if fx is None:
        raise ReconError(f"{where}: no focal length (need fl_x or camera_angle_x)")
    fy = fx if fy is None else fy
    fx, fy = float(fx), float(fy)
    cx = float(entry.get("cx", w / 2.0))
    cy = float(entry.get("cy", h / 2.0))
    d = {k: float(entry.get(k, 0.0) or 0.0) for k in _DIST_KEYS}
    model = str(entry.get("camera_model", "OPENCV")).upper()
    if model == "OPENCV_FISHEYE":
        name, params = "OPENCV_FISHEYE", [fx, fy, cx, cy, d["k1"], d["k2"], d["k3"], d["k4"]]
    elif d["k3"] or d["k4"]:
        name, params = "FULL_OPENCV", [fx, fy, cx, cy, d["k1"], d["k2"], d["p1"], d["p2"], d["k3"], d["k4"], 0.0, 0.0]
    elif any(d[k] for k in ("k1", "k2", "p1", "p2")):
        name, params = "OPENCV", [fx, fy, cx, cy, d["k1"], d["k2"], d["p1"], d["p2"]]
    else:
        name, params = "PINHOLE", [fx, fy, cx, cy]
    cam = pycolmap.Camera.create_from_model_name(1, name, fx, w, h)
    cam.params = params
    return cam


def read_transforms_json(path: Path, default_size: tuple[int, int]) -> PoseSource:
    """nerfstudio / instant-ngp / Blender transforms.json -> PoseSource (OpenCV c2w)."""
    try:
        d = json.loads(path.read_text())
        frames = d["frames"]
    except (ValueError, KeyError, TypeError) as e:
        raise ReconError(f"--poses {path}: not a transforms.json with a 'frames' list ({e})") from e
    if not frames:
        raise ReconError(f"--poses {path}: 'frames' is empty")
    glob = {k: v for k, v in d.items() if k != "frames"}
    names, c2w, cams, src_idx = [], [], [], []
    for i, fr in enumerate(frames):
        where = f"--poses {path}, frame {i}"
        try:
            name = str(fr["file_path"])
            M = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ReconError(f"{where}: needs file_path and a 4x4 transform_matrix ({e})") from e
        if M.shape == (3, 4):
            M = np.vstack([M, [0, 0, 0, 1]])
        if M.shape != (4, 4) or not np.all(np.isfinite(M)):
            raise ReconError(f"{where}: transform_matrix must be a finite 4x4 matrix, got shape {M.shape}")
        names.append(name)
        src_idx.append(int(fr["source_index"]) if isinstance(fr.get("source_index"), int) else None)
        c2w.append(opengl_to_opencv(M))
        cams.append(
            camera_from_transforms(
                {**glob, **{k: v for k, v in fr.items() if k not in ("file_path", "transform_matrix")}},
                default_size,
                where,
            )
        )
    return PoseSource(
        names=names,
        c2w=np.stack(c2w),
        cameras=cams,
        kind="transforms",
        path=path,
        source_index=src_idx if any(v is not None for v in src_idx) else None,
    )


def load_pose_source(path: str | Path, default_size: tuple[int, int]) -> PoseSource:
    """Read --poses PATH: a COLMAP model folder or a transforms.json."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ReconError(f"--poses {path} does not exist")
    if path.is_dir():
        if (path / "transforms.json").exists() and find_colmap_model(path) is None:
            return read_transforms_json(path / "transforms.json", default_size)
        return read_colmap_model(path)
    if path.suffix.lower() == ".json":
        return read_transforms_json(path, default_size)
    raise ReconError(f"--poses {path}: expected a COLMAP model folder or a transforms.json")


def match_frames(
    frames: list[dict], names: list[str], source_index: list[int | None] | None = None
) -> tuple[list[int | None], str]:
    """Index into `names` (pose entries) for each frame of frames.json, or None; and the method used.

    1. "name": file stem of the frames' `source_name` (image sets), when at least one matches;
    2. "source_index": the pose entries' own source_index (a transforms.json exported by this tool);
    3. "order": frame with source_index i -> pose entry i (one pose per video frame, in order).
    """
    stems: dict[str, int] = {}
    for j, n in enumerate(names):
        stems.setdefault(Path(n).stem, j)
    src = [f.get("source_name") for f in frames]
    if any(src):
        m = [stems.get(Path(s).stem) if s else None for s in src]
        if any(x is not None for x in m):
            return m, "name"
    if source_index is not None:
        by_src = {int(v): j for j, v in enumerate(source_index) if v is not None}
        return [by_src.get(int(f["source_index"])) for f in frames], "source_index"
    return [int(f["source_index"]) if 0 <= int(f["source_index"]) < len(names) else None for f in frames], "order"


# --------------------------------------------------------------------------------------------------
# cameras and points for known poses


def _rescaled(camera: Any, width: int, height: int) -> Any:
    import pycolmap

    cam = pycolmap.Camera.create_from_model_name(1, camera.model_name, 1.0, int(camera.width), int(camera.height))
    # pycolmap's stub types the params setter as a Sequence; it takes float64 arrays
    cam.params = np.asarray(camera.params, dtype=np.float64).copy()  # type: ignore[assignment]
    if (cam.width, cam.height) != (width, height):
        if abs(cam.width / cam.height - width / height) > 0.01:
            raise ReconError(
                f"--poses: the pose file's images are {camera.width}x{camera.height} but the frames are "
                f"{width}x{height} (different aspect ratio): are these the same images?"
            )
        cam.rescale(int(width), int(height))
    return cam


@dataclass
class KnownCameras:
    """Per frame the pose file's camera (rescaled to the frames) and the id of the PINHOLE camera it is
    undistorted to; `targets` maps those ids (1..) to the PINHOLE cameras (width x height of the frames)."""

    source: list[Any]
    ids: list[int]
    targets: dict[int, Any]

    def settings(self) -> list[Any]:
        """JSON-able description of the cameras (for the settings keys of resumable steps)."""
        return [
            [(c.model_name, list(c.params)) for c in self.source],
            {k: list(t.params) for k, t in self.targets.items()},
            self.ids,
        ]


def frame_cameras(src: PoseSource, match: list[int | None], width: int, height: int) -> KnownCameras:
    """The cameras of the matched pose entries at the frame size; frames without a pose use the first match's."""
    from recon.poses import pinhole_target

    key_to_id: dict[tuple, int] = {}
    source, ids = [], []
    first = next(m for m in match if m is not None)
    for m in match:
        cam = _rescaled(src.cameras[first if m is None else m], width, height)
        key = (cam.model_name, tuple(np.round(cam.params, 9)))
        key_to_id.setdefault(key, len(key_to_id) + 1)
        source.append(cam)
        ids.append(key_to_id[key])
    targets: dict[int, Any] = {}
    for cam, cid in zip(source, ids):
        if cid not in targets:
            targets[cid] = pinhole_target(cam, width, height)
            targets[cid].camera_id = cid
    return KnownCameras(source, ids, targets)


def triangulate_known(
    work: Path,
    image_dir: Path,
    names: list[str],
    match: list[int | None],
    cams: KnownCameras,
    c2w: np.ndarray,
    base_key: list[Any],
    cfg: Any,
    matcher: str,
    on_step: Callable[[str], None] = lambda status: None,
) -> tuple[Any, dict[str, float]]:
    """3D points for known poses: features of the posed images `image_dir/names[i]` (where match[i] is not
    None), matched and triangulated with the poses c2w[match[i]] held fixed. Extraction and matching resume
    from work/state.json when `base_key` (the frames) and the cameras are unchanged.

    Returns the pycolmap.Reconstruction (poses, PINHOLE cameras, points; no points when triangulation
    failed) and the seconds of each step.
    """
    import pycolmap

    from recon.poses import StepState, extract_sift, match_features, settings_key

    work.mkdir(parents=True, exist_ok=True)
    state, db_path = StepState(work), work / "database.db"
    # the undistorted frames depend only on the frames and the cameras: a new pose file with the same
    # cameras (e.g. the same model as .txt) reuses the features and matches of the last import
    k_extract = settings_key(
        settings_key(*base_key, *cams.settings()), cfg.max_num_features, [m is not None for m in match]
    )
    k_match = settings_key(k_extract, matcher, cfg.sequential_overlap, cfg.quadratic_overlap)
    if not state.done("extract", k_extract):
        state.forget("extract", "match")
        db_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        posed = [n for n, m in zip(names, match) if m is not None]
        extract_sift(db_path, image_dir, posed, cfg, "PINHOLE", "", single_camera=False)
        state.mark("extract", k_extract, time.perf_counter() - t0)
    on_step(f"match ({matcher})")
    if not state.done("match", k_match):
        state.forget("match")
        t0 = time.perf_counter()
        match_features(db_path, matcher, cfg)
        state.mark("match", k_match, time.perf_counter() - t0)
    on_step("triangulate")
    t0 = time.perf_counter()
    rec = _posed_reconstruction(db_path, names, match, cams.ids, cams.targets, c2w)
    opt = pycolmap.IncrementalPipelineOptions()
    opt.num_threads = cfg.num_threads
    opt.random_seed = cfg.seed
    # poses are exact here, so points seen by only two views are kept too (sparse view sets need them)
    opt.triangulation.ignore_two_view_tracks = False
    with atomic_dir(work / "triangulated") as tmp:
        try:
            rec = pycolmap.triangulate_points(
                rec, db_path, image_dir, tmp, clear_points=True, options=opt, refine_intrinsics=False
            )
        except Exception as e:  # keep the poses even if no point can be triangulated
            warn(f"--poses: triangulating 3D points failed ({type(e).__name__}: {e}); RUN/sfm has poses but no points")
    seconds = {"extract": state.seconds("extract"), "match": state.seconds("match")}
    seconds["triangulate"] = round(time.perf_counter() - t0, 3)
    return rec, seconds


def _posed_reconstruction(
    db_path: Path,
    names: list[str],
    match: list[int | None],
    cam_ids: list[int],
    targets: dict[int, Any],
    c2w: np.ndarray,
) -> Any:
    """pycolmap.Reconstruction with the PINHOLE cameras and known poses of the matched frames, image and
    camera ids taken from the feature database so that triangulate_points can use its matches."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        db_images = {im.name: im for im in db.read_all_images()}
        rec = pycolmap.Reconstruction()
        for name, m, cid in zip(names, match, cam_ids):
            if m is None or name not in db_images:
                continue
            dbi = db_images[name]
            cam = pycolmap.Camera.create_from_model_name(
                int(dbi.camera_id), "PINHOLE", 1.0, targets[cid].width, targets[cid].height
            )
            cam.params = list(targets[cid].params)
            db_cam = db.read_camera(dbi.camera_id)
            db_cam.model = cam.model
            # pycolmap's stub types the params setter as a Sequence; it takes float64 arrays
            db_cam.params = cam.params  # type: ignore[assignment]
            db.update_camera(db_cam)
            rec.add_camera_with_trivial_rig(cam)
            w2c = invert_pose(c2w[m])
            image = pycolmap.Image(
                name=name,
                keypoints=np.asarray(db.read_keypoints(dbi.image_id))[:, :2].astype(np.float64),
                camera_id=int(dbi.camera_id),
                image_id=int(dbi.image_id),
            )
            rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3, :4]))
    finally:
        db.close()
    return rec
