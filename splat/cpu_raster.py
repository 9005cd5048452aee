"""Pure-PyTorch Gaussian rasterizer for the CPU, with the semantics of gsplat 1.4.0.

Three steps, each a function:

- `project_gaussians`: EWA projection of 3D Gaussians into each camera (OpenCV axes, pinhole),
  with gsplat's 0.3-pixel dilation (`eps2d`), frustum clamping of the Jacobian, near/far culling
  and 3-sigma radii. Plain torch ops, so autograd differentiates it (also w.r.t. `viewmats`).
- `bin_tiles`: which Gaussians touch which `tile_size` x `tile_size` pixel tile, front to back.
- `rasterize_to_pixels`: per-tile front-to-back alpha compositing, one autograd Function with a
  hand-written vectorised backward.

`eval_sh` evaluates view-dependent colour from spherical-harmonics coefficients (degree <= 4,
the basis and sign convention of 3DGS/gsplat).

Compositing rules (as gsplat's CUDA kernel): pixel centres at (x + 0.5, y + 0.5);
sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with conic (a, b, c) = inverse 2D covariance;
alpha = min(0.999, opacity * exp(-sigma)); a Gaussian with alpha < 1/255 is skipped; a pixel stops
before the Gaussian that would bring its transmittance T to <= 1e-4 (that one is excluded).
A Gaussian contributes only to pixels of the tiles its 3-sigma box overlaps (tile-granular
truncation, so results depend slightly on `tile_size` at the box edges).

How it is fast enough in pure PyTorch:
- (tile, Gaussian) pairs whose alpha stays below 1/255 over the whole tile are dropped at binning
  (exact minimum of sigma over the tile), which removes a third to a half of the work unchanged.
- Tiles are sorted by list length and processed in chunks padded to the chunk's longest list;
  within a chunk every quantity is a [B, P, L] tensor (B tiles, P = tile_size^2 pixels, L slots).
- sigma is written relative to the tile centre, sigma(u) = Q(d0) + (A d0).u + Q(u) with
  d0 = tile centre - mean and u the pixel offset, so log alpha over [B, P, L] is one matmul of
  fixed pixel features [P, 6] by per-(tile, Gaussian) coefficients [B, 6, L]; the transposed
  matmul gives the coefficient gradients, and the chain rule to means/conics/opacities runs on
  per-slot vectors.
- Transmittance is a cumprod; the backward pass needs only a cumsum: with r = alpha / (1 - alpha),
  dL/dsigma_i = r_i (tail + sum_{j>i} w_j g.c_j - T_i (1 - alpha_i) g.c_i).
- Per-slot data live in [K, n_slots] row tables: 1-D index_select / index_add_ are the fast
  gathers and scatters on the CPU. Forward intermediates are kept for the backward pass up to
  `store_bytes`, beyond that recomputed chunk by chunk.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
_S_MAX = 7.0  # exp(-7) < 1/255: beyond this alpha is zero anyway; keeps torch.exp fast
_S_PAD = 1e4  # exponent of padding slots
DEFAULT_CHUNK_ELEMS = 1 << 19  # [B, P, L] elements per chunk
DEFAULT_STORE_BYTES = 1 << 29  # forward intermediates kept for backward (else recomputed)
_LOG_ALPHA_MAX = math.log(ALPHA_MAX)


class _OneThread:
    """Runs a block with one torch intra-op thread (restored afterwards). The rasterizer is many
    short, memory-bound ops: on a small CPU that other processes share, waking and waiting for
    OpenMP workers costs more than the parallelism gains (benchmarks/render.py, 50k Gaussians at
    320x240 on 2 cores with another process running, back-to-back pairs: fwd+bwd 0.27/0.29 s
    with projection, binning and compositing on one thread vs 0.30/0.34 s on two)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.n != 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.n != 1:
            torch.set_num_threads(self.n)
        return False


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------


def _quat_scale_factor(quats: Tensor, scales: Tensor) -> list:
    """M = R(q) diag(s) as a 3x3 nested list of [N] tensors (Sigma = M M^T)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    sx, sy, sz = scales.unbind(-1)
    r = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return [[r[i][0] * sx, r[i][1] * sy, r[i][2] * sz] for i in range(3)]


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances R S S^T R^T.

    Args:
        quats: [N, 4] rotations as quaternions (w, x, y, z), need not be normalised.
        scales: [N, 3] standard deviations along the local axes (scene units, activated).
    Returns:
        [N, 3, 3] covariances (scene units^2).
    """
    m = _quat_scale_factor(quats, scales)
    rows = [
        torch.stack([m[i][0] * m[j][0] + m[i][1] * m[j][1] + m[i][2] * m[j][2] for j in range(3)], -1) for i in range(3)
    ]
    return torch.stack(rows, -2)


