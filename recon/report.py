"""The HTML of RUN/report.html: one self-contained page that shows what every stage of a run produced.

`build_report_html(paths)` reads every run file through recon.artifacts; the report stage
(recon.stages.report) writes the page.

Sections: stage times, frames, depth prior (with depth.mp4), cameras and SfM, depth alignment, fused point
cloud, training curves, the rendered fly-through (splat/renders.mp4), test views (per-view PSNR / SSIM, each
render | ground truth at its stored resolution with an error map), the trained splat's depth beside the aligned
prior, the mesh (when `recon mesh` made one) and links to every file of the run. Figures made for the page are
inline base64 PNGs; the videos and the stored test renders are linked relatively (src='splat/renders.mp4'), so
the page works from the run directory or a copy of it, with no external URL, script or font. Every depth or error
image carries a colour legend (colour bar with units and range). Images and render pairs enlarge on click (CSS
only). A section whose stage has not run says so instead of failing; a section whose files are unreadable shows
the one-line reason.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
from PIL import Image

from recon.artifacts import (
    AlignedDepth,
    CameraSet,
    DisparityMaps,
    FramesIndex,
    Metrics,
    PointCloud,
    RunPaths,
    Split,
    read_json_object,
    read_jsonl,
    read_rgb,
)
from recon.console import warn

STRIP_FRAMES = 8
THUMB_HEIGHT = 120
MAX_TEST_VIEWS = 24
"""Test views shown with their render pair and error map (evenly picked); the metrics table lists all."""
PAIR_MIN_WIDTH = 1200
"""Render | ground-truth pairs narrower than this (pixels) are shown enlarged, up to 3x."""
ERROR_MAP_MAX_SIZE = 640
"""Long side (pixels) of the inline error maps."""
SPLAT_DEPTH_VIEWS = 3
"""Training views whose trained-splat depth is shown beside the aligned prior."""
LOG_NON_LOSS = ("step", "psnr", "num_gaussians", "lr")
_T = TypeVar("_T")


DepthRenderer = Callable[[list[int], int], dict[int, np.ndarray]]
"""(frame indices, longest side in pixels) -> frame index -> rendered z-depth [H, W] of the trained splat
(scene units, 0 = no surface); the report stage passes one (recon.stages.report), the page only arranges."""


class Missing(Exception):
    """A section's input does not exist yet (its stage has not run)."""


