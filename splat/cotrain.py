"""Co-regularisation of two Gaussian fields (as CoR-GS, Zhang et al., ECCV 2024): the geometry parts.

Two fields trained on the same sparse views from the same init differ where densification placed Gaussians
that the views do not constrain; CoR-GS reads that disagreement as error. Co-pruning removes the Gaussians
whose centre has no centre of the other field within a distance; pseudo-view co-regularisation renders both
fields at a camera near the training ones and penalises their photometric difference there. `splat.trainer`
runs the twin (`TrainConfig.co_reg_weight`, `co_prune_every`); this module holds the pure functions it uses.

Written here because no library used by the project samples CoR-GS / FSGS pseudo cameras or matches two
point sets by a nearest-neighbour threshold in one call (the nearest neighbours come from scipy's cKDTree,
the rotation average from scipy's Rotation).
"""

from __future__ import annotations

import numpy as np


def pseudo_pose(c2w: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """One pseudo camera near the training cameras (CoR-GS's and FSGS's unseen-view sampling).

    A training camera i is drawn at random; j is the training camera whose centre is nearest to i's. The
    pseudo camera sits at i's centre moved by Gaussian noise of std `noise` x |c_i - c_j| per axis, and looks
    along the rotation halfway between i's and j's (their quaternion mean). With one training camera it is
    that camera.

    Args:
        c2w: [T, 4, 4] camera-to-world of the training cameras (OpenCV axes, scene units), T >= 1.
        rng: the generator drawing i and the noise.
        noise: std of the move as a fraction of the distance to the nearest other training camera (>= 0).
    Returns:
        [4, 4] float64 camera-to-world of the pseudo camera.
    """
    from scipy.spatial.transform import Rotation

    c2w = np.asarray(c2w, np.float64)
    i = int(rng.integers(len(c2w)))
    out = c2w[i].copy()
    if len(c2w) < 2:
        return out
    centres = c2w[:, :3, 3]
    dist = np.linalg.norm(centres - centres[i], axis=1)
    dist[i] = np.inf
    j = int(np.argmin(dist))
    out[:3, :3] = Rotation.from_matrix(c2w[[i, j], :3, :3]).mean().as_matrix()
    out[:3, 3] = centres[i] + rng.normal(0.0, noise * float(dist[j]), 3)
    return out


def non_matching(a: np.ndarray, b: np.ndarray, tau: float) -> np.ndarray:
    """bool [Na]: the points of `a` [Na, 3] whose nearest point of `b` [Nb, 3] is farther than `tau` (same units
    as the points); every point when b is empty (CoR-GS's non-matching mask M)."""
    from scipy.spatial import cKDTree

    a, b = np.asarray(a, np.float64).reshape(-1, 3), np.asarray(b, np.float64).reshape(-1, 3)
    if len(b) == 0:
        return np.ones(len(a), bool)
    d, _ = cKDTree(b).query(a, k=1)
    return np.asarray(d > tau)
