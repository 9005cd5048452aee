"""Compiled (numba) CPU rasterizer: projection, tile binning and compositing with their backward passes.

The same three steps and the same numbers as `splat.cpu_raster` (gsplat 1.4.0 semantics; that module's
docstring gives the compositing rules), written as loops that numba compiles once (`cache=True`: later
processes load the machine code from `__pycache__`) and runs on all cores:

- `project_gaussians`: EWA projection, one autograd Function; forward and a hand-derived backward are
  parallel loops over Gaussians (to means, quats, scales and, when asked, viewmats).
- `bin_tiles`: (tile, splat) pairs front to back, with the same "alpha reaches 1/255 in the tile" test as the
  torch binning; returns `splat.cpu_raster.TileBins`, so `meta` is built as before.
- `rasterize_to_pixels`: per-tile, per-pixel front-to-back compositing (parallel over tiles). The backward
  pass walks each pixel's list front to back again (no division by 1 - alpha) and writes each (tile, splat)
  pair's gradient into that pair's own slot; a second parallel loop over splats sums the slots of each
  splat. No two threads ever write the same memory, so the result does not depend on the thread count.

Numbers are computed in float64 inside the kernels whatever the tensor dtype (float32 or float64; each dtype
compiles its own machine code on first use).

Threads: numba's pool (NUMBA_NUM_THREADS, default all cores); `set_threads` / the `num_threads` argument of
`splat.render.rasterization` choose fewer per call.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from splat.cpu_raster import ALPHA_MAX, ALPHA_MIN, T_MIN, TileBins, _tile_boxes

# OpenMP (libgomp, installed by the set-up) before TBB: numba's default order probes TBB first and warns when the
# system's TBB is older than it supports; the workqueue layer is the fallback that always exists.
numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]  # type: ignore[attr-defined]

_JIT: dict[str, Any] = dict(cache=True, nogil=True, error_model="numpy")
_REACH_MARGIN = 1e-3  # as cpu_raster._reaches_tile: never drops a pair that contributes
_SKIP_MARGIN = 1e-4  # sigma beyond log(255 opacity) + this: alpha < 1/255 for sure, skip exp


# --------------------------------------------------------------------------------------------
# Projection (3x3 matrices as row-major 9-tuples: they stay in registers)
# --------------------------------------------------------------------------------------------


@njit(**_JIT)
def _mm(a, b):
    """a @ b for 3x3 matrices as row-major 9-tuples."""
    return (
        a[0] * b[0] + a[1] * b[3] + a[2] * b[6],
        a[0] * b[1] + a[1] * b[4] + a[2] * b[7],
        a[0] * b[2] + a[1] * b[5] + a[2] * b[8],
        a[3] * b[0] + a[4] * b[3] + a[5] * b[6],
        a[3] * b[1] + a[4] * b[4] + a[5] * b[7],
        a[3] * b[2] + a[4] * b[5] + a[5] * b[8],
        a[6] * b[0] + a[7] * b[3] + a[8] * b[6],
        a[6] * b[1] + a[7] * b[4] + a[8] * b[7],
        a[6] * b[2] + a[7] * b[5] + a[8] * b[8],
    )


@njit(**_JIT)
def _mm_at(a, b):
    """a^T @ b for 3x3 matrices as row-major 9-tuples."""
    return (
        a[0] * b[0] + a[3] * b[3] + a[6] * b[6],
        a[0] * b[1] + a[3] * b[4] + a[6] * b[7],
        a[0] * b[2] + a[3] * b[5] + a[6] * b[8],
        a[1] * b[0] + a[4] * b[3] + a[7] * b[6],
        a[1] * b[1] + a[4] * b[4] + a[7] * b[7],
        a[1] * b[2] + a[4] * b[5] + a[7] * b[8],
        a[2] * b[0] + a[5] * b[3] + a[8] * b[6],
        a[2] * b[1] + a[5] * b[4] + a[8] * b[7],
        a[2] * b[2] + a[5] * b[5] + a[8] * b[8],
    )


@njit(**_JIT)
def _mm_bt(a, b):
    """a @ b^T for 3x3 matrices as row-major 9-tuples."""
    return (
        a[0] * b[0] + a[1] * b[1] + a[2] * b[2],
        a[0] * b[3] + a[1] * b[4] + a[2] * b[5],
        a[0] * b[6] + a[1] * b[7] + a[2] * b[8],
        a[3] * b[0] + a[4] * b[1] + a[5] * b[2],
        a[3] * b[3] + a[4] * b[4] + a[5] * b[5],
        a[3] * b[6] + a[4] * b[7] + a[5] * b[8],
        a[6] * b[0] + a[7] * b[1] + a[8] * b[2],
        a[6] * b[3] + a[7] * b[4] + a[8] * b[5],
        a[6] * b[6] + a[7] * b[7] + a[8] * b[8],
    )


@njit(**_JIT)
def _camera_terms(means, quats, scales, viewmats, Ks, c, n, width, height, near, far):
    """Forward intermediates of Gaussian n in camera c, the formulas of cpu_raster._project_gaussians.

    Returns (q, R, M, W, WM, S, p, depth, J, cov2): q = (w, x, y, z, |q|) normalised quaternion and its norm,
    R = R(q), M = R diag(s), W = viewmat rotation, WM = W M, S = Sigma_c = (W M)(W M)^T (9-tuples),
    p = camera-frame mean, depth = (in_depth, z used, 1/z, x/z, y/z, x/z clipped, y/z clipped),
    J = (j00, j02, j11, j12) the non-zero Jacobian entries, cov2 = (cxx, cxy, cyy) undilated.
    """
    qw, qx, qy, qz = quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]
    norm = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12)
    w, x, y, z = qw / norm, qx / norm, qy / norm, qz / norm
    R = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
    M = (R[0] * s0, R[1] * s1, R[2] * s2, R[3] * s0, R[4] * s1, R[5] * s2, R[6] * s0, R[7] * s1, R[8] * s2)
    V = viewmats[c]
    W = (V[0, 0], V[0, 1], V[0, 2], V[1, 0], V[1, 1], V[1, 2], V[2, 0], V[2, 1], V[2, 2])
    mx, my, mz = means[n, 0], means[n, 1], means[n, 2]
    p = (
        W[0] * mx + W[1] * my + W[2] * mz + V[0, 3],
        W[3] * mx + W[4] * my + W[5] * mz + V[1, 3],
        W[6] * mx + W[7] * my + W[8] * mz + V[2, 3],
    )
    WM = _mm(W, M)
    S = _mm_bt(WM, WM)
    fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
    in_depth = near <= p[2] <= far
    zz = p[2] if in_depth else 1.0
    rz = 1.0 / zz
    tfx, tfy = 0.5 * width / fx, 0.5 * height / fy
    ux, uy = p[0] * rz, p[1] * rz
    uxc = min(max(ux, -(cx / fx + 0.3 * tfx)), (width - cx) / fx + 0.3 * tfx)
    uyc = min(max(uy, -(cy / fy + 0.3 * tfy)), (height - cy) / fy + 0.3 * tfy)
    j00, j02 = fx * rz, -fx * (zz * uxc) * rz * rz
    j11, j12 = fy * rz, -fy * (zz * uyc) * rz * rz
    cxx = j00 * j00 * S[0] + 2 * j00 * j02 * S[2] + j02 * j02 * S[8]
    cxy = j00 * j11 * S[1] + j00 * j12 * S[2] + j02 * j11 * S[5] + j02 * j12 * S[8]
    cyy = j11 * j11 * S[4] + 2 * j11 * j12 * S[5] + j12 * j12 * S[8]
    depth = (in_depth, zz, rz, ux, uy, uxc, uyc)
    return (w, x, y, z, norm), R, M, W, WM, S, p, depth, (j00, j02, j11, j12), (cxx, cxy, cyy)


@njit(parallel=True, **_JIT)
def _project_fwd(
    means,
    quats,
    scales,
    viewmats,
    Ks,
    width,
    height,
    eps2d,
    near,
    far,
    radius_clip,
    radii,
    means2d,
    depths,
    conics,
    comp,
):
    C, N = radii.shape
    for k in prange(C * N):
        c, n = k // N, k % N
        _, _, _, _, _, _, p, depth, _, cov2 = _camera_terms(
            means, quats, scales, viewmats, Ks, c, n, width, height, near, far
        )
        in_depth, rz = depth[0], depth[2]
        mx = Ks[c, 0, 0] * p[0] * rz + Ks[c, 0, 2]
        my = Ks[c, 1, 1] * p[1] * rz + Ks[c, 1, 2]
        det_orig = cov2[0] * cov2[2] - cov2[1] * cov2[1]
        cxx, cxy, cyy = cov2[0] + eps2d, cov2[1], cov2[2] + eps2d
        det = cxx * cyy - cxy * cxy
        ds = max(det, 1e-10)
        means2d[c, n, 0], means2d[c, n, 1], depths[c, n] = mx, my, p[2]
        conics[c, n, 0], conics[c, n, 1], conics[c, n, 2] = cyy / ds, -cxy / ds, cxx / ds
        comp[c, n] = math.sqrt(max(det_orig / ds, 1e-12))
        b = 0.5 * (cxx + cyy)
        radius = math.ceil(3.0 * math.sqrt(b + math.sqrt(max(b * b - det, 0.01))))
        valid = in_depth and det > 0 and radius > radius_clip
        valid = valid and mx + radius > 0 and mx - radius < width and my + radius > 0 and my - radius < height
        radii[c, n] = int(radius) if valid else 0


@njit(**_JIT)
def _cov2_grad(cov2, eps2d, ga, gb, gc, g_comp):
    """dL/d(cxx, cxy, cyy) of the undilated 2D covariance from dL/dconic (a, b, c) and dL/dcompensation."""
    cxx, cxy, cyy = cov2[0] + eps2d, cov2[1], cov2[2] + eps2d
    det = cxx * cyy - cxy * cxy
    ds = max(det, 1e-10)
    gxx, gxy, gyy = gc / ds, -gb / ds, ga / ds
    g_det = -(ga * cyy - gb * cxy + gc * cxx) / (ds * ds) if det > 1e-10 else 0.0
    if g_comp != 0.0:
        det_orig = cov2[0] * cov2[2] - cxy * cxy
        ratio = det_orig / ds
        if ratio > 1e-12:
            g_ratio = g_comp * 0.5 / math.sqrt(ratio)
            g_do = g_ratio / ds
            gxx += g_do * cov2[2]
            gyy += g_do * cov2[0]
            gxy += -2.0 * cxy * g_do
            if det > 1e-10:
                g_det -= g_ratio * det_orig / (ds * ds)
    return gxx + g_det * cyy, gxy - 2.0 * cxy * g_det, gyy + g_det * cxx


@njit(**_JIT)
def _quat_grad(g, q):
    """dL/dq (4 scalars) of the raw quaternion from dL/dR (9-tuple), q = (w, x, y, z, |q|) as _camera_terms."""
    w, x, y, z, norm = q
    dw = 2 * (-z * g[1] + y * g[2] + z * g[3] - x * g[5] - y * g[6] + x * g[7])
    dx = 2 * (y * g[1] + z * g[2] + y * g[3] - 2 * x * g[4] - w * g[5] + z * g[6] + w * g[7] - 2 * x * g[8])
    dy = 2 * (-2 * y * g[0] + x * g[1] + w * g[2] + x * g[3] + z * g[5] - w * g[6] + z * g[7] - 2 * y * g[8])
    dz = 2 * (-2 * z * g[0] - w * g[1] + x * g[2] + w * g[3] - 2 * z * g[4] + y * g[5] + x * g[6] + y * g[7])
    if norm <= 1e-12:  # F.normalize divides by the clamped norm, a constant there
        return dw / norm, dx / norm, dy / norm, dz / norm
    dot = w * dw + x * dx + y * dy + z * dz
    return (dw - w * dot) / norm, (dx - x * dot) / norm, (dy - y * dot) / norm, (dz - z * dot) / norm


@njit(**_JIT)
def _mean_grad(g_jac, gmx, gmy, g_depth, Ks, c, p, depth):
    """dL/dp (3 scalars, camera-frame mean) from dL/d(j00, j02, j11, j12), dL/dmeans2d and dL/ddepth."""
    in_depth, zz, rz, ux, uy, uxc, uyc = depth
    fx, fy = Ks[c, 0, 0], Ks[c, 1, 1]
    g00, g02, g11, g12 = g_jac
    tx, ty = zz * uxc, zz * uyc
    g_tx, g_ty = -fx * rz * rz * g02, -fy * rz * rz * g12
    g_rz = fx * g00 + fy * g11 - 2.0 * rz * (fx * tx * g02 + fy * ty * g12)
    g_zz = uxc * g_tx + uyc * g_ty  # t = z * clip(x / z)
    gx, gy = fx * rz * gmx, fy * rz * gmy  # means2d = f x / z + c
    g_rz += fx * p[0] * gmx + fy * p[1] * gmy
    if ux == uxc:  # not clipped to the frustum margin
        gx += rz * zz * g_tx
        g_rz += p[0] * zz * g_tx
    if uy == uyc:
        gy += rz * zz * g_ty
        g_rz += p[1] * zz * g_ty
    g_zz -= rz * rz * g_rz
    return gx, gy, (g_zz if in_depth else 0.0) + g_depth


@njit(**_JIT)
def _cov_chain(gxx, gxy, gyy, jac, S):
    """dL/dSigma_c (9-tuple) and dL/d(j00, j02, j11, j12) from dL/d(cxx, cxy, cyy), cov2 = J Sigma_c J^T."""
    j00, j02, j11, j12 = jac
    g01 = 0.5 * gxy
    r0, r1, r2 = (j00 * gxx, j00 * g01), (j11 * g01, j11 * gyy), (j02 * gxx + j12 * g01, j02 * g01 + j12 * gyy)
    H = (
        r0[0] * j00, r0[1] * j11, r0[0] * j02 + r0[1] * j12,
        r1[0] * j00, r1[1] * j11, r1[0] * j02 + r1[1] * j12,
        r2[0] * j00, r2[1] * j11, r2[0] * j02 + r2[1] * j12,
    )  # fmt: skip  # J^T G J
    a0, a1, a2 = gxx * j00, g01 * j11, gxx * j02 + g01 * j12  # rows of G J
    b0, b1, b2 = g01 * j00, gyy * j11, g01 * j02 + gyy * j12
    g_jac = (
        2 * (a0 * S[0] + a1 * S[3] + a2 * S[6]),
        2 * (a0 * S[2] + a1 * S[5] + a2 * S[8]),
        2 * (b0 * S[1] + b1 * S[4] + b2 * S[7]),
        2 * (b0 * S[2] + b1 * S[5] + b2 * S[8]),
    )  # dL/dJ = 2 G J Sigma_c at the non-zero entries
    return H, g_jac


@njit(parallel=True, **_JIT)
def _project_bwd(
    means, quats, scales, viewmats, Ks, width, height, eps2d, near, far, g_m2, g_depth, g_conic, g_comp, out, out_view
):
    """Gradients of the projection. out [N, 10]: dL/d(means 3, quats 4, scales 3); out_view [C, N, 12] (rotation
    row-major then translation, per Gaussian) when it has N rows, else untouched."""
    C, N = g_depth.shape
    want_view = out_view.shape[1] == N
    for n in prange(N):
        out[n] = 0.0
        for c in range(C):
            gc = g_conic[c, n]
            gm2 = g_m2[c, n]
            if want_view:
                out_view[c, n] = 0.0
            if gm2[0] == 0 and gm2[1] == 0 and g_depth[c, n] == 0 and gc[0] == 0 and gc[1] == 0 and gc[2] == 0:
                if g_comp[c, n] == 0:
                    continue
            q, R, M, W, WM, S, p, depth, jac, cov2 = _camera_terms(
                means, quats, scales, viewmats, Ks, c, n, width, height, near, far
            )
            gxx, gxy, gyy = _cov2_grad(cov2, eps2d, gc[0], gc[1], gc[2], g_comp[c, n])
            H, g_jac = _cov_chain(gxx, gxy, gyy, jac, S)
            gp = _mean_grad(g_jac, gm2[0], gm2[1], g_depth[c, n], Ks, c, p, depth)
            g_wm = _mm(H, WM)  # dL/d(W M) = 2 H (W M): the 2 is applied below
            g_m = _mm_at(W, g_wm)
            for j in range(3):
                out[n, j] += W[j] * gp[0] + W[3 + j] * gp[1] + W[6 + j] * gp[2]
                out[n, 7 + j] += 2 * (g_m[j] * R[j] + g_m[3 + j] * R[3 + j] + g_m[6 + j] * R[6 + j])
            s0, s1, s2 = 2 * scales[n, 0], 2 * scales[n, 1], 2 * scales[n, 2]
            g_rot = (
                g_m[0] * s0, g_m[1] * s1, g_m[2] * s2, g_m[3] * s0, g_m[4] * s1, g_m[5] * s2,
                g_m[6] * s0, g_m[7] * s1, g_m[8] * s2,
            )  # fmt: skip
            dq = _quat_grad(g_rot, q)
            for j in range(4):
                out[n, 3 + j] += dq[j]
            if want_view:
                g_w = _mm_bt(g_wm, M)
                for i in range(3):
                    for j in range(3):
                        out_view[c, n, 3 * i + j] = gp[i] * means[n, j] + 2 * g_w[3 * i + j]
                    out_view[c, n, 9 + i] = gp[i]


# --------------------------------------------------------------------------------------------
# Tile binning
# --------------------------------------------------------------------------------------------


@njit(**_JIT)
def _reaches_tile(x0, y0, span, a, b, c, inv_a, inv_c, limit):
    """cpu_raster._reaches_tile for one pair: can sigma be <= limit (alpha reach 1/255) at a pixel centre of the
    tile whose first centre is (x0, y0) relative to the mean, span = tile_size - 1? Exact minimum over the tile."""
    x1, y1 = x0 + span, y0 + span
    xe = min(max(0.0, x0), x1)
    ye = min(max(0.0, y0), y1)
    y_at = min(max(-b * xe * inv_c, y0), y1)
    x_at = min(max(-b * ye * inv_a, x0), x1)
    s1 = 0.5 * (a * xe * xe + c * y_at * y_at) + b * xe * y_at
    s2 = 0.5 * (a * x_at * x_at + c * ye * ye) + b * x_at * ye
    return min(s1, s2) <= limit


@njit(parallel=True, **_JIT)
def _box_pairs(order, box_off, tmin, span, cams, means2d, conics, opac, tile_size, tile_width, tile_height, pair_tile):
    """pair_tile[box_off[r] + k]: global tile of the k-th tile in the box of splat order[r], or -1 where alpha
    cannot reach 1/255 in that tile (no test when conics is empty)."""
    per_cam = tile_width * tile_height
    test = conics.shape[0] > 0
    for r in prange(order.shape[0]):
        s = order[r]
        k = box_off[r]
        if test:
            a, b, c = conics[s, 0], conics[s, 1], conics[s, 2]
            inv_a, inv_c = 1.0 / a, 1.0 / c
            limit = math.log(max(opac[s], 1e-30) * 255.0) + _REACH_MARGIN
        for ty in range(tmin[s, 1], tmin[s, 1] + span[s, 1]):
            for tx in range(tmin[s, 0], tmin[s, 0] + span[s, 0]):
                keep = True
                if test:
                    x0 = tx * tile_size + 0.5 - means2d[s, 0]
                    y0 = ty * tile_size + 0.5 - means2d[s, 1]
                    keep = _reaches_tile(x0, y0, tile_size - 1, a, b, c, inv_a, inv_c, limit)
                pair_tile[k] = cams[s] * per_cam + ty * tile_width + tx if keep else -1
                k += 1


@njit(parallel=True, **_JIT)
def _sort_pairs(order, box_off, pair_tile, n_tiles, per_cam, depth_bits, n_chunks):
    """Stable counting sort of the kept pairs by tile (pairs arrive nearest splat first, so each tile's list is
    front to back), parallel over n_chunks runs of splats with equal pair counts (a histogram per run; run c's
    pairs of a tile follow those of runs < c). Returns flatten_ids, isect_tiles, isect_ids (gsplat's keys:
    camera | tile | float32 depth bits, as splat.render._isect_ids) [n_isects], tile_start, tile_count [n_tiles]
    and slot [n_box_pairs] (sorted position of each box pair, -1 when dropped)."""
    rows = np.searchsorted(box_off, np.linspace(0, box_off[-1], n_chunks + 1)[1:-1])
    cuts = np.concatenate((np.zeros(1, np.int64), rows.astype(np.int64), np.full(1, order.shape[0], np.int64)))
    hist = np.zeros((n_chunks, n_tiles), np.int64)
    for c in prange(n_chunks):
        for k in range(box_off[cuts[c]], box_off[cuts[c + 1]]):
            if pair_tile[k] >= 0:
                hist[c, pair_tile[k]] += 1
    tile_count, tile_start = hist.sum(axis=0), np.empty(n_tiles, np.int64)
    cursor = np.empty((n_chunks, n_tiles), np.int64)
    total = 0
    for t in range(n_tiles):
        tile_start[t] = total
        for c in range(n_chunks):
            cursor[c, t] = total
            total += hist[c, t]
    tile_bits = 0
    while (1 << tile_bits) <= per_cam:
        tile_bits += 1  # per_cam.bit_length()
    flatten_ids, isect_tiles, isect_ids = (
        np.empty(total, np.int64),
        np.empty(total, np.int64),
        np.empty(total, np.int64),
    )
    slot = np.full(pair_tile.shape[0], -1, np.int64)
    for c in prange(n_chunks):
        for r in range(cuts[c], cuts[c + 1]):
            s = order[r]
            for k in range(box_off[r], box_off[r + 1]):
                t = pair_tile[k]
                if t >= 0:
                    pos = cursor[c, t]
                    cursor[c, t] += 1
                    flatten_ids[pos], isect_tiles[pos], slot[k] = s, t, pos
                    isect_ids[pos] = (
                        ((t // per_cam) << (32 + tile_bits)) | ((t % per_cam) << 32) | (depth_bits[s] & 0xFFFFFFFF)
                    )
    return flatten_ids, isect_tiles, isect_ids, tile_start, tile_count, slot


class NumbaBins(TileBins):
    """TileBins plus what the compiled backward pass needs to sum each splat's pair gradients without races."""

    order: np.ndarray  # [V] visible splats, nearest first
    box_off: np.ndarray  # [V + 1] first box pair of each
    slot: np.ndarray  # [n_box_pairs] sorted intersection of each box pair, -1 = dropped
    isect_ids: Tensor  # [n_isects] gsplat's intersection keys for meta


