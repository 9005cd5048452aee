"""splat.unpool, the neighbour search of FSGS's proximity-guided unpooling, checked against brute force (the
Trainer's unpooling step: tests/test_train.py)."""

from __future__ import annotations

import numpy as np

from splat.unpool import proximity, unpool_edges


def _brute(means: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nbrs = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, nbrs, 1).mean(1), nbrs


def test_proximity_is_the_mean_distance_to_the_k_nearest_others():
    means = np.random.default_rng(0).normal(0, 1, (300, 3))
    score, nbrs = proximity(means, 3)
    want_score, want_nbrs = _brute(means, 3)
    np.testing.assert_allclose(score, want_score, rtol=1e-12)
    np.testing.assert_array_equal(nbrs, want_nbrs)  # continuous draws: no ties
    score, nbrs = proximity(means[:3], 5)  # fewer Gaussians than k + 1: the k' = 2 others
    np.testing.assert_allclose(score, _brute(means[:3], 2)[0], rtol=1e-12)
    assert nbrs.shape == (3, 2)
    assert proximity(means[:1], 3)[1].shape == (1, 0)


def test_unpool_edges_grow_from_the_isolated_gaussians_only():
    """A 10 x 10 x 10 grid of spacing 0.1 (proximity 0.1) and three far points at different distances: only the
    three are above a 0.5 threshold, the most isolated first, each with an edge to its 3 nearest (brute force)."""
    g = np.arange(10) * 0.1
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    far = np.array([[5.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 20.0]])
    means = np.concatenate([grid, far])
    src, dst = unpool_edges(means, 3, 0.5)
    n = len(grid)
    np.testing.assert_array_equal(src, np.repeat([n + 2, n + 1, n], 3))
    want = _brute(means, 3)[1]  # the grid has ties in distance: compare each far point's neighbours as a set
    np.testing.assert_array_equal(np.sort(dst.reshape(3, 3), 1), np.sort(want[[n + 2, n + 1, n]], 1))
    assert len(unpool_edges(means, 3, 100.0)[0]) == 0
    assert len(unpool_edges(grid, 3, 0.05)[0]) == 3 * n  # every grid point is 0.1 from its neighbours
    assert len(unpool_edges(far[:1], 3, 0.0)[0]) == 0
