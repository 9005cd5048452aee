"""DVD long-video logic: processing size, window plan, 4n+1 padding, chain and global stitching."""

from __future__ import annotations

import numpy as np
import pytest

from depth.dvd.windows import (
    fit_scale_shift,
    plan_windows,
    processing_size,
    solve_global_scale_shift,
    stitch,
    stitch_chain,
    stitch_global,
    temporal_pad,
    temporal_pad_count,
)
from depth.errors import DepthError


def test_processing_size_fixture_cases():
    assert processing_size(72, 100, 64, 96) == (80, 96)
    assert processing_size(30, 50, 64, 96) == (64, 112)
    assert processing_size(480, 640, 480, 640) == (480, 640)
    assert processing_size(1080, 1920, 480, 640) == (480, 864)  # ratio 4/9: 480 x 853.3 -> 854 -> 864
    with pytest.raises(DepthError):
        processing_size(0, 10, 480, 640)


def test_plan_windows_rules():
    assert plan_windows(22, 9, 4) == [(0, 9), (5, 14), (10, 19), (13, 22)]
    assert plan_windows(7, 9, 4) == [(0, 7)]
    assert plan_windows(9, 9, 4) == [(0, 9)]
    assert plan_windows(10, 9, 4) == [(0, 9), (1, 10)]
    assert plan_windows(14, 9, 4) == [(0, 9), (5, 14)]  # a window that reaches T exactly is the last one
    spans = plan_windows(1000, 81, 21)
    assert spans[0] == (0, 81) and spans[-1] == (919, 1000)
    assert all(e - s == 81 for s, e in spans) and all(b[0] - a[0] == 60 for a, b in zip(spans[:-2], spans[1:-1]))
    for bad in [(10, 9, 9), (10, 0, 0), (10, 9, -1)]:
        with pytest.raises(DepthError):
            plan_windows(*bad)


def test_temporal_padding():
    assert [temporal_pad_count(n) for n in (1, 5, 7, 8, 9, 10, 11, 12)] == [0, 0, 2, 1, 0, 3, 2, 1]
    x = np.arange(7)[:, None] * np.ones((7, 2))
    padded = temporal_pad(x)
    assert len(padded) == 9 and np.array_equal(padded[7:], x[[6, 6]])


def test_fit_scale_shift_exact_and_degenerate():
    rng = np.random.default_rng(0)
    cur = rng.random((3, 8, 8)).astype(np.float32)
    s, b = fit_scale_shift(cur, 0.8 * cur + 0.1)
    assert s == pytest.approx(0.8, abs=1e-6) and b == pytest.approx(0.1, abs=1e-6)
    assert fit_scale_shift(np.ones((2, 4, 4)), cur[:2, :4, :4]) == (1.0, 0.0)


def _synthetic_windows(num_frames=40, window=9, overlap=4, scales=None, shifts=None, noise=0.0, seed=0):
    """True disparity D [T, 6, 7] and window outputs x_i with s_i * x_i + b_i = D + noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, num_frames)[:, None, None]
    D = (0.3 + 0.4 * rng.random((1, 6, 7)) + 0.2 * np.sin(6 * t)).astype(np.float32)
    spans = plan_windows(num_frames, window, overlap)
    n = len(spans)
    scales = np.ones(n) if scales is None else np.asarray(scales, dtype=np.float64)
    shifts = np.zeros(n) if shifts is None else np.asarray(shifts, dtype=np.float64)
    windows = []
    for (s, e), sc, sh in zip(spans, scales, shifts):
        x = (D[s:e] + noise * rng.standard_normal(D[s:e].shape) - sh) / sc
        windows.append(x.astype(np.float32))
    return D, spans, windows


def test_global_recovers_known_scale_shift_exactly():
    n = len(plan_windows(40, 9, 4))
    rng = np.random.default_rng(1)
    scales = np.r_[1.0, rng.uniform(0.4, 2.5, n - 1)]  # far outside the chain clip [0.7, 1.5]
    shifts = np.r_[0.0, rng.uniform(-0.3, 0.3, n - 1)]
    D, spans, windows = _synthetic_windows(scales=scales, shifts=shifts)
    s, b = solve_global_scale_shift(windows, spans)
    np.testing.assert_allclose(s, scales, atol=1e-5)
    np.testing.assert_allclose(b, shifts, atol=1e-5)
    out, infos = stitch_global(windows, spans, 40)
    assert out.shape == D.shape and np.abs(out - D).max() < 1e-5
    assert [i.start for i in infos] == [sp[0] for sp in spans]
    assert all(i.residual_after < 1e-5 < i.residual_before for i in infos[1:])


def test_global_beats_chain_on_drifting_sequence():
    n = len(plan_windows(60, 9, 4))
    scales = 0.8 ** -np.arange(n)  # every window 25% "brighter" than the last: the chain clip cannot follow
    shifts = -0.02 * np.arange(n)
    D, spans, windows = _synthetic_windows(num_frames=60, scales=scales, shifts=shifts, noise=0.002)
    chain, chain_info = stitch_chain(windows, spans, 60)
    glob, _ = stitch_global(windows, spans, 60)
    err_chain, err_global = np.abs(chain - D).mean(), np.abs(glob - D).mean()
    assert err_global < 0.01 < err_chain
    assert err_global < err_chain / 10
    assert any(i.scale != i.scale_raw for i in chain_info[1:])  # the clip was active
    # without drift, global is as good as the official chain (no bias from solving jointly)
    D, spans, windows = _synthetic_windows(num_frames=60, noise=0.002)
    err_chain = np.abs(stitch_chain(windows, spans, 60)[0] - D).mean()
    err_global = np.abs(stitch_global(windows, spans, 60)[0] - D).mean()
    assert err_global < 1.1 * err_chain


def test_chain_matches_official_rule_on_two_windows():
    """Hand-computed reference for two windows: clip only the scale, keep the unclipped shift, blend linearly."""
    rng = np.random.default_rng(3)
    w0 = rng.random((9, 4, 5)).astype(np.float32)
    w1 = rng.random((9, 4, 5)).astype(np.float32)
    w1[:4] = (w0[5:] - 0.5) / 3.0  # true scale 3 (clipped to 1.5), shift 0.5
    out, infos = stitch_chain([w0, w1], [(0, 9), (5, 14)], 14)
    s_raw, b = fit_scale_shift(w1[:4], w0[5:])
    assert s_raw == pytest.approx(3.0, abs=1e-5) and infos[1].scale == 1.5 and infos[1].shift == pytest.approx(b)
    aligned = np.maximum(w1 * 1.5 + b, 0)
    a = np.linspace(0, 1, 4)[:, None, None]
    expected = np.concatenate([w0[:5], (1 - a) * w0[5:] + a * aligned[:4], aligned[4:]])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.shape == (14, 4, 5) and (out >= 0).all()


def test_stitch_single_window_and_bad_method():
    D, spans, windows = _synthetic_windows(num_frames=7, window=9)
    for method in ("chain", "global"):
        out, infos = stitch(windows, spans, 7, method)
        np.testing.assert_array_equal(out, windows[0])
        assert len(infos) == 1 and infos[0].scale is None and infos[0].frames_after_pad == 9
    with pytest.raises(DepthError, match="stitching method"):
        stitch(windows, spans, 7, "median")