def _nearest_first(visible: np.ndarray, depth_bits: np.ndarray) -> np.ndarray:
    """visible [V] (splat ids, ascending) ordered by depth, nearest first, ties in id order: a stable argsort.
    depth_bits [S] int32: the float32 depths' bits. Sorts one int64 key per splat (depth bits made monotonic in
    the high half, the position in the low half: unique keys, so any sort is stable), which numpy's SIMD sort does
    in 0.5 ms for 50k splats where torch's and numpy's stable float argsorts take 3.2 ms."""
    bits = depth_bits[visible]
    neg = bits >> 31  # -1 for negative floats: flip their magnitude bits so that the ints order as the floats, and
    bits = (bits ^ (neg & 0x7FFFFFFF)) - neg  # shift them up by one so that -0.0 ties with 0.0
    keys = (bits.astype(np.int64) << 32) | np.arange(visible.shape[0], dtype=np.int64)
    keys.sort()
    return visible[keys & 0xFFFFFFFF]


@torch.no_grad()
def bin_tiles(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    camera_ids: Tensor,
    n_cameras: int,
    width: int,
    height: int,
    tile_size: int,
    conics: Tensor | None = None,
    opacities: Tensor | None = None,
    threads: int | None = None,
) -> NumbaBins:
    """Compiled `splat.cpu_raster.bin_tiles` (same arguments, same lists): splats listed front to back in every
    tile their +-radius box overlaps, less the pairs where alpha stays below 1/255 (with conics and opacities);
    threads: numba threads (None = default_threads())."""
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = n_cameras * tile_width * tile_height
    tmin, span, tiles_per_splat = _tile_boxes(means2d, radii, tile_size, tile_width, tile_height)
    visible = torch.nonzero(tiles_per_splat > 0).squeeze(1).numpy()
    depth_bits = depths.detach().float().contiguous().view(torch.int32).numpy()
    order = _nearest_first(visible, depth_bits)
    counts = tiles_per_splat.numpy()[order]
    box_off = np.zeros(order.shape[0] + 1, np.int64)
    np.cumsum(counts, out=box_off[1:])
    pair_tile = np.empty(int(box_off[-1]), np.int64)
    m2 = _np(means2d)
    cn, op = np.zeros((0, 3), m2.dtype), np.zeros(0, m2.dtype)  # empty: no alpha test
    if conics is not None and opacities is not None:
        cn, op = _np(conics), _np(opacities)
    with _Threads(threads) as pool:
        _box_pairs(
            order, box_off, tmin.numpy(), span.numpy(), camera_ids.numpy(), m2, cn, op, tile_size, tile_width,
            tile_height, pair_tile,
        )  # fmt: skip
        flatten_ids, isect_tiles, isect_ids, tile_start, tile_count, slot = _sort_pairs(
            order, box_off, pair_tile, n_tiles, tile_width * tile_height, depth_bits.astype(np.int64), pool.n
        )
    bins = NumbaBins(
        tile_size,
        tile_width,
        tile_height,
        n_cameras,
        torch.from_numpy(flatten_ids),
        torch.from_numpy(tile_start),
        torch.from_numpy(tile_count),
        tiles_per_splat,
        torch.from_numpy(isect_tiles),
    )
    bins.order, bins.box_off, bins.slot, bins.isect_ids = order, box_off, slot, torch.from_numpy(isect_ids)
    return bins


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


