"""Evaluation of a trained splat: image metrics (PSNR, SSIM, LPIPS if its weights are on disk), depth
metrics against ground truth, co-visibility masks, and test renders beside the ground truth (as arrays).

Images are float tensors [H,W,3] in [0,1]; depths are [H,W] z-depth with 0 = invalid.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from depth.geometry import backproject, invert_pose, project
from splat.exposure import apply_affine, fit_affine
from splat.fuse import depth_agreement
from splat.losses import ssim, ssim_map

log = logging.getLogger(__name__)

SSIM_WINDOW = 11


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0,1] (any matching shapes)."""
    mse = float(((pred.clamp(0, 1) - gt) ** 2).mean())
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def ssim_metric(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """SSIM (11x11 Gaussian window, sigma 1.5, valid region) of [H,W,3] images in [0,1]."""
    return float(ssim(pred.clamp(0, 1)[None], gt[None], window=SSIM_WINDOW, padding="valid"))


def masked_psnr(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float | None:
    """PSNR in dB over the pixels of `mask` [H,W] bool only (images [H,W,3] in [0,1]); None if empty.

    With a co-visibility mask this is the mPSNR of Gao et al., "Monocular Dynamic View Synthesis: A
    Reality Check" (NeurIPS 2022): test pixels that no training view observed are not scored.
    """
    m = mask.to(pred.device).bool()
    if not bool(m.any()):
        return None
    mse = float(((pred.clamp(0, 1) - gt)[m] ** 2).mean())
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def masked_ssim(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean of the SSIM map ("valid" window, as `ssim_metric`) over the pixels of `mask` [H,W]; None if
    no masked pixel lies in the map's valid region."""
    smap = ssim_map(pred.clamp(0, 1)[None], gt[None], window=SSIM_WINDOW, padding="valid")[0].mean(0)  # [H',W']
    r = SSIM_WINDOW // 2
    m = mask.to(pred.device).bool()[r : r + smap.shape[0], r : r + smap.shape[1]]
    if not bool(m.any()):
        return None
    return float(smap[m].mean())


def covisibility_mask(
    depth: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    train_K: np.ndarray,
    train_c2w: np.ndarray,
    train_depth: list[np.ndarray] | None = None,
    rel_tol: float = 0.05,
    train_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Which pixels of a (test) view at least one training view observes.

    Each pixel with valid depth is back-projected and projected into every training view; it counts
    as seen when it lands inside that view in front of the camera and, if `train_depth` is given, the
    training view's depth there agrees within `rel_tol` (so occluded surfaces do not count).

    Args:
        depth: [H,W] z-depth of the view (same units as the poses), 0 = invalid (never covisible).
        K: [3,3] its intrinsics in pixels at (W,H); c2w: [4,4] camera-to-world (OpenCV axes).
        train_K: [N,3,3]; train_c2w: [N,4,4]; train_depth: N maps [h,w] (any size; their K must match
            their size), or None to skip the occlusion test; then `train_size` (w,h) is the training
            views' image size (default: this view's).
    Returns:
        [H,W] bool.
    """
    H, W = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    pts = backproject(depth, K, c2w)  # row-major order of the valid pixels
    seen = np.zeros(len(pts), bool)
    for j in range(len(train_c2w)):
        w2c = invert_pose(train_c2w[j])
        if train_depth is not None:
            seen |= depth_agreement(pts, train_depth[j], train_K[j], w2c, rel_tol)
        else:
            w, h = train_size or (W, H)
            uv, z = project(pts, train_K[j], w2c)
            seen |= (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    out = np.zeros((H, W), bool)
    out[valid] = seen
    return out


def lpips_weights_on_disk() -> bool:
    """True when both LPIPS parts are already local: torchmetrics' linear heads and the AlexNet backbone.

    Nothing is ever downloaded; without the backbone in torch's hub cache LPIPS is skipped. torchmetrics is
    found without importing it: its import (torch._dynamo, scipy.signal, matplotlib) costs 1.3-2.4 s, which every
    run without the weights would pay for nothing.
    """
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or not spec.submodule_search_locations:
        return False
    heads = Path(next(iter(spec.submodule_search_locations))) / "functional" / "image" / "lpips_models" / "alex.pth"
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    backbone = list(ckpt_dir.glob("alexnet-owt-*.pth")) if ckpt_dir.exists() else []
    return heads.exists() and bool(backbone)


class LPIPS:
    """LPIPS (AlexNet) on [H,W,3] images in [0,1]; construct only when `lpips_weights_on_disk()`."""

    def __init__(self, device: torch.device | str = "cpu"):
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        to = lambda t: t.clamp(0, 1).permute(2, 0, 1)[None].float()  # noqa: E731
        return float(self.metric(to(pred), to(gt)))


def maybe_lpips(device: torch.device | str) -> LPIPS | None:
    if not lpips_weights_on_disk():
        log.debug("LPIPS skipped: AlexNet weights are not in torch's hub cache (never downloaded)")
        return None
    try:
        return LPIPS(device)
    except Exception as e:  # a damaged local file must not stop the evaluation
        log.debug("LPIPS skipped: %s", e)
        return None


def depth_metrics(
    pred: np.ndarray, gt: np.ndarray, align: str = "median", min_valid: int = 100
) -> dict[str, float] | None:
    """AbsRel and delta1 of a rendered depth against ground truth.

    Args:
        pred: [H,W] rendered z-depth (scene units), 0 / non-finite = no value.
        gt: [H,W] ground-truth z-depth (its own units), 0 = invalid.
        align: "median" scales pred by median(gt)/median(pred) first (needed when the scene units are
            SfM units, not the GT's metres); "none" compares as is.
    Returns:
        {"abs_rel", "delta1", "scale"} or None when fewer than `min_valid` pixels overlap.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    m = np.isfinite(pred) & (pred > 0) & np.isfinite(gt) & (gt > 0)
    if m.sum() < min_valid:
        return None
    p, g = pred[m], gt[m]
    scale = float(np.median(g) / np.median(p)) if align == "median" else 1.0
    p = p * scale
    ratio = np.maximum(p / g, g / p)
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)), "delta1": float(np.mean(ratio < 1.25)), "scale": scale}


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H,W,3] float in [0,1] -> uint8."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    return (np.clip(a, 0, 1) * 255.0 + 0.5).astype(np.uint8)


