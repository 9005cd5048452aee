"""nerfstudio door: `recon export nerfstudio`, the `dvd-splat` method on CPU, ns-export, splatfacto's parser.

The run is built from real data: the 5 ICL-NUIM living-room frames (GT poses, OpenCV c2w, metres)
at 160x120, their sensor depth as the aligned depth of the training frames, and a cloud
back-projected from that depth as points/init.ply. Frame 0 is the held-out test view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from depth.geometry import invert_pose, opengl_to_opencv
from recon.artifacts import AlignedDepth, CameraSet, RunPaths, read_rgb
from recon.stages import StageContext
from recon.stages import export as export_stage

REPO = Path(__file__).resolve().parents[1]
ICL = REPO.parent / "shared" / "data" / "icl_nuim_livingroom_5frames"
SIZE = (160, 120)
SEED_POINTS = 400
TRAIN, TEST = [1, 2, 3, 4], [0]


def icl_poses() -> list[np.ndarray]:
    """trajectory.log: per frame a header line and a 4x4 c2w (OpenCV axes, metres)."""
    lines = [ln for ln in (ICL / "trajectory.log").read_text().splitlines() if ln.strip()]
    return [np.array([[float(v) for v in ln.split()] for ln in lines[k * 5 + 1 : k * 5 + 5]]) for k in range(5)]


def backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid pixels of depth [H, W] -> world points [M, 3] and their (row, col) indices [M, 2]."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    x = (u + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (v + 0.5 - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z], 1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3], np.stack([v, u], 1)


def build_icl_run(root: Path, seed_points: int = SEED_POINTS) -> RunPaths:
    """A small run directory from ICL-NUIM (see module docstring)."""
    import open3d as o3d
    from support.posed_run import build_rgbd_run

    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    poses = icl_poses()
    frames = [(ICL / f"color/{i:05d}.jpg", poses[i], ICL / f"depth/{i:05d}.png") for i in range(5)]
    paths, gt = build_rgbd_run(frames, K, root, train=TRAIN, test=TEST, size=SIZE)
    depth = np.load(gt)["depth"]
    depth[TEST] = 0  # the prior is computed on the training views only
    T = len(depth)
    AlignedDepth(depth, depth > 0, np.ones_like(depth), np.ones(T), np.zeros(T)).save(paths.aligned_npz)
    cams = CameraSet.load(paths.cameras_json)
    pts, cols = [], []
    for i in TRAIN:
        p, vu = backproject(depth[i], cams.K[i], cams.c2w[i])
        img = read_rgb(paths.root / cams.files[i])
        pts.append(p)
        cols.append(img[vu[:, 0], vu[:, 1]])
    pts, cols = np.concatenate(pts), np.concatenate(cols)
    pick = np.random.default_rng(0).choice(len(pts), size=min(seed_points, len(pts)), replace=False)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[pick].astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(cols[pick] / 255.0)
    paths.points_dir.mkdir(parents=True, exist_ok=True)
    o3d.io.write_point_cloud(str(paths.init_ply), pcd)
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunPaths:
    paths = build_icl_run(tmp_path_factory.mktemp("ns") / "icl")
    export_stage.run(StageContext(paths), export_stage.Config())
    return paths


def test_export_writes_depth_pngs_and_transforms(run: RunPaths):
    import cv2

    meta = json.loads(run.transforms_json.read_text())
    assert meta["ply_file_path"] == "points/init.ply"
    assert meta["depth_unit_scale_factor"] == pytest.approx(1e-3)  # metric depth of a room fits millimetres
    assert [Path(f["depth_file_path"]).parent.name for f in meta["frames"]] == ["ns_depth"] * 5
    assert meta["train_filenames"] == [f"frames/{i:06d}.png" for i in TRAIN]
    assert meta["test_filenames"] == meta["val_filenames"] == ["frames/000000.png"]
    aligned = AlignedDepth.load(run.aligned_npz).depth
    for i, fr in enumerate(meta["frames"]):
        png = cv2.imread(str(run.root / fr["depth_file_path"]), cv2.IMREAD_ANYDEPTH)
        assert png.dtype == np.uint16 and png.shape == aligned[i].shape
        assert np.array_equal(png > 0, aligned[i] > 0)
        back = png.astype(np.float64) * meta["depth_unit_scale_factor"]
        assert np.abs(back - aligned[i]).max() <= 0.5e-3 + 1e-6
        assert (png > 0).any() == (i in TRAIN)  # the test view has no prior: an all-invalid PNG


@pytest.mark.parametrize("factor", [100.0, 0.01])
def test_depth_unit_scale_keeps_precision_and_range(run: RunPaths, factor: float):
    from recon.stages.export import choose_depth_unit_scale, depth_to_png16

    depth = AlignedDepth.load(run.aligned_npz).depth[1] * factor  # the same room in other units
    unit = choose_depth_unit_scale(depth)
    assert unit != pytest.approx(1e-3)
    q = depth_to_png16(depth, unit)
    valid = depth > 0
    assert np.array_equal(q > 0, valid)  # nothing overflowed or underflowed to invalid
    rel = np.abs(q[valid] * unit - depth[valid]) / depth[valid]
    assert rel.max() < 1e-3


def test_export_without_aligned_depth_is_a_clear_error(run: RunPaths, tmp_path: Path):
    import shutil

    from recon.errors import ReconError

    copy = RunPaths(tmp_path / "run")
    shutil.copytree(run.root, copy.root)
    copy.aligned_npz.unlink()
    with pytest.raises(ReconError, match="align"):
        export_stage.run(StageContext(copy), export_stage.Config())


def test_viewmats_match_recon_conventions():
    import torch

    from splat.nerfstudio.model import viewmats_from_nerfstudio

    c2w_cv = np.stack(icl_poses())
    c2w_gl = opengl_to_opencv(c2w_cv)  # the flip is its own inverse: OpenCV -> OpenGL
    got = viewmats_from_nerfstudio(torch.tensor(c2w_gl[:, :3, :4])).numpy()
    np.testing.assert_allclose(got, invert_pose(c2w_cv), atol=1e-9)


def test_downscale_depth_averages_valid_pixels_only(run: RunPaths):
    import torch

    from splat.nerfstudio.model import downscale_depth

    depth = AlignedDepth.load(run.aligned_npz).depth[2]
    got = downscale_depth(torch.from_numpy(depth)[..., None], 4)[..., 0].numpy()
    blocks = depth.reshape(depth.shape[0] // 4, 4, depth.shape[1] // 4, 4).transpose(0, 2, 1, 3).reshape(*got.shape, 16)
    count = (blocks > 0).sum(-1)
    want = np.where(count > 0, blocks.sum(-1) / np.maximum(count, 1), 0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert (count == 0).any() and (got[count == 0] == 0).all()  # ICL has an invalid border band


def test_dataparsers_read_the_export(run: RunPaths):
    """Our parser (depth scale from transforms.json) and stock splatfacto's parser both load the run."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from splat.nerfstudio.dataparser import DVDSplatDataParserConfig, DVDSplatDataset

    ours = DVDSplatDataParserConfig(data=run.root).setup()
    train = ours.get_dataparser_outputs("train")
    assert len(train.image_filenames) == len(TRAIN)
    assert len(ours.get_dataparser_outputs("val").image_filenames) == len(TEST)
    assert train.metadata["depth_unit_scale_factor"] == pytest.approx(1e-3)
    assert len(train.metadata["points3D_xyz"]) == SEED_POINTS
    dataset = DVDSplatDataset(train)
    item = dataset[0]
    aligned = AlignedDepth.load(run.aligned_npz).depth[TRAIN[0]]
    got = item["depth_image"][..., 0].numpy()
    assert got.shape == aligned.shape
    np.testing.assert_allclose(got, aligned * train.dataparser_scale, atol=1e-3 * train.dataparser_scale)

    stock = NerfstudioDataParserConfig(data=run.root, load_3D_points=True).setup()
    out = stock.get_dataparser_outputs("train")
    assert len(out.image_filenames) == len(TRAIN)
    assert len(out.metadata["points3D_xyz"]) == SEED_POINTS
    assert out.metadata["depth_filenames"] is not None