# --------------------------------------------------------------------------------------------
# Compositing
# --------------------------------------------------------------------------------------------


def _consts(dtype: np.dtype) -> np.ndarray:
    """The compositing constants in the tensors' dtype, so float32 inputs are composited in float32 arithmetic
    (as the torch path and gsplat do; float32 exp is twice as fast) and float64 inputs in float64:
    [1/2, ALPHA_MAX, ALPHA_MIN, T_MIN, 1, 0]."""
    return np.array([0.5, ALPHA_MAX, ALPHA_MIN, T_MIN, 1.0, 0.0], dtype)


@njit(**_JIT)
def _gather(means2d, conics, colors, opac, flatten_ids, start, n):
    """The n splats of one tile's list into contiguous rows of the input dtype: g [n, 8] (mean x, y, conic a, b, c,
    opacity, sigma beyond which alpha < 1/255 for sure, 1/a) and col [n, D]."""
    g = np.empty((n, 8), means2d.dtype)
    col = np.empty((n, colors.shape[1]), colors.dtype)
    for j in range(n):
        s = flatten_ids[start + j]
        g[j, 0], g[j, 1] = means2d[s, 0], means2d[s, 1]
        g[j, 2], g[j, 3], g[j, 4] = conics[s, 0], conics[s, 1], conics[s, 2]
        g[j, 5] = opac[s]
        g[j, 6] = math.log(max(opac[s], 1e-30) * 255.0) + _SKIP_MARGIN
        g[j, 7] = 1.0 / conics[s, 0] if conics[s, 0] > 0 else 0.0
        for d in range(colors.shape[1]):
            col[j, d] = colors[s, d]
    return g, col