RenderFn = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""view index -> (rgb [H,W,3] in [0,1], expected depth [H,W], alpha [H,W])."""


@torch.no_grad()
def evaluate_views(
    render: RenderFn,
    images: dict[int, torch.Tensor],
    keep_renders: bool = False,
    gt_depth: dict[int, np.ndarray] | None = None,
    lpips: LPIPS | None = None,
    depth_align: str = "median",
    masks: dict[int, np.ndarray] | None = None,
) -> dict:
    """Render each view in `images` and score it.

    Args:
        images: view index -> GT image [H,W,3] float in [0,1].
        keep_renders: also return each render beside its ground truth ("renders").
        gt_depth: view index -> GT depth [H,W] at the render resolution (0 invalid).
        masks: view index -> [H,W] bool pixels to score for "psnr_masked" / "ssim_masked" (e.g. the
            co-visibility with the training views, `covisibility_mask`) and "mask_fraction".
    Returns:
        {"psnr", "ssim", "psnr_cc", "ssim_cc" (after a per-view least-squares affine colour fit of the render to
        the image, for exposure / white-balance changes no held-out view can predict), ["lpips"],
        ["depth_abs_rel", "depth_delta1"], ["psnr_masked", "ssim_masked", "mask_fraction"], "per_view": [...],
        ["renders": {view: uint8 [H, 2W, 3] render | GT}]}; means over views.
    """
    per_view, renders = [], {}
    for i, gt in images.items():
        rgb, depth, _alpha = render(i)
        row = {"index": int(i), "psnr": psnr(rgb, gt), "ssim": ssim_metric(rgb, gt)}
        # A held-out view has no learned exposure: score it also after the least-squares affine colour map
        # of the render onto the image (splat.exposure.fit_affine; the colour-corrected metric).
        cc = apply_affine(rgb, fit_affine(rgb, gt)).clamp(0, 1)
        row["psnr_cc"], row["ssim_cc"] = psnr(cc, gt), ssim_metric(cc, gt)
        if lpips is not None:
            row["lpips"] = lpips(rgb, gt)
        if masks is not None and i in masks:
            m = torch.as_tensor(np.asarray(masks[i], bool))
            row["mask_fraction"] = float(m.float().mean())
            for key, fn in (("psnr_masked", masked_psnr), ("ssim_masked", masked_ssim)):
                v = fn(rgb, gt, m)
                if v is not None:
                    row[key] = v
        if gt_depth is not None and i in gt_depth:
            dm = depth_metrics(depth.cpu().numpy(), gt_depth[i], align=depth_align)
            if dm is not None:
                row["depth_abs_rel"], row["depth_delta1"] = dm["abs_rel"], dm["delta1"]
        if keep_renders:
            renders[int(i)] = np.concatenate([to_uint8(rgb), to_uint8(gt)], axis=1)
        per_view.append(row)
    out: dict = {"per_view": per_view, "num_views": len(per_view)}
    for key in (
        "psnr",
        "ssim",
        "psnr_cc",
        "ssim_cc",
        "lpips",
        "depth_abs_rel",
        "depth_delta1",
        "psnr_masked",
        "ssim_masked",
        "mask_fraction",
    ):
        vals = [r[key] for r in per_view if key in r]
        if vals:
            out[key] = float(np.mean(vals))
    if keep_renders:
        out["renders"] = renders
    return out
