"""nerfstudio transforms.json export, reloaded with nerfstudio's own NerfstudioDataParser."""

from __future__ import annotations

import json

import numpy as np
import open3d as o3d
import pycolmap
import pytest
from PIL import Image

from depth.geometry import opencv_to_opengl
from recon.artifacts import CameraSet
from recon.errors import ReconError
from recon.stages.export import export_transforms, transforms_dict


def _parse(run, load_points: bool = False):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    # no re-orientation / centring / scaling, so nerfstudio's poses are directly comparable with ours
    cfg = NerfstudioDataParserConfig(
        data=run.root,
        orientation_method="none",
        center_method="none",
        auto_scale_poses=False,
        eval_mode="all",
        load_3D_points=load_points,
    )
    return cfg.setup().get_dataparser_outputs("train")


def test_export_reloads_in_nerfstudio(redkitchen_run_copy):
    run = redkitchen_run_copy
    cs = CameraSet.load(run.cameras_json)
    # one frame unregistered: it must not be exported
    cs.registered[5] = False
    cs.save(run.cameras_json)
    reg = np.flatnonzero(cs.registered)

    # depth PNGs (16-bit, millimetres) for every registered frame and the SfM points as a PLY
    run.ns_depth_dir.mkdir()
    depth_files = []
    for i in reg:
        p = run.ns_depth_dir / f"{i:06d}.png"
        Image.fromarray(np.full((cs.height, cs.width), 1000 + i, dtype=np.uint16)).save(p)
        depth_files.append(str(p))  # absolute paths are made relative to RUN
    rec = pycolmap.Reconstruction(run.sfm_dir)
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    pcd.colors = o3d.utility.Vector3dVector(np.full_like(xyz, 0.5))
    o3d.io.write_point_cloud(str(run.root / "sparse.ply"), pcd)

    path = export_transforms(run, depth_files=depth_files, ply_file="sparse.ply", depth_unit_scale_factor=1e-3)
    d = json.loads(path.read_text())
    assert path == run.transforms_json and d["camera_model"] == "PINHOLE"
    assert len(d["frames"]) == len(reg) == len(cs) - 1
    assert d["frames"][0]["depth_file_path"] == f"ns_depth/{reg[0]:06d}.png" and d["ply_file_path"] == "sparse.ply"

    out = _parse(run, load_points=True)
    names = [f"images/{p.name}" for p in out.image_filenames]
    assert names == sorted(cs.files[i] for i in reg)
    order = [cs.files.index(n) for n in names]
    ns_c2w = out.cameras.camera_to_worlds.numpy().astype(np.float64)
    np.testing.assert_allclose(ns_c2w, opencv_to_opengl(cs.c2w[order])[:, :3, :4], atol=1e-5)
    K = cs.K[0]
    assert float(out.cameras.fx[0]) == pytest.approx(K[0, 0], rel=1e-6)
    assert float(out.cameras.fy[0]) == pytest.approx(K[1, 1], rel=1e-6)
    assert float(out.cameras.cx[0]) == pytest.approx(K[0, 2], rel=1e-6)
    assert float(out.cameras.cy[0]) == pytest.approx(K[1, 2], rel=1e-6)
    assert int(out.cameras.width[0]) == cs.width and int(out.cameras.height[0]) == cs.height
    assert [p.name for p in out.metadata["depth_filenames"]] == [f"{order_i:06d}.png" for order_i in order]
    np.testing.assert_allclose(out.metadata["points3D_xyz"].numpy(), xyz, atol=1e-4)


def test_transforms_dict_per_frame_intrinsics_and_errors(redkitchen_sfm_run):
    cs = CameraSet.load(redkitchen_sfm_run.cameras_json)
    cs.K = cs.K.copy()
    cs.K[1, 0, 0] += 3.0
    d = transforms_dict(cs)
    assert "fl_x" not in d and d["frames"][1]["fl_x"] == pytest.approx(cs.K[1, 0, 0])
    assert d["frames"][0]["fl_x"] == pytest.approx(cs.K[0, 0, 0])
    with pytest.raises(ReconError, match="depth files given"):
        transforms_dict(cs, depth_files=["a.png"] * 3)
    partial = ["d.png"] * len(cs)
    partial[2] = None
    with pytest.raises(ReconError, match="depth for every frame or none"):
        transforms_dict(cs, depth_files=partial)
    cs.registered[:] = False
    with pytest.raises(ReconError, match="no registered frames"):
        transforms_dict(cs)


def test_export_rejects_missing_files(redkitchen_run_copy, tmp_path):
    with pytest.raises(ReconError, match="does not exist"):
        export_transforms(redkitchen_run_copy, ply_file="points/init.ply")
    with pytest.raises(ReconError, match="outside the run"):
        export_transforms(redkitchen_run_copy, ply_file=str(tmp_path / "x.ply"))
    assert not redkitchen_run_copy.transforms_json.exists()