@njit(**_JIT)
def _centres(x0, n, k):
    """Pixel-centre coordinates x0 + i + 1/2, i < n, in the constants' dtype."""
    c = np.empty(n, k.dtype)
    for i in range(n):
        c[i] = x0 + i
        c[i] += k[0]
    return c


@njit(**_JIT)
def _row_skip(gj, bdy, cdy2, dx_first, dx_last, k):
    """Whether sigma(dx) = a dx^2 / 2 + bdy dx + cdy2 exceeds the skip limit on every pixel of the row
    (dx = mean x - pixel centre x, from dx_first down to dx_last): the exact minimum over the row."""
    if gj[7] == k[5]:  # a <= 0 cannot happen for a visible splat; never skip on that ground
        return False
    dx = min(max(-bdy * gj[7], dx_last), dx_first)
    return k[0] * gj[2] * dx * dx + bdy * dx + cdy2 > gj[6]


@njit(**_JIT)
def _pair_alpha(gj, dx, bdy, cdy2, k):
    """(alpha, exp(-sigma), unclamped alpha) of one splat at one pixel; alpha = 0 where the splat is skipped
    (sigma < 0, or alpha < 1/255)."""
    sigma = k[0] * gj[2] * dx * dx + bdy * dx + cdy2
    if sigma < k[5] or sigma > gj[6]:
        return k[5], k[5], k[5]
    gauss = math.exp(-sigma)
    raw = gj[5] * gauss
    alpha = min(k[1], raw)
    if alpha < k[2]:
        return k[5], k[5], k[5]
    return alpha, gauss, raw


