"""Align the depth prior to the SfM reconstruction: disparity -> z-depth in scene (SfM) units.

Reads RUN/depth/disparity.npz (depth stage), RUN/cameras.json and RUN/sfm (pose stage) and
RUN/split.json, and writes RUN/depth/aligned.npz and RUN/depth/alignment.json.

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

Modes: one global fit (default); "per-window" (one fit per DVD window from windows.json, blended
linearly across window overlaps); "per-frame". Windows/frames with fewer than `min_points` samples
fall back to the global fit, so frames without SfM points still get depth.

Output. Pixels whose aligned disparity is <= 0 become invalid (never inverted), as do pixels whose
depth exceeds `far_factor` x the 99th percentile of the SfM depths used (near-zero disparity, e.g. sky).
Non-prior frames stay 0.

Pixel convention: COLMAP keypoints (and K) put the centre of pixel (col c, row r) at (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from recon.artifacts.cameras import CameraSet
from recon.artifacts.layout import RunPaths
from recon.atomic import save_npz, write_json
from recon.console import debug, info, warn
from recon.errors import ReconError
from recon.sfm import SparseDepth, load_reconstruction, sfm_observations  # noqa: F401  (moving to recon/stages/align.py)
from recon.split import load_split

KIND_RELATIVE = "relative_disparity"
KIND_METRIC = "metric_disparity"
DISPARITY_KINDS = (KIND_RELATIVE, KIND_METRIC)

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
    """(disparity, SfM inverse depth) pairs kept in alignment.json for the report's scatter plot."""
    seed: int = 0


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
        ReconError: too few samples, non-positive targets, or a degenerate (constant) predictor.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    w0 = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if x.shape != y.shape or x.shape != w0.shape:
        raise ReconError(f"alignment fit: x, y and weights differ in length ({x.size}, {y.size}, {w0.size})")
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(w0) & (w0 > 0)
    if np.any(y[keep] <= 0):
        raise ReconError("alignment fit: target inverse depths must be positive")
    need = 2 if fit_shift else 1
    if keep.sum() < need:
        raise ReconError(f"alignment fit needs at least {need} valid samples, got {int(keep.sum())}")
    if fit_shift and np.ptp(x[keep]) <= 1e-12 * max(1.0, float(np.abs(x[keep]).max())):
        raise ReconError("alignment fit: the disparity is constant at every SfM point, cannot fit scale and shift")
    if not fit_shift and not np.any(x[keep] != 0):
        raise ReconError("alignment fit: the disparity is zero at every SfM point")

    xs, ys, ws = x[keep], y[keep], w0[keep]
    if estimator == "ransac":
        scale, shift = _ransac(xs, ys, ws, fit_shift, inlier_threshold, ransac_iters, rng or np.random.default_rng(0))
    elif estimator in ("irls-huber", "irls-cauchy"):
        k = robust_k if robust_k is not None else (_HUBER_K if estimator == "irls-huber" else _CAUCHY_K)
        scale, shift = _irls(xs, ys, ws, fit_shift, estimator, k, iters, rng or np.random.default_rng(0))
    else:
        raise ReconError(f"unknown alignment estimator {estimator!r} (irls-huber, irls-cauchy or ransac)")

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
        raise ReconError("alignment fit is degenerate (the disparity does not vary over the inlier SfM points)")
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
# SfM observations


# --------------------------------------------------------------------------------------------
# Stage


