"""The HTML of RUN/report.html: one self-contained page that shows what every stage of a run produced.

`build_report_html(paths)` reads every run file through recon.artifacts; the report stage
(recon.stages.report) writes the page.

Sections: stage times, frames, depth prior, cameras and SfM, depth alignment, fused point cloud,
training curves, test renders with metrics. Every image is an inline base64 PNG (no external URL,
script or font), so the file can be mailed or opened offline. A section whose stage has not run
says so instead of failing; a section whose files are unreadable shows the one-line reason.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
MAX_TEST_RENDERS = 6
RENDER_HEIGHT = 240
LOG_NON_LOSS = ("step", "psnr", "num_gaussians", "lr")
_T = TypeVar("_T")


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


def colorize(values: np.ndarray, valid: np.ndarray | None = None, cmap: str = "turbo") -> np.ndarray:
    """Map a float image [H, W] to uint8 RGB [H, W, 3] with a 2-98 percentile range; invalid -> black."""
    from matplotlib import colormaps

    valid = np.isfinite(values) & (values > 0) if valid is None else valid & np.isfinite(values)
    out = np.zeros(values.shape + (3,), np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(values[valid], [2, 98])
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps[cmap](t)[..., :3] * 255).astype(np.uint8)
    out[valid] = rgb[valid]
    return out


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
    body += _img(
        png_data_uri(strip([colorize(disparity[i]) for i in pick])),
        "disparity strip",
        "disparity (near = red), frames " + ", ".join(map(str, pick)),
    )
    if paths.aligned_npz.exists():
        depth = AlignedDepth.load(paths.aligned_npz, disparity.shape).depth
        body += _img(
            png_data_uri(strip([colorize(depth[i], cmap="viridis") for i in pick])),
            "aligned depth strip",
            "aligned z-depth in scene units (near = dark), same frames; black = invalid",
        )
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


def section_renders(paths: RunPaths) -> str:
    have_renders = paths.test_renders_dir.exists() and any(paths.test_renders_dir.glob("*.png"))
    if not have_renders and not paths.metrics_json.exists():
        raise Missing("the train stage has not evaluated test views yet")
    body = ""
    if paths.metrics_json.exists():
        metrics = Metrics.load(paths.metrics_json)
        body += _kv_table({k: v for k, v in metrics.summary.items() if not isinstance(v, (list, dict))})
        per_view = [r for r in metrics.per_view if isinstance(r, dict)]
        if per_view:
            cols = [k for k in per_view[0] if isinstance(per_view[0][k], (int, float))]
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            rows = "".join(
                "<tr>" + "".join(f"<td class=num>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in per_view
            )
            body += f"<p>per test view</p><table><tr>{head}</tr>{rows}</table>"
    if have_renders:
        files = sorted(paths.test_renders_dir.glob("*.png"))
        for f in pick_evenly(files, MAX_TEST_RENDERS):
            image = read_rgb(f)
            body += _img(
                png_data_uri(strip([image], height=max(RENDER_HEIGHT, image.shape[0]))),
                f"test render {f.stem}",
                f"{f.stem}: render | ground truth",
            )
    return body


SECTIONS: list[tuple[str, str, Callable[[RunPaths], str]]] = [
    ("stages", "Stages and time", section_stages),
    ("frames", "Frames", section_frames),
    ("depth", "Depth prior", section_depth),
    ("cameras", "Cameras and SfM", section_cameras),
    ("alignment", "Depth alignment", section_alignment),
    ("points", "Fused point cloud", section_points),
    ("training", "Training", section_training),
    ("renders", "Test views", section_renders),
]


def build_report_html(paths: RunPaths) -> str:
    """The report page as a string (see module docstring)."""
    parts = []
    for anchor, title, build in SECTIONS:
        try:
            content = build(paths)
        except Missing as e:
            content = f"<p class=missing>Not available yet: {_e(str(e))}.</p>"
        except Exception as e:  # a damaged file must not hide the other sections
            warn(f"report: section '{title}' failed: {type(e).__name__}: {e}")
            content = f"<p class=error>Could not build this section: {_e(type(e).__name__)}: {_e(str(e))}</p>"
        parts.append(f"<section id='{anchor}'><h2>{_e(title)}</h2>{content}</section>")
    nav = " · ".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t, _ in SECTIONS)
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>DVD-Splat report: {_e(paths.root.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>DVD-Splat report: {_e(paths.root.name)}</h1><nav>{nav}</nav>{''.join(parts)}</body></html>\n"
    )


# ---------------------------------------------------------------- small HTML helpers

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}figure{margin:.6em 0}img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.missing{color:#777;font-style:italic}.error{color:#b00}
.done{color:#2a7}.failed{color:#b00}.running,.interrupted{color:#c80}nav{font-size:.9em}code{font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(uri: str, alt: str, caption: str | None = None) -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure><img src='{uri}' alt='{_e(alt)}'>{cap}</figure>"


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