@njit(**_JIT)
def _tile_at(t, tile_size, tile_width, tile_height, W, H, k):
    """Global tile t: its camera, first pixel row y0 and column x0, and its pixel-centre x [nx] and y [ny]."""
    per_cam = tile_width * tile_height
    cam, local = t // per_cam, t % per_cam
    y0, x0 = (local // tile_width) * tile_size, (local % tile_width) * tile_size
    return cam, y0, x0, _centres(x0, min(tile_size, W - x0), k), _centres(y0, min(tile_size, H - y0), k)


@njit(**_JIT)
def _tile_fwd(g, col, cx, cy, trans, acc, k):
    """Front-to-back compositing of one tile, splat after splat over its pixels (centres cx [nx], cy [ny]; pixel
    p = row * nx + column). Writes trans [P] (final transmittance) and acc [P, D] (sum of w_i c_i)."""
    nx, ny = cx.shape[0], cy.shape[0]
    done = np.zeros(nx * ny, np.bool_)
    live = nx * ny
    trans[:] = k[4]
    acc[:] = k[5]
    for j in range(g.shape[0]):
        gj = g[j]
        for ry in range(ny):
            dy = gj[1] - cy[ry]
            bdy, cdy2 = gj[3] * dy, k[0] * gj[4] * dy * dy
            if _row_skip(gj, bdy, cdy2, gj[0] - cx[0], gj[0] - cx[nx - 1], k):
                continue  # alpha < 1/255 on the whole row
            for rx in range(nx):
                p = ry * nx + rx
                if done[p]:
                    continue
                alpha, _, _ = _pair_alpha(gj, gj[0] - cx[rx], bdy, cdy2, k)
                if alpha == k[5]:
                    continue
                next_t = trans[p] * (k[4] - alpha)
                if next_t <= k[3]:  # this splat and all behind it are left out
                    done[p] = True
                    live -= 1
                    continue
                w = alpha * trans[p]
                for d in range(col.shape[1]):
                    acc[p, d] += w * col[j, d]
                trans[p] = next_t
        if live == 0:
            break


@njit(parallel=True, **_JIT)
def _raster_fwd(
    means2d, conics, colors, opac, flatten_ids, tile_start, tile_count, tile_size, tile_width, tile_height, k, out,
    trans, tiles, bounds,
):  # fmt: skip
    """Front-to-back compositing, parallel over the workers of _deal_tiles (tiles, bounds). out [C, H, W, D] (sum
    of w_i c_i, no background) and trans [C, H, W] (final transmittance) are written for every pixel;
    k = _consts(dtype)."""
    C, H, W, D = out.shape
    for w in prange(bounds.shape[0] - 1):
        for i in range(bounds[w], bounds[w + 1]):
            t = tiles[i]
            cam, y0, x0, cx, cy = _tile_at(t, tile_size, tile_width, tile_height, W, H, k)
            nx, ny = cx.shape[0], cy.shape[0]
            g, col = _gather(means2d, conics, colors, opac, flatten_ids, tile_start[t], tile_count[t])
            tr, acc = np.empty(nx * ny, k.dtype), np.empty((nx * ny, D), k.dtype)
            _tile_fwd(g, col, cx, cy, tr, acc, k)
            for ry in range(ny):
                for rx in range(nx):
                    trans[cam, y0 + ry, x0 + rx] = tr[ry * nx + rx]
                    for d in range(D):
                        out[cam, y0 + ry, x0 + rx, d] = acc[ry * nx + rx, d]


@njit(**_JIT)
def _tile_bwd(g, col, cx, cy, gpix, head, absgrad, k, v):
    """One tile's pair gradients v [n, K] (see _raster_bwd), splat after splat as _tile_fwd.

    gpix [P, D] = dL/dcolour per pixel; head [P] = tail + sum_i w_i g.c_i (all splats of the pixel)."""
    nx, ny, D = cx.shape[0], cy.shape[0], col.shape[1]
    trans, prefix = np.full(nx * ny, k[4]), np.full(nx * ny, k[5])
    done = np.zeros(nx * ny, np.bool_)
    live = nx * ny
    for j in range(g.shape[0]):
        if live == 0:
            break  # every pixel saturated: the splats behind get no gradient (their rows stay 0)
        gj = g[j]
        a, b, c = gj[2], gj[3], gj[4]
        v_mx = v_my = v_a = v_b = v_c = v_o = abs_x = abs_y = k[5]
        for ry in range(ny):
            dy = gj[1] - cy[ry]
            bdy, cdy2 = b * dy, k[0] * c * dy * dy
            if _row_skip(gj, bdy, cdy2, gj[0] - cx[0], gj[0] - cx[nx - 1], k):
                continue
            for rx in range(nx):
                p = ry * nx + rx
                if done[p]:
                    continue
                dx = gj[0] - cx[rx]
                alpha, gauss, raw = _pair_alpha(gj, dx, bdy, cdy2, k)
                if alpha == k[5]:
                    continue
                next_t = trans[p] * (k[4] - alpha)
                if next_t <= k[3]:
                    done[p] = True
                    live -= 1
                    continue
                w = alpha * trans[p]
                gc = k[5]
                for d in range(D):
                    gc += gpix[p, d] * col[j, d]
                    v[j, 6 + d] += w * gpix[p, d]
                prefix[p] += w * gc
                trans[p] = next_t
                if raw > k[1]:
                    continue  # alpha clamped: no gradient to opacity or sigma
                g_alpha = -(head[p] - prefix[p] - next_t * gc) / (k[4] - alpha)
                v_o += g_alpha * gauss
                g_sigma = -g_alpha * alpha
                gmx, gmy = g_sigma * (a * dx + b * dy), g_sigma * (b * dx + c * dy)
                v_mx += gmx
                v_my += gmy
                v_a += k[0] * g_sigma * dx * dx
                v_b += g_sigma * dx * dy
                v_c += k[0] * g_sigma * dy * dy
                abs_x += abs(gmx)
                abs_y += abs(gmy)
        v[j, 0], v[j, 1], v[j, 2], v[j, 3], v[j, 4], v[j, 5] = v_mx, v_my, v_a, v_b, v_c, v_o
        if absgrad:
            v[j, 6 + D], v[j, 7 + D] = abs_x, abs_y


@njit(**_JIT)
def _pixel_heads(cam, y0, x0, nx, ny, out, trans, backgrounds, v_colors, v_alphas, k):
    """A tile's gpix [P, D] = dL/dcolour and head [P] = tail + sum_i w_i g.c_i per pixel (see _raster_bwd)."""
    D = out.shape[3]
    gpix, head = np.empty((nx * ny, D), k.dtype), np.empty(nx * ny, k.dtype)
    for ry in range(ny):
        for rx in range(nx):
            py, px, p = y0 + ry, x0 + rx, ry * nx + rx
            tail = -v_alphas[cam, py, px, 0]
            head[p] = k[5]
            for d in range(D):
                gpix[p, d] = v_colors[cam, py, px, d]
                head[p] += gpix[p, d] * out[cam, py, px, d]
                if backgrounds.shape[0] > 0:
                    tail += gpix[p, d] * backgrounds[cam, d]
            head[p] += tail * trans[cam, py, px]
    return gpix, head


@njit(**_JIT)
def _deal_tiles(tile_count, n_workers):
    """The tiles dealt to n_workers lists of near-equal work, heaviest tile first to the least-loaded worker
    (longest-processing-time rule; work = the tile's pairs + 8 for its per-tile cost): worker w composites
    tiles[bounds[w] : bounds[w + 1]] (int64).

    Why by hand: numba's prange gives each thread one contiguous block of its range whatever
    set_parallel_chunksize says (measured with numba 0.68 on its omp and workqueue layers), and the tiles of a
    scene differ in work: 50k Gaussians at 320x240 put 41k pairs in the top half of the tiles and 120k in the
    bottom one, so 2 threads composited only ~1.25x faster than one."""
    n = tile_count.shape[0]
    load = np.zeros(n_workers, np.int64)
    owner = np.empty(n, np.int64)
    for t in np.argsort(-tile_count, kind="mergesort"):
        w = np.argmin(load)
        owner[t] = w
        load[w] += tile_count[t] + 8
    bounds = np.zeros(n_workers + 1, np.int64)
    for t in range(n):
        bounds[owner[t] + 1] += 1
    bounds = np.cumsum(bounds)
    tiles, fill = np.empty(n, np.int64), bounds[:-1].copy()
    for t in range(n):
        tiles[fill[owner[t]]] = t
        fill[owner[t]] += 1
    return tiles, bounds


@njit(parallel=True, **_JIT)
def _raster_bwd(
    means2d, conics, colors, opac, flatten_ids, tile_start, tile_count, tile_size, tile_width, tile_height, k,
    out, trans, backgrounds, v_colors, v_alphas, absgrad, v_pairs, tiles, bounds,
):  # fmt: skip
    """Gradients per (tile, splat) pair, parallel over the workers of _deal_tiles: v_pairs [n_isects, K] rows
    (means2d x, y, conic a, b, c, opacity, colour [D], then |dL/dmeans2d| x, y when absgrad), pair i in row i only.

    Per pixel, front to back with T_i^incl = T_i (1 - alpha_i):
    dL/dalpha_i = -(tail + sum_{j>i} w_j g.c_j - T_i^incl g.c_i) / (1 - alpha_i), tail = T_final (g.bg - dL/dA).
    """
    C, H, W, D = out.shape
    for w in prange(bounds.shape[0] - 1):
        for i in range(bounds[w], bounds[w + 1]):
            t = tiles[i]
            cam, y0, x0, cx, cy = _tile_at(t, tile_size, tile_width, tile_height, W, H, k)
            nx, ny = cx.shape[0], cy.shape[0]
            start, n = tile_start[t], tile_count[t]
            g, col = _gather(means2d, conics, colors, opac, flatten_ids, start, n)
            gpix, head = _pixel_heads(cam, y0, x0, nx, ny, out, trans, backgrounds, v_colors, v_alphas, k)
            v = np.zeros((n, v_pairs.shape[1]), k.dtype)
            _tile_bwd(g, col, cx, cy, gpix, head, absgrad, k, v)
            v_pairs[start : start + n] = v


@njit(parallel=True, **_JIT)
def _sum_pairs(order, box_off, slot, v_pairs, v_splats):
    """v_splats[s] = sum of the pair rows of splat s (parallel over splats: each writes its own row)."""
    for r in prange(order.shape[0]):
        s = order[r]
        for k in range(box_off[r], box_off[r + 1]):
            if slot[k] >= 0:
                for c in range(v_pairs.shape[1]):
                    v_splats[s, c] += v_pairs[slot[k], c]


# --------------------------------------------------------------------------------------------
# Autograd functions and entry points
# --------------------------------------------------------------------------------------------


def _max_threads() -> int:
    """Size of numba's thread pool (NUMBA_NUM_THREADS, default all cores)."""
    return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]