def _project_gaussians(
    means: Tensor,
    quats: Tensor | None,
    scales: Tensor | None,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    covars: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """EWA projection of 3D Gaussians into C pinhole cameras (gsplat's fully_fused_projection).

    Written with [C, N] tensors per matrix entry: on the CPU that is much faster than batched 3x3
    matmuls, and autograd differentiates it (also w.r.t. `viewmats`).

    Args:
        means: [N, 3] centres, world frame.
        quats: [N, 4] rotations (w, x, y, z), need not be normalised (unused with `covars`).
        scales: [N, 3] activated scales (unused with `covars`).
        viewmats: [C, 4, 4] world-to-camera (OpenCV axes: x right, y down, z forward).
        Ks: [C, 3, 3] intrinsics in pixels.
        width, height: image size in pixels.
        eps2d: added to the diagonal of each 2D covariance (pixels^2), the anti-aliasing dilation.
        near_plane, far_plane: z-depth range kept.
        radius_clip: Gaussians whose radius (pixels) is <= this are culled.
        calc_compensations: also return sqrt(det(cov2d) / det(cov2d + eps2d I)).
        covars: [N, 3, 3] world covariances instead of quats and scales.
    Returns:
        radii [C, N] int32 (3-sigma radius in pixels, 0 = culled), means2d [C, N, 2] pixels,
        depths [C, N] z-depth, conics [C, N, 3] (a, b, c) of the inverse dilated 2D covariance,
        compensations [C, N] or None.
    """
    rot = [[viewmats[:, i, j, None] for j in range(3)] for i in range(3)]  # [C, 1] each
    mx, my, mz = means.unbind(-1)
    x, y, z = (rot[i][0] * mx + rot[i][1] * my + rot[i][2] * mz + viewmats[:, i, 3, None] for i in range(3))
    cov3d = _camera_covariance(rot, quats, scales, covars)
    depths = z
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled entries finite
    rz = 1.0 / z
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)
    s00, s01, s02, s11, s12, s22 = cov3d
    j00, j02 = fx * rz, -fx * tx * rz * rz  # J = [[j00, 0, j02], [0, j11, j12]]
    j11, j12 = fy * rz, -fy * ty * rz * rz
    cxx = j00 * j00 * s00 + 2 * j00 * j02 * s02 + j02 * j02 * s22
    cxy = j00 * j11 * s01 + j00 * j12 * s02 + j02 * j11 * s12 + j02 * j12 * s22
    cyy = j11 * j11 * s11 + 2 * j11 * j12 * s12 + j12 * j12 * s22
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    det_orig = cxx * cyy - cxy * cxy
    cxx, cyy = cxx + eps2d, cyy + eps2d
    det = cxx * cyy - cxy * cxy
    det_safe = det.clamp(min=1e-10)
    conics = torch.stack([cyy / det_safe, -cxy / det_safe, cxx / det_safe], dim=-1)
    compensations = None
    if calc_compensations:
        compensations = torch.sqrt((det_orig / det_safe).clamp(min=1e-12))

    radii = _radii(cxx, cyy, det, means2d, in_depth, radius_clip, width, height)
    return radii, means2d, depths, conics, compensations


def _camera_covariance(
    rot: list[list[Tensor]], quats: Tensor | None, scales: Tensor | None, covars: Tensor | None
) -> tuple[Tensor, ...]:
    """Entries (s00, s01, s02, s11, s12, s22), each [C, N], of R Sigma R^T: the 3D covariances in camera axes.

    `rot` holds the world-to-camera rotation entries as [C, 1] tensors; Sigma comes from `covars` [N, 3, 3], or
    from quats [N, 4] and activated scales [N, 3] as M M^T with M = R(q) diag(s).
    """
    if covars is None:
        if quats is None or scales is None:
            raise ValueError("project_gaussians needs quats and scales when covars is None")
        m = _quat_scale_factor(quats, scales)
        mc = [[rot[i][0] * m[0][j] + rot[i][1] * m[1][j] + rot[i][2] * m[2][j] for j in range(3)] for i in range(3)]

        def cov_c(i: int, j: int) -> Tensor:
            return mc[i][0] * mc[j][0] + mc[i][1] * mc[j][1] + mc[i][2] * mc[j][2]
    else:
        sig = [[covars[:, i, j] for j in range(3)] for i in range(3)]
        ws = [
            [rot[i][0] * sig[0][j] + rot[i][1] * sig[1][j] + rot[i][2] * sig[2][j] for j in range(3)] for i in range(3)
        ]

        def cov_c(i: int, j: int) -> Tensor:
            return ws[i][0] * rot[j][0] + ws[i][1] * rot[j][1] + ws[i][2] * rot[j][2]

    return tuple(cov_c(i, j) for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)))


@torch.no_grad()
def _radii(
    cxx: Tensor,
    cyy: Tensor,
    det: Tensor,
    means2d: Tensor,
    in_depth: Tensor,
    radius_clip: float,
    width: int,
    height: int,
) -> Tensor:
    """[C, N] int32 3-sigma radii in pixels of the dilated 2D covariances; 0 where culled (depth range, degenerate,
    below radius_clip, or entirely outside the image)."""
    b = 0.5 * (cxx + cyy)
    v1 = b + torch.sqrt((b * b - det).clamp(min=0.01))
    radius = torch.ceil(3.0 * torch.sqrt(v1))
    mx, my = means2d[..., 0], means2d[..., 1]
    valid = (
        in_depth
        & (det > 0)
        & (radius > radius_clip)
        & (mx + radius > 0)
        & (mx - radius < width)
        & (my + radius > 0)
        & (my - radius < height)
    )
    return torch.where(valid, radius, torch.zeros_like(radius)).int()


