"""Point-cloud fusion (splat.fuse, stage recon.stages.fuse): geometry helpers, multi-view filtering, init.ply,
GT vs stereo clouds."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from depth.file import FileDepthConfig
from depth.geometry import backproject, invert_pose, project, umeyama
from depth.stereo import StereoConfig
from recon.artifacts import AlignedDepth, CameraSet, PointCloud, Split
from recon.atomic import save_npz, write_json
from recon.errors import ReconError
from recon.stages import StageContext, align, depth, fuse
from splat.errors import SplatError
from splat.fuse import (
    FuseConfig,
    VoxelAccumulator,
    depth_agreement,
    fuse_depth,
    select_neighbors,
    voxel_downsample,
)


def run_depth(paths, cfg):
    return depth.run(StageContext(paths), cfg)


def run_align(paths, cfg):
    return align.run(StageContext(paths), cfg)


def run_fuse(paths, cfg):
    return fuse.run(StageContext(paths), cfg)


def read_ply_points(path):
    cloud = PointCloud.load(path)
    return cloud.xyz, cloud.rgb, cloud.normals


DepthConfig, AlignConfig = depth.Config, align.Config


def _rot(axis, deg):
    import scipy.spatial.transform as tr

    return tr.Rotation.from_rotvec(np.radians(deg) * np.asarray(axis, float)).as_matrix()


def _camera(deg=10.0, t=(0.3, -0.2, 1.0)):
    c2w = np.eye(4)
    c2w[:3, :3] = _rot([0.2, 1.0, 0.1], deg)
    c2w[:3, 3] = t
    K = np.array([[200.0, 0, 40.5], [0, 210.0, 30.0], [0, 0, 1]])
    return K, c2w


def test_backproject_then_project_returns_pixel_centres_and_depth():
    K, c2w = _camera()
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 4.0, (60, 80)).astype(np.float32)
    depth[::7, ::5] = 0  # invalid pixels are skipped
    mask = np.zeros_like(depth, bool)
    mask[::2, ::2] = True
    pts = backproject(depth, K, c2w, mask)
    rows, cols = np.nonzero(mask & (depth > 0))
    assert pts.shape == (len(rows), 3)
    uv, z = project(pts, K, invert_pose(c2w))
    np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], 1), atol=1e-9)
    np.testing.assert_allclose(z, depth[rows, cols], rtol=1e-6)


def test_depth_agreement_accepts_consistent_and_rejects_wrong_depth():
    K, c2w = _camera()
    depth = np.full((60, 80), 2.0, np.float32)
    pts = backproject(depth, K, c2w)
    w2c = invert_pose(c2w)
    assert depth_agreement(pts, depth, K, w2c, 0.01).all()
    assert not depth_agreement(pts, depth * 1.1, K, w2c, 0.03).any()
    conf = np.zeros_like(depth)
    assert not depth_agreement(pts, depth, K, w2c, 0.01, conf, min_confidence=0.5).any()
    # A second camera that looks the other way sees nothing.
    K2, c2w2 = _camera(deg=180.0)
    assert not depth_agreement(pts, depth, K2, invert_pose(c2w2), 0.5).any()


def test_voxel_downsample_weighted_means():
    pts = np.array([[0.01, 0.01, 0.01], [0.03, 0.03, 0.03], [0.5, 0.5, 0.5]])
    w = np.array([1.0, 3.0, 1.0])
    col = np.array([[0, 0, 0], [200, 100, 40], [10, 10, 10]], float)
    out, (c,), wsum = voxel_downsample(pts, 0.1, w, col)
    order = np.argsort(out[:, 0])
    np.testing.assert_allclose(out[order], [[0.025, 0.025, 0.025], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(c[order][0], [150, 75, 30])
    np.testing.assert_allclose(wsum[order], [4.0, 1.0])


def test_voxel_accumulator_matches_one_shot_downsampling():
    """Streaming in batches (with flushes) gives the same voxels as reducing everything at once."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (5000, 3))
    pts[0] = -1.0  # same grid origin as the accumulator's
    w = rng.uniform(0.1, 1, 5000)
    col = rng.uniform(0, 255, (5000, 3))
    view = rng.normal(size=(5000, 3))
    acc = VoxelAccumulator(origin=np.array([-1.0, -1.0, -1.0]), voxel=0.25, flush_points=1500)
    for k in range(0, 5000, 700):
        acc.add(pts[k : k + 700], w[k : k + 700], col[k : k + 700], view[k : k + 700])
    P, C, V, W = acc.means()
    P1, (C1, V1), W1 = voxel_downsample(pts, 0.25, w, col, view)
    o, o1 = np.lexsort(P.T), np.lexsort(P1.T)
    assert len(P) == len(P1) == 512  # 8 x 8 x 8 voxels
    np.testing.assert_allclose(P[o], P1[o1], atol=1e-12)
    np.testing.assert_allclose(C[o], C1[o1], atol=1e-9)
    np.testing.assert_allclose(W[o], W1[o1], atol=1e-9)


