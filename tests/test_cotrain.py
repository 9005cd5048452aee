"""splat.cotrain, the geometry of CoR-GS's co-regularisation: pseudo cameras near the training cameras and the
non-matching mask of co-pruning, checked against direct computations (the Trainer's twin: tests/test_train.py)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from splat.cotrain import non_matching, pseudo_pose


def _cameras(rng: np.random.Generator, n: int) -> np.ndarray:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=1).as_matrix()
    c2w[:, :3, 3] = rng.normal(0, 2.0, (n, 3))
    return c2w


def test_pseudo_pose_sits_at_a_training_camera_looking_halfway_to_its_nearest():
    rng = np.random.default_rng(0)
    c2w = _cameras(rng, 5)
    centres = c2w[:, :3, 3]
    for _ in range(20):
        p = pseudo_pose(c2w, rng, 0.0)
        i = int(np.argmin(np.linalg.norm(centres - p[:3, 3], axis=1)))
        np.testing.assert_allclose(p[:3, 3], centres[i], atol=1e-12)  # noise 0: exactly a training centre
        d = np.linalg.norm(centres - centres[i], axis=1)
        d[i] = np.inf
        j = int(np.argmin(d))
        r = Rotation.from_matrix(p[:3, :3])
        ri, rj = Rotation.from_matrix(c2w[i, :3, :3]), Rotation.from_matrix(c2w[j, :3, :3])
        half = (ri.inv() * rj).magnitude() / 2  # the angle from i to j, halved
        np.testing.assert_allclose([(ri.inv() * r).magnitude(), (rj.inv() * r).magnitude()], [half, half], atol=1e-9)
        np.testing.assert_allclose(p[3], [0, 0, 0, 1])
        np.testing.assert_allclose(p[:3, :3] @ p[:3, :3].T, np.eye(3), atol=1e-12)


def test_pseudo_pose_noise_scales_with_the_nearest_camera_distance():
    """Two cameras 3 units apart: the move is Gaussian with std noise x 3 per axis (4000 draws: within 5 %)."""
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[1, :3, 3] = [3.0, 0.0, 0.0]
    rng = np.random.default_rng(1)
    moves = []
    for _ in range(4000):
        p = pseudo_pose(c2w, rng, 0.25)
        c = p[:3, 3]
        moves.append(c - c2w[int(np.linalg.norm(c) > np.linalg.norm(c - c2w[1, :3, 3])), :3, 3])
    std = np.std(np.array(moves), axis=0)
    np.testing.assert_allclose(std, 0.75, rtol=0.05)
    one = pseudo_pose(c2w[:1], rng, 0.25)  # a single training camera: that camera
    np.testing.assert_array_equal(one, c2w[0])


def test_non_matching_equals_the_brute_force_nearest_distance():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1, 1, (500, 3)), rng.uniform(-1, 1, (300, 3))
    nearest = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    for tau in (0.05, 0.1, 0.2):
        m = non_matching(a, b, tau)
        assert m.dtype == bool and m.shape == (500,)
        np.testing.assert_array_equal(m, nearest > tau)
        assert 0 < m.sum() < 500
    assert non_matching(a, np.zeros((0, 3)), 0.1).all()
    assert not non_matching(a, a, 0.0).any()