class _OneThreadGraph(torch.autograd.Function):
    """Runs `fn(*tensors)` and, later, its autograd backward with one torch thread (see
    `_OneThread`): the projection is ~100 small [C, N] ops forward and backward. Same numbers as
    calling `fn` directly (first-order gradients)."""

    @staticmethod
    def forward(ctx, fn, *args):
        with torch.enable_grad(), _OneThread():
            ins = [a.detach().requires_grad_() if isinstance(a, Tensor) and a.requires_grad else a for a in args]
            outs = fn(*ins)
        ctx.ins, ctx.outs = ins, outs
        ret = tuple(o.detach() if isinstance(o, Tensor) else o for o in outs)
        nd = [r for r, o in zip(ret, outs) if isinstance(o, Tensor) and not o.requires_grad]
        if nd:
            ctx.mark_non_differentiable(*nd)
        return ret

    @staticmethod
    def backward(ctx, *grads):
        ins, outs = ctx.ins, ctx.outs
        pairs = [(o, g) for o, g in zip(outs, grads) if isinstance(o, Tensor) and o.requires_grad and g is not None]
        want = [k for k, a in enumerate(ins) if isinstance(a, Tensor) and a.requires_grad]
        res = [None] * len(ins)
        if pairs and want:
            with _OneThread():
                gs = torch.autograd.grad(
                    [o for o, _ in pairs],
                    [ins[k] for k in want],
                    [g for _, g in pairs],
                    allow_unused=True,
                    retain_graph=True,  # the caller may backward again (retain_graph, gradcheck)
                )
            for k, g in zip(want, gs):
                res[k] = g
        return (None, *res)


def project_gaussians(
    means: Tensor,
    quats: Tensor | None,
    scales: Tensor | None,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    covars: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    kw: dict[str, Any] = dict(
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        calc_compensations=calc_compensations,
    )
    tensors = (means, quats, scales, viewmats, Ks, covars)
    if not (torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)):
        with _OneThread():
            return _project_gaussians(means, quats, scales, viewmats, Ks, width, height, covars=covars, **kw)

    def fn(m, q, s, v, k, cv):
        return _project_gaussians(m, q, s, v, k, width, height, covars=cv, **kw)

    return _OneThreadGraph.apply(fn, *tensors)


project_gaussians.__doc__ = _project_gaussians.__doc__


