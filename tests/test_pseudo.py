"""splat.pseudo: the depth prior's surface seen from pseudo cameras (FSGS's pseudo-view depth without a model)."""

from __future__ import annotations

import numpy as np
from seven_scenes import RedkitchenGT

from depth.geometry import scale_intrinsics
from splat.pseudo import depth_grid_mesh, prior_depth_targets
from splat.views import resize_nearest

SIZE = (160, 120)


def _gt(gt: RedkitchenGT, frames: list[int]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """GT depth of `frames` at SIZE in the depth camera's own pixels, its K, the GT poses (all consistent)."""
    depth = [resize_nearest(gt.read_depth(f), SIZE) for f in frames]
    K = scale_intrinsics(gt.K_depth, SIZE[0] / 640, SIZE[1] / 480)
    return depth, np.stack([K] * len(frames)), gt.c2w(frames)


def test_targets_match_the_gt_depth_of_a_frame_between_two_others():
    """7-Scenes: GT depth of frames 0 and 60 as the prior, the camera of frame 30 (about 0.4 m from each) as the
    pseudo camera: the target agrees with frame 30's own GT depth on most of its pixels (measured: coverage 0.94
    of frame 30's valid pixels, relative error median 0.4 %, 90th percentile 1.1 %)."""
    gt = RedkitchenGT()
    (d0, d30, d60), K, c2w = _gt(gt, [0, 30, 60])
    halves = [np.full(SIZE[::-1], 0.25, np.float32), np.full(SIZE[::-1], 0.75, np.float32)]
    targets = prior_depth_targets([d0, d60], K[[0, 2]], c2w[[0, 2]], c2w[[1]], K[1], halves)
    t = targets.depth[0]
    both = (t > 0) & (d30 > 0)
    rel = np.abs(t[both] - d30[both]) / d30[both]
    print(f"coverage {both.sum() / (d30 > 0).sum():.3f}, median {np.median(rel):.4f}, p90 {np.quantile(rel, 0.9):.4f}")
    assert both.sum() > 0.8 * (d30 > 0).sum()
    assert np.median(rel) < 0.015 and np.quantile(rel, 0.9) < 0.05
    # Each hit carries the confidence of the view whose surface it hit; both views are seen.
    c = targets.confidence[0][t > 0]
    assert np.all(np.isclose(c, 0.25) | np.isclose(c, 0.75)) and np.isclose(c, 0.25).any() and np.isclose(c, 0.75).any()
    # Without frame 60 the part of frame 30's view that only frame 60 saw has no target (is not guessed).
    alone = prior_depth_targets([d0], K[[0]], c2w[[0]], c2w[[1]], K[1]).depth[0]
    assert ((alone > 0) & (d30 > 0)).sum() < both.sum()


def test_a_prior_camera_sees_its_own_depth():
    """The pseudo camera at a prior view's pose gets that view's depth back wherever a triangle covers the pixel
    centre (everywhere but the depth edges and the last row and column)."""
    gt = RedkitchenGT()
    (d0,), K, c2w = _gt(gt, [0])
    conf = np.tile(np.linspace(0.0, 1.0, SIZE[0], dtype=np.float32), (SIZE[1], 1))  # the prior's confidence
    targets = prior_depth_targets([d0], K, c2w, c2w, K[0], [conf])
    t = targets.depth[0]
    hit = t > 0
    assert hit.sum() > 0.8 * (d0 > 0).sum()
    np.testing.assert_allclose(t[hit], d0[hit], rtol=2e-4)
    np.testing.assert_allclose(targets.confidence[0][hit], conf[hit], atol=1e-4)  # each ray hits its own vertex
    assert not targets.confidence[0][~hit].any()


def test_depth_edges_are_cut_not_stretched():
    """A square at depth 1 before a wall at depth 3, seen from a camera moved sideways: the wall behind the
    square's edge, which the prior never saw, has no target; joined across the edge (edge_ratio inf) the mesh
    would give it a skin of made-up depths between 1 and 3."""
    W, H = 64, 48
    K = np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])
    depth = np.full((H, W), 3.0, np.float32)
    depth[14:34, 22:42] = 1.0
    eye = np.eye(4)
    moved = eye.copy()
    moved[0, 3] = 0.3  # 0.3 units to the right: the square shifts 15 px left, the wall 5 px
    cut = prior_depth_targets([depth], K[None], eye[None], moved[None], K).depth[0]
    skin = prior_depth_targets([depth], K[None], eye[None], moved[None], K, edge_ratio=np.inf).depth[0]
    between = lambda d: ((d > 1.01) & (d < 2.99)).sum()  # noqa: E731
    assert between(cut) == 0 and between(skin) > 50, (between(cut), between(skin))
    assert ((cut == 0) & (skin > 0)).sum() >= between(skin)  # the skin's pixels are holes instead
    hit = cut[cut > 0]
    assert np.all(np.isclose(hit, 1.0, rtol=1e-5) | np.isclose(hit, 3.0, rtol=1e-5))
    assert np.isclose(hit, 1.0).any() and np.isclose(hit, 3.0).any()


def test_grid_mesh_keeps_valid_triangles_within_the_ratio():
    depth = np.array([[1.0, 1.0, 2.0], [1.0, 1.0, 0.0]], np.float32)  # one depth edge, one invalid pixel
    v, f = depth_grid_mesh(depth, np.array([[1.0, 0, 1.5], [0, 1.0, 1.0], [0, 0, 1]]), np.eye(4))
    assert v.shape == (6, 3) and f.dtype == np.uint32
    assert sorted(map(sorted, f.tolist())) == [[0, 1, 3], [1, 3, 4]]  # the left block only
