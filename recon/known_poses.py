"""Known poses (`--poses PATH`): use given cameras instead of structure-from-motion.

PATH is either
  * a COLMAP model folder (cameras/images/points3D as .bin or .txt; a project folder holding
    sparse/0 or sparse/ is accepted too), read with pycolmap, or
  * an LLFF poses_bounds.npy ([N, 17] per view: [R | t | hwf] + near/far bounds; read_llff_poses), matched
    to the image folder's sorted images by order, or
  * a transforms.json in the nerfstudio / instant-ngp / Blender (NeRF-synthetic) layout: c2w
    `transform_matrix` with OpenGL camera axes (converted with depth.geometry.opengl_to_opencv),
    intrinsics from fl_x/fl_y/cx/cy/w/h (global or per frame) or from camera_angle_x/y, distortion
    k1 k2 (k3 k4) p1 p2 (OPENCV / FULL_OPENCV, or OPENCV_FISHEYE when camera_model says so). Missing
    w/h default to the source frames' original size; missing cx/cy to the image centre.

Frames are matched to poses by file stem (frames.json `source_name` of an image set against the pose
file's image names, e.g. "0001.jpg" <-> "images/0001.jpg", "r_0.png" <-> "./train/r_0"); else by the
`source_index` the pose file records per frame (a transforms.json exported by recon.stages.export, so a
run's own export can be re-imported); else by order (transforms.json in listed order, COLMAP images sorted
by name), only when the counts agree and with a warning: one pose per source frame (the frame with
source_index i, its index in the video, gets pose i) or one pose per stored frame; otherwise one error line.
Every entry is validated first (`validate_pose_source`): finite positive focal lengths, principal point
inside the image, finite parameters, rotations orthonormal with det +1 (tolerance ROTATION_TOL).
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
        kind: "colmap", "transforms" or "llff".
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
    bounds: np.ndarray | None = None
    """[N, 2] float64 (near, far) scene depth bounds per entry (LLFF poses_bounds.npy), else None."""


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
MAX_IMAGE_SIZE = 100_000
"""Largest image side (pixels) a pose file may state; larger is taken as a broken file."""
ROTATION_TOL = 1e-3
"""A pose's rotation R must satisfy max|R^T R - I| < tol and |det R - 1| < tol."""


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _shown(name: str) -> str:
    """An image name for a one-line message: as it is when printable and short, else its repr, shortened."""
    return name if name.isprintable() and len(name) <= 80 else _short(name)


