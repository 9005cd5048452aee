"""depth.metrics: known numbers, alignment modes, masks and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depth.errors import DepthError
from depth.metrics import depth_metrics, fit_alignment


def test_hand_computed_values():
    gt = np.array([1.0, 2.0, 4.0])
    pred = np.array([1.1, 1.8, 5.0])
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx((0.1 + 0.1 + 0.25) / 3)
    assert m["sq_rel"] == pytest.approx((0.01 / 1 + 0.04 / 2 + 1.0 / 4) / 3)
    assert m["rmse"] == pytest.approx(np.sqrt((0.01 + 0.04 + 1.0) / 3))
    assert m["rmse_log"] == pytest.approx(np.sqrt(np.mean(np.log([1.1, 0.9, 1.25]) ** 2)))
    # ratios 1.1, 1.111, 1.25: the last is not < 1.25
    assert m["delta1"] == pytest.approx(2 / 3)
    assert m["delta2"] == 1.0 and m["delta3"] == 1.0
    assert m["n"] == 3 and m["coverage"] == 1.0 and m["scale"] == 1.0 and m["shift"] == 0.0


def test_perfect_and_constant_ratio():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 5.0, (2, 8, 9))
    m = depth_metrics(gt.copy(), gt)
    assert m["abs_rel"] == 0 and m["rmse"] == 0 and m["delta1"] == 1.0
    m = depth_metrics(1.5 * gt, gt)  # ratio 1.5: outside δ1 (1.25), inside δ2 (1.5625)
    assert m["abs_rel"] == pytest.approx(0.5)
    assert m["rmse_log"] == pytest.approx(np.log(1.5))
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.0, 1.0, 1.0)
    assert m["sq_rel"] == pytest.approx(np.mean(0.25 * gt))


def test_alignment_recovers_scale_and_shift():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.8, 4.0, (3, 10, 12)).astype(np.float32)
    m = depth_metrics(3.0 * gt, gt, align="median")
    assert m["scale"] == pytest.approx(1 / 3, rel=1e-5) and m["abs_rel"] < 1e-5
    m = depth_metrics(2.0 * gt + 1.0, gt, align="lstsq", space="depth")
    assert m["scale"] == pytest.approx(0.5, rel=1e-4) and m["shift"] == pytest.approx(-0.5, abs=1e-4)
    assert m["abs_rel"] < 1e-4
    # affine in disparity: 1/pred = 0.2/gt + 0.05 (DVD-like relative disparity)
    pred = 1.0 / (0.2 / gt + 0.05)
    m = depth_metrics(pred, gt, align="lstsq", space="disparity")
    assert m["abs_rel"] < 1e-4 and m["delta1"] == 1.0
    assert m["scale"] == pytest.approx(5.0, rel=1e-3) and m["shift"] == pytest.approx(-0.25, rel=1e-3)
    # pure scale fit, and the same data unaligned is far off
    m = depth_metrics(0.1 * gt, gt, align="scale")
    assert m["scale"] == pytest.approx(10.0, rel=1e-5) and m["abs_rel"] < 1e-5
    assert depth_metrics(0.1 * gt, gt)["abs_rel"] == pytest.approx(0.9, rel=1e-5)


def test_disparity_input_and_torch():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])
    disp = np.array([[1.0, 0.5], [0.0, 7.0]])  # 0 = invalid prediction, gt 0 invalid
    m = depth_metrics(torch.from_numpy(disp), torch.from_numpy(gt), pred_is_disparity=True)
    assert m["n"] == 2 and m["abs_rel"] == 0.0
    assert m["coverage"] == pytest.approx(2 / 3)


def test_masks_range_and_coverage():
    gt = np.array([0.5, 1.0, 2.0, 3.0, 20.0, np.nan, 0.0])
    pred = np.array([0.5, 0.0, 2.2, 3.0, 20.0, 1.0, 1.0])
    m = depth_metrics(pred, gt, min_depth=0.6, max_depth=10.0)
    # GT-valid in range: 1.0, 2.0, 3.0; prediction valid on 2.0 and 3.0
    assert m["n"] == 2 and m["coverage"] == pytest.approx(2 / 3)
    assert m["abs_rel"] == pytest.approx(0.05)
    mask = np.array([1, 1, 0, 1, 1, 1, 1], bool)
    m = depth_metrics(pred, gt, mask=mask, min_depth=0.6, max_depth=10.0)
    assert m["n"] == 1 and m["abs_rel"] == 0.0 and m["coverage"] == pytest.approx(0.5)


def test_aligned_prediction_is_clamped():
    gt = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 2.0, 3.0, 40.0])
    m = depth_metrics(pred, gt, align="median", max_depth=5.0)
    # median scale = 2.5 / 2.5 = 1; 40 is clamped to 5 -> |5-4|/4
    assert m["abs_rel"] == pytest.approx(0.25 / 4)


def test_per_frame_mean_differs_from_pooled():
    gt = np.ones((2, 1, 4))
    pred = np.ones((2, 1, 4))
    pred[0, 0, :2] = 0  # frame 0: 2 valid pixels, exact
    pred[1] *= 2.0  # frame 1: 4 pixels, abs_rel 1
    pooled = depth_metrics(pred, gt)
    frames = depth_metrics(pred, gt, per_frame=True)
    assert pooled["abs_rel"] == pytest.approx(4 / 6)
    assert frames["abs_rel"] == pytest.approx(0.5) and frames["frames"] == 2
    # per-frame median alignment fixes frame 1 exactly
    assert depth_metrics(pred, gt, per_frame=True, align="median")["abs_rel"] == pytest.approx(0.0)


def test_errors():
    with pytest.raises(DepthError, match="shape"):
        depth_metrics(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(DepthError, match="no pixel"):
        depth_metrics(np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(DepthError, match="alignment"):
        depth_metrics(np.ones(3), np.ones(3), align="affine")
    with pytest.raises(DepthError, match="constant"):
        fit_alignment(np.ones(5), np.arange(1.0, 6.0), "lstsq")