# --------------------------------------------------------------------------------------------
# Spherical harmonics
# --------------------------------------------------------------------------------------------


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis values (3DGS/gsplat order and signs) at unit directions.

    Args:
        degree: 0..4.
        dirs: [..., 3] unit vectors.
    Returns:
        [..., (degree + 1)^2].
    """
    if not 0 <= degree <= 4:
        raise ValueError(f"SH degree must be 0..4, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        out += [-0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.31539156525252005 * (2 * zz - xx - yy),
            -1.0925484305920792 * xz,
            0.5462742152960396 * (xx - yy),
        ]
    if degree >= 3:
        out += [
            -0.5900435899266435 * y * (3 * xx - yy),
            2.890611442640554 * xy * z,
            -0.4570457994644658 * y * (4 * zz - xx - yy),
            0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
            -0.4570457994644658 * x * (4 * zz - xx - yy),
            1.445305721320277 * z * (xx - yy),
            -0.5900435899266435 * x * (xx - 3 * yy),
        ]
    if degree >= 4:
        out += [
            2.5033429417967046 * xy * (xx - yy),
            -1.7701307697799304 * yz * (3 * xx - yy),
            0.9461746957575601 * xy * (7 * zz - 1),
            -0.6690465435572892 * yz * (7 * zz - 3),
            0.10578554691520431 * (zz * (35 * zz - 30) + 3),
            -0.6690465435572892 * xz * (7 * zz - 3),
            0.47308734787878004 * (xx - yy) * (7 * zz - 1),
            -1.7701307697799304 * xz * (xx - 3 * yy),
            0.6258357354491761 * (xx * (xx - 3 * yy) - yy * (3 * xx - yy)),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """View-dependent colour sum_k basis_k(dir) coeffs_k (before gsplat's +0.5 and clamp).

    Args:
        degree: SH degree used (only the first (degree + 1)^2 of the K coefficients count).
        dirs: [..., 3] viewing directions (camera centre to Gaussian), any length.
        coeffs: [..., K, 3] SH coefficients, K >= (degree + 1)^2.
    Returns:
        [..., 3].
    """
    n = (degree + 1) ** 2
    bases = sh_bases(degree, F.normalize(dirs, dim=-1))  # [..., n]
    return (bases[..., None] * coeffs[..., :n, :]).sum(dim=-2)


# --------------------------------------------------------------------------------------------
# Tile binning
# --------------------------------------------------------------------------------------------


@dataclass
class TileBins:
    """Which splats touch which tile, front to back.

    A "splat" is one entry of the flat projected arrays ([C * N] unpacked, [nnz] packed).
    Tiles are numbered camera-major: tile = camera * tile_height * tile_width + ty * tile_width + tx.

    Attributes:
        tile_size, tile_width, tile_height, n_cameras: tiling.
        flatten_ids: [n_isects] int64 splat index per intersection, sorted by (tile, depth).
        tile_start: [n_tiles] int64 first intersection of each tile.
        tile_count: [n_tiles] int64 intersections per tile.
        tiles_per_splat: [n_splats] int64 tiles each splat touches.
        isect_tiles: [n_isects] int64 tile of each intersection.
    """

    tile_size: int
    tile_width: int
    tile_height: int
    n_cameras: int
    flatten_ids: Tensor
    tile_start: Tensor
    tile_count: Tensor
    tiles_per_splat: Tensor
    isect_tiles: Tensor

    @property
    def n_tiles(self) -> int:
        return self.n_cameras * self.tile_width * self.tile_height


def _reaches_tile(tx, ty, tile_size, mx, my, a, b, c, opacity) -> Tensor:
    """Whether alpha = opacity exp(-sigma) can reach 1/255 somewhere in the rectangle spanned by
    the pixel centres of tile (tx, ty); all arguments [M]. Exact minimum of the quadratic sigma over
    the rectangle (plus a small margin), so it never drops a pair that contributes."""
    x0 = tx.to(mx.dtype) * tile_size + 0.5 - mx
    y0 = ty.to(mx.dtype) * tile_size + 0.5 - my
    x1, y1 = x0 + (tile_size - 1), y0 + (tile_size - 1)
    # the minimiser has an active bound on the side nearest the mean (or lies inside)
    xe = torch.minimum(torch.maximum(torch.zeros_like(x0), x0), x1)
    ye = torch.minimum(torch.maximum(torch.zeros_like(y0), y0), y1)
    y_at = torch.minimum(torch.maximum(-b * xe / c, y0), y1)
    x_at = torch.minimum(torch.maximum(-b * ye / a, x0), x1)
    s1 = 0.5 * (a * xe * xe + c * y_at * y_at) + b * xe * y_at
    s2 = 0.5 * (a * x_at * x_at + c * ye * ye) + b * x_at * ye
    limit = torch.log(opacity.clamp(min=1e-30) * 255.0) + 1e-3
    return torch.minimum(s1, s2) <= limit


def bin_tiles(*args, **kwargs) -> TileBins:
    with _OneThread():
        return _bin_tiles(*args, **kwargs)


@torch.no_grad()
def _bin_tiles(
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
) -> TileBins:
    """Intersect splats with tiles (gsplat's isect_tiles + isect_offset_encode).

    A splat is listed in every tile its square box (centre +- radius) overlaps, as gsplat does.
    With `conics` and `opacities`, (tile, splat) pairs where the splat's alpha stays below 1/255
    over all the tile's pixel centres are left out: they contribute nothing, so the rendering is
    unchanged and the rasterizer has less to do.

    Args:
        means2d: [S, 2] pixel centres of the splats.
        radii: [S] int radii in pixels (0 = culled).
        depths: [S] z-depths (sort key, nearest first; ties keep splat order).
        camera_ids: [S] int64 camera of each splat.
        n_cameras, width, height, tile_size: image and tiling.
        conics: [S, 3] inverse 2D covariances (a, b, c), optional.
        opacities: [S] opacities, optional (needed with conics).
    Returns:
        TileBins.
    """
    tile_width = math.ceil(width / tile_size)
    tile_height = math.ceil(height / tile_size)
    n_tiles = n_cameras * tile_width * tile_height
    tmin, span, tiles_per_splat = _tile_boxes(means2d, radii, tile_size, tile_width, tile_height)
    ids, tile = _intersections(
        means2d, depths, camera_ids, tmin, span, tiles_per_splat, tile_size, tile_width, tile_height, conics, opacities
    )
    tile, perm = torch.sort(tile, stable=True)
    ids = ids.index_select(0, perm)
    tile_count = torch.bincount(tile, minlength=n_tiles)
    tile_start = torch.cumsum(tile_count, 0) - tile_count
    return TileBins(
        tile_size,
        tile_width,
        tile_height,
        n_cameras,
        ids,
        tile_start,
        tile_count,
        tiles_per_splat,
        tile,
    )


def _tile_boxes(
    means2d: Tensor, radii: Tensor, tile_size: int, tile_width: int, tile_height: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per splat [S]: first tile (x, y) [S, 2], tile span (nx, ny) [S, 2] of its +-radius box clipped to the image,
    and the number of tiles it touches [S] (0 for culled splats)."""
    r = radii.to(means2d.dtype)
    tmin = torch.floor((means2d - r[:, None]) / tile_size).long()
    tmax = torch.ceil((means2d + r[:, None]) / tile_size).long()
    lim = torch.tensor([tile_width, tile_height], device=means2d.device)
    tmin = torch.minimum(tmin.clamp(min=0), lim)
    tmax = torch.minimum(tmax.clamp(min=0), lim)
    span = tmax - tmin  # [S, 2]
    return tmin, span, span[:, 0] * span[:, 1] * (radii > 0)


def _intersections(
    means2d: Tensor,
    depths: Tensor,
    camera_ids: Tensor,
    tmin: Tensor,
    span: Tensor,
    tiles_per_splat: Tensor,
    tile_size: int,
    tile_width: int,
    tile_height: int,
    conics: Tensor | None,
    opacities: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(splat id, global tile id) [n_isects] of every (splat, tile) pair, splats nearest first; with conics and
    opacities, pairs whose alpha stays below 1/255 on every pixel centre of the tile are dropped."""
    device = means2d.device
    order = torch.argsort(depths, stable=True)
    order = order[tiles_per_splat.index_select(0, order) > 0]  # visible splats, nearest first
    counts = tiles_per_splat.index_select(0, order)
    rank = torch.repeat_interleave(torch.arange(order.numel(), device=device), counts)  # [n_isects]
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(rank.numel(), device=device) - first.index_select(0, rank)

    def per_isect(values: Tensor) -> Tensor:  # [S] per splat -> [n_isects]
        return values.index_select(0, order).index_select(0, rank)

    ids = order.index_select(0, rank)
    nx = per_isect(span[:, 0].contiguous())
    tx = per_isect(tmin[:, 0].contiguous()) + local % nx
    ty = per_isect(tmin[:, 1].contiguous()) + local // nx
    if conics is not None and opacities is not None:
        ca, cb, cc = (per_isect(conics[:, k].contiguous()) for k in range(3))
        keep = _reaches_tile(
            tx,
            ty,
            tile_size,
            per_isect(means2d[:, 0].contiguous()),
            per_isect(means2d[:, 1].contiguous()),
            ca,
            cb,
            cc,
            per_isect(opacities),
        )
    tile = per_isect(camera_ids) * (tile_width * tile_height) + ty * tile_width + tx
    if conics is not None and opacities is not None:
        kept = torch.nonzero(keep).squeeze(1)
        ids, tile = ids.index_select(0, kept), tile.index_select(0, kept)
    return ids, tile


bin_tiles.__doc__ = _bin_tiles.__doc__


# --------------------------------------------------------------------------------------------
# Rasterization
# --------------------------------------------------------------------------------------------


def _pixel_features(tile_size: int, dtype, device) -> Tensor:
    """[P, 6] features (1, ux, uy, ux^2/2, uy^2/2, ux uy) of the pixel centres relative to the tile
    centre, P = tile_size^2 in row-major order."""
    c = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - 0.5 * tile_size
    uy, ux = torch.meshgrid(c, c, indexing="ij")
    ux, uy = ux.reshape(-1), uy.reshape(-1)
    return torch.stack([torch.ones_like(ux), ux, uy, 0.5 * ux * ux, 0.5 * uy * uy, ux * uy], -1)


@dataclass
class _Plan:
    """How the non-empty tiles are processed: sorted by list length (longest first) and grouped
    into chunks of B tiles padded to the chunk's longest list L, B * P * L <= chunk_elems.
    Slots are the padded (tile, list position) pairs of all chunks, laid out chunk after chunk."""

    order: Tensor  # [n] non-empty tile ids, longest list first
    chunks: list  # (first tile in order, B, L, first slot)
    ids: Tensor  # [n_slots] splat id per slot (0 for padding)
    tile: Tensor  # [n_slots] tile id per slot
    valid: Tensor  # [n_slots] bool, False for padding


def _make_plan(bins: TileBins, chunk_elems: int) -> _Plan:
    counts, order = torch.sort(bins.tile_count, descending=True, stable=True)
    n = int((counts > 0).sum())
    order, counts = order[:n], counts[:n]
    pix = bins.tile_size**2
    chunks, lengths, sizes = [], [], []
    counts_list = counts.tolist()
    i = slot = 0
    while i < n:
        length = counts_list[i]
        b = min(max(1, chunk_elems // (pix * length)), n - i)
        chunks.append((i, b, length, slot))
        lengths.append(length)
        sizes.append(b)
        i += b
        slot += b * length
    device = bins.tile_count.device
    padded = torch.repeat_interleave(
        torch.tensor(lengths, dtype=torch.long, device=device), torch.tensor(sizes, dtype=torch.long, device=device)
    )
    rank = torch.repeat_interleave(torch.arange(n, device=device), padded)  # [n_slots]
    first = torch.cumsum(padded, 0) - padded
    local = torch.arange(rank.numel(), device=device) - first[rank]
    tile = order[rank]
    valid = local < bins.tile_count[tile]
    idx = torch.where(valid, bins.tile_start[tile] + local, torch.zeros_like(local))
    ids = bins.flatten_ids[idx] if n else idx
    return _Plan(order, chunks, ids, tile, valid)


def _composite(coef: Tensor, feats: Tensor, for_grad: bool, may_clamp: bool):
    """Front-to-back compositing of one chunk.

    Args:
        coef: [B, 6, L] log-alpha coefficients of the chunk's slots.
        feats: [P, 6] pixel features.
        for_grad: also produce r for the backward pass.
        may_clamp: some opacity exceeds ALPHA_MAX, so alpha may be clamped.
    Returns:
        (w, r, t_incl), each [B, P, L]: weights w_i = alpha_i T_i; r_i = alpha_i / (1 - alpha_i)
        where alpha responds to the exponent, else 0 (meaningful only with for_grad);
        t_incl = T_i (1 - alpha_i), 0 once the pixel has stopped.
    """
    la = torch.matmul(feats, coef)  # log alpha
    free = la <= _LOG_ALPHA_MAX if (for_grad and may_clamp) else None
    alpha = la.clamp_(-_S_MAX, _LOG_ALPHA_MAX).exp_()
    torch.threshold_(alpha, _alpha_floor(alpha.dtype), 0.0)  # skip alpha < 1/255
    r = torch.rsub(alpha, 1.0)
    t_incl = torch.cumprod(r, dim=-1)
    stopped = bool((t_incl[..., -1] <= T_MIN).any())
    if stopped:
        torch.threshold_(t_incl, T_MIN, 0.0)  # the Gaussian that would take T to <= 1e-4 and all after
    r = torch.div(alpha, r, out=r)
    w = r * t_incl
    if for_grad:
        if stopped:
            kept = t_incl > 0
            free = kept if free is None else free.logical_and_(kept)
        if free is not None:
            r.mul_(free)
    return w, r, t_incl


def _composite_chunks(
    plan: _Plan, coef: Tensor, cols: Tensor, opac: Tensor, feats: Tensor, for_grad: bool, budget: int
) -> tuple[Tensor, list]:
    """Composite every chunk of `plan`: per planned tile and pixel the weighted sum of the slots' columns,
    [n_planned, P, D + 1] (the last column is the alpha), and per chunk its (w, r, T_incl) for the backward pass
    while they fit in `budget` bytes, else None (recomputed there)."""
    P = feats.shape[0]
    out = torch.empty(plan.order.numel(), P, cols.shape[0], dtype=coef.dtype, device=coef.device)
    stored: list = []
    for t0, nb, length, s0 in plan.chunks:
        sl = slice(s0, s0 + nb * length)
        coef_k = coef[:, sl].view(6, nb, length).transpose(0, 1)  # [B, 6, L]
        may_clamp = bool(opac[sl].max() > ALPHA_MAX)
        w, r, t_incl = _composite(coef_k, feats, for_grad, may_clamp)
        cols_k = cols[:, sl].view(cols.shape[0], nb, length).transpose(0, 1)  # [B, D + 1, L]
        torch.bmm(w, cols_k.transpose(1, 2), out=out[t0 : t0 + nb])
        size = 3 * w.numel() * w.element_size()
        if budget >= size:
            stored.append((w, r, t_incl))
            budget -= size
        else:
            stored.append(None)
    return out, stored


@functools.cache
def _alpha_floor(dtype) -> float:
    """Largest value below 1/255 in `dtype`: alpha > floor <=> alpha >= 1/255."""
    v = torch.tensor(ALPHA_MIN, dtype=dtype)
    return torch.nextafter(v, torch.zeros_like(v)).item()


def _to_tiles(img: Tensor, bins: TileBins) -> Tensor:
    """[C, H, W, X] image -> [n_tiles, P, X] tile-major (zero padded)."""
    C, H, W, X = img.shape
    ts = bins.tile_size
    img = F.pad(img, (0, 0, 0, bins.tile_width * ts - W, 0, bins.tile_height * ts - H))
    img = img.reshape(C, bins.tile_height, ts, bins.tile_width, ts, X).permute(0, 1, 3, 2, 4, 5)
    return img.reshape(-1, ts * ts, X)


def _from_tiles(tiles: Tensor, bins: TileBins, width: int, height: int) -> Tensor:
    """[n_tiles, P, X] tile-major -> [C, H, W, X] image."""
    ts, X = bins.tile_size, tiles.shape[-1]
    img = tiles.reshape(bins.n_cameras, bins.tile_height, bins.tile_width, ts, ts, X)
    img = img.permute(0, 1, 3, 2, 4, 5).reshape(bins.n_cameras, bins.tile_height * ts, bins.tile_width * ts, X)
    return img[:, :height, :width].contiguous()


class _RasterizeToPixels(torch.autograd.Function):
    """Per-slot data live in [K, n_slots] row tables (1-D gathers and scatters are the fast ones on
    the CPU); per-chunk tensors are [B, P, L]."""

    @staticmethod
    def forward(ctx, *args):
        with _OneThread():
            return _RasterizeToPixels._forward(ctx, *args)

    @staticmethod
    def backward(ctx, *grads):
        with _OneThread():
            return _RasterizeToPixels._backward(ctx, *grads)

    @staticmethod
    def _forward(
        ctx, means2d, conics, colors, opacities, backgrounds, bins, width, height, absgrad, chunk_elems, store_bytes
    ):
        S = opacities.numel()
        D = colors.shape[-1]
        cl = colors.reshape(S, D)
        P = bins.tile_size**2
        dtype, device = cl.dtype, cl.device
        for_grad = any(t.requires_grad for t in (means2d, conics, colors, opacities))
        plan = _make_plan(bins, chunk_elems)
        feats = _pixel_features(bins.tile_size, dtype, device)

        # per-slot rows, gathered once: log alpha = coef . (1, ux, uy, ux^2/2, uy^2/2, ux uy)
        ids = plan.ids
        table = torch.cat(
            [means2d.reshape(S, 2).t(), conics.reshape(S, 3).t(), opacities.reshape(1, S), cl.t()], 0
        ).contiguous()  # [6 + D, S]
        rows = [table[k].index_select(0, ids) for k in range(6 + D)]
        mx, my, a, b, c, opac = rows[:6]
        ts, tw = bins.tile_size, bins.tile_width
        local = torch.arange(bins.tile_width * bins.tile_height, device=device)
        cx = ((local % tw) * ts).to(dtype) + 0.5 * ts
        cy = ((local // tw) * ts).to(dtype) + 0.5 * ts
        tile_local = plan.tile % local.numel()
        dx = cx.index_select(0, tile_local) - mx  # d0 = tile centre - mean
        dy = cy.index_select(0, tile_local) - my
        opac = opac.clamp(min=1e-30)
        ad0x, ad0y = a * dx + b * dy, b * dx + c * dy
        la0 = torch.log(opac) - 0.5 * (dx * ad0x + dy * ad0y)
        la0 = la0.masked_fill_(~plan.valid, -_S_PAD)
        coef = torch.stack([la0, -ad0x, -ad0y, -a, -c, -b], 0)  # [6, n_slots]
        cols = torch.stack(rows[6:] + [torch.ones_like(opac)], 0)  # [D + 1, n_slots]

        out, stored = _composite_chunks(plan, coef, cols, opac, feats, for_grad, store_bytes if for_grad else 0)
        out_all = torch.zeros(bins.n_tiles, P, D + 1, dtype=dtype, device=device)
        out_all[plan.order] = out
        trans = 1.0 - out_all[..., D]  # [n_tiles, P]
        out_all = out_all[..., :D]
        render = out_all
        if backgrounds is not None:
            cam = torch.arange(bins.n_tiles, device=device) // (bins.tile_width * bins.tile_height)
            render = out_all + trans[..., None] * backgrounds[cam][:, None, :]
        ctx.bins, ctx.plan, ctx.stored = bins, plan, stored
        ctx.slots = (coef, cols, dx, dy, a, b, c, opac, ad0x, ad0y)
        ctx.absgrad = absgrad
        ctx.means2d = means2d if absgrad else None
        ctx.shapes = (means2d.shape, conics.shape, colors.shape, opacities.shape)
        ctx.save_for_backward(backgrounds, trans, out_all)
        colors_img = _from_tiles(render, bins, width, height)
        alphas_img = _from_tiles(1.0 - trans[..., None], bins, width, height)
        return colors_img, alphas_img

    @staticmethod
    def _backward(ctx, v_colors, v_alphas):
        backgrounds, trans, out = ctx.saved_tensors
        bins, plan = ctx.bins, ctx.plan
        D = out.shape[-1]
        S = ctx.shapes[3].numel()
        dtype, device = out.dtype, out.device
        g_all = _to_tiles(v_colors, bins)  # [n_tiles, P, D]
        ga_all = _to_tiles(v_alphas, bins)[..., 0]  # [n_tiles, P]
        # With s_i = -log alpha_i (the exponent) and r_i = alpha_i / (1 - alpha_i):
        # dL/ds_i = r_i (tail + sum_{j>i} w_j g.c_j - T_i^incl g.c_i), tail = T_final (g.bg - dL/dalpha_out).
        tail = -ga_all
        if backgrounds is not None:
            cam = torch.arange(bins.n_tiles, device=device) // (bins.tile_width * bins.tile_height)
            tail = tail + (g_all * backgrounds[cam][:, None, :]).sum(-1)
        head = (tail * trans + (g_all * out).sum(-1))[plan.order]  # tail + sum_j w_j g.c_j
        g_sorted = g_all[plan.order]  # [n, P, D]

        feats = _pixel_features(bins.tile_size, dtype, device)
        v_slot = _slot_grads(ctx, g_sorted, head, feats)
        _chain_to_splats(v_slot, ctx.slots)
        n_rows = v_slot.shape[0]
        v_all = torch.zeros(n_rows, S, dtype=dtype, device=device).index_add_(1, plan.ids, v_slot)
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_bg = (g_all * trans[..., None]).reshape(bins.n_cameras, -1, D).sum(1)
        if ctx.absgrad and ctx.means2d is not None:
            ctx.means2d.absgrad = v_all[6 + D :].t().reshape(ctx.means2d.shape)
        s_m2, s_cn, s_cl, s_op = ctx.shapes
        return (
            v_all[0:2].t().reshape(s_m2),
            v_all[2:5].t().reshape(s_cn),
            v_all[6 : 6 + D].t().reshape(s_cl),
            v_all[5].reshape(s_op),
            v_bg,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _slot_grads(ctx: Any, g_sorted: Tensor, head: Tensor, feats: Tensor) -> Tensor:
    """Per tile slot, dL/d(-coef) (6 rows), dL/dcolour (D rows) and, with absgrad, the two |dL/dmean2d| rows:
    [6 + D (+ 2), n_slots]. g_sorted [n, P, D] is dL/dcolour per pixel in plan order, head [n, P] the tail plus
    sum_j w_j g.c_j per pixel."""
    plan, stored = ctx.plan, ctx.stored
    coef, cols, _, _, a, b, c, opac, ad0x, ad0y = ctx.slots
    D = g_sorted.shape[-1]
    n_rows = 6 + D + (2 if ctx.absgrad else 0)
    v_slot = torch.zeros(n_rows, plan.ids.numel(), dtype=g_sorted.dtype, device=g_sorted.device)
    for k, (t0, nb, length, s0) in enumerate(plan.chunks):
        sl = slice(s0, s0 + nb * length)
        if stored[k] is not None:
            w, r, t_incl = stored[k]
        else:
            coef_k = coef[:, sl].view(6, nb, length).transpose(0, 1)
            w, r, t_incl = _composite(coef_k, feats, True, bool(opac[sl].max() > ALPHA_MAX))
        g = g_sorted[t0 : t0 + nb]  # [B, P, D]
        cols_k = cols[:D, sl].view(D, nb, length).transpose(0, 1)  # [B, D, L]
        v = torch.bmm(g, cols_k)  # [B, P, L]: g . c_i
        # head - sum_{j<=i} w_j v_j - T_i^incl v_i = tail + sum_{j>i} w_j v_j - T_i^incl v_i
        x = torch.cumsum(w * v, dim=-1)
        x = torch.sub(head[t0 : t0 + nb, :, None], x, out=x)
        x.addcmul_(t_incl, v, value=-1.0)
        ds = x.mul_(r)  # dL/ds, s = -log alpha = sigma - log(opacity)
        vs = v_slot[:, sl].view(n_rows, nb, length).transpose(0, 1)  # [B, rows, L]
        # dL/d(-coef) = dL/d(Q(d0) - log o, (A d0)_x, (A d0)_y, a, c, b)
        vs[:, :6] = torch.matmul(feats.t(), ds)
        vs[:, 6 : 6 + D] = torch.bmm(g.transpose(1, 2), w)
        if ctx.absgrad:
            # per pixel, d s / d mean = -A (d0 + u): sum over pixels of |ds| |.| per component
            ax, ay = ad0x[sl].view(nb, 1, length), ad0y[sl].view(nb, 1, length)
            a_, b_, c_ = (t[sl].view(nb, 1, length) for t in (a, b, c))
            ux, uy = feats[:, 1].view(1, -1, 1), feats[:, 2].view(1, -1, 1)
            ads = ds.abs_()
            vs[:, 6 + D] = (ads * (ax + a_ * ux + b_ * uy).abs_()).sum(1)
            vs[:, 7 + D] = (ads * (ay + b_ * ux + c_ * uy).abs_()).sum(1)
    return v_slot


def _chain_to_splats(v_slot: Tensor, slots: tuple) -> None:
    """Rows 0-5 of `v_slot` from dL/d(-coef) to dL/d(mean x, mean y, conic a, b, c, opacity), in place."""
    _, _, dx, dy, a, b, c, opac, _, _ = slots
    g0, g1, g2, g3, g4, g5 = v_slot[:6].clone().unbind(0)
    ex, ey = g0 * dx + g1, g0 * dy + g2  # dL/dmean = -A (g0 d0 + (g1, g2)), d0 = centre - mean
    torch.neg(a * ex + b * ey, out=v_slot[0])
    torch.neg(b * ex + c * ey, out=v_slot[1])
    torch.add(0.5 * g0 * dx * dx + g1 * dx, g3, out=v_slot[2])
    torch.add(g0 * dx * dy + g1 * dy + g2 * dx, g5, out=v_slot[3])
    torch.add(0.5 * g0 * dy * dy + g2 * dy, g4, out=v_slot[4])
    torch.div(-g0, opac, out=v_slot[5])


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    bins: TileBins,
    width: int,
    height: int,
    backgrounds: Tensor | None = None,
    absgrad: bool = False,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    store_bytes: int = DEFAULT_STORE_BYTES,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of projected splats (gsplat's rasterize_to_pixels).

    Args:
        means2d: [..., 2] pixel centres; the leading dims flatten to the S splats of `bins`
            ([C, N, 2] unpacked or [nnz, 2] packed). Receives gradients.
        conics: [..., 3] inverse 2D covariances (a, b, c).
        colors: [..., D] per-splat features.
        opacities: [...] opacities in [0, 1].
        bins: the tile lists from `bin_tiles` over the same splats.
        width, height: image size in pixels.
        backgrounds: [C, D] colour behind the splats, or None (black).
        absgrad: also accumulate sum over pixels of |dL/dmeans2d| into `means2d.absgrad`.
        chunk_elems: working-set size in [B, P, L] elements (memory/speed trade-off).
        store_bytes: forward intermediates kept for the backward pass up to this size; chunks
            beyond it are recomputed in the backward pass.
    Returns:
        render_colors [C, H, W, D], render_alphas [C, H, W, 1].
    """
    return _RasterizeToPixels.apply(
        means2d,
        conics,
        colors,
        opacities,
        backgrounds,
        bins,
        width,
        height,
        absgrad,
        chunk_elems,
        store_bytes,
    )
