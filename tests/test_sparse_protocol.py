"""Sparse-view protocol pieces: which frames the depth prior covers, and an SfM init that only holds what
the training views see (7-Scenes SfM run of the pose stage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from recon.artifacts.cameras import CameraSet
from recon.errors import ReconError
from recon.sfm import read_sfm_points
from recon.stages.split import Config as SplitConfig
from recon.stages.split import make_split


@pytest.mark.parametrize(
    "cfg, prior",
    [
        (SplitConfig(test_every=4, train_views=2), [1, 7]),
        (SplitConfig(test_every=4, train_views=2, prior_frames="non-test"), [1, 2, 3, 6, 7]),
        (SplitConfig(test_every=4, train_views=2, prior_frames="all"), [0, 1, 4, 7]),
        (SplitConfig(test_every=4, train_views=2, prior_from_all_frames=True), [0, 1, 4, 7]),
    ],
)
def test_prior_frames(cfg, prior):
    registered = np.ones(8, bool)
    registered[5] = False  # unregistered frames are in no set
    split = make_split(8, [f"{i:06d}.png" for i in range(8)], cfg, registered)
    assert split.test == [0, 4] and split.train == [1, 7]
    assert split.prior == prior


def test_prior_frames_rejects_unknown_mode():
    with pytest.raises(ReconError, match="prior_frames must be train, non-test or all"):
        make_split(4, ["a", "b", "c", "d"], SplitConfig(prior_frames="video"))


def test_sfm_init_keeps_points_the_training_views_triangulate(redkitchen_sfm_run):
    sfm = redkitchen_sfm_run.sfm_dir
    cams = CameraSet.load(redkitchen_sfm_run.cameras_json)
    rec = pycolmap.Reconstruction(str(sfm))
    all_xyz, _ = read_sfm_points(sfm)
    assert len(all_xyz) == rec.num_points3D()
    train = [10, 13, 16]  # three nearby frames of the 60: they share many points
    names = {Path(cams.files[i]).name for i in train}
    ids = {im.image_id for im in rec.images.values() if im.name in names}
    assert len(ids) == 3
    expect = np.array(
        [p.xyz for p in rec.points3D.values() if len({e.image_id for e in p.track.elements} & ids) >= 2], np.float32
    )
    xyz, rgb = read_sfm_points(sfm, names, min_views=2)
    print(f"\nSfM init: {len(xyz)} of {len(all_xyz)} points are seen by >= 2 of training frames {train}")
    assert 50 < len(xyz) < 0.5 * len(all_xyz)
    np.testing.assert_array_equal(xyz, expect)
    assert rgb.shape == (len(xyz), 3) and rgb.dtype == np.uint8
    # min_views 1 keeps more, 0 keeps everything
    assert len(xyz) < len(read_sfm_points(sfm, names, min_views=1)[0]) < len(all_xyz)
    assert len(read_sfm_points(sfm, names, min_views=0)[0]) == len(all_xyz)
    # views that share no point: a clear error, not an empty init
    with pytest.raises(ReconError, match="no SfM point .* is observed by 4\\+ of the 3 training views"):
        read_sfm_points(sfm, names, min_views=4)


def test_random_fill_covers_the_training_views_frustums(redkitchen_sfm_run):
    """Three nearby 7-Scenes views do not converge on an object: the fill points lie in their frustums, within the
    depths of the SfM points each view sees (0.8 x 0.8 x nearest .. 1.2 x 1.2 x farthest), half of them near those
    depths, and cover every training image (before: a box around the SfM points, which leaves image regions nearly
    empty: 4 of 3000 points in one cell of view 10)."""
    from depth.geometry import invert_pose, project
    from recon.stages.train import Config as TrainConfig
    from recon.stages.train import read_initial_points
    from splat.gaussians import camera_lookat_bounds

    cams = CameraSet.load(redkitchen_sfm_run.cameras_json)
    train = [10, 13, 16]
    run = redkitchen_sfm_run
    rng = np.random.default_rng
    assert camera_lookat_bounds(cams.c2w[train], cams.K[train], cams.width, cams.height) is None
    base, _ = read_initial_points(run, TrainConfig(init="sfm", init_random_fill=0), cams, train, rng(0))
    xyz, rgb = read_initial_points(run, TrainConfig(init="sfm", init_random_fill=3000), cams, train, rng(0))
    assert len(xyz) == len(rgb) == len(base) + 3000
    np.testing.assert_array_equal(xyz[: len(base)], base)  # the SfM points come first, unchanged
    fill = xyz[len(base) :].astype(np.float64)

    def in_image(points: np.ndarray, v: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        uv, z = project(points, cams.K[v], invert_pose(cams.c2w[v]))
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cams.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= cams.height)
        return uv, z, ok

    inside = np.zeros(len(fill), bool)
    for v in train:
        _, z_sfm, seen = in_image(base.astype(np.float64), v)
        lo, hi = z_sfm[seen].min(), z_sfm[seen].max()
        uv, z, ok = in_image(fill, v)
        ok &= (z >= 0.64 * lo - 1e-4) & (z <= 1.44 * hi + 1e-4)
        inside |= ok
        # every cell of a 4 x 4 grid over the image holds fill points
        cell = (np.floor(uv[ok] / [cams.width / 4, cams.height / 4])).astype(int).clip(0, 3)
        counts = np.bincount(cell[:, 1] * 4 + cell[:, 0], minlength=16)
        assert counts.min() >= 20, (v, counts)
        # half follow the scene's depths: the median is within 20 % of the SfM points' median depth in this view
        assert abs(np.median(z[ok]) / np.median(z_sfm[seen]) - 1) < 0.2, (np.median(z[ok]), np.median(z_sfm[seen]))
    assert inside.all()


def test_stereo_gives_a_prior_on_three_far_apart_views(redkitchen_run_copy):
    """3 training views spread over the whole 15 s clip share little: plane-sweep stereo falls back to a looser
    overlap rule (depth.stereo sparse_min_overlap) and still gives each view a confident partial prior (before:
    "no valid depth on any of the 3 prior frames"; measured: about 20 % of the pixels of each view)."""
    from recon.artifacts import DisparityMaps
    from recon.atomic import write_json
    from recon.stages import StageContext, depth

    paths = redkitchen_run_copy
    write_json(paths.split_json, {"protocol": "test", "train": [0, 30, 59], "test": [8, 16], "prior": [0, 30, 59]})
    depth.run(StageContext(paths), depth.Config(backend="stereo", preview=False))
    maps = DisparityMaps.load(paths.disparity_npz)
    disp = np.asarray(maps.disparity)
    for i in (0, 30, 59):
        valid = disp[i] > 0
        assert 0.08 < valid.mean() < 0.9, (i, valid.mean())
        assert np.isfinite(disp[i][valid]).all()
