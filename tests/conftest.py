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
from pathlib import Path

import numpy as np
import pytest
from seven_scenes import KITCHEN, RedkitchenGT

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KITCHEN_VIDEO = KITCHEN / "video_30fps.mp4"


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