def _load_disparity(paths: RunPaths, cams: CameraSet) -> dict[str, Any]:
    if not paths.disparity_npz.exists():
        raise ReconError(f"{paths.disparity_npz} not found: run the depth stage first (recon depth)")
    try:
        with np.load(paths.disparity_npz, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as e:
        raise ReconError(f"cannot read {paths.disparity_npz} ({e})") from e
    if "disparity" not in d:
        raise ReconError(f"{paths.disparity_npz} has no 'disparity' array")
    disp = d["disparity"]
    T = len(cams)
    if disp.ndim != 3 or disp.shape[0] != T or disp.shape[1:] != (cams.height, cams.width):
        got = "x".join(str(s) for s in disp.shape)
        raise ReconError(
            f"depth maps in {paths.disparity_npz} are {got} but the run has {T} frames of "
            f"{cams.width}x{cams.height} (expected {T}x{cams.height}x{cams.width}): re-run the depth stage"
        )
    if not np.all(np.isfinite(disp)):
        raise ReconError(f"{paths.disparity_npz} contains NaN or infinite disparity values")
    computed = d.get("computed")
    computed = np.asarray(computed, dtype=bool) if computed is not None else np.any(disp > 0, axis=(1, 2))
    kind = str(d["kind"]) if "kind" in d else KIND_RELATIVE
    if kind not in DISPARITY_KINDS:
        raise ReconError(f"{paths.disparity_npz}: unknown disparity kind {kind!r} (expected one of {DISPARITY_KINDS})")
    conf = d.get("confidence")
    if conf is None or conf.shape != disp.shape:
        conf = np.ones_like(disp, dtype=np.float32)
    return {
        "disparity": disp.astype(np.float32, copy=False),
        "computed": computed,
        "kind": kind,
        "backend": str(d.get("backend", "unknown")),
        "confidence": conf,
    }


def _load_windows(paths: RunPaths, frames_with_depth: list[int]) -> list[list[int]]:
    """DVD windows as lists of cameras.json frame indices (from RUN/depth/windows.json)."""
    if not paths.windows_json.exists():
        raise ReconError(f"per-window alignment needs {paths.windows_json}; use --align-mode global or per-frame")
    d = json.loads(paths.windows_json.read_text())
    frames = d.get("frames", frames_with_depth)
    out = []
    for w in d.get("windows", []):
        if "frames" in w:
            out.append([int(f) for f in w["frames"]])
        else:
            out.append([int(f) for f in frames[int(w["start"]) : int(w["end"])]])
    if not out:
        raise ReconError(
            f"per-window alignment needs DVD windows, but {paths.windows_json} lists none "
            f"(backend {d.get('backend', '?')}); use --align-mode global or per-frame"
        )
    return out


def run_align(paths: RunPaths, cfg: AlignConfig) -> dict[str, Any]:
    """Align RUN/depth/disparity.npz to the SfM model; write aligned.npz and alignment.json.

    Returns a summary dict (mode, fit, scale, shift, points, inlier ratio, median AbsRel vs SfM).
    """
    cams = CameraSet.load(paths.cameras_json)
    split = load_split(paths.split_json)
    T = len(cams)
    dd = _load_disparity(paths, cams)
    disp, computed, kind = dd["disparity"], dd["computed"], dd["kind"]

    prior = sorted(int(i) for i in split.get("prior", split.get("train", [])))
    test = {int(i) for i in split.get("test", [])}
    bad = [i for i in prior if not 0 <= i < T]
    if bad:
        raise ReconError(f"split.json names prior frames {bad[:5]} but the run has {T} frames")
    with_depth = [i for i in prior if computed[i] and np.any(disp[i] > 0)]
    if not with_depth:
        raise ReconError(f"{paths.disparity_npz} has no valid depth on any prior frame (all invalid)")
    fit_frames = [i for i in with_depth if i not in test and cams.registered[i]]
    if not fit_frames:
        raise ReconError("no registered, non-test prior frame has depth to align")

    rec = load_reconstruction(paths.sfm_dir)
    if rec.num_points3D() == 0:
        raise ReconError(f"the SfM model in {paths.sfm_dir} has no 3D points: cannot align depth to it")
    obs = sfm_observations(rec, cams, with_depth, cfg.max_reproj_error, cfg.min_track_length)

    # Samples: disparity at each observed keypoint vs SfM inverse depth.
    samples: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for i in with_depth:
        o = obs.get(i)
        if o is None or o.depth.size == 0:
            continue
        x, ok = sample_bilinear(disp[i], o.xy)
        c, _ = sample_bilinear(dd["confidence"][i], o.xy)
        ok &= c > 0
        samples[i] = (x[ok], 1.0 / o.depth[ok], c[ok], o.depth[ok])
    fit_ids = [i for i in fit_frames if i in samples]
    n_total = int(sum(samples[i][0].size for i in fit_ids))
    too_few = n_total < max(cfg.min_points, 2)
    if too_few and kind != KIND_METRIC:
        raise ReconError(
            f"only {n_total} SfM points are observed where the prior frames have valid depth "
            f"(need >= {cfg.min_points}): the SfM model is too sparse or does not belong to these frames"
        )
    if too_few:
        # Scene-scale input (stereo on the SfM poses, or metric depth files) is usable as it is: keep scale 1.
        warn(
            f"align: only {n_total} SfM points overlap valid depth (need >= {cfg.min_points}); "
            "the depth is already in scene units, so it is kept unscaled (scale 1, shift 0)"
        )
    fit_shift = {"auto": kind == KIND_RELATIVE, "affine": True, "scale": False}[cfg.fit]
    rng = np.random.default_rng(cfg.seed)

    def fit(ids: list[int]) -> tuple[float, float, np.ndarray]:
        x = np.concatenate([samples[i][0] for i in ids])
        y = np.concatenate([samples[i][1] for i in ids])
        w = np.concatenate([samples[i][2] for i in ids])
        s, t, inl = fit_affine_robust(
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
        return s, t, inl

    if too_few:
        g_scale, g_shift, g_inl = 1.0, 0.0, np.ones(n_total, dtype=bool)
    else:
        g_scale, g_shift, g_inl = fit(fit_ids)
    if g_scale <= 0:
        raise ReconError(
            f"alignment found a non-positive scale ({g_scale:.3g}): the depth input behaves like depth, not "
            "disparity (for the file backend check --set depth.file.kind=depth|disparity)"
        )
    scale = np.zeros(T)
    shift = np.zeros(T)
    scale[with_depth], shift[with_depth] = g_scale, g_shift
    units: list[dict[str, Any]] = []
    if cfg.mode == "per-frame":
        for i in with_depth:
            n = samples[i][0].size if i in samples else 0
            entry = {"frame": i, "points": n, "fallback": True, "scale": g_scale, "shift": g_shift}
            if i in fit_ids and n >= cfg.min_points:
                s, t, inl = fit([i])
                if s > 0:
                    scale[i], shift[i] = s, t
                    entry.update(fallback=False, scale=s, shift=t, inliers=int(inl.sum()))
            units.append(entry)
    elif cfg.mode == "per-window":
        windows = _load_windows(paths, with_depth)
        params = []
        for k, wf in enumerate(windows):
            ids = [i for i in wf if i in fit_ids]
            n = int(sum(samples[i][0].size for i in ids))
            entry = {
                "window": k,
                "frames": [wf[0], wf[-1]],
                "points": n,
                "fallback": True,
                "scale": g_scale,
                "shift": g_shift,
            }
            if n >= cfg.min_points:
                s, t, inl = fit(ids)
                if s > 0:
                    entry.update(fallback=False, scale=s, shift=t, inliers=int(inl.sum()))
            params.append((entry["scale"], entry["shift"]))
            units.append(entry)
        bw = window_blend_weights(windows, T)
        ps = np.array(params)
        covered = bw.sum(axis=0) > 0
        blend_s, blend_t = bw.T @ ps[:, 0], bw.T @ ps[:, 1]
        for i in with_depth:
            if covered[i]:
                scale[i], shift[i] = blend_s[i], blend_t[i]
    elif cfg.mode != "global":
        raise ReconError(f"unknown alignment mode {cfg.mode!r} (global, per-window or per-frame)")

    sfm_depths = np.concatenate([samples[i][3] for i in fit_ids] + [np.zeros(0)])
    if sfm_depths.size == 0:  # no SfM point at all: bound by the input's own depth range
        valid = disp[with_depth][disp[with_depth] > 0]
        sfm_depths = 1.0 / valid
    max_depth = cfg.far_factor * float(np.percentile(sfm_depths, 99))
    depth = np.zeros_like(disp, dtype=np.float32)
    for i in with_depth:
        depth[i] = apply_alignment(disp[i], scale[i], shift[i], max_depth=max_depth)
    mask = depth > 0

    # Per-frame scores against the SfM points (fit frames: in-sample; test frames in the prior: held out).
    per_frame = []
    all_res = []
    for i in with_depth:
        entry: dict[str, Any] = {
            "frame": i,
            "used_in_fit": i in fit_ids,
            "scale": float(scale[i]),
            "shift": float(shift[i]),
        }
        if i in samples and samples[i][0].size:
            x, _, _, z = samples[i]
            a = scale[i] * x + shift[i]
            good = a > 0
            pred = np.where(good, 1.0 / np.where(good, a, 1.0), np.inf)
            rel = np.abs(pred - z) / z
            entry.update(
                points=int(x.size),
                abs_rel=float(np.mean(rel[good])) if good.any() else None,
                invalid=int((~good).sum()),
            )
            if i in fit_ids:
                all_res.append(rel)
        else:
            entry.update(points=0, abs_rel=None)
        entry["valid_fraction"] = float(mask[i].mean())
        per_frame.append(entry)

    xs = np.concatenate([samples[i][0] for i in fit_ids] + [np.zeros(0)])
    ys = np.concatenate([samples[i][1] for i in fit_ids] + [np.zeros(0)])
    fr = np.concatenate([np.full(samples[i][0].size, i) for i in fit_ids] + [np.zeros(0, dtype=np.int64)])
    pick = np.sort(rng.choice(xs.size, size=min(cfg.max_samples, xs.size), replace=False))
    rel_all = np.concatenate(all_res) if all_res else np.zeros(0)
    abs_rels = [e["abs_rel"] for e in per_frame if e.get("abs_rel") is not None and e["used_in_fit"]]

    report = {
        "mode": cfg.mode,
        "estimator": cfg.estimator,
        "fit": "affine" if fit_shift else "scale",
        "kind": kind,
        "backend": dd["backend"],
        "scale": g_scale,
        "shift": g_shift,
        "points": n_total,
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
        "samples": {
            "disparity": xs[pick].astype(np.float32),
            "sfm_inverse_depth": ys[pick].astype(np.float32),
            "frame": fr[pick].astype(np.int64),
            "inlier": g_inl[pick],
        },
    }
    save_npz(paths.aligned_npz, depth=depth, mask=mask, scale=scale.astype(np.float32), shift=shift.astype(np.float32))
    write_json(paths.alignment_json, report)
    info(
        f"align: {cfg.mode} {report['fit']} fit on {n_total} SfM points in {len(fit_ids)} frames: "
        f"scale {g_scale:.4g}, shift {g_shift:.4g}, inliers {report['inlier_ratio'] or 0:.0%}, "
        f"AbsRel vs SfM {report['abs_rel_sfm_median'] if report['abs_rel_sfm_median'] is not None else float('nan'):.3f}"
    )
    debug(f"align: max depth {max_depth:.3g}, valid pixels {mask[with_depth].mean():.1%}")
    return {
        k: report[k]
        for k in ("mode", "fit", "scale", "shift", "points", "inliers", "inlier_ratio", "abs_rel_sfm_median")
    } | {"valid_fraction": float(mask[with_depth].mean())}