class _Threads:
    """Runs a block with `n` numba threads (None: default_threads()).
    numba's thread count is per calling thread, so the backward pass sets it again."""

    def __init__(self, n: int | None):
        self.n = min(n or default_threads(), _max_threads())

    def __enter__(self):
        self.torch_threads = torch.get_num_threads()
        self.prev = numba.get_num_threads()
        numba.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        numba.set_num_threads(self.prev)
        # numba's OpenMP layer and torch share one libgomp: numba's count would become torch's (train.cpu_threads=1
        # then trained on every core after the first render), so torch's own count is put back
        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return False


def default_threads() -> int:
    """Threads the compiled backend uses by default: torch's intra-op threads (so torch.set_num_threads, which
    train.cpu_threads and a Ray task's CPUs set, governs both: two scenes sharing a machine do not oversubscribe it),
    at most the cores this process may run on and NUMBA_NUM_THREADS."""
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)), _max_threads()))


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, width, height, eps2d, near, far, radius_clip, threads):
        C, N = viewmats.shape[0], means.shape[0]
        arrays = tuple(_np(t) for t in (means, quats, scales, viewmats, Ks))
        dtype = arrays[0].dtype
        radii = np.empty((C, N), np.int32)
        means2d, depths = np.empty((C, N, 2), dtype), np.empty((C, N), dtype)
        conics, comp = np.empty((C, N, 3), dtype), np.empty((C, N), dtype)
        with _Threads(threads):
            _project_fwd(*arrays, width, height, eps2d, near, far, radius_clip, radii, means2d, depths, conics, comp)
        ctx.arrays, ctx.args = arrays, (width, height, eps2d, near, far)
        ctx.threads = threads
        radii_t = torch.from_numpy(radii)
        ctx.mark_non_differentiable(radii_t)
        return radii_t, *(torch.from_numpy(a) for a in (means2d, depths, conics, comp))

    @staticmethod
    def backward(ctx, _g_radii, g_m2, g_depth, g_conic, g_comp):
        means, quats, scales, viewmats, Ks = ctx.arrays
        C, N = viewmats.shape[0], means.shape[0]

        def grad(g, shape):
            return np.zeros(shape, means.dtype) if g is None else _np(g)

        out = np.empty((N, 10), means.dtype)
        want_view = ctx.needs_input_grad[3]
        out_view = np.empty((C, N if want_view else 0, 12), means.dtype)
        with _Threads(ctx.threads):
            _project_bwd(
                means, quats, scales, viewmats, Ks, *ctx.args, grad(g_m2, (C, N, 2)), grad(g_depth, (C, N)),
                grad(g_conic, (C, N, 3)), grad(g_comp, (C, N)), out, out_view,
            )  # fmt: skip
        v = torch.from_numpy(out)
        v_view = None
        if want_view:
            v_view = torch.zeros(C, 4, 4, dtype=v.dtype)
            per_view = torch.from_numpy(out_view).sum(1)  # [C, 12]: rotation row-major, translation
            v_view[:, :3, :3] = per_view[:, :9].view(C, 3, 3)
            v_view[:, :3, 3] = per_view[:, 9:]
        return v[:, 0:3], v[:, 3:7], v[:, 7:10], v_view, *([None] * 8)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    threads: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Compiled `splat.cpu_raster.project_gaussians` (quats and scales only; Ks receive no gradient).

    Args:
        means [N, 3], quats [N, 4], scales [N, 3] (activated), viewmats [C, 4, 4] world-to-camera (OpenCV),
        Ks [C, 3, 3] pixels; the rest as cpu_raster.project_gaussians; threads: numba threads (None = default).
    Returns:
        radii [C, N] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3], compensations [C, N] or None.
    """
    radii, means2d, depths, conics, comp = _Project.apply(
        means, quats, scales, viewmats, Ks, int(width), int(height), float(eps2d), float(near_plane),
        float(far_plane), float(radius_clip), threads,
    )  # fmt: skip
    return radii, means2d, depths, conics, comp if calc_compensations else None


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, bins, width, height, absgrad, threads):
        S, D = opacities.numel(), colors.shape[-1]
        arrays = (
            _np(means2d).reshape(S, 2), _np(conics).reshape(S, 3), _np(colors).reshape(S, D), _np(opacities).reshape(S),
        )  # fmt: skip
        C, dtype = bins.n_cameras, arrays[0].dtype
        out, trans = np.empty((C, height, width, D), dtype), np.empty((C, height, width), dtype)
        tiling = (bins.flatten_ids.numpy(), bins.tile_start.numpy(), bins.tile_count.numpy(), bins.tile_size)
        with _Threads(threads) as pool:
            deal = _deal_tiles(bins.tile_count.numpy(), pool.n)
            _raster_fwd(*arrays, *tiling, bins.tile_width, bins.tile_height, _consts(dtype), out, trans, *deal)
        out_t, trans_t = torch.from_numpy(out), torch.from_numpy(trans)[..., None]
        render = out_t if backgrounds is None else out_t + trans_t * backgrounds[:, None, None, :]
        ctx.arrays, ctx.tiling, ctx.bins, ctx.threads, ctx.deal = arrays, tiling, bins, threads, deal
        ctx.absgrad, ctx.means2d = absgrad, means2d if absgrad else None
        ctx.shapes = (means2d.shape, conics.shape, colors.shape, opacities.shape)
        ctx.save_for_backward(backgrounds, out_t, trans_t)
        return render, 1.0 - trans_t

    @staticmethod
    def backward(ctx, v_render, v_alphas):
        backgrounds, out_t, trans_t = ctx.saved_tensors
        bins, D = ctx.bins, out_t.shape[-1]
        dtype = ctx.arrays[0].dtype
        bg = np.zeros((0, D), dtype) if backgrounds is None else _np(backgrounds)
        v_pairs = np.empty((bins.flatten_ids.numel(), 6 + D + (2 if ctx.absgrad else 0)), dtype)
        v_splats = np.zeros((ctx.arrays[3].shape[0], v_pairs.shape[1]), dtype)
        with _Threads(ctx.threads):
            _raster_bwd(
                *ctx.arrays, *ctx.tiling, bins.tile_width, bins.tile_height, _consts(dtype), out_t.numpy(),
                trans_t.numpy()[..., 0],
                bg, _np(v_render), _np(v_alphas), ctx.absgrad, v_pairs, *ctx.deal,
            )  # fmt: skip
            _sum_pairs(bins.order, bins.box_off, bins.slot, v_pairs, v_splats)
        v = torch.from_numpy(v_splats)
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_bg = (v_render * trans_t).sum((1, 2))
        if ctx.absgrad and ctx.means2d is not None:
            ctx.means2d.absgrad = v[:, 6 + D :].reshape(ctx.means2d.shape)
        s_m2, s_cn, s_cl, s_op = ctx.shapes
        return v[:, 0:2].reshape(s_m2), v[:, 2:5].reshape(s_cn), v[:, 6 : 6 + D].reshape(s_cl), v[:, 5].reshape(s_op), \
            v_bg, None, None, None, None, None  # fmt: skip


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    bins: NumbaBins,
    width: int,
    height: int,
    backgrounds: Tensor | None = None,
    absgrad: bool = False,
    threads: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Compiled `splat.cpu_raster.rasterize_to_pixels` (same arguments and outputs, `bins` from this module's
    `bin_tiles`; threads: numba threads, None = default).

    Returns:
        render_colors [C, H, W, D], render_alphas [C, H, W, 1].
    """
    return _Rasterize.apply(
        means2d, conics, colors, opacities, backgrounds, bins, int(width), int(height), absgrad, threads
    )


