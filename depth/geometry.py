"""Camera geometry shared by every layer: pose inversion, OpenCV/OpenGL axes, projection, back-projection, Sim(3).

Conventions (one set everywhere): OpenCV camera axes (x right, y down, z forward); `c2w` is a 4x4 float64
camera-to-world matrix, `w2c` its inverse; `K` is 3x3 in pixels, and the centre of pixel (col c, row r) is at
image coordinates (c + 0.5, r + 0.5) as in COLMAP. OpenGL / nerfstudio / Blender axes (x right, y up, looking
along -z) appear only at file boundaries, converted by `opengl_to_opencv` / `opencv_to_opengl`.

Sim(3): SfM reconstructs a scene only up to a similarity (rotation, translation and, for a monocular camera,
scale); `umeyama` is the least-squares similarity of Umeyama (1991), "Least-squares estimation of
transformation parameters between two point patterns", IEEE TPAMI 13(4).
"""

from __future__ import annotations

import numpy as np

from depth.errors import DepthError

# Flipping y and z turns OpenGL camera axes into OpenCV ones (and back: the flip is its own inverse).
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """c2w [..., 4, 4] with OpenGL camera axes -> c2w with OpenCV camera axes (same world frame)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """c2w [..., 4, 4] with OpenCV camera axes -> OpenGL camera axes (same world frame)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Invert rigid transforms [..., 4, 4] (c2w <-> w2c) without a general matrix inverse."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def project(points: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points [N, 3] into a camera: (uv [N, 2] image coordinates in pixels, z [N] depth).

    K [3, 3] pixels, w2c [4, 4] OpenCV. Points behind the camera get z <= 0 (their uv is meaningless).
    """
    cam = np.asarray(points) @ np.asarray(w2c)[:3, :3].T + np.asarray(w2c)[:3, 3]
    z = cam[:, 2]
    zs = np.where(np.abs(z) > 1e-12, z, 1e-12)
    u = K[0, 0] * cam[:, 0] / zs + K[0, 2]
    v = K[1, 1] * cam[:, 1] / zs + K[1, 2]
    return np.stack([u, v], axis=1), z


def backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """World points [N, 3] float64 of the pixels with depth > 0 (and `mask`), in row-major order.

    Args:
        depth: [H, W] z-depth in scene units, 0 = invalid.
        K: [3, 3] intrinsics in pixels (pixel centres at +0.5).
        c2w: [4, 4] camera-to-world, OpenCV axes.
        mask: optional [H, W] bool selecting pixels (e.g. a stride pattern).
    """
    depth = np.asarray(depth, dtype=np.float64)
    sel = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        sel &= mask
    rows, cols = np.nonzero(sel)
    z = depth[rows, cols]
    x = (cols + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (rows + 0.5 - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z], axis=1)
    return cam @ np.asarray(c2w)[:3, :3].T + np.asarray(c2w)[:3, 3]


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K [..., 3, 3] for an image resized by (sx, sy) = (new width / old width, new height / old height).

    With pixel centres at +0.5 a resize scales the principal point exactly like the focal length.
    """
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity mapping `src` onto `dst`: dst_i ~ s * R @ src_i + t.

    Args:
        src: [N, 3] points (e.g. estimated camera centres, any units).
        dst: [N, 3] corresponding points (e.g. ground-truth centres, metres).
        with_scale: estimate the scale s; False fixes s = 1 (rigid SE(3) alignment).
    Returns:
        (s, R, t): scale (float), rotation [3, 3] (det +1), translation [3] in `dst` units.
    Raises:
        DepthError: fewer than 3 correspondences, shape mismatch, or all `src` points coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise DepthError(
            f"Sim(3) alignment needs two [N, 3] point sets of equal shape, got {src.shape} and {dst.shape}"
        )
    n = src.shape[0]
    if n < 3:
        raise DepthError(f"Sim(3) alignment needs at least 3 corresponding points, got {n}")
    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    src_c = src - mu_src
    dst_c = dst - mu_dst
    var_src = float((src_c**2).sum() / n)
    if var_src <= 1e-18:
        raise DepthError("Sim(3) alignment is undefined: all source points coincide")
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


def ate_rmse(
    est_centers: np.ndarray, gt_centers: np.ndarray, with_scale: bool = True
) -> tuple[float, np.ndarray, tuple[float, np.ndarray, np.ndarray]]:
    """Absolute trajectory error after Sim(3) (or SE(3)) alignment of the estimate onto ground truth.

    Args:
        est_centers: [N, 3] estimated camera centres (SfM units).
        gt_centers: [N, 3] ground-truth camera centres (GT units, e.g. metres).
    Returns:
        (rmse, aligned, (s, R, t)): RMSE of the centre errors in GT units, the aligned estimate [N, 3], and the
        similarity that maps the estimate onto the ground truth.
    """
    s, R, t = umeyama(est_centers, gt_centers, with_scale=with_scale)
    aligned = apply_sim3(est_centers, s, R, t)
    err = np.linalg.norm(aligned - np.asarray(gt_centers, dtype=np.float64), axis=1)
    return float(np.sqrt(np.mean(err**2))), aligned, (s, R, t)
