"""Known poses (--poses): transforms.json (instant-ngp fox, Blender lego) and COLMAP models round-trip."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from depth.geometry import opencv_to_opengl, opengl_to_opencv
from recon.artifacts import CameraSet, RunPaths
from recon.errors import ReconError
from recon.known_poses import camera_from_transforms, load_pose_source, match_frames
from recon.stages import StageContext
from recon.stages import frames as frames_stage
from recon.stages import poses as poses_stage
from recon.stages.frames import Config as FramesConfig
from recon.stages.poses import Config as PosesConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOX = DATA / "instant_ngp_fox_540x960"
LEGO = DATA / "nerf_synthetic_lego_train100_400px"


def _source_poses(transforms: Path) -> dict[str, dict]:
    d = json.loads(transforms.read_text())
    return {Path(f["file_path"]).stem: f for f in d["frames"]}, d


def test_fox_transforms_roundtrip(tmp_path):
    """instant-ngp fox: OpenGL c2w -> OpenCV, OPENCV distortion undone, intrinsics rescaled 540x960 -> 270x480."""
    run = RunPaths(tmp_path / "fox")
    frames_stage.run(StageContext(run, FOX / "images"), FramesConfig(max_frames=10, max_size=480))
    summary = poses_stage.run(StageContext(run), PosesConfig(poses=FOX / "transforms.json"))
    cs = CameraSet.load(run.cameras_json)
    frames = json.loads(run.frames_json.read_text())["frames"]
    by_stem, meta = _source_poses(FOX / "transforms.json")
    assert cs.registered.all() and summary["registered"] == "10/10"
    assert (cs.width, cs.height) == (270, 480)
    for fr, c2w in zip(frames, cs.c2w):
        src = np.array(by_stem[Path(fr["source_name"]).stem]["transform_matrix"])
        np.testing.assert_allclose(c2w, opengl_to_opencv(src), atol=1e-12)
        np.testing.assert_allclose(opencv_to_opengl(c2w), src, atol=1e-12)
    # PINHOLE K after undistortion: focal and principal point at half resolution, enlarged only by the
    # small zoom that keeps the undistorted frame free of blank borders
    K = cs.K[0]
    assert np.allclose(cs.K, K)
    zoom = K[0, 0] / (meta["fl_x"] / 2)
    assert zoom >= 1.0 and zoom < 1.05
    assert K[1, 1] == pytest.approx(meta["fl_y"] / 2 * zoom, rel=1e-6)
    assert abs(K[0, 2] - meta["cx"] / 2) < 3 and abs(K[1, 2] - meta["cy"] / 2) < 3
    # the frames really were warped (distortion k1 = 0.058) and keep their size
    a = np.asarray(Image.open(run.frames_dir / "000000.png"), dtype=np.float32)
    b = np.asarray(Image.open(run.root / cs.files[0]), dtype=np.float32)
    assert a.shape == b.shape and np.abs(a - b).mean() > 2.0
    # points triangulated with the given poses fit them to sub-pixel error: poses, K and warp agree
    rec = pycolmap.Reconstruction(run.sfm_dir)
    print(f"\nfox 10 views: {rec.num_points3D()} points, reprojection {rec.compute_mean_reprojection_error():.3f} px")
    assert rec.num_points3D() > 300 and rec.compute_mean_reprojection_error() < 1.0
    for im in rec.images.values():
        i = cs.files.index(f"images/{im.name}")
        w2c = np.linalg.inv(cs.c2w[i])
        np.testing.assert_allclose(im.cam_from_world().matrix(), w2c[:3, :4], atol=1e-5)
    assert cs.sfm["mapper"] == "known (transforms)" and cs.sfm["matched_by"] == "name"


def test_lego_blender_roundtrip(tmp_path):
    """Blender lego: RGBA frames composited on WHITE by the frames stage; focal from camera_angle_x; no distortion."""
    run = RunPaths(tmp_path / "lego")
    frames_stage.run(StageContext(run, LEGO / "train"), FramesConfig(max_frames=8))
    poses_stage.run(StageContext(run), PosesConfig(poses=LEGO / "transforms_train.json"))
    cs = CameraSet.load(run.cameras_json)
    frames = json.loads(run.frames_json.read_text())["frames"]
    by_stem, meta = _source_poses(LEGO / "transforms_train.json")
    assert cs.registered.all() and (cs.width, cs.height) == (400, 400)
    for fr, c2w in zip(frames, cs.c2w):
        src = np.array(by_stem[Path(fr["source_name"]).stem]["transform_matrix"])
        np.testing.assert_allclose(c2w, src @ np.diag([1.0, -1, -1, 1]), atol=1e-12)
    f = 0.5 * 400 / math.tan(0.5 * meta["camera_angle_x"])  # 555.56 px at 400 px (1111.1 at 800)
    np.testing.assert_allclose(cs.K[0], [[f, 0, 200], [0, f, 200], [0, 0, 1]], rtol=1e-9)
    # pinhole frames are copied unchanged; the transparent background is white
    img = np.asarray(Image.open(run.root / cs.files[0]))
    assert np.array_equal(img, np.asarray(Image.open(run.frames_dir / "000000.png")))
    assert (img[:5, :5] == 255).all()
    # 8 views ~45 degrees apart match poorly; two-view tracks still give the depth alignment some points
    assert cs.sfm["points"] > 20
    # all cameras look at the origin from ~4.03 units: a check of the axis conversion (+z forward in OpenCV)
    for c2w in cs.c2w:
        to_origin = -c2w[:3, 3] / np.linalg.norm(c2w[:3, 3])
        assert np.dot(c2w[:3, 2], to_origin) > 0.99


def test_colmap_model_import_by_order(redkitchen_sfm_run, tmp_path):
    """A COLMAP model (binary and text) as --poses: the SfM run's own distorted SIMPLE_RADIAL model on a
    new run of 15 frames, matched by order; c2w and K equal those of the SfM run."""
    state = json.loads((redkitchen_sfm_run.sfm_work_dir / "state.json").read_text())
    model = redkitchen_sfm_run.sfm_work_dir / "sparse" / str(state["map"]["best"])
    ref = CameraSet.load(redkitchen_sfm_run.cameras_json)
    # a transforms-style ordered list would need one pose per video frame; a COLMAP model lists images by
    # name 000000.png ..., so the new run uses the same frames: copy them
    run = RunPaths(tmp_path / "run")
    run.root.mkdir()
    meta = json.loads(redkitchen_sfm_run.frames_json.read_text())
    keep = list(range(0, 60, 4))  # 15 frames
    (run.root / "frames").mkdir()
    frames = []
    for k in keep:
        name = f"{len(frames):06d}.png"
        (run.root / "frames" / name).write_bytes((redkitchen_sfm_run.frames_dir / f"{k:06d}.png").read_bytes())
        frames.append({"file": f"frames/{name}", "source_index": k, "timestamp": None})
    meta["frames"] = frames
    run.frames_json.write_text(json.dumps(meta))
    # the frames' source: a folder of the 60 images the model was made from (one pose per source image, so
    # matching by order is allowed: source_index k -> the k-th image of the model)
    shutil.copytree(redkitchen_sfm_run.frames_dir, tmp_path / "source_images")
    meta.update(source=str(tmp_path / "source_images"), source_type="images")
    run.frames_json.write_text(json.dumps(meta))
    txt = tmp_path / "model_txt"
    txt.mkdir()
    pycolmap.Reconstruction(model).write_text(txt)
    for poses in (model, txt):
        summary = poses_stage.run(StageContext(run), PosesConfig(poses=poses))
        cs = CameraSet.load(run.cameras_json)
        assert cs.sfm["matched_by"] == "order" and summary["registered"] == "15/15"
        np.testing.assert_allclose(cs.c2w, ref.c2w[keep], atol=1e-6)
        np.testing.assert_allclose(cs.K, ref.K[keep], atol=1e-6)
        assert cs.sfm["points"] > 300


def test_gt_poses_as_transforms_json_by_order(redkitchen_gt, tmp_path, capsys):
    """A transforms.json holding the 7-Scenes GT pose of every video frame, matched to a video run by order."""
    gl = opencv_to_opengl(redkitchen_gt.c2w(range(450)))
    tj = {
        "fl_x": 530.0,
        "fl_y": 530.0,
        "cx": 320.0,
        "cy": 240.0,
        "w": 640,
        "h": 480,
        "frames": [{"file_path": f"rgb/{i:06d}.png", "transform_matrix": m.tolist()} for i, m in enumerate(gl)],
    }
    (tmp_path / "gt.json").write_text(json.dumps(tj))
    run = RunPaths(tmp_path / "run")
    frames_stage.run(
        StageContext(run, DATA / "7scenes_redkitchen_rgbd" / "video_30fps.mp4"),
        FramesConfig(max_frames=12, max_size=320),
    )
    capsys.readouterr()
    poses_stage.run(StageContext(run), PosesConfig(poses=tmp_path / "gt.json"))
    # one pose per video frame (450 = the video's frame count): matched by order, with a warning saying so
    err = " ".join(capsys.readouterr().err.split())
    assert "450 poses matched to the frames by order (names differ); check they belong to this video" in err
    cs = CameraSet.load(run.cameras_json)
    np.testing.assert_allclose(cs.c2w, redkitchen_gt.c2w(cs.source_index), atol=1e-12)
    np.testing.assert_allclose(cs.K[0], [[265.0, 0, 160.0], [0, 265.0, 120.0], [0, 0, 1]])
    assert cs.sfm["matched_by"] == "order" and cs.sfm["points"] > 100


def test_camera_from_transforms_variants():
    c = camera_from_transforms({"camera_angle_x": 2 * math.atan(0.5)}, (400, 300), "t")
    assert c.model_name == "PINHOLE" and np.allclose(c.params, [400, 400, 200, 150])
    c = camera_from_transforms({"fl_x": 500, "w": 640, "h": 480, "k1": 0.1}, (1, 1), "t")
    assert c.model_name == "OPENCV" and np.allclose(c.params, [500, 500, 320, 240, 0.1, 0, 0, 0])
    c = camera_from_transforms({"fl_x": 500, "fl_y": 501, "w": 640, "h": 480, "k1": 0.1, "k3": 0.01}, (1, 1), "t")
    assert c.model_name == "FULL_OPENCV" and c.params[1] == 501 and c.params[8] == pytest.approx(0.01)
    c = camera_from_transforms(
        {"fl_x": 500, "w": 640, "h": 480, "k1": 0.1, "camera_model": "OPENCV_FISHEYE"}, (1, 1), "t"
    )
    assert c.model_name == "OPENCV_FISHEYE"
    with pytest.raises(ReconError, match="focal"):
        camera_from_transforms({"w": 10, "h": 10}, (10, 10), "t")


def test_matching_rules():
    frames = [{"source_index": 0, "source_name": "0001.jpg"}, {"source_index": 1, "source_name": "0003.jpg"}]
    assert match_frames(frames, ["images/0003.jpg", "images/0001.jpg"]) == ([1, 0], "name")
    video = [{"source_index": 0}, {"source_index": 8}, {"source_index": 20}]
    # by order only when the counts agree: one pose per source frame (10 poses, a 10-frame source) ...
    assert match_frames(video, [f"{i}" for i in range(10)], source_count=10) == ([0, 8, None], "order")
    # ... or one pose per stored frame
    assert match_frames(video, ["a", "b", "c"], source_count=30) == ([0, 1, 2], "order")
    # another scene's poses (counts differ, names differ) are one error line, not a silent match
    for count in (None, 30):
        with pytest.raises(ReconError, match="cannot be matched by order") as e:
            match_frames(video, [f"{i}" for i in range(10)], source_count=count, where="--poses other.json")
        assert "\n" not in str(e.value) and "10 poses" in str(e.value) and "3 frames" in str(e.value)
    # a transforms.json exported by recon.stages.export records each frame's source_index
    assert match_frames(video, ["images/000001.png", "images/000000.png"], [8, 0]) == ([1, 0, None], "source_index")


def test_own_export_reimports(redkitchen_run_copy):
    """A run's exported transforms.json (OpenGL, PINHOLE) read back as --poses gives the same cameras,
    matched to the frames by the source_index the export records."""
    from recon.stages.export import export_transforms

    run = redkitchen_run_copy
    ref = CameraSet.load(run.cameras_json)
    src = load_pose_source(export_transforms(run), (640, 480))
    meta = json.loads(run.frames_json.read_text())
    match, method = match_frames(meta["frames"], src.names, src.source_index)
    assert method == "source_index" and [m is not None for m in match] == list(ref.registered)
    for i, m in enumerate(match):
        if m is not None:
            np.testing.assert_allclose(src.c2w[m], ref.c2w[i], atol=1e-12)
            np.testing.assert_allclose(src.cameras[m].calibration_matrix(), ref.K[i], atol=1e-9)
            assert src.cameras[m].model_name == "PINHOLE"


def test_known_poses_errors(tmp_path):
    run = RunPaths(tmp_path / "lego")
    frames_stage.run(StageContext(run, LEGO / "train"), FramesConfig(max_frames=3, max_size=100))
    with pytest.raises(ReconError, match="does not exist"):
        poses_stage.run(StageContext(run), PosesConfig(poses=tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReconError, match="transforms.json"):
        poses_stage.run(StageContext(run), PosesConfig(poses=tmp_path / "bad.json"))
    with pytest.raises(ReconError, match="no COLMAP model"):
        poses_stage.run(StageContext(run), PosesConfig(poses=tmp_path))
    one = {"camera_angle_x": 0.7, "frames": [{"file_path": "x/r_0", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "one.json").write_text(json.dumps(one))
    with pytest.raises(ReconError, match="only 1 of the 3 frames"):
        poses_stage.run(StageContext(run), PosesConfig(poses=tmp_path / "one.json"))
    wide = {
        "fl_x": 100,
        "w": 800,
        "h": 400,
        "frames": [{"file_path": f"r_{i}", "transform_matrix": np.eye(4).tolist()} for i in range(100)],
    }
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    with pytest.raises(ReconError, match="aspect"):
        poses_stage.run(StageContext(run), PosesConfig(poses=tmp_path / "wide.json"))
    assert not run.cameras_json.exists()
    src = load_pose_source(LEGO / "transforms_train.json", (400, 400))
    assert len(src.names) == 100 and src.kind == "transforms" and src.source_index is None


def _one_frame_file(tmp_path: Path, name: str = "bad.json", n: int = 3, **override) -> Path:
    """A transforms.json of `n` frames r_0..r_{n-1} (the lego run's names) with `override` applied to frame 1."""
    base = {"fl_x": 300.0, "w": 400, "h": 400}
    frames = [{"file_path": f"train/r_{i}", "transform_matrix": np.eye(4).tolist()} for i in range(n)]
    frames[1].update(override)
    (tmp_path / name).write_text(json.dumps({**base, "frames": frames}))
    return tmp_path / name


def _rot(angle: float) -> list:
    c, s = math.cos(angle), math.sin(angle)
    return [[c, -s, 0, 1.0], [s, c, 0, 2.0], [0, 0, 1, 3.0], [0, 0, 0, 1]]


@pytest.mark.parametrize(
    "override, expect",
    [
        ({"fl_x": float("nan")}, "fl_x must be a finite number"),
        ({"fl_x": -300.0}, "focal length (-300, -300) px must be positive"),
        ({"fl_x": 0}, "must be positive"),
        ({"fl_x": "300"}, "fl_x must be a number"),
        ({"camera_angle_x": 4.0, "fl_x": None}, "camera_angle_x = 4 is not a field of view"),
        ({"transform_matrix": np.zeros((4, 4)).tolist()}, "last row"),
        ({"transform_matrix": [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]}, "not orthonormal"),
        ({"transform_matrix": (np.diag([2.0, 2, 2, 1])).tolist()}, "not orthonormal"),
        ({"transform_matrix": np.diag([1.0, 1, -1, 1]).tolist()}, "det = -1"),
        ({"transform_matrix": [[1, 0, 0, float("inf")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, "finite 4x4"),
        ({"transform_matrix": [[1, 0], [0, 1]]}, "finite 4x4 matrix, got shape (2, 2)"),
        ({"transform_matrix": "eye"}, "not a 4x4 matrix of numbers"),
        ({"cx": 500.0}, "principal point (500, 200) lies outside the 400x400 image"),
        ({"cy": -1}, "lies outside"),
        ({"w": 0}, "image w = 0 pixels"),
        ({"h": 1e300}, "image h = 1e+300 pixels"),
        ({"k1": float("inf")}, "k1 must be a finite number"),
        ({"file_path": 7}, "needs a file_path"),
        ({"file_path": "train/r_0"}, "listed twice"),
        ({"camera_model": ["OPENCV"]}, "camera_model must be a name"),
    ],
)
def test_bad_pose_values_are_one_line(tmp_path, override, expect):
    """Every unusable value is refused where it is read, naming the file, the frame and the key."""
    with pytest.raises(ReconError) as e:
        load_pose_source(_one_frame_file(tmp_path, **override), (400, 400))
    msg = str(e.value)
    assert expect in msg and "frame 1" in msg and "bad.json" in msg and "\n" not in msg, msg


def test_valid_rotations_pass(tmp_path):
    src = load_pose_source(_one_frame_file(tmp_path, transform_matrix=_rot(0.7)), (400, 400))
    np.testing.assert_allclose(src.c2w[1][:3, 3], [1, 2, 3])


def test_bad_poses_fail_before_sfm(tmp_path, capsys):
    """A NaN focal or an all-zero rotation stops the pose stage with its own message (it used to be accepted
    and fail later inside triangulation); another scene's poses are not matched by order silently."""
    run = RunPaths(tmp_path / "lego")
    frames_stage.run(StageContext(run, LEGO / "train"), FramesConfig(max_frames=3, max_size=100))
    zero = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    for override, expect in (({"fl_x": float("nan")}, "fl_x"), ({"transform_matrix": zero}, "orthonormal")):
        with pytest.raises(ReconError, match=expect):
            poses_stage.run(StageContext(run), PosesConfig(poses=_one_frame_file(tmp_path, **override)))
    other = {
        "fl_x": 300.0,
        "w": 400,
        "h": 400,
        "frames": [{"file_path": f"scene2/img_{i:04d}.jpg", "transform_matrix": _rot(0.1 * i)} for i in range(5)],
    }
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ReconError, match=r"its 5 poses cannot be matched by order to the 3 frames \(of 100"):
        poses_stage.run(StageContext(run), PosesConfig(poses=tmp_path / "other.json"))
    assert not run.cameras_json.exists()
