"""LLFF: poses_bounds.npy as known poses and the LLFF sparse-view split protocol, on the real fern scene (504x378)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from recon.artifacts import CameraSet, FramesIndex, RunPaths, Split
from recon.cli import main
from recon.errors import ReconError
from recon.known_poses import frame_cameras, load_pose_source
from recon.stages.split import Config as SplitConfig
from recon.stages.split import llff_split, make_split
from recon.stages.train import Config as TrainConfig
from recon.stages.train import _check_llff_size

FERN = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff_fern_504x378"
IMAGES, POSES = FERN / "images_8", FERN / "poses_bounds.npy"


def _sift_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [M, 2] of SIFT matches between two grey images (Lowe ratio 0.7)."""
    sift = cv2.SIFT_create(4000)
    ka, da = sift.detectAndCompute(a, None)
    kb, db = sift.detectAndCompute(b, None)
    pairs = [m for m, n in cv2.BFMatcher().knnMatch(da, db, k=2) if m.distance < 0.7 * n.distance]
    return (
        np.array([ka[m.queryIdx].pt for m in pairs], np.float64),
        np.array([kb[m.trainIdx].pt for m in pairs], np.float64),
    )


def _epipolar_check(c2w: np.ndarray, K: np.ndarray, i: int, j: int, pa: np.ndarray, pb: np.ndarray):
    """(median symmetric epipolar distance in px, fraction of triangulated matches in front of both cameras,
    their depths in camera i) of matches pa <-> pb under the poses c2w[i], c2w[j]."""
    w2c = [np.linalg.inv(c2w[k]) for k in (i, j)]
    rel = w2c[1] @ c2w[i]  # camera i -> camera j
    R, t = rel[:3, :3], rel[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(K[j]).T @ tx @ R @ np.linalg.inv(K[i])
    ha, hb = np.c_[pa, np.ones(len(pa))], np.c_[pb, np.ones(len(pb))]
    la, lb = ha @ F.T, hb @ F  # epipolar lines in image j and in image i
    num = np.abs(np.sum(hb * la, axis=1))
    dist = 0.5 * (num / np.hypot(la[:, 0], la[:, 1]) + num / np.hypot(lb[:, 0], lb[:, 1]))
    X = cv2.triangulatePoints(K[i] @ w2c[0][:3], K[j] @ w2c[1][:3], pa.T, pb.T)
    X = (X[:3] / X[3]).T
    za = (np.c_[X, np.ones(len(X))] @ w2c[0].T)[:, 2]
    zb = (np.c_[X, np.ones(len(X))] @ w2c[1].T)[:, 2]
    return float(np.median(dist)), float(np.mean((za > 0) & (zb > 0))), za


def test_llff_poses_agree_with_image_matches():
    """Independent of COLMAP's model: SIFT matches of two fern views (OpenCV) obey the epipolar geometry of the
    imported poses and intrinsics (f = 3260.5 / 8 px, centred principal point) within a pixel, and triangulate
    in front of both cameras, inside the file's near/far bounds. The raw LLFF rotation read as OpenCV fails."""
    src = load_pose_source(POSES, (504, 378))
    assert src.kind == "llff" and len(src.names) == 20 and src.bounds is not None
    K = np.stack([c.calibration_matrix() for c in frame_cameras(src, list(range(20)), 504, 378).targets.values()])
    np.testing.assert_allclose(K[0], [[3260.52633 / 8, 0, 252], [0, 3260.52633 / 8, 189], [0, 0, 1]], atol=1e-3)
    K = np.repeat(K[:1], 20, axis=0)
    grey = [cv2.imread(str(IMAGES / f"image{k:03d}.png"), cv2.IMREAD_GRAYSCALE) for k in (10, 19)]
    pa, pb = _sift_matches(*grey)
    assert len(pa) > 100
    med, front, za = _epipolar_check(src.c2w, K, 10, 19, pa, pb)
    assert med < 1.0 and front > 0.95
    near, far = src.bounds[10]
    assert np.mean((za > 0.9 * near) & (za < 1.1 * far)) > 0.95
    # negative control: the LLFF matrix taken as OpenCV axes as-is (a proper rotation too) does not fit
    raw = np.load(POSES)[:, :15].reshape(-1, 3, 5)
    wrong = np.tile(np.eye(4), (20, 1, 1))
    wrong[:, :3, :4] = raw[:, :, :4]
    med_wrong, front_wrong, _ = _epipolar_check(wrong, K, 10, 19, pa, pb)
    assert med_wrong > 10 * med and med_wrong > 3.0 and front_wrong < 0.5
    # every camera looks the same way (forward-facing scene) and sees the scene centre in front of it
    fwd = src.c2w[:, :3, 2]
    assert np.all(fwd @ fwd.mean(0) > 0.9)


def test_llff_split_rule():
    """The papers' fern split for 3 views, and the rule's properties for 6 and 9 views."""
    assert llff_split(20, 3) == ([1, 10, 19], [0, 8, 16])
    for n in (6, 9):
        train, test = llff_split(20, n)
        assert test == [0, 8, 16] and len(train) == n == len(set(train))
        assert train == sorted(train) and train[0] == 1 and train[-1] == 19
        assert not set(train) & set(test) and all(i % 8 for i in train)
        # evenly spread over the 17 remaining views: gaps between picks (in that list) differ by at most 1
        rest = [i for i in range(20) if i % 8]
        gaps = np.diff([rest.index(i) for i in train])
        assert gaps.max() - gaps.min() <= 1
    assert llff_split(20, 0)[0] == [i for i in range(20) if i % 8]
    split = make_split(20, [f"images/{i:06d}.png" for i in range(20)], SplitConfig(protocol="llff", train_views=3))
    assert split.prior == split.train == [1, 10, 19] and split.protocol == "llff,train_views=3"
    with pytest.raises(ReconError, match="leaves 17 of 20 views"):
        llff_split(20, 18)
    reg = np.ones(20, bool)
    reg[10] = False
    with pytest.raises(ReconError, match=r"views \[10\] have no pose"):
        make_split(20, [str(i) for i in range(20)], SplitConfig(protocol="llff", train_views=3), reg)


@pytest.mark.parametrize(
    "fields, expect",
    [
        ({"test_every": 4}, "holds out every 8th view; split.test_every must be 8, got 4"),
        ({"prior_frames": "non-test"}, "prior_frames must be train"),
        ({"split_file": FERN / "PROVENANCE.md"}, "cannot be combined with a split file"),
        ({"protocol": "llf"}, "split.protocol"),
    ],
)
def test_llff_config_conflicts(fields, expect):
    with pytest.raises(ReconError, match=expect):
        SplitConfig(**{"protocol": "llff", **fields}).validate()


@pytest.fixture(scope="module")
def fern_split_run(tmp_path_factory) -> RunPaths:
    """frames -> poses (LLFF poses, triangulated) -> split -> depth (stereo, 3 views) of fern by the CLI, cpu preset."""
    out = tmp_path_factory.mktemp("fern") / "run"
    argv = ["depth", str(IMAGES), "--out", str(out), "--preset", "cpu", "-q", "--poses", str(POSES)]
    assert main([*argv, "--split-protocol", "llff", "--train-views", "3"]) == 0
    return RunPaths(out)


def test_fern_run_keeps_size_views_and_bounds(fern_split_run):
    """The cpu preset's 320 px frame cap does not apply under llff; every image is a frame in order, posed;
    the split is the papers'; the near/far bounds are in cameras.json per frame."""
    run = fern_split_run
    frames = FramesIndex.load(run.frames_json)
    assert frames.size == (504, 378) and len(frames) == 20
    assert [f["source_name"] for f in frames.frames] == [f"image{i:03d}.png" for i in range(20)]
    cams = CameraSet.load(run.cameras_json)
    assert cams.registered.all() and (cams.width, cams.height) == (504, 378)
    np.testing.assert_allclose(cams.c2w, load_pose_source(POSES, (504, 378)).c2w, atol=1e-12)
    bounds = np.load(POSES)[:, 15:]
    np.testing.assert_allclose(cams.sfm["bounds"], bounds)
    # the protocol gives the method the 3 training views only: the SfM points come from their features alone
    # (373 points, 0.38 px when measured)
    assert cams.sfm["mapper"] == "known (llff)" and cams.sfm["points"] > 250
    assert cams.sfm["points_from"] == [1, 10, 19]
    assert cams.sfm["mean_reprojection_error_px"] < 1.5
    split = Split.load(run.split_json)
    assert (split.train, split.test, split.prior) == ([1, 10, 19], [0, 8, 16], [1, 10, 19])
    manifest = json.loads(run.manifest.read_text())
    assert manifest["stages"]["frames"]["config"]["max_size"] == 0
    # the train stage refuses a size cap that would not evaluate at 504x378 (e.g. --set train.max_size=128)
    with pytest.raises(ReconError, match="evaluates at the frame size 504x378, but train.max_size 128"):
        _check_llff_size(cams, TrainConfig(max_size=128))
    _check_llff_size(cams, TrainConfig(max_size=0))


def test_llff_refuses_resized_frames(fern_split_run, capsys):
    """A frames cap set after the protocol (--set) reaches the split stage, which names the problem."""
    out = fern_split_run.root.parent / "resized"
    argv = ["depth", str(IMAGES), "--out", str(out), "--preset", "cpu", "-q", "--poses", str(POSES)]
    argv += ["--split-protocol", "llff", "--set", "frames.max_size=252"]
    capsys.readouterr()
    assert main(argv) == 2
    last = capsys.readouterr().err.split("\nerror: ")[-1].strip()  # after the order-matching warning
    assert "\n" not in last
    err = " ".join(last.split())
    assert "llff: frames are 252x189 but the input images are 504x378; the protocol needs every input" in err
    assert main(["frames", str(IMAGES), "--out", str(out), "--split-protocol", "llff", "--max-size", "320"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --max-size 320: --split-protocol llff keeps every input image at its size"


def test_llff_points_must_come_from_the_training_views(fern_split_run):
    """The split stage refuses known-pose SfM points triangulated from other views than its training views (e.g.
    --set split.train_views=6 after the poses stage ran with 3), and the API applies the protocol as the CLI does."""
    from recon.api import make_config
    from recon.stages.split import check_llff_points

    cams = CameraSet.load(fern_split_run.cameras_json)
    check_llff_points(cams, [1, 10, 19], 3)
    with pytest.raises(ReconError, match=r"triangulated from views \[1, 10, 19\], not the training views \[1, 4, 7"):
        check_llff_points(cams, llff_split(20, 6)[0], 6)
    cfg = make_config("cpu", split={"protocol": "llff", "train_views": 6})
    assert cfg.poses.points_llff_train_views == 6 and cfg.frames.max_size == 0 and cfg.train.max_size == 0
    assert make_config("cpu").poses.points_llff_train_views == -1


def _npy(path: Path, arr) -> Path:
    np.save(path, arr, allow_pickle=True)
    return path


def test_bad_poses_bounds_files_are_one_line(tmp_path):
    good = np.load(POSES)
    nan = good.copy()
    nan[3, 7] = np.nan
    swapped = good.copy()
    swapped[5, 15:] = [80.0, 17.0]
    zero_f = good.copy()
    zero_f[2, 14] = 0.0
    (tmp_path / "pickled.npy").write_bytes(pickle.dumps(good))
    cases = {
        _npy(tmp_path / "shape.npy", good[:, :15]): r"must be an \[N, 17\] array .* got shape \[20, 15\]",
        _npy(tmp_path / "nan.npy", nan): "view 3: NaN or infinite values",
        _npy(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object)): "not a readable LLFF poses_bounds.npy",
        tmp_path / "pickled.npy": "not a readable LLFF poses_bounds.npy",
        _npy(tmp_path / "bounds.npy", swapped): r"view 5: depth bounds \(near 80, far 17\)",
        _npy(tmp_path / "focal.npy", zero_f): r"view 2: hwf = \(3024, 4032, 0\)",
        _npy(tmp_path / "text.npy", np.array(["a", "b"])): "must hold numbers",
    }
    for path, expect in cases.items():
        with pytest.raises(ReconError, match=expect) as info:
            load_pose_source(path, (504, 378))
        assert "\n" not in str(info.value)
