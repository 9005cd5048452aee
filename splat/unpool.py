"""Proximity-guided Gaussian unpooling (as FSGS, Zhu et al., ECCV 2024): the geometry part.

Few training views leave gaps between the Gaussians that gradient-driven densification never fills (no pixel
error points into an empty region). FSGS scores each Gaussian by its proximity, the mean distance to its K
nearest Gaussians, and grows a new Gaussian at the middle of each edge from a Gaussian whose score is above a
threshold to its K neighbours. `splat.trainer` runs it during densification (`TrainConfig.unpool_every`) and
builds the new Gaussians' parameters; this module holds the pure neighbour search (also the initial
Gaussians' size, `splat.gaussians.knn_scales`).

Written here because no library used by the project grows Gaussians by proximity (gsplat's strategies split and
clone by gradient, relocate by opacity); the nearest neighbours come from scipy's cKDTree.
"""

from __future__ import annotations

import numpy as np


def proximity(means: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FSGS's proximity score and the neighbours it is taken over.

    Args:
        means: [N, 3] Gaussian centres (scene units).
        k: neighbours per Gaussian (FSGS: 3); fewer when N - 1 < k (none when N < 2).
    Returns:
        score [N] float64, the mean distance (scene units) to the k nearest other centres, and
        neighbours [N, k'] int64 (k' = min(k, N - 1)), their indices, nearest first.
    """
    from scipy.spatial import cKDTree

    means = np.asarray(means, np.float64).reshape(-1, 3)
    k = min(int(k), len(means) - 1)
    if k < 1:
        return np.zeros(len(means)), np.zeros((len(means), 0), np.int64)
    dist, idx = cKDTree(means).query(means, k=k + 1)
    # Column 0 is the point itself (distance 0); duplicates of a point may swap places with it, harmlessly:
    # a duplicate at distance 0 is a neighbour like any other.
    return dist[:, 1:].mean(1), np.asarray(idx[:, 1:], np.int64)


def unpool_edges(means: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The edges FSGS grows a Gaussian on: from each Gaussian whose proximity score is above `threshold` to each
    of its k nearest Gaussians.

    Args:
        means: [N, 3] Gaussian centres (scene units).
        k: neighbours per Gaussian. threshold: the score above which a Gaussian is unpooled (scene units).
    Returns:
        (source [M], target [M]) int64 index arrays, M = k' x the number of unpooled Gaussians, grouped by
        source, the most isolated source (highest score) first, ties in index order; the new centres are
        (means[source] + means[target]) / 2.
    """
    score, nbrs = proximity(means, k)  # fewer than 2 Gaussians: no neighbours, no edges
    sel = np.flatnonzero(score > threshold)
    sel = sel[np.argsort(-score[sel], kind="stable")]
    return np.repeat(sel, nbrs.shape[1]).astype(np.int64), nbrs[sel].reshape(-1)
