"""Ground truth of the shared 7-Scenes redkitchen data, for the tests (conftest.redkitchen_gt) and the benchmarks
(benchmarks/stereo.py puts this folder on sys.path), and the comparison of depth maps with a run's SfM points
that the pose and stereo tests make against it: a plain module, no pytest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KITCHEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_rgbd"


@dataclass
class RedkitchenGT:
    """Ground truth of the 7-Scenes redkitchen sequence (frames 0-449 of the staged video).

    Poses belong to the depth camera (c2w, OpenCV axes, metres); the colour camera differs by a small
    fixed offset that a Sim(3) trajectory alignment absorbs. Depth exists for video frames k % 3 == 0,
    at 640x480, with the depth camera's K (`K_depth`); see the dataset's PROVENANCE.md for the caveats
    (colour and depth are not pixel-registered; the colour focal length is ~530 px at 640x480, not 585).
    """

    root: Path = KITCHEN
    poses: dict[int, np.ndarray] = field(default_factory=dict)
    K_depth: np.ndarray = field(default_factory=lambda: np.array([[585.0, 0, 320.0], [0, 585.0, 240.0], [0, 0, 1]]))
    depth_size: tuple[int, int] = (640, 480)

    def __post_init__(self) -> None:
        if not self.poses:
            for line in (self.root / "poses_c2w_all_frames.txt").read_text().splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                v = line.split()
                self.poses[int(v[1])] = np.array(v[2:18], dtype=np.float64).reshape(4, 4)

    def c2w(self, source_indices) -> np.ndarray:
        """[N, 4, 4] GT camera-to-world (OpenCV axes, metres) for video frame indices."""
        return np.stack([self.poses[int(i)] for i in source_indices])

    def centers(self, source_indices) -> np.ndarray:
        """[N, 3] GT camera centres in metres."""
        return self.c2w(source_indices)[:, :3, 3]

    def depth_file(self, source_index: int) -> Path | None:
        """16-bit PNG (millimetres) of this video frame, or None (only every 3rd frame has depth)."""
        p = self.root / "depth" / f"frame-{int(source_index):06d}.depth.png"
        return p if p.exists() else None

    def depth_files(self, source_indices) -> dict[int, Path]:
        """{video frame index: depth PNG} for those of `source_indices` that have GT depth."""
        out = {}
        for i in source_indices:
            p = self.depth_file(int(i))
            if p is not None:
                out[int(i)] = p
        return out

    def read_depth(self, source_index: int) -> np.ndarray:
        """GT z-depth float32 [480, 640] in metres; 0 = invalid (raw 0 and 65535 are invalid)."""
        from PIL import Image

        p = self.depth_file(source_index)
        if p is None:
            raise FileNotFoundError(f"video frame {source_index} has no GT depth (only every 3rd frame)")
        raw = np.asarray(Image.open(p)).astype(np.uint16)
        depth = raw.astype(np.float32) / 1000.0
        depth[(raw == 0) | (raw == 65535)] = 0.0
        return depth

    def registered_depth(self, source_index: int, W: int, H: int) -> np.ndarray:
        """GT depth [H, W] (metres, 0 = invalid) sampled at the colour pixels of a WxH frame, using the
        registration PROVENANCE.md measured: depth pixel = 1.10 x (colour pixel - centre) + centre + (9, 5) at
        640x480 (colour and depth cameras differ)."""
        full = self.read_depth(source_index)
        Hd, Wd = full.shape
        v, u = np.mgrid[0:H, 0:W]
        ud = np.round(1.10 * ((u + 0.5) * Wd / W - Wd / 2) + Wd / 2 + 9 - 0.5).astype(int)
        vd = np.round(1.10 * ((v + 0.5) * Hd / H - Hd / 2) + Hd / 2 + 5 - 0.5).astype(int)
        ok = (ud >= 0) & (ud < Wd) & (vd >= 0) & (vd < Hd)
        out = np.zeros((H, W), np.float32)
        out[ok] = full[vd[ok], ud[ok]]
        return out


def sfm_point_ratio(paths, cams, ids, maps) -> tuple[float, float]:
    """Over the SfM points seen by frames `ids`: median of maps[n] / SfM point depth at the points'
    pixels (maps [len(ids),H,W], 0 = invalid, same units as the SfM), and the fraction within 2 %."""
    import pycolmap

    from depth.geometry import invert_pose

    rec = pycolmap.Reconstruction(str(paths.sfm_dir))
    by_name = {im.name: im for im in rec.images.values()}
    ratios = []
    for n, i in enumerate(ids):
        im = by_name[Path(cams.files[i]).name]
        w2c = invert_pose(cams.c2w[i])
        for p in im.points2D:
            if not p.has_point3D():
                continue
            z = (w2c[:3, :3] @ rec.points3D[p.point3D_id].xyz + w2c[:3, 3])[2]
            u, v = int(p.xy[0]), int(p.xy[1])  # COLMAP: pixel (i, j) covers [i, i+1)
            if 0 <= u < cams.width and 0 <= v < cams.height and maps[n, v, u] > 0:
                ratios.append(maps[n, v, u] / z)
    r = np.asarray(ratios)
    return float(np.median(r)), float(np.mean(np.abs(r - 1) < 0.02))