def test_select_neighbors_by_distance_and_view_angle():
    c2w = np.tile(np.eye(4), (5, 1, 1))
    c2w[:, 0, 3] = [0.0, 0.1, 0.2, 0.3, 0.05]
    c2w[4, :3, :3] = _rot([0, 1, 0], 90)  # close but looking sideways
    assert select_neighbors(c2w, 0, [0, 1, 2, 3, 4], 2) == [1, 2]
    assert select_neighbors(c2w, 0, [0, 1, 2, 3, 4], 10, max_angle_deg=100) == [4, 1, 2, 3]


def _plane_views(n: int = 3, size: tuple[int, int] = (64, 48)):
    """n cameras 0.1 apart looking down +z at the plane z = 2 (depth, confidence, K, c2w, images)."""
    W, H = size
    K = np.array([[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]])
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = 0.1 * np.arange(n)
    depth = np.full((n, H, W), 2.0, np.float32)
    images = np.zeros((n, H, W, 3), np.uint8)
    images[..., 0] = 200
    return depth, np.ones_like(depth), np.repeat(K[None], n, 0), c2w, images


def test_fuse_depth_on_arrays():
    """A plane seen by three cameras: every fused point lies on it, with its colour and normals facing the
    cameras; images may come as an array or as a reader; unconfident pixels and bad input are refused."""
    depth, conf, K, c2w, images = _plane_views()
    cfg = FuseConfig(sor_neighbors=0)
    done = []
    cloud = fuse_depth(depth, conf, K, c2w, images, cfg, progress=lambda d, t: done.append((d, t)))
    assert done == [(1, 3), (2, 3), (3, 3)]
    assert cloud.summary["frames"] == 3 and cloud.summary["points"] == len(cloud.xyz) > 100
    np.testing.assert_allclose(cloud.xyz[:, 2], 2.0, atol=1e-9)
    assert (cloud.rgb == [200, 0, 0]).all() and cloud.rgb.dtype == np.uint8
    assert (cloud.normals[:, 2] < -0.99).all()  # towards the cameras at z = 0
    reads = []
    lazy = fuse_depth(depth, conf, K, c2w, lambda v: reads.append(v) or images[v], cfg)
    np.testing.assert_array_equal(lazy.xyz, cloud.xyz)
    assert reads == [0, 1, 2]
    conf[:, :, : depth.shape[2] // 2] = 0.0  # the left half is not confident in any view
    half = fuse_depth(depth, conf, K, c2w, images, cfg)
    assert half.summary["backprojected"] < 0.6 * cloud.summary["backprojected"]
    with pytest.raises(SplatError, match="stride"):
        fuse_depth(depth, conf, K, c2w, images, FuseConfig(stride=0))
    with pytest.raises(SplatError, match="no training view has valid aligned depth"):
        fuse_depth(0 * depth, conf, K, c2w, images, cfg)
    with pytest.raises(SplatError, match="K"):
        fuse_depth(depth, conf, K[:2], c2w, images, cfg)


# --------------------------------------------------------------------------------------------
# 7-Scenes


def _gt_depth_run(paths, gt, tmp_path, first: int = 0, count: int | None = None) -> tuple[list[int], object]:
    """prior = train = (a run of) the non-test frames with GT depth; GT depth (metres) as files for backend 'file'."""
    cams = CameraSet.load(paths.cameras_json)
    split = Split.load(paths.split_json).to_json()
    test = set(split["test"])
    frames = [i for i in split["train"] if i not in test and gt.depth_file(cams.source_index[i]) is not None]
    frames = frames[first : None if count is None else first + count]
    write_json(
        paths.split_json, {"protocol": "gt-depth frames", "train": frames, "test": sorted(test), "prior": frames}
    )
    folder = tmp_path / "gt_depth"
    folder.mkdir()
    for i in frames:
        np.save(
            folder / (cams.files[i].split("/")[-1].split(".")[0] + ".npy"),
            gt.read_depth(cams.source_index[i])[1::2, 1::2],
        )
    return frames, folder


def _chamfer(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    import open3d as o3d

    pa = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(a.astype(np.float64)))
    pb = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(b.astype(np.float64)))
    return float(np.mean(pa.compute_point_cloud_distance(pb))), float(np.mean(pb.compute_point_cloud_distance(pa)))


