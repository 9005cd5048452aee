"""Depth accuracy metrics: AbsRel, SqRel, RMSE, RMSE log and δ1/δ2/δ3, with optional alignment.

Shared by the tests, the benchmarks, the trainer's evaluation and `recon eval`.

Definitions (over the evaluated pixels, d = prediction after alignment, g = ground truth, both z-depth):
    abs_rel  = mean(|d - g| / g)
    sq_rel   = mean((d - g)^2 / g)
    rmse     = sqrt(mean((d - g)^2))                       (GT units)
    rmse_log = sqrt(mean((ln d - ln g)^2))
    delta_k  = fraction with max(d / g, g / d) < 1.25^k     (k = 1, 2, 3)

Evaluated pixels: GT finite and inside [min_depth, max_depth], prediction finite and > 0, and the
optional `mask`. Pixels the prediction marks invalid (0) are excluded, and `coverage` says which
fraction of the GT-valid pixels was evaluated, so a sparse but accurate prediction cannot hide.

Alignment (fitted on the evaluated pixels, then applied before the metrics):
    "none"    the prediction is already in GT units.
    "median"  one scale: median(g) / median(d) (in depth space; for disparity space the scale is
              applied to 1/d with medians of 1/g and 1/d, which is the same up to the median's
              ordering property).
    "scale"   least-squares scale s minimising sum (s x - y)^2 in the chosen space.
    "lstsq"   least-squares scale and shift (s x + t - y)^2 in the chosen space: `space="disparity"`
              fits inverse depth (the affine-invariant convention of DVD / MiDaS-style models),
              `space="depth"` fits depth.
When an alignment is fitted (align != "none") the aligned prediction is clamped to
[min_depth, max_depth] (aligned disparity <= 0 becomes max_depth), as is usual in monocular depth
evaluation; with align="none" the prediction is evaluated as it is.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from depth.errors import DepthError

Align = Literal["none", "median", "scale", "lstsq"]
Space = Literal["depth", "disparity"]

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


def _as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def valid_mask(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, min_depth: float = 1e-3, max_depth: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated [...] bool, gt_valid [...] bool) for pred/gt of the same shape (see module doc)."""
    gt_valid = np.isfinite(gt) & (gt >= min_depth) & (gt <= max_depth)
    if mask is not None:
        gt_valid &= np.asarray(mask, dtype=bool)
    evaluated = gt_valid & np.isfinite(pred) & (pred > 0)
    return evaluated, gt_valid


def fit_alignment(
    pred: np.ndarray, gt: np.ndarray, align: Align = "none", space: Space = "depth"
) -> tuple[float, float]:
    """(scale, shift) mapping `pred` to `gt` in `space`; pred/gt are 1-D arrays of positive depths.

    In "disparity" space the fit maps 1/pred to 1/gt; in "depth" space pred to gt.
    """
    if align == "none":
        return 1.0, 0.0
    if space not in ("depth", "disparity"):
        raise DepthError(f"unknown alignment space {space!r} (use 'depth' or 'disparity')")
    x, y = (pred, gt) if space == "depth" else (1.0 / pred, 1.0 / gt)
    if x.size == 0:
        raise DepthError("cannot align depth: no pixel where both prediction and ground truth are valid")
    if align == "median":
        return float(np.median(y) / np.median(x)), 0.0
    if align == "scale":
        return float(np.dot(x, y) / max(np.dot(x, x), 1e-300)), 0.0
    if align == "lstsq":
        if x.size < 2 or np.ptp(x) == 0:
            raise DepthError("cannot fit scale and shift: the prediction is constant on the valid pixels")
        A = np.stack([x, np.ones_like(x)], axis=1)
        (s, t), *_ = np.linalg.lstsq(A, y, rcond=None)
        return float(s), float(t)
    raise DepthError(f"unknown depth alignment {align!r} (use none, median, scale or lstsq)")


def apply_alignment(
    pred: np.ndarray, scale: float, shift: float, space: Space, min_depth: float, max_depth: float
) -> np.ndarray:
    """Apply a fitted (scale, shift) to positive depths `pred` and clamp to [min_depth, max_depth]."""
    if space == "depth":
        out = scale * pred + shift
    else:
        disp = scale / pred + shift
        with np.errstate(divide="ignore"):
            out = np.where(disp > 0, 1.0 / np.maximum(disp, 1e-300), np.inf)
    hi = max_depth if np.isfinite(max_depth) else np.finfo(np.float64).max
    return np.clip(out, min_depth, hi)


