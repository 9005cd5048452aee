"""Align a depth prior to an SfM reconstruction: disparity -> z-depth in scene (SfM) units.

Arrays in, arrays out: `align_disparity` takes the disparity maps, the SfM observations of each frame and
the frames to fit on, and returns the aligned depth with its per-frame scale/shift and a report (the
recon align stage reads and writes the run's files around it).

Sparse targets. For every prior frame the SfM points that frame OBSERVES (its 2D-3D track entries,
not a blind projection of all points) give a sparse z-depth `z` at the keypoint location. The
disparity is sampled there bilinearly and the fit maps it to the SfM inverse depth `y = 1 / z`.
Test views are never used in the fit (if the prior includes them, they are only scored).

Fit. `aligned_disparity = scale * disparity + shift`, fitted robustly (IRLS with Huber or Cauchy
weights, or RANSAC then a least-squares refit on the inliers) on RELATIVE residuals
`(scale * x + shift - y) / y`, so near and far points count alike (a relative error of inverse depth
is, to first order, the same relative error of depth). What is fitted depends on the disparity kind:
  - "relative_disparity" (DVD, or user disparity maps): affine-invariant, so scale AND shift.
  - "metric_disparity" (plane-sweep stereo in scene units, or user depth maps in metres): already
    proportional to the true inverse depth, so SCALE ONLY (shift 0). For stereo the scale comes out
    close to 1 and is reported; fitting it costs nothing and absorbs a small bias. For user depth in
    metres the scale converts metres to SfM units.
`AlignConfig.fit` overrides this ("affine" or "scale").

Modes: one global fit (default); "per-window" (one fit per DVD window, blended
linearly across window overlaps); "per-frame". Windows/frames with fewer than `min_points` samples
fall back to the global fit, so frames without SfM points still get depth.

Output. Pixels whose aligned disparity is <= 0 become invalid (never inverted), as do pixels whose
depth exceeds `far_factor` x the 99th percentile of the SfM depths used (near-zero disparity, e.g. sky).
Non-prior frames stay 0.

Pixel convention: COLMAP keypoints (and K) put the centre of pixel (col c, row r) at (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from depth.checks import choice, number, rng_seed
from depth.errors import DepthError
from depth.result import KIND_METRIC, KIND_RELATIVE

log = logging.getLogger(__name__)

Estimator = Literal["irls-huber", "irls-cauchy", "ransac"]

# Tuning constants (in units of the robust residual scale) with 95 % efficiency under Gaussian noise.
_HUBER_K = 1.345
_CAUCHY_K = 2.385
_START_SAMPLES = 200  # minimal-sample hypotheses tried for the IRLS starting point


@dataclass
class AlignConfig:
    mode: Literal["global", "per-window", "per-frame"] = "global"
    """One scale/shift for the whole sequence, one per DVD window, or one per frame."""
    estimator: Estimator = "irls-cauchy"
    """Robust estimator: IRLS with Cauchy or Huber weights, or RANSAC followed by a least-squares refit.
    Cauchy is the default: Huber bounds the influence of a residual but not of leverage, so a few
    percent of gross outliers at far points already bias it (see tests/test_align.py)."""
    fit: Literal["auto", "affine", "scale"] = "auto"
    """auto: scale+shift for relative disparity, scale only for metric/scene-scale disparity."""
    min_points: int = 30
    """Minimum SfM samples for a fit; per-window/per-frame fits with fewer use the global fit."""
    robust_k: float | None = None
    """IRLS tuning constant in units of the robust residual scale (default 1.345 Huber, 2.385 Cauchy)."""
    irls_iters: int = 50
    inlier_threshold: float = 0.1
    """Relative residual |fit - y| / y below which a sample counts as an inlier (RANSAC and reports)."""
    ransac_iters: int = 500
    max_reproj_error: float = 2.0
    """Ignore SfM points whose mean reprojection error exceeds this (pixels)."""
    min_track_length: int = 2
    """Ignore SfM points seen by fewer images."""
    far_factor: float = 5.0
    """Invalidate aligned depth beyond far_factor x the 99th percentile of the SfM depths used."""
    max_samples: int = 2000
    """(disparity, SfM inverse depth) pairs kept in the report for its scatter plot."""
    seed: int = 0

    def validate(self, where: str = "align") -> AlignConfig:
        """DepthError unless every field is in range; `where` prefixes the field names in the message."""
        n = f"{where}."
        choice(self.mode, n + "mode", DepthError, ("global", "per-window", "per-frame"))
        choice(self.estimator, n + "estimator", DepthError, ("irls-huber", "irls-cauchy", "ransac"))
        choice(self.fit, n + "fit", DepthError, ("auto", "affine", "scale"))
        number(self.min_points, n + "min_points", DepthError, lo=2, integer=True)
        number(self.robust_k, n + "robust_k", DepthError, lo=0, hi=100, lo_open=True, optional=True)
        number(self.irls_iters, n + "irls_iters", DepthError, lo=1, hi=100_000, integer=True)
        number(self.inlier_threshold, n + "inlier_threshold", DepthError, lo=0, hi=10, lo_open=True)
        number(self.ransac_iters, n + "ransac_iters", DepthError, lo=1, hi=1_000_000, integer=True)
        number(self.max_reproj_error, n + "max_reproj_error", DepthError, lo=0, hi=1e6, lo_open=True)
        number(self.min_track_length, n + "min_track_length", DepthError, lo=0, integer=True)
        number(self.far_factor, n + "far_factor", DepthError, lo=1, hi=1e6)
        number(self.max_samples, n + "max_samples", DepthError, lo=0, hi=10_000_000, integer=True)
        rng_seed(self.seed, n + "seed", DepthError)
        return self


# --------------------------------------------------------------------------------------------
# Pure functions


def fit_affine_robust(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    estimator: Estimator = "irls-huber",
    fit_shift: bool = True,
    robust_k: float | None = None,
    iters: int = 50,
    inlier_threshold: float = 0.1,
    ransac_iters: int = 500,
    rng: np.random.Generator | None = None,
) -> tuple[float, float, np.ndarray]:
    """Robustly fit `y ≈ scale * x + shift` with relative residuals `r = (scale * x + shift - y) / y`.

    Args:
        x: [N] predictor, e.g. relative disparity sampled at SfM keypoints (any units).
        y: [N] target, e.g. SfM inverse depth (1 / scene units); must be > 0.
        weights: [N] optional non-negative sample weights (e.g. depth confidence); default 1.
        estimator: "irls-huber" / "irls-cauchy" (iteratively reweighted least squares, residual scale
            re-estimated each iteration as 1.4826 * median |r|), or "ransac" (minimal samples of 2
            points, or 1 for scale only, scored by summed weights of samples with |r| <= inlier_threshold,
            then least squares on the inliers, twice).
        fit_shift: False fits scale only (shift = 0).
        robust_k: IRLS tuning constant in units of the residual scale.
        inlier_threshold: |r| below which a sample counts as an inlier (returned mask).

    Returns:
        (scale, shift, inlier_mask [N] bool).

    Raises:
        DepthError: too few samples, non-positive targets, or a degenerate (constant) predictor.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    w0 = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if x.shape != y.shape or x.shape != w0.shape:
        raise DepthError(f"alignment fit: x, y and weights differ in length ({x.size}, {y.size}, {w0.size})")
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(w0) & (w0 > 0)
    if np.any(y[keep] <= 0):
        raise DepthError("alignment fit: target inverse depths must be positive")
    need = 2 if fit_shift else 1
    if keep.sum() < need:
        raise DepthError(f"alignment fit needs at least {need} valid samples, got {int(keep.sum())}")
    if fit_shift and np.ptp(x[keep]) <= 1e-12 * max(1.0, float(np.abs(x[keep]).max())):
        raise DepthError("alignment fit: the disparity is constant at every SfM point, cannot fit scale and shift")
    if not fit_shift and not np.any(x[keep] != 0):
        raise DepthError("alignment fit: the disparity is zero at every SfM point")

    xs, ys, ws = x[keep], y[keep], w0[keep]
    if estimator == "ransac":
        scale, shift = _ransac(xs, ys, ws, fit_shift, inlier_threshold, ransac_iters, rng or np.random.default_rng(0))
    elif estimator in ("irls-huber", "irls-cauchy"):
        k = robust_k if robust_k is not None else (_HUBER_K if estimator == "irls-huber" else _CAUCHY_K)
        scale, shift = _irls(xs, ys, ws, fit_shift, estimator, k, iters, rng or np.random.default_rng(0))
    else:
        raise DepthError(f"unknown alignment estimator {estimator!r} (irls-huber, irls-cauchy or ransac)")

    inliers = np.zeros(x.shape, dtype=bool)
    inliers[keep] = np.abs(relative_residuals(xs, ys, scale, shift)) <= inlier_threshold
    return float(scale), float(shift), inliers