def _scalars(event_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(event_dir.glob("events.out.tfevents.*"))
    assert files, f"no tensorboard events in {event_dir}"
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_ns_train_dvd_splat_on_cpu_then_ns_export(run: RunPaths, tmp_path: Path):
    import tyro
    from nerfstudio.scripts.exporter import Commands

    from splat.ply import read_gaussian_ply

    env = dict(os.environ)
    env.pop("NERFSTUDIO_METHOD_CONFIGS", None)  # found through the pyproject entry point, as users get it
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ns_train = Path(sys.executable).with_name("ns-train")
    cmd = [
        str(ns_train),
        "dvd-splat",
        "--data",
        str(run.root),
        "--max-num-iterations",
        "30",
        "--machine.device-type",
        "cpu",
        "--vis",
        "tensorboard",
        "--output-dir",
        str(tmp_path / "outputs"),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = next((tmp_path / "outputs").glob("*/dvd-splat/*/config.yml"))
    assert list((config.parent / "nerfstudio_models").glob("step-000000029.ckpt"))

    scalars = _scalars(config.parent)
    depth_loss = scalars["Train Loss Dict/depth_loss"]
    assert len(depth_loss) >= 2 and all(np.isfinite(depth_loss)) and depth_loss[0] > 0
    main = scalars["Train Loss Dict/main_loss"]
    assert main[-1] < main[0]  # 30 steps from the fused cloud already fit the training views better

    tyro.cli(
        Commands, args=["gaussian-splat", "--load-config", str(config), "--output-dir", str(tmp_path / "export")]
    ).main()
    g = read_gaussian_ply(tmp_path / "export" / "splat.ply")
    assert len(g["means"]) == SEED_POINTS  # no densification before step 500 and no Gaussian lost
    assert np.isfinite(g["means"]).all() and g["shN"].shape[1] == 15  # splatfacto's SH degree 3
    _crop_box_renders(config)


def _crop_box_renders(config: Path) -> None:
    """Outside training the model renders only the Gaussians inside its crop box (the viewer's crop)."""
    import torch
    from nerfstudio.data.scene_box import OrientedBox
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    model = pipeline.model
    camera = pipeline.datamanager.train_dataset.cameras[0:1].to(model.device)
    means = model.means.detach()
    lo, hi = means.min(0).values, means.max(0).values

    def render(box: OrientedBox | None) -> dict:
        model.crop_box = box
        with torch.no_grad():
            return model.get_outputs(camera)

    full = render(None)
    everything = render(OrientedBox(R=torch.eye(3), T=(lo + hi) / 2, S=(hi - lo) * 1.01))
    assert torch.equal(everything["rgb"], full["rgb"]) and full["accumulation"].mean() > 0.5
    nothing = render(OrientedBox(R=torch.eye(3), T=hi + 10 * (hi - lo), S=(hi - lo) * 0.01))
    assert nothing["accumulation"].abs().max() == 0
    assert nothing["rgb"].shape == full["rgb"].shape
    half = render(OrientedBox(R=torch.eye(3), T=lo, S=(hi - lo)))  # the corner octant's Gaussians only
    assert 0 < half["accumulation"].mean() < full["accumulation"].mean()
