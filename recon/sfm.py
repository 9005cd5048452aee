"""The one reader of the run's COLMAP model (RUN/sfm): the reconstruction, per-frame observations, points.

Used by the align stage (sparse SfM depths to fit the prior to), the train stage (SfM-point initialisation)
and evaluation. pycolmap owns the format; this module adds the run's checks and one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.artifacts.cameras import CameraSet
from recon.errors import ReconError


@dataclass
class SparseDepth:
    """SfM observations of one frame: keypoints `xy` [M, 2] (pixels, centres at +0.5), z-depth `depth`
    [M] in scene units (from cameras.json c2w), and `point_ids` [M] of the observed 3D points."""

    xy: np.ndarray
    depth: np.ndarray
    point_ids: np.ndarray


def load_reconstruction(sfm_dir: Path) -> Any:
    """pycolmap.Reconstruction from RUN/sfm, with a clear error when it is missing or unreadable."""
    import pycolmap

    sfm_dir = Path(sfm_dir)
    if not sfm_dir.is_dir() or not any((sfm_dir / f"images.{e}").exists() for e in ("bin", "txt")):
        raise ReconError(f"{sfm_dir} has no COLMAP model: run the pose stage first (recon poses)")
    try:
        return pycolmap.Reconstruction(sfm_dir)
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError on corrupt models
        raise ReconError(f"cannot read the SfM model in {sfm_dir} ({e})") from e


def sfm_observations(
    rec, cams: CameraSet, frame_ids: list[int], max_reproj_error: float = 2.0, min_track_length: int = 2
) -> dict[int, SparseDepth]:
    """Per frame index (into cameras.json), the SfM points that frame observes, with their z-depth.

    Images of the SfM model are matched to frames by file name (then by stem). Keypoints are rescaled
    if the SfM camera size differs from the cameras.json size. Points behind the camera, with a large
    reprojection error or a short track are dropped.
    """
    by_name: dict[str, int] = {}
    for j, f in enumerate(cams.files):
        by_name.setdefault(Path(f).name, j)
        by_name.setdefault(Path(f).stem, j)
    wanted = {int(i) for i in frame_ids}
    w2c_all = cams.w2c
    points = rec.points3D
    out: dict[int, SparseDepth] = {}
    matched = 0
    for image in rec.images.values():
        i = by_name.get(Path(image.name).name, by_name.get(Path(image.name).stem))
        if i is None:
            continue
        matched += 1
        if i not in wanted:
            continue
        cam = rec.cameras[image.camera_id]
        sx, sy = cams.width / cam.width, cams.height / cam.height
        xy, pids = [], []
        for p2d in image.points2D:
            if p2d.has_point3D():
                xy.append(p2d.xy)
                pids.append(p2d.point3D_id)
        if not pids:
            out[i] = SparseDepth(np.zeros((0, 2)), np.zeros(0), np.zeros(0, dtype=np.int64))
            continue
        xy_px = np.asarray(xy, dtype=np.float64) * np.array([sx, sy])
        pid_arr = np.asarray(pids, dtype=np.int64)
        xyz = np.array([points[int(p)].xyz for p in pid_arr], dtype=np.float64)
        err = np.array([points[int(p)].error for p in pid_arr], dtype=np.float64)
        tlen = np.array([points[int(p)].track.length() for p in pid_arr], dtype=np.int64)
        w2c = w2c_all[i]
        z = xyz @ w2c[2, :3] + w2c[2, 3]
        keep = (z > 0) & (tlen >= min_track_length) & ((err <= max_reproj_error) | ~np.isfinite(err) | (err < 0))
        out[i] = SparseDepth(xy_px[keep], z[keep], pid_arr[keep])
    if matched == 0:
        raise ReconError(
            "no image of the SfM model matches a frame of cameras.json (names differ): re-run the pose stage"
        )
    return out


def read_sfm_points(
    sfm_dir: Path, image_names: set[str] | None = None, min_views: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP model (pycolmap) -> (xyz float32 [N,3], rgb uint8 [N,3]); raises ReconError if none.

    With `image_names` (the training views' image file names) and `min_views` > 0, only points whose
    track holds at least `min_views` observations in those images are kept: the points the training
    views alone would triangulate. The pose stage runs SfM on every frame, test views included, so
    without this filter an SfM init would carry geometry that only the held-out views saw.
    """
    rec = load_reconstruction(sfm_dir)
    pts = list(rec.points3D.values())
    if not pts:
        raise ReconError(f"{sfm_dir} has no 3D points: SfM triangulated nothing (try --init random)")
    if image_names is not None and min_views > 0:
        ids = {img.image_id for img in rec.images.values() if img.name in image_names}
        pts = [p for p in pts if len({e.image_id for e in p.track.elements} & ids) >= min_views]
        if not pts:
            raise ReconError(
                f"no SfM point of {sfm_dir} is observed by {min_views}+ of the {len(ids)} training views "
                "(too few or too far apart to triangulate): train with --init depth|random"
            )
    xyz = np.array([p.xyz for p in pts], np.float32)
    rgb = np.array([p.color for p in pts], np.uint8)
    return xyz, rgb