# ---------------------------------------------------------------- image helpers


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    """uint8 [H, W, 3|4] (or a PIL image) -> "data:image/png;base64,..."."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_data_uri(fig) -> str:
    """Render a matplotlib Figure (created without pyplot) to a PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def new_figure(width: float = 7.0, height: float = 3.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def colorize(
    values: np.ndarray,
    valid: np.ndarray | None = None,
    cmap: str = "turbo",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map a float image [H, W] to uint8 RGB [H, W, 3]; invalid -> black.

    `value_range` (lo, hi) maps to the ends of the colour map (the range its legend shows); by default the
    2-98 percentile of this image's valid values.
    """
    from matplotlib import colormaps

    valid = np.isfinite(values) & (values > 0) if valid is None else valid & np.isfinite(values)
    out = np.zeros(values.shape + (3,), np.uint8)
    if not valid.any():
        return out
    lo, hi = value_range if value_range is not None else np.percentile(values[valid], [2, 98])
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps[cmap](t)[..., :3] * 255).astype(np.uint8)
    out[valid] = rgb[valid]
    return out


def shared_range(maps: list[np.ndarray]) -> tuple[float, float]:
    """One (lo, hi) colour range for several maps [H, W] (0 / non-finite = invalid): the 2-98 percentile of
    their valid values together, so that one legend holds for all of them. (1, 2) when none is valid."""
    values = np.concatenate([np.asarray(m, np.float64).ravel() for m in maps]) if maps else np.zeros(0)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return 1.0, 2.0
    lo, hi = (float(v) for v in np.percentile(values, [2, 98]))
    return lo, hi if hi > lo else lo + max(abs(lo) * 1e-6, 1e-12)


def legend(value_range: tuple[float, float], cmap: str, label: str, width: float = 6.0) -> str:
    """<img class=legend>: a horizontal colour bar for `cmap` over `value_range`, titled `label` (say the units);
    its alt text gives the label and the range."""
    lo, hi = value_range
    alt = f"colour legend: {label}, {cmap} from {_fmt(float(lo))} to {_fmt(float(hi))}"
    return f"<img class=legend src='{legend_uri(value_range, cmap, label, width)}' alt='{_e(alt)}'>"


def legend_uri(value_range: tuple[float, float], cmap: str, label: str, width: float = 6.0) -> str:
    """A horizontal colour bar (PNG data URI) for `cmap` over `value_range`, titled `label` (say the units)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig = new_figure(width, 0.75)
    ax = fig.add_axes((0.04, 0.5, 0.92, 0.25))
    bar = fig.colorbar(ScalarMappable(Normalize(*value_range), cmap), cax=ax, orientation="horizontal")
    bar.set_label(label, fontsize=9)
    ax.tick_params(labelsize=8)
    return figure_data_uri(fig)


def strip(images: list[np.ndarray], height: int = THUMB_HEIGHT, gap: int = 4) -> np.ndarray:
    """Resize uint8 RGB images to a common height and lay them side by side (white gaps)."""
    thumbs = []
    for im in images:
        h, w = im.shape[:2]
        thumb = Image.fromarray(im).resize((max(1, round(w * height / h)), height), Image.Resampling.BILINEAR)
        thumbs.append(np.asarray(thumb))
    width = sum(t.shape[1] for t in thumbs) + gap * (len(thumbs) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for t in thumbs:
        out[:, x : x + t.shape[1]] = t[..., :3]
        x += t.shape[1] + gap
    return out


def pick_evenly(indices: list[_T], n: int) -> list[_T]:
    if len(indices) <= n:
        return list(indices)
    return [indices[int(round(k))] for k in np.linspace(0, len(indices) - 1, n)]


# ---------------------------------------------------------------- run readers


def _need(path: Path, stage: str, what: str | None = None) -> None:
    """Missing (the section says "not available yet") unless `path` exists."""
    if not path.exists():
        raise Missing(f"the {stage} stage has not run ({what or path.name} not found)")


def _frame_files(paths: RunPaths) -> list[str]:
    if paths.cameras_json.exists():
        return CameraSet.load(paths.cameras_json).files
    if paths.frames_json.exists():
        files = FramesIndex.load(paths.frames_json).files
        if files:
            return files
    files = (
        sorted(p.relative_to(paths.root).as_posix() for p in paths.frames_dir.glob("*.png"))
        if paths.frames_dir.exists()
        else []
    )
    if not files:
        raise Missing("the frames stage has not run (no frames/)")
    return files


# ---------------------------------------------------------------- sections


def section_stages(paths: RunPaths) -> str:
    _need(paths.manifest, "pipeline")
    manifest = read_json_object(paths.manifest, "manifest")
    stages = {k: v for k, v in manifest.get("stages", {}).items() if k != "report"}
    if not stages:
        raise Missing("no stage has run yet")
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class='{_e(st.get('status', ''))}'>{_e(st.get('status', '?'))}</td>"
        f"<td class=num>{_fmt(st.get('seconds'))}</td>"
        f"<td>{_e(_summary_text(st.get('summary') or st.get('error')))}</td></tr>"
        for name, st in stages.items()
    )
    body = f"<table><tr><th>stage</th><th>status</th><th>seconds</th><th>summary</th></tr>{rows}</table>"
    timed = [(n, float(s["seconds"])) for n, s in stages.items() if isinstance(s.get("seconds"), (int, float))]
    if timed:
        fig = new_figure(7, 0.35 * len(timed) + 0.8)
        ax = fig.add_subplot()
        ax.barh([n for n, _ in timed][::-1], [t for _, t in timed][::-1], color="#4c72b0")
        ax.set_xlabel("seconds")
        total = sum(t for _, t in timed)
        ax.set_title(f"time per stage (total {total:.1f} s)")
        body += _img(figure_data_uri(fig), "time per stage")
    if manifest.get("input"):
        body = f"<p>input: <code>{_e(manifest['input'])}</code></p>" + body
    return body


def section_frames(paths: RunPaths) -> str:
    files = _frame_files(paths)
    pick = pick_evenly(list(range(len(files))), STRIP_FRAMES)
    images = [read_rgb(paths.root / files[i]) for i in pick]
    h, w = images[0].shape[:2]
    caption = f"{len(files)} frames at {w}x{h}; shown: " + ", ".join(str(i) for i in pick)
    return _img(png_data_uri(strip(images)), "frame strip", caption)


def section_depth(paths: RunPaths) -> str:
    _need(paths.disparity_npz, "depth", "depth/disparity.npz")
    maps = DisparityMaps.load(paths.disparity_npz)
    disparity, computed, kind, backend = maps.disparity, maps.computed, maps.kind, maps.backend
    have = [i for i in range(len(disparity)) if computed[i]]
    if not have:
        raise Missing("the depth stage computed no frame")
    pick = pick_evenly(have, STRIP_FRAMES)
    body = f"<p>backend <b>{_e(backend)}</b>, {_e(kind)}, computed on {len(have)} of {len(disparity)} frames.</p>"
    prior_label = f"prior {kind} ({backend} output, relative units{'; larger = nearer' if kind == 'disparity' else ''})"
    vr = shared_range([disparity[i] for i in pick])
    body += _depth_figure(
        png_data_uri(strip([colorize(disparity[i], value_range=vr) for i in pick])),
        legend(vr, "turbo", prior_label),
        f"prior {kind} strip",
        f"{kind}, frames " + ", ".join(map(str, pick)) + "; one colour range for the strip, black = invalid",
    )
    if paths.aligned_npz.exists():
        depth = AlignedDepth.load(paths.aligned_npz, disparity.shape).depth
        vr = shared_range([depth[i] for i in pick])
        body += _depth_figure(
            png_data_uri(strip([colorize(depth[i], cmap="viridis", value_range=vr) for i in pick])),
            legend(vr, "viridis", "aligned z-depth (scene units of cameras.json)"),
            "aligned depth strip",
            "aligned z-depth, same frames; black = invalid",
        )
    if paths.depth_preview_mp4.exists():
        from depth.preview import robust_range

        rec = _manifest_summary(paths, "depth").get("preview_range")  # the range the depth stage mapped
        vr = (
            (float(rec[0]), float(rec[1])) if isinstance(rec, list) and len(rec) == 2 else robust_range(disparity[have])
        )
        caption = "the prior on every computed frame, one colour range for the whole video"
        body += _video(paths, paths.depth_preview_mp4, "depth preview video", caption, legend(vr, "turbo", prior_label))
    return body


def section_cameras(paths: RunPaths) -> str:
    cams = CameraSet.load(paths.cameras_json) if paths.cameras_json.exists() else None
    if cams is None:
        raise Missing("the pose stage has not run (cameras.json not found)")
    split = Split.load(paths.split_json) if paths.split_json.exists() else None
    train, test = set(split.train if split else []), set(split.test if split else [])
    centers = cams.centers
    fig = new_figure(9, 4.2)
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax2 = fig.add_subplot(1, 2, 2)
    reg = cams.registered
    # Top view: the plane spanned by the two largest principal directions of the camera centres.
    basis = _principal_axes(centers[reg]) if reg.sum() >= 3 else np.eye(3)
    flat = (centers - centers[reg].mean(0) if reg.any() else centers) @ basis[:, :2]
    ax3.plot(*centers[reg].T, color="0.6", lw=1)
    ax2.plot(*flat[reg].T, color="0.6", lw=1)
    groups = [
        ("train", [i for i in range(len(cams)) if i in train and reg[i]], "#1f77b4"),
        ("test", [i for i in range(len(cams)) if i in test and reg[i]], "#d62728"),
        ("other", [i for i in range(len(cams)) if reg[i] and i not in train and i not in test], "#7f7f7f"),
    ]
    span = float(np.ptp(centers[reg], axis=0).max()) if reg.sum() > 1 else 1.0
    for label, ids, color in groups:
        if not ids:
            continue
        ax3.scatter(*centers[ids].T, s=12, color=color, label=label)
        ax2.scatter(*flat[ids].T, s=12, color=color, label=label)
        axis = cams.c2w[ids, :3, 2] * (0.08 * max(span, 1e-6))  # optical axes (OpenCV +z)
        for c, a, f in zip(centers[ids], axis, flat[ids]):
            ax3.plot(*np.stack([c, c + a]).T, color=color, lw=0.8)
            da = a @ basis[:, :2]
            ax2.plot([f[0], f[0] + da[0]], [f[1], f[1] + da[1]], color=color, lw=0.8)
    ax3.set_title("camera centres and viewing directions")
    ax2.set_title("top view (principal plane)")
    ax2.set_aspect("equal", adjustable="datalim")
    ax2.legend(loc="best", fontsize=8)
    body = _img(figure_data_uri(fig), "camera trajectory")
    stats = {k: v for k, v in cams.sfm.items() if not isinstance(v, (dict, list))}
    stats.setdefault("registered", int(reg.sum()))
    stats.setdefault("total", len(cams))
    stats["resolution"] = f"{cams.width}x{cams.height}"
    stats["focal (median, px)"] = float(np.median(cams.K[:, 0, 0]))
    if split:
        stats["split"] = f"{split.protocol}: {len(train)} train, {len(test)} test"
    body += _kv_table(stats)
    return body


def section_alignment(paths: RunPaths) -> str:
    _need(paths.alignment_json, "align")
    report = read_json_object(paths.alignment_json, "alignment report")
    s = report.get("samples") or {}
    x = np.asarray(s.get("disparity", []), float)
    y = np.asarray(s.get("sfm_inverse_depth", []), float)
    scale, shift = float(report.get("scale", np.nan)), float(report.get("shift", 0.0))
    keys = (
        "mode",
        "fit",
        "kind",
        "backend",
        "estimator",
        "scale",
        "shift",
        "points",
        "inliers",
        "inlier_ratio",
        "abs_rel_sfm_median",
        "abs_rel_sfm_mean",
    )
    body = _kv_table({k: report[k] for k in keys if k in report})
    if x.size:
        inl = np.asarray(s.get("inlier", np.ones_like(x)), bool)
        fig = new_figure(10, 3.6)
        ax = fig.add_subplot(1, 3, 1)
        ax.scatter(x[~inl], y[~inl], s=4, color="#d62728", alpha=0.6, label="outlier")
        ax.scatter(x[inl], y[inl], s=4, color="#1f77b4", alpha=0.6, label="inlier")
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, scale * xs + shift, color="k", lw=1, label=f"{scale:.3g} x + {shift:.3g}")
        ax.set_xlabel("prior disparity")
        ax.set_ylabel("SfM inverse depth")
        ax.legend(fontsize=7)
        ax.set_title("disparity vs SfM inverse depth")
        pred = scale * x + shift
        rel = np.where(pred > 0, (pred - y) / y, np.nan)
        ax = fig.add_subplot(1, 3, 2)
        finite = rel[np.isfinite(rel)]
        ax.hist(np.clip(finite, -1, 1), bins=50, color="#4c72b0")
        ax.set_xlabel("relative residual of inverse depth")
        ax.set_title(f"residuals (median |r| {np.median(np.abs(finite)) if finite.size else float('nan'):.3f})")
        ax = fig.add_subplot(1, 3, 3)
        per = [(e["frame"], e["abs_rel"]) for e in report.get("per_frame", []) if e.get("abs_rel") is not None]
        if per:
            ax.bar([str(f) for f, _ in per], [a for _, a in per], color="#55a868")
            ax.tick_params(axis="x", labelsize=6, rotation=90)
        ax.set_xlabel("frame")
        ax.set_title("AbsRel vs SfM per frame")
        body += _img(figure_data_uri(fig), "alignment scatter and residuals")
    return body


def section_points(paths: RunPaths) -> str:
    _need(paths.init_ply, "fuse", "points/init.ply")
    cloud = PointCloud.load(paths.init_ply)
    pts, cols = np.asarray(cloud.xyz, np.float64), np.asarray(cloud.rgb, np.uint8)
    views = []
    if paths.cameras_json.exists():
        cams = CameraSet.load(paths.cameras_json)
        ids = np.flatnonzero(cams.registered)
        if ids.size:
            i = int(ids[len(ids) // 2])
            views.append(
                (
                    render_points(pts, cols, cams.K[i], np.linalg.inv(cams.c2w[i]), cams.width, cams.height),
                    f"seen from camera {i}",
                )
            )
            behind = cams.c2w[i].copy()
            extent = float(np.percentile(np.linalg.norm(pts - np.median(pts, 0), axis=1), 90))
            behind[:3, 3] -= behind[:3, 2] * extent  # step back along the optical axis
            views.append(
                (
                    render_points(pts, cols, cams.K[i], np.linalg.inv(behind), cams.width, cams.height),
                    "stepped back along its optical axis",
                )
            )
    body = (
        f"<p>{len(pts):,} points; bounding box size {_e(np.round(np.ptp(pts, axis=0), 3).tolist())} (scene units).</p>"
    )
    if views:
        body += _img(
            png_data_uri(strip([v for v, _ in views], height=240)),
            "point cloud preview",
            "fused cloud (points/init.ply) splatted with a z-buffer: " + "; ".join(c for _, c in views),
        )
    return body


def render_points(
    points: np.ndarray, colors: np.ndarray, K: np.ndarray, w2c: np.ndarray, width: int, height: int, radius: int = 1
) -> np.ndarray:
    """Z-buffered point splat: points [N, 3] world, colors uint8 [N, 3], K [3, 3], w2c [4, 4] (OpenCV).

    Returns uint8 [height, width, 3] on a white background; each point covers a (2r+1)^2 square.
    """
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    front = cam[:, 2] > 1e-6
    cam, colors = cam[front], colors[front]
    uv = cam @ K.T
    u = np.floor(uv[:, 0] / uv[:, 2]).astype(np.int64)
    v = np.floor(uv[:, 1] / uv[:, 2]).astype(np.int64)
    z = cam[:, 2]
    image = np.full((height, width, 3), 255, np.uint8)
    zbuf = np.full((height, width), np.inf)
    order = np.argsort(-z)  # far to near: nearer points overwrite
    for du in range(-radius, radius + 1):
        for dv in range(-radius, radius + 1):
            uu, vv = u[order] + du, v[order] + dv
            ok = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            uu, vv, zz, cc = uu[ok], vv[ok], z[order][ok], colors[order][ok]
            nearer = zz < zbuf[vv, uu]
            # Later (nearer) writes win within one assignment, matching the far-to-near order.
            image[vv[nearer], uu[nearer]] = cc[nearer]
            zbuf[vv[nearer], uu[nearer]] = np.minimum(zbuf[vv[nearer], uu[nearer]], zz[nearer])
    return image


def section_training(paths: RunPaths) -> str:
    _need(paths.train_log, "train", "splat/train_log.jsonl")
    rows = read_jsonl(paths.train_log, "training log")
    rows = [r for r in rows if "step" in r]
    if not rows:
        return "<p>splat/train_log.jsonl holds no steps yet.</p>"
    steps = np.array([r["step"] for r in rows])
    terms = [k for k in rows[0] if _is_loss_term(k) and isinstance(rows[0][k], (int, float))]
    fig = new_figure(11, 3.4)
    ax = fig.add_subplot(1, 3, 1)
    for k in terms:
        vals = np.array([r.get(k, np.nan) for r in rows], float)
        if np.isfinite(vals).any():
            ax.plot(steps, vals, label=k, lw=1)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("step")
    ax.set_title("loss terms")
    ax.legend(fontsize=7)
    for pos, key, title in ((2, "psnr", "training PSNR (dB)"), (3, "num_gaussians", "number of Gaussians")):
        ax = fig.add_subplot(1, 3, pos)
        vals = np.array([r.get(key, np.nan) for r in rows], float)
        if np.isfinite(vals).any():
            ax.plot(steps[np.isfinite(vals)], vals[np.isfinite(vals)], color="#55a868", lw=1)
        ax.set_xlabel("step")
        ax.set_title(title)
    last = rows[-1]
    return _img(figure_data_uri(fig), "training curves", f"{len(rows)} logged steps; last: " + _summary_text(last))


def section_video(paths: RunPaths) -> str:
    if not paths.renders_mp4.exists():
        if paths.gaussians_ply.exists():
            raise Missing("the train stage wrote no fly-through video (train.video_frames = 0)")
        raise Missing("the train stage has not run (splat/renders.mp4 not found)")
    caption = "the trained splat rendered along the camera path"
    return _video(paths, paths.renders_mp4, "rendered fly-through", caption)


def test_render_files(paths: RunPaths, indices: list[int]) -> dict[int, Path]:
    """Frame index -> its stored render | ground-truth pair (splat/test_renders/<frame stem>.png, as the train
    stage names them), for the `indices` whose file exists."""
    stems = (
        {i: Path(f).stem for i, f in enumerate(CameraSet.load(paths.cameras_json).files)}
        if paths.cameras_json.exists()
        else {}
    )
    out = {}
    for i in indices:
        f = paths.test_renders_dir / f"{stems.get(i, f'{i:06d}')}.png"
        if f.exists():
            out[i] = f
    return out


def error_map(pair: np.ndarray) -> np.ndarray:
    """|render - ground truth| averaged over RGB, in [0, 1]: float [H, W] from a uint8 pair [H, 2W, 3]."""
    w = pair.shape[1] // 2
    render, gt = pair[:, :w].astype(np.float32), pair[:, w : 2 * w].astype(np.float32)
    return np.abs(render - gt).mean(axis=2) / 255.0


def section_renders(paths: RunPaths) -> str:
    have_renders = paths.test_renders_dir.exists() and any(paths.test_renders_dir.glob("*.png"))
    if not have_renders and not paths.metrics_json.exists():
        raise Missing("the train stage has not evaluated test views yet")
    body, per_view = "", []
    if paths.metrics_json.exists():
        metrics = Metrics.load(paths.metrics_json)
        body += _kv_table({k: v for k, v in metrics.summary.items() if not isinstance(v, (list, dict))})
        per_view = [r for r in metrics.per_view if isinstance(r, dict) and isinstance(r.get("index"), int)]
    files = test_render_files(paths, [r["index"] for r in per_view])
    named = [(f"view {i}", f) for i, f in files.items()]
    if not per_view:  # no metrics.json: show the stored pairs by file name
        named = [(f.stem, f) for f in sorted(paths.test_renders_dir.glob("*.png"))]
    shown = pick_evenly(named, MAX_TEST_VIEWS)
    if per_view:
        body += _per_view_table(per_view, files, {f for _, f in shown})
    if not shown:
        return body
    pairs = [read_rgb(f) for _, f in shown]
    errors = [error_map(pair) for pair in pairs]
    vr = (0.0, max(float(np.percentile(np.concatenate([e.ravel() for e in errors]), 99)), 0.02))
    err_legend = legend(vr, "inferno", "|render - ground truth|, mean over RGB (intensity 0-1)", width=4.5)
    rows = {r["index"]: r for r in per_view}
    if len(shown) < len(named):
        body += f"<p>{len(shown)} of {len(named)} test views shown (evenly spaced).</p>"
    for (label, f), pair, err in zip(shown, pairs, errors):
        row = rows.get(int(label.split()[-1])) if label.startswith("view ") else None
        scores = f"PSNR {_fmt(row.get('psnr'))} dB, SSIM {_fmt(row.get('ssim'))}" if row else ""
        w = pair.shape[1]
        shown_w = max(w, min(3 * w, PAIR_MIN_WIDTH))  # small renders are shown enlarged (up to 3x)
        pair_img = _zoom(_rel(paths, f), f"test render {f.stem}", f"min(100%,{shown_w}px)")
        err_img = _zoom(png_data_uri(_shrink(colorize(err, err >= 0, "inferno", vr))), f"error map {f.stem}", "100%")
        body += (
            f"<figure class='view' id='{_anchor(f)}'>{pair_img}<div class='err depth' "
            f"style='width:min(100%,{shown_w // 2}px)'>{err_img}"
            f"{err_legend}</div>"
            f"<figcaption>{_e(label)} ({_e(f.stem)}): render | ground truth at the stored {w // 2}x{pair.shape[0]} "
            f"(click to enlarge); below, the error map. {_e(scores)}</figcaption></figure>"
        )
    return body


def _per_view_table(per_view: list[dict[str, Any]], files: dict[int, Path], shown: set[Path]) -> str:
    """The per-test-view metrics of metrics.json, exact values in data-v attributes; rows link to their pair."""
    cols = [k for k in per_view[0] if k != "index" and isinstance(per_view[0][k], (int, float))]
    head = "<th>view</th>" + "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = ""
    for r in per_view:
        i, f = r["index"], files.get(r["index"])
        view = f"<a href='#{_anchor(f)}'>{i}</a>" if f in shown and f is not None else str(i)
        cells = "".join(
            f"<td class=num data-k='{_e(c)}' data-v='{_e(repr(r.get(c)))}'>{_fmt(r.get(c))}</td>" for c in cols
        )
        rows += f"<tr data-view='{i}'><td>{view}</td>{cells}</tr>"
    return f"<p>per test view (metrics.json)</p><table class=per-view><tr>{head}</tr>{rows}</table>"


def section_splat_depth(paths: RunPaths, render_depth: DepthRenderer | None = None) -> str:
    _need(paths.gaussians_ply, "train", "splat/gaussians.ply")
    _need(paths.aligned_npz, "align", "depth/aligned.npz")
    _need(paths.cameras_json, "pose", "cameras.json")
    if render_depth is None:
        raise Missing("no renderer was given (the report stage renders the splat's depth)")
    cams = CameraSet.load(paths.cameras_json)
    prior = AlignedDepth.load(paths.aligned_npz).depth
    have = [i for i in range(min(len(prior), len(cams))) if (prior[i] > 0).any() and cams.registered[i]]
    if not have:
        raise Missing("the align stage aligned no frame")
    pick = pick_evenly(have, SPLAT_DEPTH_VIEWS)
    H, W = prior.shape[1:]
    rendered = render_depth(pick, max(H, W))
    vr = shared_range([prior[i] for i in pick] + [rendered[i] for i in pick])
    depth_legend = legend(vr, "viridis", "z-depth (scene units of cameras.json)")
    body = "<p>Left to right: the frame, the aligned depth prior, the trained splat's expected depth (where its "
    body += "accumulated opacity reaches the report stage's threshold); one colour range for all, black = no value.</p>"
    for i in pick:
        frame = read_rgb(paths.root / cams.files[i])
        p, d = prior[i], np.asarray(rendered[i], np.float32)
        if d.shape != p.shape:  # the renderer's rounding of the size may differ by a pixel
            d = np.asarray(Image.fromarray(d).resize((p.shape[1], p.shape[0]), Image.Resampling.NEAREST))
        both = (p > 0) & (d > 0)
        rel = float(np.mean(np.abs(d[both] - p[both]) / p[both])) if both.any() else float("nan")
        images = [frame, colorize(p, cmap="viridis", value_range=vr), colorize(d, cmap="viridis", value_range=vr)]
        body += _depth_figure(
            png_data_uri(strip(images, height=int(np.clip(H, 160, 360)))),
            depth_legend,
            f"frame {i}: prior and trained depth",
            f"frame {i}: mean |splat - prior| / prior = {_fmt(rel)} over {int(both.sum()):,} pixels both have",
        )
    return body


def section_mesh(paths: RunPaths) -> str:
    if not paths.mesh_ply.exists():
        raise Missing("no mesh yet (`recon mesh RUN` or `recon run --mesh` writes mesh/mesh.ply)")
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(paths.mesh_ply)
    verts, tris = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    body = f"<p><a href='{_rel(paths, paths.mesh_ply)}'>mesh/mesh.ply</a>: {len(verts):,} vertices, "
    body += f"{len(tris):,} triangles"
    if len(verts):
        body += f", bounding box size {_e(np.round(np.ptp(verts, axis=0), 3).tolist())} (scene units)"
    body += ".</p>"
    mesh_done, train_done = (_manifest_stage(paths, n).get("finished", "") for n in ("mesh", "train"))
    if mesh_done and train_done and mesh_done < train_done:
        body += "<p class=error>The mesh is older than the trained splat: run `recon mesh RUN` again.</p>"
    if len(tris) and paths.cameras_json.exists():
        cams = CameraSet.load(paths.cameras_json)
        ids = np.flatnonzero(cams.registered)
        if ids.size:
            i = int(ids[len(ids) // 2])
            colour, shaded = mesh_preview(mesh, cams.K[i], cams.w2c[i], cams.width, cams.height)
            body += _img(
                png_data_uri(strip([colour, shaded], height=max(240, min(cams.height, 360)))),
                "mesh preview",
                f"the mesh ray-cast from camera {i}: vertex colours | shaded by its normals (white = no surface)",
            )
    return body


def mesh_preview(mesh, K: np.ndarray, w2c: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast an open3d TriangleMesh (with vertex colours) into a pinhole camera: K [3, 3], w2c [4, 4] (OpenCV).

    Returns (vertex colours interpolated on the hit triangles, grey Lambert shading with a head light), both
    uint8 [height, width, 3] on white where no triangle is hit. open3d's RaycastingScene runs on the CPU without
    a display, unlike its OffscreenRenderer.
    """
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
        o3d.core.Tensor.from_numpy(np.asarray(K, np.float64)),
        o3d.core.Tensor.from_numpy(np.ascontiguousarray(w2c, np.float64)),
        width,
        height,
    )
    hit = scene.cast_rays(rays)
    ok = np.isfinite(hit["t_hit"].numpy())
    prim = np.where(ok, hit["primitive_ids"].numpy().astype(np.int64), 0)
    uv = hit["primitive_uvs"].numpy()
    tris = np.asarray(mesh.triangles)[prim]  # [H, W, 3] vertex ids
    colours = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.full((len(mesh.vertices), 3), 0.7)
    bary = np.stack([1 - uv[..., 0] - uv[..., 1], uv[..., 0], uv[..., 1]], -1)[..., None]
    colour = (colours[tris] * bary).sum(-2)
    ray_dir = rays.numpy()[..., 3:]
    ray_dir /= np.linalg.norm(ray_dir, axis=-1, keepdims=True)
    lambert = np.abs((hit["primitive_normals"].numpy() * ray_dir).sum(-1))
    shaded = np.repeat((0.15 + 0.85 * lambert)[..., None], 3, -1)
    out = []
    for img in (colour, shaded):
        u8 = np.full((height, width, 3), 255, np.uint8)
        u8[ok] = np.clip(np.round(img[ok] * 255), 0, 255).astype(np.uint8)
        out.append(u8)
    return out[0], out[1]


def run_files(paths: RunPaths) -> list[Path]:
    """Every file of the run, relative to its root, sorted; hidden entries (the lock, unfinished atomic writes)
    and the report page itself left out."""
    if not paths.root.is_dir():
        return []
    out = []
    for f in paths.root.rglob("*"):
        rel = f.relative_to(paths.root)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts) and f != paths.report_html:
            out.append(rel)
    return sorted(out)


def section_files(paths: RunPaths) -> str:
    files = run_files(paths)
    if not files:
        raise Missing("the run directory holds no file yet")
    groups: dict[str, list[Path]] = {}
    for rel in files:
        groups.setdefault(rel.parts[0] + "/" if len(rel.parts) > 1 else "", []).append(rel)
    body = ""
    for group, members in groups.items():
        size = sum((paths.root / m).stat().st_size for m in members)
        items = "".join(
            f"<li><a href='{_rel(paths, paths.root / m)}'>{_e(m.as_posix())}</a> "
            f"<span class=size>{_size((paths.root / m).stat().st_size)}</span></li>"
            for m in members
        )
        if not group:
            body += f"<ul class=files>{items}</ul>"
            continue
        opened = " open" if len(members) <= 12 else ""
        body += (
            f"<details{opened}><summary>{_e(group)} ({len(members)} files, {_size(size)})</summary>"
            f"<ul class=files>{items}</ul></details>"
        )
    return f"<p>{len(files)} files, linked relative to this page.</p>" + body


def sections(
    render_depth: DepthRenderer | None = None,
) -> list[tuple[str, str, Callable[[RunPaths], str]]]:
    """The page's sections in order: (anchor, title, builder); `render_depth` draws the trained splat's depth."""
    return [
        ("stages", "Stages and time", section_stages),
        ("frames", "Frames", section_frames),
        ("depth", "Depth prior", section_depth),
        ("cameras", "Cameras and SfM", section_cameras),
        ("alignment", "Depth alignment", section_alignment),
        ("points", "Fused point cloud", section_points),
        ("training", "Training", section_training),
        ("video", "Rendered fly-through", section_video),
        ("renders", "Test views", section_renders),
        ("splatdepth", "Trained depth beside the prior", partial(section_splat_depth, render_depth=render_depth)),
        ("mesh", "Mesh", section_mesh),
        ("files", "Files", section_files),
    ]


SECTIONS = sections()


def build_report_html(paths: RunPaths, render_depth: DepthRenderer | None = None) -> str:
    """The report page as a string (see module docstring); without `render_depth` the section of the trained
    splat's depth says it is not available."""
    parts = []
    page_sections = sections(render_depth)
    for anchor, title, build in page_sections:
        try:
            content = build(paths)
        except Missing as e:
            content = f"<p class=missing>Not available yet: {_e(str(e))}.</p>"
        except Exception as e:  # a damaged file must not hide the other sections
            warn(f"report: section '{title}' failed: {type(e).__name__}: {e}")
            content = f"<p class=error>Could not build this section: {_e(type(e).__name__)}: {_e(str(e))}</p>"
        parts.append(f"<section id='{anchor}'><h2>{_e(title)}</h2>{content}</section>")
    nav = " · ".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t, _ in page_sections)
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>DVD-Splat report: {_e(paths.root.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>DVD-Splat report: {_e(paths.root.name)}</h1><nav>{nav}</nav>{''.join(parts)}</body></html>\n"
    )


# ---------------------------------------------------------------- small HTML helpers

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}figure{margin:.6em 0}img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.missing{color:#777;font-style:italic}.error{color:#b00}
.done{color:#2a7}.failed{color:#b00}.running,.interrupted{color:#c80}nav{font-size:.9em}code{font-size:.9em}
video{width:min(100%,960px);background:#000;display:block}img.legend{display:block;max-width:min(100%,600px)}
.zoom{cursor:zoom-in;display:inline-block;max-width:100%}.zoom input{display:none}
.zoom input:checked+img{position:fixed;inset:0;margin:auto;width:98vw!important;height:96vh;max-width:none;
object-fit:contain;z-index:10;cursor:zoom-out;background:rgba(0,0,0,.9);image-rendering:pixelated}
ul.files{font-size:.85em;columns:2;margin:.3em 0}.size{color:#777}
details{margin:.3em 0}summary{cursor:pointer}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(uri: str, alt: str, caption: str | None = None) -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure>{_zoom(uri, alt)}{cap}</figure>"


def _zoom(src: str, alt: str, width: str = "") -> str:
    """An image that fills the window while clicked (a hidden checkbox and CSS: no script); `width` (CSS) sets
    its size on the page, else its natural size up to the page width."""
    css = f" style='width:{_e(width)}'" if width else ""
    img_css = " style='width:100%'" if width else ""
    return f"<label class=zoom{css}><input type=checkbox><img src='{src}' alt='{_e(alt)}'{img_css}></label>"


def _depth_figure(uri: str, legend_img: str, alt: str, caption: str) -> str:
    """A depth image with its colour legend (`legend`; class `depth`: every such figure carries an img.legend)."""
    return f"<figure class=depth>{_zoom(uri, alt)}{legend_img}<figcaption>{_e(caption)}</figcaption></figure>"


def _video(paths: RunPaths, file: Path, alt: str, caption: str, legend_img: str = "") -> str:
    """An HTML5 <video> of a run file, linked relatively (H.264 mp4, which Chromium, Firefox and Safari play)."""
    rel = _rel(paths, file)
    cls = "video depth" if legend_img else "video"
    return (
        f"<figure class='{cls}'><video src='{rel}' title='{_e(alt)}' controls muted loop playsinline preload=auto>"
        f"<a href='{rel}'>{_e(rel)}</a></video>{legend_img}<figcaption>{_e(caption)}: "
        f"<a href='{rel}'>{_e(file.relative_to(paths.root).as_posix())}</a> "
        f"({_size(file.stat().st_size)})</figcaption></figure>"
    )


def _rel(paths: RunPaths, file: Path) -> str:
    """`file` (inside the run) as a URL relative to report.html, percent-encoded."""
    return quote(file.relative_to(paths.root).as_posix())


def _anchor(file: Path | None) -> str:
    return "view-" + quote(file.stem if file else "none", safe="")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def _shrink(image: np.ndarray, max_size: int = ERROR_MAP_MAX_SIZE) -> np.ndarray:
    """uint8 [H, W, 3] resized so that its long side is at most `max_size` (never enlarged)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_size:
        return image
    s = max_size / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX))


def _manifest_stage(paths: RunPaths, name: str) -> dict[str, Any]:
    """The manifest's record of stage `name` ({} when there is none)."""
    if not paths.manifest.exists():
        return {}
    st = read_json_object(paths.manifest, "manifest").get("stages", {}).get(name, {})
    return st if isinstance(st, dict) else {}


def _manifest_summary(paths: RunPaths, name: str) -> dict[str, Any]:
    summary = _manifest_stage(paths, name).get("summary")
    return summary if isinstance(summary, dict) else {}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return _e("-" if v is None else v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}")
    return _e(v)


def _summary_text(summary: Any) -> str:
    """A stage summary (or log row) as one line of its scalar entries; nested values are left out."""
    if isinstance(summary, dict):
        return ", ".join(
            f"{k}: {_fmt(v) if isinstance(v, (int, float)) else v}"
            for k, v in summary.items()
            if not isinstance(v, (dict, list, tuple))
        )
    return "" if summary is None else str(summary)


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def _is_loss_term(key: str) -> bool:
    """train_log.jsonl columns that are loss values (not steps, schedules, timings or counts)."""
    k = key.lower()
    return k not in LOG_NON_LOSS and not any(w in k for w in ("weight", "elapsed", "time", "second", "lr_"))


def _principal_axes(points: np.ndarray) -> np.ndarray:
    """[3, 3] columns = principal directions of points [N, 3], largest variance first."""
    centred = points - points.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt.T
