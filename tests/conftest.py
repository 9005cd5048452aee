"""Shared test fixtures: a real SfM run on the 7-Scenes redkitchen video, and its ground truth.

Fixtures
--------
redkitchen_sfm_run (session): RunPaths of a run made once per test session:
    frames (60 frames spread over the 450-frame video, long side 320 -> 320x240), poses (pycolmap SfM,
    default PosesConfig: sequential matching, incremental mapper, SIMPLE_RADIAL undistorted to PINHOLE),
    and split.json (SplitConfig() defaults). Contents: frames/, frames.json, images/ (undistorted),
    sfm/ (COLMAP PINHOLE model with points), sfm_work/, cameras.json, split.json.
    Treat it as READ-ONLY (every test of the session shares it); to write into a run, use
    `redkitchen_run_copy`.
redkitchen_run_copy (function): a private copy of that run in tmp_path (without sfm_work/).
redkitchen_gt (session): RedkitchenGT: GT c2w (OpenCV, metres) for video frame indices, and the GT
    depth maps that exist (every 3rd video frame).
lego_sparse_run (session): factory lego_sparse_run(n_train=6, size=96) -> RunPaths of a posed sparse-view
    NeRF-synthetic lego run (given poses, 5 test views), built once per (n_train, size). READ-ONLY.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see recon/__init__.py)

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KITCHEN = DATA / "7scenes_redkitchen_rgbd"
KITCHEN_VIDEO = KITCHEN / "video_30fps.mp4"


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


@pytest.fixture(scope="session")
def redkitchen_gt() -> RedkitchenGT:
    return RedkitchenGT()


@pytest.fixture(scope="session")
def redkitchen_sfm_run(tmp_path_factory):
    """Frames + poses + split on 60 frames (320x240) of the redkitchen video, once per session. COLMAP runs on one
    thread: its threaded mapper is not deterministic, and the Sim(3) scale of the result moved the stereo test's
    AbsRel by +-0.005 between runs (0.0856 / 0.0901 against its 0.09 bar)."""
    from recon.artifacts.layout import RunPaths
    from recon.stages import StageContext, frames, poses, split

    paths = RunPaths(tmp_path_factory.mktemp("redkitchen_sfm"))
    frames.run(StageContext(paths, KITCHEN_VIDEO), frames.Config(max_frames=60, max_size=320))
    poses.run(StageContext(paths), poses.Config(num_threads=1))
    split.run(StageContext(paths), split.Config())
    return paths


RUN_ITEMS = ("frames", "frames.json", "images", "sfm", "cameras.json", "split.json")


@pytest.fixture
def redkitchen_run_copy(redkitchen_sfm_run, tmp_path):
    """A writable copy of redkitchen_sfm_run (frames, images, sfm, cameras.json, split.json) in tmp_path/run."""
    from recon.artifacts.layout import RunPaths

    dst = tmp_path / "run"
    dst.mkdir()
    for name in RUN_ITEMS:
        src = redkitchen_sfm_run.root / name
        if src.is_dir():
            shutil.copytree(src, dst / name)
        elif src.exists():
            shutil.copy2(src, dst / name)
    return RunPaths(dst)


LEGO = DATA / "nerf_synthetic_lego_train100_400px"


@pytest.fixture(scope="session")
def lego_sparse_run(tmp_path_factory):
    """Factory `lego_sparse_run(n_train=6, size=96)` -> RunPaths of a posed NeRF-synthetic lego run.

    Views: `train_{n_train}` of the dataset's sparse_view_splits.json, every 3rd of its test views (5);
    frames size x size composited on white, given poses (support.posed_run.build_nerf_synthetic_run).
    Built once per session per (n_train, size); READ-ONLY (copy it to write into it). Skips the test
    when the data is not staged.
    """
    import json

    from support.posed_run import build_nerf_synthetic_run

    built: dict = {}

    def make(n_train: int = 6, size: int = 96):
        if not LEGO.exists():
            pytest.skip(f"lego data not staged at {LEGO}")
        if (n_train, size) not in built:
            sp = json.loads((LEGO / "sparse_view_splits.json").read_text())
            root = tmp_path_factory.mktemp(f"lego{n_train}_{size}px")
            built[n_train, size] = build_nerf_synthetic_run(
                LEGO, root, sp[f"train_{n_train}"], sp["test"][::3], size=size
            )
        return built[n_train, size]

    return make


@pytest.fixture
def interrupt_and_resume():
    """`run(full, cut, cfg, kill_at)`: train `full` uninterrupted; train `cut` but stop it with an exception
    at step `kill_at` (after the last checkpoint), then resume it with --resume. Returns
    (checkpoint dict as it was when killed, resumed summary, full gaussians, resumed gaussians)."""
    import dataclasses

    from recon.artifacts import Checkpoint
    from recon.stages import StageContext
    from recon.stages.train import run as run_train
    from splat.ply import read_gaussian_ply

    class Killed(Exception):
        pass

    def run(full, cut, cfg, kill_at: int):
        run_train(StageContext(full), cfg)

        def kill(step, row):
            if step == kill_at:
                raise Killed()

        with pytest.raises(Killed):
            run_train(StageContext(cut), cfg, callback=kill)
        ck = Checkpoint.load(cut.checkpoint).state  # torch.load(weights_only=True)
        assert not cut.gaussians_ply.exists()
        resumed = run_train(StageContext(cut), dataclasses.replace(cfg, resume=True))
        a, b = read_gaussian_ply(full.gaussians_ply), read_gaussian_ply(cut.gaussians_ply)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
        return ck, resumed, a, b

    return run
