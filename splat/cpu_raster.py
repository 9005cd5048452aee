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

How it is fast enough in pure PyTorch: tiles are sorted by their list length and processed in
chunks padded to the chunk's longest list; within a chunk every quantity is a [B, P, L] tensor
(B tiles, P = tile_size^2 pixels, L list slots). sigma is written relative to the tile centre,
sigma(u) = Q(d0) + (A d0).u + Q(u) with d0 = tile centre - mean and u the pixel offset, so the
[B, P, L] exponent is one matmul of fixed pixel features [P, 6] by per-(tile, Gaussian)
coefficients [B, 6, L]; the same matmul, transposed, gives the coefficient gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
_S_MIN = -math.log(ALPHA_MAX)  # exponent below which alpha is clamped to ALPHA_MAX
_S_MAX = 7.0  # exp(-7) < 1/255: beyond this alpha is zero anyway; keeps torch.exp fast
_S_PAD = 1e4  # exponent of padding slots
DEFAULT_CHUNK_ELEMS = 1 << 20  # [B, P, L] elements per chunk


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances R S S^T R^T.

    Args:
        quats: [N, 4] rotations as quaternions (w, x, y, z), need not be normalised.
        scales: [N, 3] standard deviations along the local axes (scene units, activated).
    Returns:
        [N, 3, 3] covariances (scene units^2).
    """
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))
    m = rot * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    covars: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """EWA projection of 3D Gaussians into C pinhole cameras (gsplat's fully_fused_projection).

    Args:
        means: [N, 3] centres, world frame.
        covars: [N, 3, 3] covariances, world frame.
        viewmats: [C, 4, 4] world-to-camera (OpenCV axes: x right, y down, z forward).
        Ks: [C, 3, 3] intrinsics in pixels.
        width, height: image size in pixels.
        eps2d: added to the diagonal of each 2D covariance (pixels^2), the anti-aliasing dilation.
        near_plane, far_plane: z-depth range kept.
        radius_clip: Gaussians whose radius (pixels) is <= this are culled.
        calc_compensations: also return sqrt(det(cov2d) / det(cov2d + eps2d I)).
    Returns:
        radii [C, N] int32 (3-sigma radius in pixels, 0 = culled), means2d [C, N, 2] pixels,
        depths [C, N] z-depth, conics [C, N, 3] (a, b, c) of the inverse dilated 2D covariance,
        compensations [C, N] or None.
    """
    rot = viewmats[:, :3, :3]  # [C, 3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + viewmats[:, None, :3, 3]  # [C, N, 3]
    covars_c = rot[:, None] @ covars[None] @ rot.transpose(-1, -2)[:, None]  # [C, N, 3, 3]

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    x, y, z = means_c.unbind(-1)  # [C, N]
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled entries finite
    rz = 1.0 / z
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)
    j00, j02 = fx * rz, -fx * tx * rz * rz  # J = [[j00, 0, j02], [0, j11, j12]]
    j11, j12 = fy * rz, -fy * ty * rz * rz
    s00, s01, s02 = covars_c[..., 0, 0], covars_c[..., 0, 1], covars_c[..., 0, 2]
    s11, s12, s22 = covars_c[..., 1, 1], covars_c[..., 1, 2], covars_c[..., 2, 2]
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

    with torch.no_grad():
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
        radii = torch.where(valid, radius, torch.zeros_like(radius)).int()
    return radii, means2d, means_c[..., 2], conics, compensations


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

    def chunks(self, max_elems: int):
        """Yield (tile ids [B] int64, L) groups of non-empty tiles, longest lists first, with
        B * tile_size^2 * L <= max_elems (at least one tile per group)."""
        counts, order = torch.sort(self.tile_count, descending=True, stable=True)
        n = int((counts > 0).sum())
        counts_list = counts[:n].tolist()
        pix = self.tile_size * self.tile_size
        i = 0
        while i < n:
            length = counts_list[i]
            b = max(1, max_elems // (pix * length))
            yield order[i : i + b], length
            i += b


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
) -> TileBins:
    """Intersect splats with tiles (gsplat's isect_tiles + isect_offset_encode).

    Args:
        means2d: [S, 2] pixel centres of the splats.
        radii: [S] int radii in pixels (0 = culled).
        depths: [S] z-depths (sort key, nearest first; ties keep splat order).
        camera_ids: [S] int64 camera of each splat.
        n_cameras, width, height, tile_size: image and tiling.
    Returns:
        TileBins.
    """
    device = means2d.device
    tile_width = math.ceil(width / tile_size)
    tile_height = math.ceil(height / tile_size)
    n_tiles = n_cameras * tile_width * tile_height
    r = radii.to(means2d.dtype)
    tmin = torch.floor((means2d - r[:, None]) / tile_size).long()
    tmax = torch.ceil((means2d + r[:, None]) / tile_size).long()
    lim = torch.tensor([tile_width, tile_height], device=device)
    tmin = torch.minimum(tmin.clamp(min=0), lim)
    tmax = torch.minimum(tmax.clamp(min=0), lim)
    span = tmax - tmin  # [S, 2]
    tiles_per_splat = span[:, 0] * span[:, 1] * (radii > 0)

    order = torch.argsort(depths, stable=True)
    counts = tiles_per_splat[order]
    ids = torch.repeat_interleave(order, counts)  # [n_isects], splats in depth order
    n_isects = ids.numel()
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(n_isects, device=device) - torch.repeat_interleave(first, counts)
    nx = span[ids, 0]
    tx = tmin[ids, 0] + local % nx
    ty = tmin[ids, 1] + local // nx
    tile = camera_ids[ids] * (tile_width * tile_height) + ty * tile_width + tx
    tile, perm = torch.sort(tile, stable=True)
    ids = ids[perm]
    tile_count = torch.bincount(tile, minlength=n_tiles)
    tile_start = torch.cumsum(tile_count, 0) - tile_count
    return TileBins(
        tile_size, tile_width, tile_height, n_cameras, ids, tile_start, tile_count,
        tiles_per_splat, tile,
    )


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


class _Chunk:
    """Per-slot data of one chunk of tiles: [B, L] gathers and the [B, 6, L] exponent coefficients."""

    def __init__(self, bins: TileBins, tiles: Tensor, length: int, means2d, conics, opacities):
        device = means2d.device
        slot = torch.arange(length, device=device)
        self.tiles = tiles
        self.valid = slot < bins.tile_count[tiles, None]  # [B, L]
        idx = (bins.tile_start[tiles, None] + slot).clamp(max=max(bins.flatten_ids.numel() - 1, 0))
        self.ids = bins.flatten_ids[idx]  # [B, L] splat ids
        local = tiles % (bins.tile_width * bins.tile_height)
        ts = bins.tile_size
        centre = torch.stack(
            [(local % bins.tile_width) * ts + 0.5 * ts, (local // bins.tile_width) * ts + 0.5 * ts], -1
        ).to(means2d.dtype)  # [B, 2]
        self.d0 = centre[:, None, :] - means2d[self.ids]  # [B, L, 2]
        self.abc = conics[self.ids]  # [B, L, 3]
        self.opac = opacities[self.ids].clamp(min=1e-30)  # [B, L]
        a, b, c = self.abc.unbind(-1)
        dx, dy = self.d0.unbind(-1)
        self.ad0x = a * dx + b * dy
        self.ad0y = b * dx + c * dy
        q = 0.5 * (dx * self.ad0x + dy * self.ad0y) - torch.log(self.opac)
        q = torch.where(self.valid, q, torch.full_like(q, _S_PAD))
        self.coef = torch.stack([q, self.ad0x, self.ad0y, a, c, b], dim=1)  # [B, 6, L]

    def composite(self, feats: Tensor):
        """Alpha, transmittance-before and weights, each [B, P, L].

        Returns (alpha, t_before, weights, live) where live marks entries whose alpha responds to
        the exponent (composited and not clamped at ALPHA_MAX)."""
        s = torch.matmul(feats, self.coef)  # [B, P, L]
        live = s > _S_MIN
        alpha = s.clamp_(_S_MIN, _S_MAX).neg_().exp_()
        alpha.masked_fill_(alpha < ALPHA_MIN, 0.0)
        one_minus = torch.rsub(alpha, 1.0)
        t_incl = torch.cumprod(one_minus, dim=-1)
        kept = t_incl > T_MIN
        live &= kept
        t_before = t_incl.masked_fill_(~kept, 0.0).div_(one_minus)
        weights = t_before * alpha
        return alpha, one_minus, t_before, weights, live


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
    img = img.permute(0, 1, 3, 2, 4, 5).reshape(
        bins.n_cameras, bins.tile_height * ts, bins.tile_width * ts, X
    )
    return img[:, :height, :width].contiguous()


class _RasterizeToPixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, bins, width, height, absgrad, chunk_elems):
        S = opacities.numel()
        m2 = means2d.reshape(S, 2)
        cn = conics.reshape(S, 3)
        cl = colors.reshape(S, -1)
        op = opacities.reshape(S)
        D = cl.shape[-1]
        P = bins.tile_size**2
        feats = _pixel_features(bins.tile_size, m2.dtype, m2.device)
        out = torch.zeros(bins.n_tiles, P, D, dtype=cl.dtype, device=cl.device)
        trans = torch.ones(bins.n_tiles, P, dtype=cl.dtype, device=cl.device)
        for tiles, length in bins.chunks(chunk_elems):
            ch = _Chunk(bins, tiles, length, m2, cn, op)
            _, _, _, w, _ = ch.composite(feats)
            out[tiles] = torch.bmm(w, cl[ch.ids])
            trans[tiles] = 1.0 - w.sum(-1)
        if backgrounds is not None:
            cam = torch.arange(bins.n_tiles, device=out.device) // (bins.tile_width * bins.tile_height)
            out += trans[..., None] * backgrounds[cam][:, None, :]
        ctx.bins, ctx.width, ctx.height = bins, width, height
        ctx.absgrad, ctx.chunk_elems = absgrad, chunk_elems
        ctx.means2d = means2d if absgrad else None
        ctx.shapes = (means2d.shape, conics.shape, colors.shape, opacities.shape)
        ctx.save_for_backward(m2, cn, cl, op, backgrounds, trans)
        colors_img = _from_tiles(out, bins, width, height)
        alphas_img = _from_tiles(1.0 - trans[..., None], bins, width, height)
        return colors_img, alphas_img

    @staticmethod
    def backward(ctx, v_colors, v_alphas):
        m2, cn, cl, op, backgrounds, trans = ctx.saved_tensors
        bins = ctx.bins
        S, D = cl.shape
        g_all = _to_tiles(v_colors, bins)  # [n_tiles, P, D]
        ga_all = _to_tiles(v_alphas, bins)[..., 0]  # [n_tiles, P]
        # d/dalpha_i of (T_final * bg) and of alpha_out = 1 - T_final share the factor T_final/(1-alpha_i)
        tail = -ga_all
        if backgrounds is not None:
            cam = torch.arange(bins.n_tiles, device=cl.device) // (bins.tile_width * bins.tile_height)
            tail = tail + (g_all * backgrounds[cam][:, None, :]).sum(-1)
        tail = tail * trans  # [n_tiles, P]

        feats = _pixel_features(bins.tile_size, m2.dtype, m2.device)
        v_m2 = torch.zeros_like(m2)
        v_cn = torch.zeros_like(cn)
        v_cl = torch.zeros_like(cl)
        v_op = torch.zeros_like(op)
        v_m2_abs = torch.zeros_like(m2) if ctx.absgrad else None
        for tiles, length in bins.chunks(ctx.chunk_elems):
            ch = _Chunk(bins, tiles, length, m2, cn, op)
            alpha, one_minus, t_before, w, live = ch.composite(feats)
            g = g_all[tiles]  # [B, P, D]
            cols = cl[ch.ids]  # [B, L, D]
            v = torch.bmm(g, cols.transpose(1, 2))  # [B, P, L]  g . c_i
            wv = w * v
            suffix = torch.cumsum(wv, dim=-1).neg_().add_(wv.sum(-1, keepdim=True))  # sum_{j>i}
            # ds = dL/dexponent = -alpha dL/dalpha, dL/dalpha = T_i v_i - (suffix_i + tail)/(1 - alpha_i)
            ds = suffix.add_(tail[tiles][..., None]).div_(one_minus).mul_(alpha).sub_(wv)
            ds.masked_fill_(~live, 0.0)
            v_cl.index_add_(0, ch.ids.reshape(-1), torch.bmm(w.transpose(1, 2), g).reshape(-1, D))
            gc = torch.matmul(ds.transpose(1, 2), feats)  # [B, L, 6]
            g0, g1, g2, g3, g4, g5 = gc.unbind(-1)
            dx, dy = ch.d0.unbind(-1)
            a, b, c = ch.abc.unbind(-1)
            # d0 = centre - mean: dL/dmean = -A (g0 d0 + (g1, g2))
            ex, ey = g0 * dx + g1, g0 * dy + g2
            v_mean = torch.stack([-(a * ex + b * ey), -(b * ex + c * ey)], -1)
            v_abc = torch.stack(
                [
                    0.5 * g0 * dx * dx + g1 * dx + g3,
                    g0 * dx * dy + g1 * dy + g2 * dx + g5,
                    0.5 * g0 * dy * dy + g2 * dy + g4,
                ],
                -1,
            )
            flat = ch.ids.reshape(-1)
            v_m2.index_add_(0, flat, v_mean.reshape(-1, 2))
            v_cn.index_add_(0, flat, v_abc.reshape(-1, 3))
            v_op.index_add_(0, flat, (-g0 / ch.opac).reshape(-1))
            if v_m2_abs is not None:
                # per-pixel d exponent / d mean = -A (d0 + u): sum_p |ds| |.| per component
                lin_x = torch.matmul(feats[:, :3], torch.stack([ch.ad0x, a, b], 1))  # [B, P, L]
                lin_y = torch.matmul(feats[:, :3], torch.stack([ch.ad0y, b, c], 1))
                ads = ds.abs_()
                v_abs = torch.stack([(ads * lin_x.abs_()).sum(1), (ads * lin_y.abs_()).sum(1)], -1)
                v_m2_abs.index_add_(0, flat, v_abs.reshape(-1, 2))
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_bg = (g_all * trans[..., None]).reshape(bins.n_cameras, -1, D).sum(1)
        if v_m2_abs is not None and ctx.means2d is not None:
            ctx.means2d.absgrad = v_m2_abs.reshape(ctx.means2d.shape)
        s_m2, s_cn, s_cl, s_op = ctx.shapes
        return (
            v_m2.reshape(s_m2), v_cn.reshape(s_cn), v_cl.reshape(s_cl), v_op.reshape(s_op), v_bg,
            None, None, None, None, None,
        )


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    bins: TileBins,
    width: int,
    height: int,
    backgrounds: Optional[Tensor] = None,
    absgrad: bool = False,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> Tuple[Tensor, Tensor]:
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
    Returns:
        render_colors [C, H, W, D], render_alphas [C, H, W, 1].
    """
    return _RasterizeToPixels.apply(
        means2d, conics, colors, opacities, backgrounds, bins, width, height, absgrad, chunk_elems
    )
