"""Similarity (Sim(3)) alignment of point sets and absolute trajectory error.

SfM reconstructs a scene only up to a similarity transform (rotation, translation and, for a
monocular camera, scale). To compare estimated camera centres with ground truth, the estimate is
first mapped onto the ground truth with the least-squares similarity of Umeyama (1991), "Least-squares
estimation of transformation parameters between two point patterns", IEEE TPAMI 13(4).
"""

from __future__ import annotations

import numpy as np

from recon.errors import ReconError


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity mapping `src` onto `dst`: dst_i ~ s * R @ src_i + t.

    Args:
        src: [N, 3] points (e.g. estimated camera centres, any units).
        dst: [N, 3] corresponding points (e.g. ground-truth centres, metres).
        with_scale: estimate the scale s; False fixes s = 1 (rigid SE(3) alignment).

    Returns:
        (s, R, t): scale (float), rotation [3, 3] (det +1), translation [3] in `dst` units.

    Raises:
        ReconError: fewer than 3 correspondences, shape mismatch, or all `src` points coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ReconError(
            f"Sim(3) alignment needs two [N, 3] point sets of equal shape, got {src.shape} and {dst.shape}"
        )
    n = src.shape[0]
    if n < 3:
        raise ReconError(f"Sim(3) alignment needs at least 3 corresponding points, got {n}")
    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    src_c = src - mu_src
    dst_c = dst - mu_dst
    var_src = float((src_c**2).sum() / n)
    if var_src <= 1e-18:
        raise ReconError("Sim(3) alignment is undefined: all source points coincide")
    cov = dst_c.T @ src_c / n  # [3, 3]
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0  # reflection -> proper rotation
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_src) if with_scale else 1.0
    t = mu_dst - s * R @ mu_src
    return s, R, t


def apply_sim3(points: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[N, 3] points mapped by x -> s * R @ x + t."""
    return s * np.asarray(points, dtype=np.float64) @ np.asarray(R).T + np.asarray(t)


def apply_sim3_to_c2w(c2w: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """c2w [..., 4, 4] re-expressed in the target frame: rotation R @ R_c2w, centre s * R @ c + t."""
    c2w = np.asarray(c2w, dtype=np.float64)
    out = c2w.copy()
    out[..., :3, :3] = np.asarray(R) @ c2w[..., :3, :3]
    out[..., :3, 3] = s * (c2w[..., :3, 3] @ np.asarray(R).T) + np.asarray(t)
    return out


def ate_rmse(
    est_centers: np.ndarray, gt_centers: np.ndarray, with_scale: bool = True
) -> tuple[float, np.ndarray, tuple[float, np.ndarray, np.ndarray]]:
    """Absolute trajectory error after Sim(3) (or SE(3)) alignment of the estimate onto ground truth.

    Args:
        est_centers: [N, 3] estimated camera centres (SfM units).
        gt_centers: [N, 3] ground-truth camera centres (GT units, e.g. metres).

    Returns:
        (rmse, aligned, (s, R, t)): RMSE of the centre errors in GT units, the aligned estimate
        [N, 3], and the similarity that maps the estimate onto the ground truth.
    """
    s, R, t = umeyama(est_centers, gt_centers, with_scale=with_scale)
    aligned = apply_sim3(est_centers, s, R, t)
    err = np.linalg.norm(aligned - np.asarray(gt_centers, dtype=np.float64), axis=1)
    return float(np.sqrt(np.mean(err**2))), aligned, (s, R, t)