def relative_residuals(x: np.ndarray, y: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """[N] relative residuals (scale * x + shift - y) / y."""
    return (scale * x + shift - y) / y


def _weighted_lstsq(x: np.ndarray, y: np.ndarray, w: np.ndarray, fit_shift: bool) -> tuple[float, float]:
    """Minimise sum w * ((s x + t - y) / y)^2 in closed form (2x2 or 1x1 normal equations)."""
    a = x / y
    b = 1.0 / y
    if not fit_shift:
        den = np.sum(w * a * a)
        return (float(np.sum(w * a) / den) if den > 0 else 1.0), 0.0
    saa, sab, sbb = np.sum(w * a * a), np.sum(w * a * b), np.sum(w * b * b)
    sa1, sb1 = np.sum(w * a), np.sum(w * b)
    det = saa * sbb - sab * sab
    if not np.isfinite(det) or abs(det) <= 1e-14 * max(saa * sbb, 1e-300):
        raise DepthError("alignment fit is degenerate (the disparity does not vary over the inlier SfM points)")
    return float((sa1 * sbb - sb1 * sab) / det), float((saa * sb1 - sab * sa1) / det)


def _robust_sigma(r: np.ndarray) -> float:
    return max(1.4826 * float(np.median(np.abs(r))), 1e-9)


def _robust_start(x, y, w0, fit_shift, rng: np.random.Generator) -> tuple[float, float]:
    """Starting point for IRLS: least squares, a quantile match (the map is monotonic) or a short
    least-median RANSAC, whichever has the smallest median |relative residual|. M-estimators only
    bound the influence of residuals, not of leverage, so a robust start keeps IRLS in the right basin."""
    cands = [_weighted_lstsq(x, y, w0, fit_shift)]
    if fit_shift:
        qx, qy = np.percentile(x, [25, 50, 75]), np.percentile(y, [25, 50, 75])
        if qx[2] > qx[0]:
            s = (qy[2] - qy[0]) / (qx[2] - qx[0])
            cands.append((s, qy[1] - s * qx[1]))
    elif np.median(x) != 0:
        cands.append((float(np.median(y / np.where(x != 0, x, np.inf))), 0.0))
    n = x.size
    m = 2 if fit_shift else 1
    if n > m:
        idx = rng.integers(0, n, size=(_START_SAMPLES, m))
        if fit_shift:
            dx = x[idx[:, 0]] - x[idx[:, 1]]
            ok = dx != 0
            s = (y[idx[ok, 0]] - y[idx[ok, 1]]) / dx[ok]
            t = y[idx[ok, 0]] - s * x[idx[ok, 0]]
        else:
            ok = x[idx[:, 0]] != 0
            s = y[idx[ok, 0]] / x[idx[ok, 0]]
            t = np.zeros_like(s)
        sub = rng.choice(n, size=min(n, 2000), replace=False)
        if s.size:
            med = np.median(np.abs((s[:, None] * x[sub] + t[:, None] - y[sub]) / y[sub]), axis=1)
            b = int(np.argmin(med))
            cands.append((float(s[b]), float(t[b])))
    return min(cands, key=lambda st: float(np.median(np.abs(relative_residuals(x, y, *st)))))


def _irls(x, y, w0, fit_shift, estimator, k, iters, rng) -> tuple[float, float]:
    s, t = _robust_start(x, y, w0, fit_shift, rng)
    for _ in range(iters):
        r = relative_residuals(x, y, s, t)
        u = np.abs(r) / (k * _robust_sigma(r))
        rw = np.minimum(1.0, 1.0 / np.maximum(u, 1e-12)) if estimator == "irls-huber" else 1.0 / (1.0 + u * u)
        s_new, t_new = _weighted_lstsq(x, y, w0 * rw, fit_shift)
        done = abs(s_new - s) <= 1e-10 * (abs(s) + 1e-12) and abs(t_new - t) <= 1e-10 * (abs(t) + abs(s) + 1e-12)
        s, t = s_new, t_new
        if done:
            break
    return s, t


def _ransac(x, y, w, fit_shift, thresh, iters, rng) -> tuple[float, float]:
    n = x.size
    best, best_score = (1.0, 0.0), -1.0
    for _ in range(iters):
        if fit_shift:
            i, j = rng.choice(n, size=2, replace=False)
            if x[i] == x[j]:
                continue
            s = (y[i] - y[j]) / (x[i] - x[j])
            t = y[i] - s * x[i]
        else:
            i = rng.integers(n)
            if x[i] == 0:
                continue
            s, t = y[i] / x[i], 0.0
        score = float(np.sum(w[np.abs(relative_residuals(x, y, s, t)) <= thresh]))
        if score > best_score:
            best, best_score = (s, t), score
    s, t = best
    for _ in range(2):
        inl = np.abs(relative_residuals(x, y, s, t)) <= thresh
        if inl.sum() < (2 if fit_shift else 1):
            break
        s, t = _weighted_lstsq(x[inl], y[inl], w[inl], fit_shift)
    return s, t


def sample_bilinear(image: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinearly sample `image` [H, W] at keypoints `xy` [M, 2] (x right, y down, pixel centres at +0.5).

    A sample is valid only if all four neighbouring pixels are valid (> 0 and finite), so values are
    never interpolated across the edge of an invalid region. Points within half a pixel of the border
    use the border pixels.

    Returns:
        (values [M] float64, valid [M] bool); invalid samples have value 0.
    """
    H, W = image.shape
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    u = xy[:, 0] - 0.5
    v = xy[:, 1] - 0.5
    inside = (u > -1.0) & (u < W) & (v > -1.0) & (v < H)
    u = np.clip(u, 0.0, W - 1.0)
    v = np.clip(v, 0.0, H - 1.0)
    x0 = np.minimum(np.floor(u).astype(np.int64), W - 2 if W > 1 else 0)
    y0 = np.minimum(np.floor(v).astype(np.int64), H - 2 if H > 1 else 0)
    x1 = np.minimum(x0 + 1, W - 1)
    y1 = np.minimum(y0 + 1, H - 1)
    fx = u - x0
    fy = v - y0
    img = np.asarray(image, dtype=np.float64)
    q00, q01, q10, q11 = img[y0, x0], img[y0, x1], img[y1, x0], img[y1, x1]
    vals = (1 - fy) * ((1 - fx) * q00 + fx * q01) + fy * ((1 - fx) * q10 + fx * q11)
    valid = inside
    for q in (q00, q01, q10, q11):
        valid &= np.isfinite(q) & (q > 0)
    return np.where(valid, vals, 0.0), valid


def apply_alignment(disparity: np.ndarray, scale: float, shift: float, max_depth: float = np.inf) -> np.ndarray:
    """Aligned z-depth [H, W] float32 from disparity [H, W] (0 = invalid): 1 / (scale * d + shift).

    Pixels with invalid input, aligned disparity <= 0 or depth > max_depth get 0 (never inverted).
    """
    d = np.asarray(disparity, dtype=np.float64)
    valid_in = np.isfinite(d) & (d > 0)
    aligned = scale * d + shift
    ok = valid_in & (aligned > 0)
    depth = np.zeros(d.shape, dtype=np.float64)
    depth[ok] = 1.0 / aligned[ok]
    depth[depth > max_depth] = 0.0
    return depth.astype(np.float32)


def window_blend_weights(windows: list[list[int]], num_frames: int) -> np.ndarray:
    """[num_windows, num_frames] weights that blend per-window fits across overlaps.

    Each window gives its frames a tent weight (rising from its first frame, falling to its last),
    normalised per frame, so a frame inside one window takes that window's fit and frames in an
    overlap move linearly from the previous window's fit to the next one's. Columns of frames in no
    window are all zero.
    """
    Wt = np.zeros((len(windows), num_frames))
    for k, frames in enumerate(windows):
        n = len(frames)
        pos = np.arange(n)
        Wt[k, frames] = np.minimum(pos + 1, n - pos).astype(np.float64)
    tot = Wt.sum(axis=0, keepdims=True)
    return np.divide(Wt, tot, out=np.zeros_like(Wt), where=tot > 0)


# --------------------------------------------------------------------------------------------
# Whole-sequence alignment (arrays in, arrays out)

Samples = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
"""frame -> (disparity x [M], SfM inverse depth y [M], confidence [M], SfM z-depth [M]) at its valid keypoints."""


@dataclass
class Alignment:
    """Aligned depth of a sequence.

    Attributes:
        depth: float32 [T, H, W] z-depth in scene units, 0 = invalid (and on frames without depth).
        mask: bool [T, H, W], depth > 0.
        scale, shift: float64 [T] per frame (aligned disparity = scale * disparity + shift; 0 without depth).
        report: JSON-compatible figures (fit, points, inliers, per-frame AbsRel vs SfM, plot samples).
    """

    depth: np.ndarray
    mask: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def sample_observations(
    disparity: np.ndarray,
    confidence: np.ndarray,
    frames: list[int],
    observations: dict[int, tuple[np.ndarray, np.ndarray]],
) -> Samples:
    """Disparity and confidence sampled at each frame's SfM keypoints, paired with the SfM depths.

    Args:
        disparity, confidence: [T, H, W] (0 = invalid).
        frames: the frames to sample (indices into T).
        observations: frame -> (keypoints xy [M, 2] in pixels, centres at +0.5; z-depth [M] in scene units).
    Returns:
        frame -> (x, 1 / z, confidence, z) over the keypoints where disparity and confidence are valid;
        frames without observations are left out.
    """
    samples: Samples = {}
    for i in frames:
        o = observations.get(i)
        if o is None or np.asarray(o[1]).size == 0:
            continue
        xy, z = np.asarray(o[0], np.float64), np.asarray(o[1], np.float64)
        x, ok = sample_bilinear(disparity[i], xy)
        c, _ = sample_bilinear(confidence[i], xy)
        ok &= c > 0
        samples[i] = (x[ok], 1.0 / z[ok], c[ok], z[ok])
    return samples


def _fit(samples: Samples, ids: list[int], cfg: AlignConfig, fit_shift: bool, rng) -> tuple[float, float, np.ndarray]:
    """One robust fit over the samples of frames `ids` -> (scale, shift, inlier mask)."""
    x = np.concatenate([samples[i][0] for i in ids])
    y = np.concatenate([samples[i][1] for i in ids])
    w = np.concatenate([samples[i][2] for i in ids])
    return fit_affine_robust(
        x,
        y,
        w,
        estimator=cfg.estimator,
        fit_shift=fit_shift,
        robust_k=cfg.robust_k,
        iters=cfg.irls_iters,
        inlier_threshold=cfg.inlier_threshold,
        ransac_iters=cfg.ransac_iters,
        rng=rng,
    )


def _global_fit(
    samples: Samples, fit_ids: list[int], kind: str, cfg: AlignConfig, fit_shift: bool, rng
) -> tuple[float, float, np.ndarray, bool]:
    """(scale, shift, inliers, too_few) of the one fit over all fit frames.

    Scene-scale input (kind metric) with too few SfM samples is kept as it is (scale 1, shift 0)."""
    n_total = int(sum(samples[i][0].size for i in fit_ids))
    too_few = n_total < max(cfg.min_points, 2)
    if too_few and kind != KIND_METRIC:
        raise DepthError(
            f"only {n_total} SfM points are observed where the prior frames have valid depth "
            f"(need >= {cfg.min_points}): the SfM model is too sparse or does not belong to these frames"
        )
    if too_few:
        log.warning(
            f"align: only {n_total} SfM points overlap valid depth (need >= {cfg.min_points}); "
            "the depth is already in scene units, so it is kept unscaled (scale 1, shift 0)"
        )
        return 1.0, 0.0, np.ones(n_total, dtype=bool), True
    scale, shift, inliers = _fit(samples, fit_ids, cfg, fit_shift, rng)
    if scale <= 0:
        raise DepthError(
            f"alignment found a non-positive scale ({scale:.3g}): the depth input behaves like depth, not "
            "disparity (for the file backend check --set depth.file.kind=depth|disparity)"
        )
    return scale, shift, inliers, False


def _per_frame_fits(samples, with_depth, fit_ids, glob, scale, shift, cfg, fit_shift, rng) -> list[dict[str, Any]]:
    """One fit per frame with enough samples (in place into scale/shift [T]); the others keep the global
    fit `glob` (scale, shift)."""
    g_scale, g_shift = glob
    units = []
    for i in with_depth:
        n = samples[i][0].size if i in samples else 0
        entry = {"frame": i, "points": n, "fallback": True, "scale": g_scale, "shift": g_shift}
        if i in fit_ids and n >= cfg.min_points:
            s, t, inl = _fit(samples, [i], cfg, fit_shift, rng)
            if s > 0:
                scale[i], shift[i] = s, t
                entry.update(fallback=False, scale=s, shift=t, inliers=int(inl.sum()))
        units.append(entry)
    return units


def _per_window_fits(samples, windows, with_depth, fit_ids, glob, scale, shift, cfg, fit_shift, rng) -> list[dict]:
    """One fit per window (frame lists), blended linearly across overlaps (in place into scale/shift [T]);
    windows with too few samples keep the global fit `glob` (scale, shift)."""
    g_scale, g_shift = glob
    units, params = [], []
    for k, wf in enumerate(windows):
        ids = [i for i in wf if i in fit_ids]
        n = int(sum(samples[i][0].size for i in ids))
        entry = {"window": k, "frames": [wf[0], wf[-1]], "points": n, "fallback": True, "scale": g_scale}
        entry["shift"] = g_shift
        if n >= cfg.min_points:
            s, t, inl = _fit(samples, ids, cfg, fit_shift, rng)
            if s > 0:
                entry.update(fallback=False, scale=s, shift=t, inliers=int(inl.sum()))
        params.append((entry["scale"], entry["shift"]))
        units.append(entry)
    bw = window_blend_weights(windows, len(scale))
    ps = np.array(params)
    covered = bw.sum(axis=0) > 0
    blend_s, blend_t = bw.T @ ps[:, 0], bw.T @ ps[:, 1]
    for i in with_depth:
        if covered[i]:
            scale[i], shift[i] = blend_s[i], blend_t[i]
    return units


def _score_frames(samples, with_depth, fit_ids, scale, shift, mask) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per-frame AbsRel of the aligned depth against the SfM depths (fit frames: in-sample; others: held
    out) and the relative errors of all fit frames' samples."""
    per_frame, all_res = [], []
    for i in with_depth:
        entry: dict[str, Any] = {"frame": i, "used_in_fit": i in fit_ids, "scale": float(scale[i])}
        entry["shift"] = float(shift[i])
        if i in samples and samples[i][0].size:
            x, _, _, z = samples[i]
            a = scale[i] * x + shift[i]
            good = a > 0
            pred = np.where(good, 1.0 / np.where(good, a, 1.0), np.inf)
            rel = np.abs(pred - z) / z
            abs_rel = float(np.mean(rel[good])) if good.any() else None
            entry.update(points=int(x.size), abs_rel=abs_rel, invalid=int((~good).sum()))
            if i in fit_ids:
                all_res.append(rel)
        else:
            entry.update(points=0, abs_rel=None)
        entry["valid_fraction"] = float(mask[i].mean())
        per_frame.append(entry)
    return per_frame, (np.concatenate(all_res) if all_res else np.zeros(0))


def _plot_samples(samples: Samples, fit_ids: list[int], inliers: np.ndarray, max_samples: int, rng) -> dict:
    """At most `max_samples` (disparity, SfM inverse depth, frame, inlier) fit samples, for the report's plot."""
    xs = np.concatenate([samples[i][0] for i in fit_ids] + [np.zeros(0)])
    ys = np.concatenate([samples[i][1] for i in fit_ids] + [np.zeros(0)])
    fr = np.concatenate([np.full(samples[i][0].size, i) for i in fit_ids] + [np.zeros(0, dtype=np.int64)])
    pick = np.sort(rng.choice(xs.size, size=min(max_samples, xs.size), replace=False))
    return {
        "disparity": xs[pick].astype(np.float32),
        "sfm_inverse_depth": ys[pick].astype(np.float32),
        "frame": fr[pick].astype(np.int64),
        "inlier": inliers[pick],
    }


def _max_depth(samples: Samples, fit_ids: list[int], disparity: np.ndarray, with_depth: list[int], far_factor):
    """far_factor x the 99th percentile of the SfM depths used (of the input's own depths without any)."""
    sfm_depths = np.concatenate([samples[i][3] for i in fit_ids] + [np.zeros(0)])
    if sfm_depths.size == 0:
        valid = disparity[with_depth][disparity[with_depth] > 0]
        sfm_depths = 1.0 / valid
    return far_factor * float(np.percentile(sfm_depths, 99))


def align_disparity(
    disparity: np.ndarray,
    confidence: np.ndarray,
    kind: str,
    observations: dict[int, tuple[np.ndarray, np.ndarray]],
    with_depth: list[int],
    fit_frames: list[int],
    cfg: AlignConfig,
    windows: list[list[int]] | None = None,
) -> Alignment:
    """Fit the disparity of a sequence to the SfM depths and turn it into z-depth in scene units.

    Args:
        disparity, confidence: float32 [T, H, W] (0 = invalid); `kind` KIND_RELATIVE or KIND_METRIC.
        observations: frame -> (keypoints xy [M, 2], pixels with centres at +0.5; z-depth [M], scene units).
        with_depth: frames whose depth is aligned (others stay 0); fit_frames: those the fit may use.
        cfg: AlignConfig (mode, estimator, fit, thresholds, seed).
        windows: frame lists of the DVD windows (needed by mode "per-window").
    Raises:
        DepthError: too few SfM samples for relative disparity, a non-positive scale, a bad mode.
    """
    if cfg.mode not in ("global", "per-window", "per-frame"):
        raise DepthError(f"unknown alignment mode {cfg.mode!r} (global, per-window or per-frame)")
    if cfg.mode == "per-window" and not windows:
        raise DepthError("per-window alignment needs DVD windows; use --align-mode global or per-frame")
    samples = sample_observations(disparity, confidence, with_depth, observations)
    fit_ids = [i for i in fit_frames if i in samples]
    fit_shift = {"auto": kind == KIND_RELATIVE, "affine": True, "scale": False}[cfg.fit]
    rng = np.random.default_rng(cfg.seed)
    g_scale, g_shift, g_inl, too_few = _global_fit(samples, fit_ids, kind, cfg, fit_shift, rng)
    T = disparity.shape[0]
    scale, shift = np.zeros(T), np.zeros(T)
    scale[with_depth], shift[with_depth] = g_scale, g_shift
    units: list[dict[str, Any]] = []
    if cfg.mode == "per-frame":
        units = _per_frame_fits(samples, with_depth, fit_ids, (g_scale, g_shift), scale, shift, cfg, fit_shift, rng)
    elif cfg.mode == "per-window":
        glob = (g_scale, g_shift)
        units = _per_window_fits(samples, windows, with_depth, fit_ids, glob, scale, shift, cfg, fit_shift, rng)
    max_depth = _max_depth(samples, fit_ids, disparity, with_depth, cfg.far_factor)
    depth = np.zeros_like(disparity, dtype=np.float32)
    for i in with_depth:
        depth[i] = apply_alignment(disparity[i], scale[i], shift[i], max_depth=max_depth)
    mask = depth > 0
    per_frame, rel_all = _score_frames(samples, with_depth, fit_ids, scale, shift, mask)
    abs_rels = [e["abs_rel"] for e in per_frame if e.get("abs_rel") is not None and e["used_in_fit"]]
    report = {
        "mode": cfg.mode,
        "estimator": cfg.estimator,
        "fit": "affine" if fit_shift else "scale",
        "kind": kind,
        "scale": g_scale,
        "shift": g_shift,
        "points": int(sum(samples[i][0].size for i in fit_ids)),
        "inliers": int(g_inl.sum()),
        "inlier_ratio": float(g_inl.mean()) if g_inl.size else None,
        "fallback": "scene-scale input kept (too few SfM points)" if too_few else None,
        "inlier_threshold": cfg.inlier_threshold,
        "frames_fitted": fit_ids,
        "frames_with_depth": with_depth,
        "max_depth": max_depth,
        "abs_rel_sfm_median": float(np.median(abs_rels)) if abs_rels else None,
        "abs_rel_sfm_mean": float(np.mean(rel_all)) if rel_all.size else None,
        "units": units,
        "per_frame": per_frame,
        "samples": _plot_samples(samples, fit_ids, g_inl, cfg.max_samples, rng),
    }
    return Alignment(depth=depth, mask=mask, scale=scale, shift=shift, report=report)