def test_fuse_gt_depth_and_stereo_clouds(redkitchen_run_copy, redkitchen_gt, tmp_path):
    import open3d as o3d
    import trimesh
    from plyfile import PlyData

    paths = redkitchen_run_copy
    frames, folder = _gt_depth_run(paths, redkitchen_gt, tmp_path, first=5, count=8)
    run_depth(paths, DepthConfig(backend="file", file=FileDepthConfig(path=folder, kind="depth"), preview=False))
    align = run_align(paths, AlignConfig())
    assert align["fit"] == "scale" and align["shift"] == 0.0  # metric depth: scale only
    summary = run_fuse(paths, FuseConfig())
    assert summary["frames"] == len(frames)  # training views with depth only, never test views

    # init.ply: binary, float32 xyz, uint8 colours, normals; same count in open3d, trimesh and plyfile.
    ply = PlyData.read(str(paths.init_ply))
    v = ply["vertex"]
    assert not ply.text and v.data.dtype["x"] == np.float32 and v.data.dtype["red"] == np.uint8
    assert {"nx", "ny", "nz"} <= set(v.data.dtype.names)
    n = summary["points"]
    assert 20_000 < n <= FuseConfig().max_points and len(v.data) == n
    pcd = o3d.io.read_point_cloud(str(paths.init_ply))
    assert len(pcd.points) == n and pcd.has_colors() and pcd.has_normals()
    assert len(trimesh.load(paths.init_ply).vertices) == n
    gt_pts, gt_cols, normals = read_ply_points(paths.init_ply)
    assert gt_cols.std() > 10  # real colours, not a constant fill

    # Normals face the cameras that saw the points.
    cams = CameraSet.load(paths.cameras_json)
    centre = cams.centers[frames].mean(axis=0)
    facing = np.sum(normals * (centre - gt_pts), axis=1) > 0
    assert facing.mean() > 0.9

    # SfM units -> metres (camera-centre Sim(3)) for the printed distances.
    reg = np.nonzero(cams.registered)[0]
    s, _, _ = umeyama(cams.centers[reg], redkitchen_gt.centers([cams.source_index[i] for i in reg]))

    # Stereo on the same frames (light settings: the stereo backend has its own accuracy tests).
    shutil.copy(paths.init_ply, tmp_path / "gt_init.ply")
    run_depth(paths, DepthConfig(backend="stereo", stereo=StereoConfig(num_planes=16, scale=0.25), preview=False))
    run_align(paths, AlignConfig())
    st = run_fuse(paths, FuseConfig())
    st_pts, _, _ = read_ply_points(paths.init_ply)
    d_gt_st, d_st_gt = _chamfer(gt_pts, st_pts)
    extent = summary["extent"]
    print(
        f"\nfused clouds on {len(frames)} views: GT depth {n} points, stereo {st['points']} points; chamfer "
        f"GT->stereo {d_gt_st:.4f}, stereo->GT {d_st_gt:.4f} SfM units = {d_gt_st * s * 100:.1f} / "
        f"{d_st_gt * s * 100:.1f} cm ({(d_gt_st + d_st_gt) / 2 / extent:.2%} of the scene extent {extent * s:.2f} m)"
    )
    # Stereo points lie on the GT surface within a few cm (it is the accuracy direction that matters:
    # stereo covers less, so GT->stereo also measures holes).
    assert d_st_gt * s < 0.05
    assert d_gt_st * s < 0.25


def test_multi_view_check_drops_inconsistent_depth(redkitchen_run_copy, redkitchen_gt, tmp_path):
    paths = redkitchen_run_copy
    frames, folder = _gt_depth_run(paths, redkitchen_gt, tmp_path)
    run_depth(paths, DepthConfig(backend="file", file=FileDepthConfig(path=folder, kind="depth"), preview=False))
    run_align(paths, AlignConfig())
    cfg = FuseConfig(sor_neighbors=0, estimate_normals=False, voxel_size=1e-6)  # count every kept pixel
    good = run_fuse(paths, cfg)["consistent"]
    aligned = AlignedDepth.load(paths.aligned_npz)
    # Every other frame is pushed 20 % away: its points no longer agree with their neighbours'.
    for i in frames[::2]:
        aligned.depth[i] *= 1.2
    aligned.save(paths.aligned_npz)
    bad = run_fuse(paths, cfg)["consistent"]
    print(f"\nconsistent points: {good} with GT depth, {bad} with every other frame scaled by 1.2")
    assert bad < 0.75 * good
    assert (
        run_fuse(paths, FuseConfig(min_views=1, sor_neighbors=0, estimate_normals=False, voxel_size=1e-6))["consistent"]
        > good
    )


def test_fuse_errors(redkitchen_run_copy):
    paths = redkitchen_run_copy
    with pytest.raises(ReconError, match="run the align stage first"):
        run_fuse(paths, FuseConfig())
    cams = CameraSet.load(paths.cameras_json)
    T, H, W = len(cams), cams.height, cams.width
    zeros = np.zeros((T, H, W), np.float32)
    save_npz(paths.aligned_npz, depth=zeros, mask=zeros > 0, confidence=zeros + 1)
    with pytest.raises(ReconError, match="no training view has valid aligned depth"):
        run_fuse(paths, FuseConfig())
    save_npz(paths.aligned_npz, depth=np.ones((T, H + 2, W), np.float32), confidence=np.ones((T, H + 2, W)))
    with pytest.raises(ReconError, match="re-run the align stage"):
        run_fuse(paths, FuseConfig())
    with pytest.raises(ReconError, match="stride"):
        run_fuse(paths, FuseConfig(stride=0))
    assert not paths.init_ply.exists()
