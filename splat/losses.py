"""Training losses and schedules: L1, D-SSIM, depth-prior losses, learning-rate / weight decay.

Images are float tensors in [0,1] laid out [..., H, W, 3] (the renderer's layout); depth maps are
[..., H, W] z-depth in scene units with 0 (or a False mask) meaning "no value".
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def l1_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (pred - gt).abs().mean()


@functools.lru_cache(maxsize=8)
def _gaussian_kernels(
    size: int, sigma: float, channels: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The separable Gaussian window as two grouped-conv kernels, [C,1,size,1] (rows) and [C,1,1,size] (columns),
    normalised to sum 1; cached, so a training step allocates none."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    rows = g.view(1, 1, size, 1).repeat(channels, 1, 1, 1)
    return rows, rows.view(channels, 1, 1, size)


def ssim_map(
    pred: torch.Tensor, gt: torch.Tensor, window: int = 11, sigma: float = 1.5, padding: str = "same"
) -> torch.Tensor:
    """Per-pixel structural similarity of two image batches (Gaussian window, constants of Wang et al. 2004).

    Args:
        pred, gt: [..., H, W, 3] floats in [0,1].
        padding: "same" (zero padding, the 3DGS training loss) or "valid" (the usual evaluation metric,
            as in skimage / torchmetrics with a Gaussian window; the map loses window // 2 pixels per side).
    Returns:
        [N, 3, H', W'] (N = the flattened leading dims; H' = H, or H - window + 1 for "valid").
    """
    c = pred.shape[-1]
    x = pred.reshape(-1, *pred.shape[-3:]).permute(0, 3, 1, 2)
    y = gt.reshape(-1, *gt.shape[-3:]).permute(0, 3, 1, 2)
    # The five local moments in one batch of 5C channels, blurred by the Gaussian as a row pass and a column
    # pass (separable: 2k instead of k^2 multiply-adds per pixel; zero padding keeps it the same sum).
    rows, cols = _gaussian_kernels(window, sigma, 5 * c, x.device, x.dtype)
    pad = window // 2 if padding == "same" else 0
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    blurred = F.conv2d(F.conv2d(stack, rows, padding=(pad, 0), groups=5 * c), cols, padding=(0, pad), groups=5 * c)
    mu_x, mu_y, exx, eyy, exy = blurred.split(c, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_xy + c1) * (2 * (exy - mu_xy) + c2)
    den = (mu_xx + mu_yy + c1) * ((exx - mu_xx) + (eyy - mu_yy) + c2)
    return num / den


def ssim(
    pred: torch.Tensor, gt: torch.Tensor, window: int = 11, sigma: float = 1.5, padding: str = "same"
) -> torch.Tensor:
    """Mean structural similarity (the mean of `ssim_map`); scalar tensor, 1 for identical images."""
    return ssim_map(pred, gt, window, sigma, padding).mean()


def photometric_loss(
    pred: torch.Tensor, gt: torch.Tensor, ssim_lambda: float = 0.2
) -> tuple[torch.Tensor, dict[str, float]]:
    """3DGS image loss (1 - lambda) * L1 + lambda * (1 - SSIM); returns (loss, {"l1", "dssim"})."""
    l1 = l1_loss(pred, gt)
    dssim = 1.0 - ssim(pred, gt)
    loss = (1.0 - ssim_lambda) * l1 + ssim_lambda * dssim
    return loss, {"l1": float(l1.detach()), "dssim": float(dssim.detach())}


def depth_l1_inverse(
    pred_depth: torch.Tensor, prior_depth: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """L1 between rendered and prior inverse depth, divided by the mean prior inverse depth.

    The normalisation makes the loss (and so its weight) independent of the scene's unit.

    Args:
        pred_depth: [..., H, W] rendered expected z-depth (scene units).
        prior_depth: [..., H, W] prior z-depth (scene units), 0 = invalid.
        mask: [..., H, W] bool, pixels to use (prior valid and the render covers the pixel).
        weight: [..., H, W] per-pixel weight in [0, 1] (the prior's confidence); None = 1 everywhere. Both
            means (of the error and of the prior) are then weighted means.
    """
    m = mask & (prior_depth > 0)
    if weight is not None:
        m = m & (weight > 0)
    if not bool(m.any()):
        return pred_depth.sum() * 0.0
    inv_prior = 1.0 / prior_depth[m]
    inv_pred = 1.0 / pred_depth[m].clamp_min(1e-6)
    if weight is None:
        return (inv_pred - inv_prior).abs().mean() / inv_prior.mean()
    w = weight[m]
    return ((inv_pred - inv_prior).abs() * w).sum() / (inv_prior * w).sum()


def depth_pearson(
    pred_depth: torch.Tensor, prior_depth: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - Pearson correlation of rendered and prior inverse depth over the masked pixels.

    Invariant to scale and shift of the prior, so it also works for a relative (unaligned) prior.
    Shapes as in `depth_l1_inverse`; with `weight` the correlation is the weighted one.
    """
    m = mask & (prior_depth > 0)
    if weight is not None:
        m = m & (weight > 0)
    if int(m.sum()) < 16:
        return pred_depth.sum() * 0.0
    a = 1.0 / pred_depth[m].clamp_min(1e-6)
    b = 1.0 / prior_depth[m]
    if weight is None:
        a = a - a.mean()
        b = b - b.mean()
        corr = (a * b).sum() / (a.norm() * b.norm() + 1e-12)
        return 1.0 - corr
    w = weight[m] / weight[m].sum()
    a = a - (w * a).sum()
    b = b - (w * b).sum()
    corr = (w * a * b).sum() / (torch.sqrt((w * a * a).sum() * (w * b * b).sum()) + 1e-12)
    return 1.0 - corr


PATCH_SIZE = 16
"""Side in pixels of the square patches of `depth_patch_pearson`."""


def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """[..., H, W] -> [..., H // p, W // p, p * p] (the trailing rows and columns that do not fill a patch dropped)."""
    h, w = x.shape[-2] // p * p, x.shape[-1] // p * p
    x = x[..., :h, :w].unflatten(-2, (h // p, p)).unflatten(-1, (w // p, p))  # [..., nh, p, nw, p]
    return x.transpose(-3, -2).flatten(-2)


def depth_patch_pearson(
    pred_depth: torch.Tensor, prior_depth: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over 16x16 patches of 1 - the Pearson correlation of rendered and prior inverse depth in the patch.

    A local depth normalisation (as DNGaussian's, Li et al. CVPR 2024, and the patch correlation of SparseGS):
    each patch is compared up to its own scale and shift, so a prior whose error is a smooth, low-frequency
    distortion (a monocular or few-view stereo prior) still teaches the fine relative shape. Patches with fewer
    than a quarter of their pixels valid, or a flat prior (std below 1e-3 of its mean), are left out. Shapes as
    in `depth_l1_inverse`; with `weight` the correlations are weighted.
    """
    p = PATCH_SIZE
    m = mask & (prior_depth > 0)
    valid = m.to(pred_depth.dtype)
    w = valid if weight is None else valid * weight
    a = _patches(1.0 / pred_depth.clamp_min(1e-6), p)
    b = _patches(torch.where(m, 1.0 / prior_depth.clamp_min(1e-6), torch.zeros_like(prior_depth)), p)
    w = _patches(w, p)
    ws = w.sum(-1, keepdim=True)
    wn = w / ws.clamp_min(1e-12)
    ma, mb = (wn * a).sum(-1, keepdim=True), (wn * b).sum(-1, keepdim=True)
    a, b = a - ma, b - mb
    # A patch the render fills with one flat Gaussian has zero variance, and d sqrt(v) / dv is infinite there:
    # the rendered spread is floored at 1e-3 of the patch's mean disparity.
    va = (wn * a * a).sum(-1) + (1e-3 * ma.squeeze(-1).detach()) ** 2
    vb = (wn * b * b).sum(-1)
    keep = (_patches(valid, p).sum(-1) >= p * p / 4) & (vb.sqrt() > 1e-3 * mb.squeeze(-1).abs())
    if not bool(keep.any()):
        return pred_depth.sum() * 0.0
    corr = (wn * a * b).sum(-1)[keep] / torch.sqrt(va[keep] * vb[keep])
    return (1.0 - corr).mean()


DEPTH_LOSSES = {"l1-inverse": depth_l1_inverse, "pearson": depth_pearson, "patch-pearson": depth_patch_pearson}


def warp_from_shifted_view(image: torch.Tensor, disparity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward warp of a view rendered with the camera moved along its own x axis, into the reference view.

    A point at z-depth Z seen at pixel (u, v) of the reference camera is seen at (u - f t / Z, v) by the camera
    moved t scene units along x (same rotation and intrinsics); disparity = f t / Z in pixels.

    Args:
        image: [H, W, C] the render at the moved camera.
        disparity: [H, W] pixels, f t / Z for every reference pixel (differentiable: gradients reach Z).
    Returns:
        warped [H, W, C] (bilinear; the moved view's colour at each reference pixel), inside [H, W] bool: the
        sample lies in the moved image.
    """
    H, W = disparity.shape
    u = torch.arange(W, device=disparity.device, dtype=disparity.dtype).expand(H, W) - disparity
    v = torch.arange(H, device=disparity.device, dtype=disparity.dtype)[:, None].expand(H, W)
    grid = torch.stack([2 * u / max(W - 1, 1) - 1, 2 * v / max(H - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(image.permute(2, 0, 1)[None], grid[None], mode="bilinear", align_corners=True)
    return warped[0].permute(1, 2, 0), (u >= 0) & (u <= W - 1)


def binocular_loss(
    shifted_rgb: torch.Tensor,
    depth: torch.Tensor,
    alpha: torch.Tensor,
    gt: torch.Tensor,
    f_t: float,
    smooth: float = 0.05,
) -> torch.Tensor:
    """Self-supervised stereo consistency (as Binocular3DGS, Han et al., NeurIPS 2024): the render at the camera
    moved t along its x axis, warped back by the rendered depth, must reproduce the ground-truth image; plus an
    edge-aware smoothness of the disparity. Wrong depth warps the wrong colours in, so the loss corrects depth
    that a single view cannot see.

    Args:
        shifted_rgb: [H, W, 3] render at the moved camera. depth: [H, W] rendered z-depth at the reference camera
            (scene units). alpha: [H, W] its coverage (pixels under 0.5 are left out). gt: [H, W, 3] the
            reference image. f_t: focal length (px) x t (scene units), signed. smooth: weight of the smoothness.
    """
    disparity = f_t / depth.clamp_min(1e-6)
    warped, inside = warp_from_shifted_view(shifted_rgb, disparity)
    m = inside & (alpha.detach() > 0.5)
    if not bool(m.any()):
        return shifted_rgb.sum() * 0.0
    l1 = (warped - gt).abs().mean(dim=-1)[m].mean()
    if smooth <= 0:
        return l1
    d = disparity * m
    edge_x = torch.exp(-(gt[:, 1:] - gt[:, :-1]).abs().mean(dim=-1))
    edge_y = torch.exp(-(gt[1:] - gt[:-1]).abs().mean(dim=-1))
    tv = ((d[:, 1:] - d[:, :-1]).abs() * edge_x).mean() + ((d[1:] - d[:-1]).abs() * edge_y).mean()
    return l1 + smooth * tv


def exp_decay(step: int, start: float, final: float, max_steps: int) -> float:
    """Log-linear interpolation from `start` (step 0) to `final` (step max_steps), clamped after."""
    if max_steps <= 0 or start <= 0 or final <= 0:
        return start
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp((1 - t) * math.log(start) + t * math.log(final))


def depth_weight_at(step: int, weight: float, final_ratio: float, max_steps: int) -> float:
    """Depth-loss weight at `step`: decays exponentially from `weight` to `weight * final_ratio`.

    A depth prior helps most early (it fixes geometry before photometric overfitting in sparse
    views) and can fight fine detail late, hence the decay. `final_ratio` 1 = constant.
    """
    if weight <= 0:
        return 0.0
    return exp_decay(step, weight, weight * max(final_ratio, 1e-12), max_steps)
