"""Masked image metrics (mPSNR / mSSIM) and co-visibility masks from depth and poses (7-Scenes GT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splat.evaluate import covisibility_mask, evaluate_views, masked_psnr, masked_ssim, psnr, ssim_metric


def _images(seed=0, h=48, w=64):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(h, w, 3, generator=g)
    pred = (gt + 0.05 * torch.randn(h, w, 3, generator=g)).clamp(0, 1)
    return pred, gt


def test_masked_metrics_equal_plain_ones_on_a_full_mask():
    pred, gt = _images()
    full = torch.ones(gt.shape[:2], dtype=torch.bool)
    assert masked_psnr(pred, gt, full) == pytest.approx(psnr(pred, gt), abs=1e-9)
    assert masked_ssim(pred, gt, full) == pytest.approx(ssim_metric(pred, gt), abs=1e-6)


def test_masked_metrics_ignore_what_the_mask_leaves_out():
    pred, gt = _images()
    mask = torch.ones(gt.shape[:2], dtype=torch.bool)
    mask[:, :24] = False
    before = masked_psnr(pred, gt, mask), masked_ssim(pred, gt, mask)
    bad = pred.clone()
    bad[:, :8] = 0.0  # wrong outside the mask, more than the SSIM window (11 px) away from it
    assert masked_psnr(bad, gt, mask) == pytest.approx(before[0], abs=1e-9)
    assert masked_ssim(bad, gt, mask) == pytest.approx(before[1], abs=1e-9)
    assert psnr(bad, gt) < before[0] - 3.0  # the plain metric sees it
    assert masked_psnr(pred, gt, torch.zeros_like(mask)) is None
    edge = torch.zeros_like(mask)
    edge[:, 0] = True  # only pixels outside SSIM's valid region
    assert masked_ssim(pred, gt, edge) is None


def test_evaluate_views_reports_masked_metrics():
    pred, gt = _images()
    mask = np.zeros(gt.shape[:2], bool)
    mask[10:40, 10:50] = True
    out = evaluate_views(lambda i: (pred, torch.ones(gt.shape[:2]), torch.ones(gt.shape[:2])), {0: gt}, masks={0: mask})
    assert out["mask_fraction"] == pytest.approx(mask.mean())
    assert out["psnr_masked"] == pytest.approx(masked_psnr(pred, gt, torch.as_tensor(mask)))
    assert out["ssim_masked"] == pytest.approx(masked_ssim(pred, gt, torch.as_tensor(mask)))


def _gt_view(gt, k: int, step: int = 4):
    """GT depth (depth camera grid, metres) subsampled by `step`, with its K and c2w."""
    depth = gt.read_depth(k)[step // 2 :: step, step // 2 :: step]
    K = gt.K_depth.copy()
    K[:2] /= step
    return depth, K, gt.c2w([k])[0]


def test_covisibility_on_7scenes_ground_truth(redkitchen_gt):
    """Self-consistent GT (depth camera K, GT depth and poses): a view sees itself, a neighbour sees
    most of it, a view from the far end of the sequence little; invalid depth is never covisible."""
    d0, K0, c0 = _gt_view(redkitchen_gt, 0)
    valid = d0 > 0

    def frac(train_ids, occlusion=True):
        views = [_gt_view(redkitchen_gt, k) for k in train_ids]
        m = covisibility_mask(
            d0,
            K0,
            c0,
            np.stack([v[1] for v in views]),
            np.stack([v[2] for v in views]),
            [v[0] for v in views] if occlusion else None,
            rel_tol=0.05,
        )
        assert not (m & ~valid).any()
        return m[valid].mean()

    itself, near, far = frac([0]), frac([9]), frac([447])
    print(
        f"\nco-visible share of frame 0's valid pixels: itself {itself:.3f}, frame 9 {near:.3f}, frame 447 {far:.3f}, "
        f"447 without occlusion test {frac([447], occlusion=False):.3f}, 9+447 {frac([9, 447]):.3f}"
    )
    assert itself > 0.99
    assert 0.7 < near < itself
    assert far < 0.5 * near
    assert frac([447], occlusion=False) >= far  # the occlusion test only removes pixels
    assert frac([9, 447]) >= near  # any training view counts


LPIPS_CHECK = """
import json, sys
from splat.evaluate import lpips_weights_on_disk
found = lpips_weights_on_disk()
loaded = "torchmetrics" in sys.modules
import torchmetrics, pathlib
heads = pathlib.Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "alex.pth"
print(json.dumps([found, loaded, heads.exists()]))
"""


@pytest.mark.parametrize("backbone", [False, True])
def test_lpips_weight_check_finds_the_files_without_importing_torchmetrics(tmp_path, backbone):
    """The check runs in every training stage: it must not pay torchmetrics' import (1.3-2.4 s here)."""
    import json
    import os
    import subprocess
    import sys

    if backbone:  # torch's hub cache with an AlexNet checkpoint: the check then says yes (heads ship with torchmetrics)
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        (tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    env = {**os.environ, "TORCH_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", LPIPS_CHECK], env=env, capture_output=True, text=True, check=True)
    found, loaded, heads = json.loads(out.stdout.splitlines()[-1])
    assert not loaded
    assert heads  # torchmetrics ships its linear heads
    assert found is backbone
