"""Brute-force reference renderer for tests: every pixel against every Gaussian, one at a time.

Written independently of `splat.cpu_raster` and as literally as possible from the 3DGS/gsplat
definitions: full 3x3 / 2x3 matrices for the EWA projection, `torch.linalg.inv` for the conic,
gsplat's own PyTorch SH helper, and a sequential front-to-back loop over Gaussians with the CUDA
kernel's rules (skip alpha < 1/255, stop before T <= 1e-4, tile-granular truncation at the 3-sigma
box). Autograd gives the reference gradients. O(C * N * H * W): tiny scenes only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _rotmat(quats: Tensor) -> Tensor:
    """[N, 4] quaternions (w, x, y, z) -> [N, 3, 3] rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y**2 + z**2), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x**2 + z**2), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x**2 + y**2)], -1),
        ],
        -2,
    )


def render_reference(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    tile_size: int = 8,
    rasterize_mode: str = "classic",
) -> tuple[Tensor, Tensor]:
    """Render like `splat.render.rasterization` (same argument meanings), slowly and plainly.

    Returns:
        render_colors [C, H, W, X] and render_alphas [C, H, W, 1], as `rasterization`.
    """
    from gsplat.cuda._torch_impl import _spherical_harmonics

    C, _N = viewmats.shape[0], means.shape[0]
    dtype, device = means.dtype, means.device
    rot = _rotmat(quats)
    sigma3 = rot @ torch.diag_embed(scales**2) @ rot.transpose(-1, -2)  # [N, 3, 3]
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    px, py = xs.reshape(-1).to(dtype) + 0.5, ys.reshape(-1).to(dtype) + 0.5  # [HW]
    tile_x, tile_y = xs.reshape(-1) // tile_size, ys.reshape(-1) // tile_size
    tiles_w, tiles_h = math.ceil(width / tile_size), math.ceil(height / tile_size)

    out_colors, out_alphas = [], []
    for cam in range(C):
        W, t, K = viewmats[cam, :3, :3], viewmats[cam, :3, 3], Ks[cam]
        p_cam = means @ W.T + t  # [N, 3]
        cov_cam = W @ sigma3 @ W.T  # [N, 3, 3]
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        x, y, z = p_cam.unbind(-1)
        ok_depth = (z >= near_plane) & (z <= far_plane)
        zs = torch.where(ok_depth, z, torch.ones_like(z))
        lim_x = (width - cx) / fx + 0.15 * width / fx, cx / fx + 0.15 * width / fx
        lim_y = (height - cy) / fy + 0.15 * height / fy, cy / fy + 0.15 * height / fy
        xc = zs * torch.clamp(x / zs, -lim_x[1], lim_x[0])
        yc = zs * torch.clamp(y / zs, -lim_y[1], lim_y[0])
        zero = torch.zeros_like(zs)
        J = torch.stack(
            [
                torch.stack([fx / zs, zero, -fx * xc / zs**2], -1),
                torch.stack([zero, fy / zs, -fy * yc / zs**2], -1),
            ],
            -2,
        )  # [N, 2, 3]
        cov2 = J @ cov_cam @ J.transpose(-1, -2)
        det0 = torch.linalg.det(cov2)
        cov2 = cov2 + eps2d * torch.eye(2, dtype=dtype, device=device)
        det = torch.linalg.det(cov2)
        conic = torch.linalg.inv(cov2)  # [N, 2, 2]
        mean2 = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)  # [N, 2]
        opac = opacities
        if rasterize_mode == "antialiased":
            opac = opac * torch.sqrt((det0 / det).clamp(min=1e-12))

        if sh_degree is None:
            col = colors if colors.ndim == 2 else colors[cam]
        else:
            campos = torch.inverse(viewmats[cam])[:3, 3]  # as gsplat (matters for d/dviewmats)
            shs = colors if colors.ndim == 3 else colors[cam]
            col = torch.clamp_min(_spherical_harmonics(sh_degree, means - campos, shs) + 0.5, 0.0)
        if render_mode in ("RGB+D", "RGB+ED"):
            col = torch.cat([col, z[:, None]], -1)
        elif render_mode in ("D", "ED"):
            col = z[:, None]
        bg = None
        if backgrounds is not None:
            bg = backgrounds[cam]
            if render_mode in ("RGB+D", "RGB+ED"):
                bg = torch.cat([bg, bg.new_zeros(1)])
            elif render_mode in ("D", "ED"):
                bg = bg.new_zeros(1)

        with torch.no_grad():
            b = 0.5 * (cov2[:, 0, 0] + cov2[:, 1, 1])
            radius = torch.ceil(3 * torch.sqrt(b + torch.sqrt((b * b - det).clamp(min=0.01))))
            visible = (
                ok_depth
                & (det > 0)
                & (mean2[:, 0] + radius > 0)
                & (mean2[:, 0] - radius < width)
                & (mean2[:, 1] + radius > 0)
                & (mean2[:, 1] - radius < height)
            )
            tmin = torch.floor((mean2 - radius[:, None]) / tile_size)
            tmax = torch.ceil((mean2 + radius[:, None]) / tile_size)
            order = torch.argsort(z, stable=True).tolist()

        T = torch.ones(height * width, dtype=dtype, device=device)
        acc = torch.zeros(height * width, col.shape[-1], dtype=dtype, device=device)
        done = torch.zeros(height * width, dtype=torch.bool, device=device)
        for g in order:
            if not visible[g]:
                continue
            in_box = (
                (tile_x >= tmin[g, 0])
                & (tile_x < tmax[g, 0])
                & (tile_x < tiles_w)
                & (tile_y >= tmin[g, 1])
                & (tile_y < tmax[g, 1])
                & (tile_y < tiles_h)
            )
            d = torch.stack([px - mean2[g, 0], py - mean2[g, 1]], -1)  # [HW, 2]
            power = 0.5 * torch.einsum("pi,ij,pj->p", d, conic[g], d)
            alpha = torch.clamp(opac[g] * torch.exp(-power), max=0.999)
            use = in_box & ~done & (power >= 0) & (alpha >= 1.0 / 255.0)
            next_T = T * (1 - alpha)
            stop = use & (next_T <= 1e-4)
            done = done | stop
            use = use & ~stop
            acc = acc + torch.where(use[:, None], (alpha * T)[:, None] * col[g], torch.zeros_like(acc))
            T = torch.where(use, next_T, T)
        alpha_img = 1 - T
        if bg is not None:
            acc = acc + T[:, None] * bg
        if render_mode in ("ED", "RGB+ED"):
            acc = torch.cat([acc[:, :-1], acc[:, -1:] / alpha_img[:, None].clamp(min=1e-10)], -1)
        out_colors.append(acc.reshape(height, width, -1))
        out_alphas.append(alpha_img.reshape(height, width, 1))
    return torch.stack(out_colors), torch.stack(out_alphas)