def compile_kernels(dtype: torch.dtype) -> None:
    """Compile (or load from numba's cache) every kernel for `dtype` by rendering a one-Gaussian scene forward
    and backward; raises whatever numba raises when it cannot. Works inside torch.no_grad() (e.g. a viewer's first
    render): the warm-up builds its own graph."""
    with torch.enable_grad():
        _warm_up(dtype)


def _warm_up(dtype: torch.dtype) -> None:
    means = torch.tensor([[0.0, 0.0, 2.0]], dtype=dtype, requires_grad=True)
    quats = torch.tensor([[1.0, 0.1, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    scales = torch.full((1, 3), 0.2, dtype=dtype, requires_grad=True)
    viewmats = torch.eye(4, dtype=dtype)[None].requires_grad_(True)
    Ks = torch.tensor([[[8.0, 0, 4.0], [0, 8.0, 4.0], [0, 0, 1]]], dtype=dtype)
    radii, means2d, depths, conics, comp = project_gaussians(
        means, quats, scales, viewmats, Ks, 8, 8, calc_compensations=True
    )
    assert comp is not None
    opac = 0.5 * comp
    bins = bin_tiles(means2d.reshape(-1, 2), radii.reshape(-1), depths.reshape(-1), torch.zeros(1, dtype=torch.long),
                     1, 8, 8, 8, conics=conics.reshape(-1, 3), opacities=opac.reshape(-1))  # fmt: skip
    bg = torch.zeros(1, 1, dtype=dtype)
    for absgrad in (False, True):
        img, alpha = rasterize_to_pixels(means2d, conics, depths[..., None], opac, bins, 8, 8, bg, absgrad)
        (img.sum() + alpha.sum()).backward(retain_graph=not absgrad)