def _metrics(d: np.ndarray, g: np.ndarray) -> dict[str, float]:
    ratio = np.maximum(d / g, g / d)
    diff = d - g
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(d) - np.log(g)) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def depth_metrics(
    pred: Any,
    gt: Any,
    mask: Any | None = None,
    align: Align = "none",
    min_depth: float = 1e-3,
    max_depth: float = np.inf,
    space: Space = "depth",
    pred_is_disparity: bool = False,
    per_frame: bool = False,
) -> dict[str, Any]:
    """Depth metrics of `pred` against `gt`.

    Args:
        pred: [H,W] or [T,H,W] predicted z-depth (or disparity = 1/depth if `pred_is_disparity`);
            0 / non-finite = invalid. numpy array or torch tensor.
        gt: same shape, ground-truth z-depth (0 / non-finite = invalid).
        mask: optional bool, same shape: only these pixels are evaluated.
        align: "none" | "median" | "scale" | "lstsq" (see module doc), fitted over all evaluated
            pixels together, or per frame when `per_frame`.
        min_depth, max_depth: GT range that is evaluated, and the clamp for the aligned prediction.
        space: "depth" or "disparity": where "scale" / "lstsq" (and "median") are fitted.
        pred_is_disparity: `pred` holds disparity; it is inverted (0 stays invalid) first.
        per_frame: compute the metrics per frame [T,H,W] and average them (frames without any
            evaluated pixel are skipped); otherwise pool all pixels.

    Returns:
        {"abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3": float,
         "n": evaluated pixel count, "coverage": evaluated / GT-valid pixels,
         "scale", "shift": the alignment (per-frame mean when `per_frame`), "align", "space"}.
    Raises:
        DepthError: on shape mismatch or when no pixel can be evaluated.
    """
    p = _as_numpy(pred)
    g = _as_numpy(gt)
    if p.shape != g.shape:
        raise DepthError(f"depth metrics: prediction shape {p.shape} differs from ground truth shape {g.shape}")
    m = None if mask is None else _as_numpy(mask).astype(bool)
    if m is not None and m.shape != g.shape:
        raise DepthError(f"depth metrics: mask shape {m.shape} differs from ground truth shape {g.shape}")
    if pred_is_disparity:
        with np.errstate(divide="ignore"):
            p = np.where(p > 0, 1.0 / np.where(p > 0, p, 1.0), 0.0)

    if per_frame:
        if p.ndim != 3:
            raise DepthError(f"depth metrics: per_frame needs [T,H,W] arrays, got shape {p.shape}")
        rows = []
        for t in range(p.shape[0]):
            ev, gv = valid_mask(p[t], g[t], None if m is None else m[t], min_depth, max_depth)
            if ev.any():
                rows.append(_evaluate(p[t], g[t], ev, gv, align, space, min_depth, max_depth))
        if not rows:
            raise DepthError("depth metrics: no pixel has both a valid prediction and valid ground truth")
        out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS + ("scale", "shift")}
        n = sum(r["n"] for r in rows)
        ev_all, gv_all = valid_mask(p, g, m, min_depth, max_depth)
        out.update(
            n=int(n), coverage=float(ev_all.sum() / max(gv_all.sum(), 1)), frames=len(rows), align=align, space=space
        )
        return out

    ev, gv = valid_mask(p, g, m, min_depth, max_depth)
    if not ev.any():
        raise DepthError("depth metrics: no pixel has both a valid prediction and valid ground truth")
    out = _evaluate(p, g, ev, gv, align, space, min_depth, max_depth)
    out.update(align=align, space=space)
    return out


def _evaluate(p, g, ev, gv, align, space, min_depth, max_depth) -> dict[str, Any]:
    pv, gvals = p[ev], g[ev]
    scale, shift = fit_alignment(pv, gvals, align, space)
    d = apply_alignment(pv, scale, shift, space, min_depth, max_depth) if align != "none" else pv
    out: dict[str, Any] = _metrics(d, gvals)
    out.update(n=int(ev.sum()), coverage=float(ev.sum() / max(gv.sum(), 1)), scale=scale, shift=shift)
    return out