def _number(entry: dict, key: str, where: str, default: float | None = None) -> float | None:
    """entry[key] as a finite float (`default` when absent or null); ReconError for anything else."""
    v = entry.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ReconError(f"{where}: {key} must be a number, got {_short(v)}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise ReconError(f"{where}: {key} must be a finite number, got {_short(v)}")
    return f


def _image_size(entry: dict, key: str, default: int, where: str) -> int:
    v = _number(entry, key, where, float(default))
    assert v is not None, "a default is given"
    if not 1 <= v <= MAX_IMAGE_SIZE:
        raise ReconError(f"{where}: image {key} = {v:g} pixels is not in 1..{MAX_IMAGE_SIZE}")
    return int(round(v))


def _focal_lengths(entry: dict, w: int, h: int, where: str) -> tuple[float, float]:
    """(fx, fy) in pixels from fl_x / fl_y, else camera_angle_x / camera_angle_y (radians, in (0, pi))."""

    def from_angle(key: str, size: int) -> float:
        angle = _number(entry, key, where)
        assert angle is not None, "called only when the key is present"
        if not 0 < angle < math.pi:
            raise ReconError(f"{where}: {key} = {angle:g} is not a field of view in (0, pi) radians")
        return 0.5 * size / math.tan(0.5 * angle)

    fl_x = _number(entry, "fl_x", where)
    fx, fy = fl_x, _number(entry, "fl_y", where)
    if fx is None and entry.get("camera_angle_x") is not None:
        fx = from_angle("camera_angle_x", w)
    if fy is None and entry.get("camera_angle_y") is not None and fl_x is None:
        fy = from_angle("camera_angle_y", h)
    if fx is None and fy is not None:
        fx = fy
    if fx is None:
        raise ReconError(f"{where}: no focal length (need fl_x or camera_angle_x)")
    fy = fx if fy is None else fy
    if not (fx > 0 and fy > 0 and math.isfinite(fx) and math.isfinite(fy)):
        raise ReconError(f"{where}: focal length ({fx:g}, {fy:g}) px must be positive and finite")
    return fx, fy


def camera_from_transforms(entry: dict, default_size: tuple[int, int], where: str) -> Any:
    """pycolmap.Camera from nerfstudio/instant-ngp intrinsics keys (`entry` = global keys updated by per-frame ones).

    Args:
        entry: dict with any of fl_x fl_y cx cy w h camera_angle_x camera_angle_y k1 k2 k3 k4 p1 p2 camera_model.
        default_size: (W, H) used when the file gives no w/h (Blender files).
    Raises ReconError (one line naming `where` and the key) for a value that is not a usable number.
    """
    import pycolmap

    w = _image_size(entry, "w", default_size[0], where)
    h = _image_size(entry, "h", default_size[1], where)
    fx, fy = _focal_lengths(entry, w, h, where)
    cx, cy = _number(entry, "cx", where, w / 2.0), _number(entry, "cy", where, h / 2.0)
    assert cx is not None and cy is not None, "defaults are given"
    d = {k: _number(entry, k, where, 0.0) or 0.0 for k in _DIST_KEYS}
    model = entry.get("camera_model", "OPENCV")
    if not isinstance(model, str):
        raise ReconError(f"{where}: camera_model must be a name such as OPENCV, got {_short(model)}")
    if model.upper() == "OPENCV_FISHEYE":
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


def _transform_matrix(fr: dict, where: str) -> np.ndarray:
    """The frame's c2w `transform_matrix` (OpenGL axes) as a finite 4x4 float64 (a 3x4 gets its last row)."""
    try:
        M = np.asarray(fr["transform_matrix"], dtype=np.float64)
    except KeyError as e:
        raise ReconError(f"{where}: needs a 4x4 transform_matrix") from e
    except (TypeError, ValueError, OverflowError) as e:
        detail = (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise ReconError(f"{where}: transform_matrix is not a 4x4 matrix of numbers ({detail})") from e
    if M.shape == (3, 4):
        M = np.vstack([M, [0, 0, 0, 1]])
    if M.shape != (4, 4) or not np.all(np.isfinite(M)):
        raise ReconError(f"{where}: transform_matrix must be a finite 4x4 matrix, got shape {M.shape}")
    if np.abs(M[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise ReconError(f"{where}: transform_matrix's last row is {M[3].tolist()}, not 0 0 0 1")
    return M


def _transforms_frame(fr: Any, i: int, glob: dict, default_size: tuple[int, int], path: Path) -> tuple:
    """(name, c2w OpenCV [4,4], pycolmap.Camera, source_index or None) of frames[i] of a transforms.json."""
    where = f"--poses {path}, frame {i}"
    if not isinstance(fr, dict):
        raise ReconError(f"{where}: expected an object with file_path and transform_matrix, got {_short(fr)}")
    name = fr.get("file_path")
    if not isinstance(name, str) or not name.strip():
        raise ReconError(f"{where}: needs a file_path (the image's name), got {_short(name)}")
    where = f"--poses {path}, frame {i} ({_shown(name)})"
    M = _transform_matrix(fr, where)
    src = fr.get("source_index")
    src_idx = src if isinstance(src, int) and not isinstance(src, bool) and src >= 0 else None
    entry = {**glob, **{k: v for k, v in fr.items() if k not in ("file_path", "transform_matrix")}}
    return name, opengl_to_opencv(M), camera_from_transforms(entry, default_size, where), src_idx


def read_transforms_json(path: Path, default_size: tuple[int, int]) -> PoseSource:
    """nerfstudio / instant-ngp / Blender transforms.json -> PoseSource (OpenCV c2w)."""
    try:
        d = json.loads(path.read_text())
    except (ValueError, OSError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ReconError(f"--poses {path}: not a transforms.json with a 'frames' list ({first})") from e
    frames = d.get("frames") if isinstance(d, dict) else None
    if not isinstance(frames, list):
        raise ReconError(f"--poses {path}: not a transforms.json with a 'frames' list")
    if not frames:
        raise ReconError(f"--poses {path}: 'frames' is empty")
    glob = {k: v for k, v in d.items() if k != "frames"}
    rows = [_transforms_frame(fr, i, glob, default_size, path) for i, fr in enumerate(frames)]
    src_idx = [r[3] for r in rows]
    return PoseSource(
        names=[r[0] for r in rows],
        c2w=np.stack([r[1] for r in rows]),
        cameras=[r[2] for r in rows],
        kind="transforms",
        path=path,
        source_index=src_idx if any(v is not None for v in src_idx) else None,
    )


def _llff_array(path: Path) -> np.ndarray:
    """poses_bounds.npy as a finite float64 [N, 17] array (np.load without pickle); one ReconError line otherwise."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # a pickle, a damaged header, not an .npy at all
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise ReconError(f"--poses {path}: not a readable LLFF poses_bounds.npy ({first})") from e
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf":
        kind = getattr(arr, "dtype", type(arr).__name__)
        raise ReconError(f"--poses {path}: poses_bounds.npy must hold numbers, got {kind}")
    if arr.ndim != 2 or arr.shape[1] != 17 or len(arr) == 0:
        raise ReconError(
            f"--poses {path}: poses_bounds.npy must be an [N, 17] array (3x5 [R|t|hwf] + near, far per view), "
            f"got shape {list(arr.shape)}"
        )
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.all(np.isfinite(arr), axis=1))
    if len(bad):
        raise ReconError(f"--poses {path}, view {int(bad[0])}: NaN or infinite values in poses_bounds.npy")
    return arr


def read_llff_poses(path: Path) -> PoseSource:
    """LLFF poses_bounds.npy ([N, 17]: 3x5 [R | t | hwf] row-major + near, far) -> PoseSource (OpenCV c2w).

    LLFF's c2w rotation columns are (down, right, backwards); OpenCV's (right, down, forward) are therefore
    [col1, col0, -col2] (what the LLFF / NeRF loaders do, there towards OpenGL's [col1, -col0, col2]).
    hwf = (height, width, focal) in pixels of the full-resolution images: the camera is PINHOLE at that size
    with the principal point at the image centre (rescaled to the frames like any pose file). The file has no
    image names: entries are named `poses_bounds[i]` and matched to the image folder's sorted images by order.
    """
    import pycolmap

    arr = _llff_array(path)
    mats, bounds = arr[:, :15].reshape(-1, 3, 5), arr[:, 15:17]
    c2w = np.tile(np.eye(4), (len(arr), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = mats[:, :, 1], mats[:, :, 0], -mats[:, :, 2]
    c2w[:, :3, 3] = mats[:, :, 3]
    cams = []
    for i, (h, w, f) in enumerate(mats[:, :, 4]):
        where = f"--poses {path}, view {i}"
        if not (1 <= h <= MAX_IMAGE_SIZE and 1 <= w <= MAX_IMAGE_SIZE and f > 0):
            raise ReconError(
                f"{where}: hwf = ({h:g}, {w:g}, {f:g}) is not an image size in pixels and a positive focal"
            )
        near, far = bounds[i]
        if not 0 < near < far:
            raise ReconError(f"{where}: depth bounds (near {near:g}, far {far:g}) must satisfy 0 < near < far")
        W, H = int(round(w)), int(round(h))
        cam = pycolmap.Camera.create_from_model_name(1, "PINHOLE", float(f), W, H)
        cam.params = [float(f), float(f), W / 2.0, H / 2.0]
        cams.append(cam)
    names = [f"poses_bounds[{i}]" for i in range(len(arr))]
    return PoseSource(names=names, c2w=c2w, cameras=cams, kind="llff", path=path, bounds=bounds.copy())


def _check_camera(cam: Any, where: str) -> None:
    """Finite parameters, positive focal lengths, principal point inside the image."""
    params = np.asarray(cam.params, dtype=np.float64)
    w, h = int(cam.width), int(cam.height)
    if not (0 < w <= MAX_IMAGE_SIZE and 0 < h <= MAX_IMAGE_SIZE):
        raise ReconError(f"{where}: image size {w}x{h} is not in 1..{MAX_IMAGE_SIZE} pixels")
    if not np.all(np.isfinite(params)):
        raise ReconError(f"{where}: camera {cam.model_name} has NaN or infinite parameters {params.tolist()}")
    fx, fy = float(cam.focal_length_x), float(cam.focal_length_y)
    if not (fx > 0 and fy > 0):
        raise ReconError(f"{where}: focal length ({fx:g}, {fy:g}) px must be positive")
    cx, cy = float(cam.principal_point_x), float(cam.principal_point_y)
    if not (0 <= cx <= w and 0 <= cy <= h):
        raise ReconError(f"{where}: principal point ({cx:g}, {cy:g}) lies outside the {w}x{h} image")


def _check_pose(c2w: np.ndarray, where: str) -> None:
    """A rigid camera-to-world transform: finite, rotation orthonormal with det +1, last row 0 0 0 1."""
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        raise ReconError(f"{where}: the pose is not a finite 4x4 matrix")
    R = c2w[:3, :3]
    with np.errstate(all="ignore"):
        err, det = float(np.abs(R.T @ R - np.eye(3)).max()), float(np.linalg.det(R))
    if not (err < ROTATION_TOL and abs(det - 1.0) < ROTATION_TOL):
        raise ReconError(
            f"{where}: the rotation is not orthonormal with det +1 (max|R^T R - I| = {err:.3g}, det = {det:.3g}); "
            "poses must be rigid camera-to-world transforms"
        )


def validate_pose_source(src: PoseSource) -> PoseSource:
    """ReconError (one line naming the file and the frame) unless every entry has a usable camera and a rigid pose,
    and no image name appears twice."""
    if len(src.names) != len(src.c2w) or len(src.names) != len(src.cameras):
        raise ReconError(f"--poses {src.path}: {len(src.names)} names for {len(src.c2w)} poses")
    seen: dict[str, int] = {}
    for i, (name, c2w, cam) in enumerate(zip(src.names, src.c2w, src.cameras)):
        where = f"--poses {src.path}, frame {i} ({_shown(name)})"
        if name in seen:
            raise ReconError(f"{where}: the image is listed twice (also frame {seen[name]})")
        seen[name] = i
        _check_camera(cam, where)
        _check_pose(np.asarray(c2w, np.float64), where)
    return src


def load_pose_source(path: str | Path, default_size: tuple[int, int]) -> PoseSource:
    """Read and validate --poses PATH (a COLMAP model folder, a transforms.json or an LLFF poses_bounds.npy, or a
    folder holding one): one ReconError line for a file that cannot be used (`validate_pose_source`);
    `default_size` (W, H) = the frames' original size."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ReconError(f"--poses {path} does not exist")
    if path.is_dir():
        if (path / "transforms.json").exists() and find_colmap_model(path) is None:
            return validate_pose_source(read_transforms_json(path / "transforms.json", default_size))
        if (path / "poses_bounds.npy").exists() and find_colmap_model(path) is None:
            return validate_pose_source(read_llff_poses(path / "poses_bounds.npy"))
        return validate_pose_source(read_colmap_model(path))
    if path.suffix.lower() == ".json":
        return validate_pose_source(read_transforms_json(path, default_size))
    if path.suffix.lower() == ".npy":
        return validate_pose_source(read_llff_poses(path))
    raise ReconError(f"--poses {path}: expected a COLMAP model folder, a transforms.json or an LLFF poses_bounds.npy")


def source_frame_count(source: str, source_type: str) -> int | None:
    """How many frames the run's source has (frames.json `source`, `source_type`): the video's frame count or
    the image folder's image count; None when the source is gone or unreadable."""
    from recon.video import list_images

    path = Path(source)
    try:
        if source_type == "images" and path.is_dir():
            return len(list_images(path))
        if source_type == "video" and path.is_file():
            import av

            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                num = int(stream.frames or 0)
                return num if num > 0 else sum(1 for p in container.demux(stream) if p.size > 0)
    except Exception:  # noqa: BLE001 - an unreadable source only means the count is unknown
        return None
    return None


def match_frames(
    frames: list[dict],
    names: list[str],
    source_index: list[int | None] | None = None,
    source_count: int | None = None,
    where: str = "--poses",
) -> tuple[list[int | None], str]:
    """Index into `names` (pose entries) for each frame of frames.json, or None; and the method used.

    1. "name": file stem of the frames' `source_name` (image sets), when at least one matches;
    2. "source_index": the pose entries' own source_index (a transforms.json exported by this tool);
    3. "order", only when the counts agree (with a warning saying so): one pose per source frame
       (len(names) == source_count): the frame with source_index i gets entry i; else one pose per stored
       frame (len(names) == len(frames)): the k-th frame gets entry k. Otherwise ReconError.
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
    if source_count is not None and len(names) == source_count:
        m = [int(f["source_index"]) if 0 <= int(f["source_index"]) < len(names) else None for f in frames]
    elif len(names) == len(frames):
        m = list(range(len(frames)))
    else:
        of = f" (of {source_count} in the source)" if source_count is not None else ""
        raise ReconError(
            f"{where}: no image name matches the frames, and its {len(names)} poses cannot be matched by order to "
            f"the {len(frames)} frames{of}: the pose file must name the frames' images, or hold one pose per frame"
        )
    warn(f"{where}: {len(names)} poses matched to the frames by order (names differ); check they belong to this video")
    return m, "order"


def match_pose_source(src: PoseSource, frames: Any) -> tuple[list[int | None], str]:
    """`match_frames` for a FramesIndex `frames`, with the source's frame count for matching by order."""
    count = source_frame_count(frames.source, frames.source_type)
    return match_frames(frames.frames, src.names, src.source_index, count, f"--poses {src.path}")


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
