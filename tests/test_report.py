"""RUN/report.html: content per stage, graceful degradation, and a clean load in headless Chromium.

The full run is made by the real pipeline (recon.api.run) on the 5 ICL-NUIM living-room frames at
160x120 with their GT poses (known-poses import, triangulated SfM points) and their sensor depth
(depth backend "file", with its depth.mp4 preview), then align, fuse, a 4-step CPU training (with a 6-frame
renders.mp4), export and report. A copy of it gets a mesh through `recon run --mesh`.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from support.chromium import Chromium, needs_chromium

from depth.geometry import opencv_to_opengl
from recon.artifacts import AlignedDepth, CameraSet, RunPaths, read_rgb
from recon.pipeline import plan
from recon.report import SECTIONS, error_map, mesh_preview, render_points, run_files
from recon.stages.report import splat_depth, write_report

ICL = Path(__file__).resolve().parents[2] / "shared" / "data" / "icl_nuim_livingroom_5frames"


def icl_c2w() -> list[np.ndarray]:
    lines = [ln for ln in (ICL / "trajectory.log").read_text().splitlines() if ln.strip()]
    return [np.array([[float(v) for v in ln.split()] for ln in lines[k * 5 + 1 : k * 5 + 5]]) for k in range(5)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> RunPaths:
    from recon import api

    tmp = tmp_path_factory.mktemp("report")
    poses = tmp / "icl_transforms.json"
    poses.write_text(
        json.dumps(
            {
                "fl_x": 525.0,
                "fl_y": 525.0,
                "cx": 319.5,
                "cy": 239.5,
                "w": 640,
                "h": 480,
                "frames": [
                    {"file_path": f"color/{i:05d}.jpg", "transform_matrix": opencv_to_opengl(c).tolist()}
                    for i, c in enumerate(icl_c2w())
                ],
            }
        )
    )
    run = api.run(
        ICL / "color",
        tmp / "icl",
        preset="cpu",
        frames={"max_size": 160},
        poses={"poses": str(poses)},
        depth={"backend": "file", "file": {"path": str(ICL / "depth"), "kind": "depth", "scale": 1000.0}},
        train={"iterations": 4, "max_init_points": 500, "max_size": 96, "video_frames": 6},
        until="export",  # the report is written by the tests
    )
    return run.paths


@pytest.fixture(scope="module")
def full_report(full_run: RunPaths) -> Path:
    return write_report(full_run)


def sections(page: str) -> dict[str, str]:
    """section id -> its inner HTML."""
    return dict(re.findall(r"<section id='([a-z]+)'>(.*?)</section>", page, flags=re.S))


def local_links(page: str) -> list[str]:
    """Every src / href of the page that is neither an in-page anchor nor a data URI."""
    refs = re.findall(r"\b(?:src|href)='([^']*)'", page)
    return [r for r in refs if not r.startswith(("#", "data:"))]


def assert_self_contained(page: str, root: Path) -> None:
    """No script, no external URL; images are inline PNGs or files of the run, linked relatively."""
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, flags=re.I)
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//|/)", page, flags=re.I)
    assert not re.search(r"url\(", page)
    for src in re.findall(r"<img[^>]*\bsrc='([^']*)'", page):
        assert src.startswith("data:image/png;base64,") or (root / unquote(src)).is_file(), src


def data_uri_image(uri: str) -> np.ndarray:
    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_every_section_has_content_on_a_full_pipeline_run(full_run: RunPaths, full_report: Path):
    page = full_report.read_text()
    assert_self_contained(page, full_run.root)
    got = sections(page)
    assert list(got) == [anchor for anchor, _, _ in SECTIONS]
    for anchor, html in got.items():
        if anchor != "mesh":  # no mesh in this run (see the --mesh test)
            assert "Not available" not in html and "Could not build" not in html, anchor
    assert "Not available yet: no mesh yet" in got["mesh"]
    images = {a: len(re.findall(r"<img ", h)) for a, h in got.items()}
    assert all(n >= 1 for a, n in images.items() if a not in ("video", "mesh", "files")), images
    assert "test_every=8: 4 train, 1 test" in got["cameras"]
    metrics = json.loads(full_run.metrics_json.read_text())
    assert f"{metrics['psnr']:.4g}" in got["renders"]
    videos = re.findall(r"<video src='([^']*)'", page)
    assert videos == ["depth/depth.mp4", "splat/renders.mp4"]
    assert "<video src='splat/renders.mp4'" in got["video"] and "<video src='depth/depth.mp4'" in got["depth"]


def test_every_depth_and_error_image_carries_a_colour_legend(full_report: Path):
    got = sections(full_report.read_text())
    figures = {
        a: re.findall(r"<(?:figure|div) class='?[^>]*\bdepth\b[^>]*>(.*?)</(?:figure|div)>", h, re.S)
        for a, h in got.items()
    }
    counts = {a: len(f) for a, f in figures.items() if f}
    # depth: prior strip, aligned strip, depth.mp4; renders: one error map per test view; splatdepth: 3 views
    assert counts == {"depth": 3, "renders": 1, "splatdepth": 3}, counts
    for anchor, figs in figures.items():
        for fig in figs:
            legends = re.findall(r"<img class=legend src='([^']*)' alt='colour legend: ([^']*)'", fig)
            assert len(legends) == 1 and ("<video" in fig or "<label class=zoom" in fig), anchor
            bar = data_uri_image(legends[0][0])
            assert bar.shape[1] > 3 * bar.shape[0] > 60  # a horizontal colour bar with its tick labels
            assert len(np.unique(bar.reshape(-1, 3), axis=0)) > 50  # a colour ramp, not a blank image
            lo, hi = (float(v) for v in re.search(r"from (\S+) to (\S+)$", legends[0][1]).groups())
            assert lo < hi, legends[0][1]
    assert "scene units" in "".join(figures["splatdepth"]) and "intensity 0-1" in "".join(figures["renders"])
    assert "relative units" in figures["depth"][0] and "scene units" in figures["depth"][1]


def test_per_view_metrics_equal_metrics_json(full_run: RunPaths, full_report: Path):
    table = sections(full_report.read_text())["renders"]
    rows = re.findall(r"<tr data-view='(\d+)'>(.*?)</tr>", table, re.S)
    per_view = json.loads(full_run.metrics_json.read_text())["splat_per_view"]
    assert [int(i) for i, _ in rows] == [r["index"] for r in per_view] and len(rows) == 1
    for (_, row), want in zip(rows, per_view):
        cells = {k: float(v) for k, v in re.findall(r"data-k='([^']*)' data-v='([^']*)'", row)}
        assert {"psnr", "ssim"} <= set(cells)
        assert cells == {k: v for k, v in want.items() if k != "index" and isinstance(v, (int, float))}


def test_render_pairs_are_linked_at_their_stored_resolution_with_an_error_map(full_run: RunPaths, full_report: Path):
    html = sections(full_report.read_text())["renders"]
    [pair_src] = re.findall(r"<img src='(splat/test_renders/[^']*)' alt='test render", html)
    pair = read_rgb(full_run.root / pair_src)
    assert pair.shape == (72, 192, 3)  # render | ground truth at train.max_size 96
    [err_src] = re.findall(r"<img src='([^']*)' alt='error map", html)
    err = data_uri_image(err_src)
    assert err.shape == (72, 96, 3)
    assert "id='view-000000'" in html and "href='#view-000000'" in html  # the table row links to its pair


def test_error_map_is_the_mean_absolute_difference():
    gt = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    render = gt.copy()
    render[2:4, 3:6] = 255 - gt[2:4, 3:6]
    err = error_map(np.concatenate([render, gt], axis=1))
    want = np.abs(render.astype(float) - gt).mean(2) / 255
    assert err.shape == (8, 10) and np.allclose(err, want) and (err[render.sum(2) == gt.sum(2)] == 0).all()


def test_splat_depth_beside_the_prior(full_run: RunPaths, full_report: Path):
    """The splat was initialised from the aligned depth (init=depth): its rendered depth must lie near the prior."""
    prior = AlignedDepth.load(full_run.aligned_npz).depth
    rendered = splat_depth(full_run, [1, 4], 160)
    for i in (1, 4):
        d = rendered[i]
        assert d.shape == prior[i].shape
        both = (d > 0) & (prior[i] > 0)
        assert both.mean() > 0.5
        assert np.median(np.abs(d[both] - prior[i][both]) / prior[i][both]) < 0.3  # 0.19 measured after 4 steps
    html = sections(full_report.read_text())["splatdepth"]
    strips = [data_uri_image(u) for u in re.findall(r"<img src='([^']*)' alt='frame \d+: prior and trained", html)]
    assert len(strips) == 3
    for s in strips:  # frame | prior | splat depth, each 160x120 -> the splat panel (right third) is not blank
        third = s[:, -s.shape[1] // 3 :]
        assert (third.sum(2) > 0).mean() > 0.5


def test_links_resolve_and_every_file_is_linked(full_run: RunPaths, full_report: Path):
    page = full_report.read_text()
    links = {unquote(u) for u in local_links(page)}
    assert all((full_run.root / u).is_file() for u in links), [u for u in links if not (full_run.root / u).is_file()]
    listed = {unquote(u) for u in re.findall(r"<li><a href='([^']*)'", sections(page)["files"])}
    on_disk = {p.as_posix() for p in run_files(full_run)}
    assert listed == on_disk and "splat/gaussians.ply" in listed and "depth/depth.mp4" in listed
    assert not any(p.startswith(".") for p in listed)  # the lock file is not a result


@pytest.fixture(scope="module")
def meshed_run(full_run: RunPaths, tmp_path_factory) -> RunPaths:
    """A copy of the full run, given a mesh by `recon run --mesh` (every other stage is skipped as done)."""
    from recon.cli import main

    root = tmp_path_factory.mktemp("meshed") / "icl"
    shutil.copytree(full_run.root, root, ignore=shutil.ignore_patterns(".lock", "report.html"))
    sets = ["mesh.min_alpha=0.2", "mesh.max_size=96", "mesh.device=cpu"]  # a 4-step splat is faint
    assert main(["run", "--out", str(root), "--mesh", "--set", *sets]) == 0
    return RunPaths(root)


def test_run_with_mesh_meshes_before_the_report_which_shows_it(meshed_run: RunPaths):
    assert plan("report", ("mesh",))[-2:] == ["mesh", "report"]
    stages = json.loads(meshed_run.manifest.read_text())["stages"]
    assert stages["mesh"]["finished"] <= stages["report"]["started"]
    html = sections(meshed_run.report_html.read_text())["mesh"]
    assert "href='mesh/mesh.ply'" in html and "Not available" not in html
    [preview] = re.findall(r"<img src='([^']*)' alt='mesh preview'", html)
    image = data_uri_image(preview)
    assert image.shape[0] >= 240 and (image.sum(2) < 3 * 255).mean() > 0.3  # the mesh covers the view


def test_mesh_preview_reproduces_the_frame(full_run: RunPaths):
    """A TSDF mesh of the sensor depth, coloured by the frames, ray-cast into camera 2: the frame comes back."""
    import open3d as o3d

    from splat.mesh import MeshConfig, tsdf_mesh

    cams = CameraSet.load(full_run.cameras_json)
    depth = AlignedDepth.load(full_run.aligned_npz).depth
    ids = [i for i in range(len(cams)) if (depth[i] > 0).any()]
    frames = np.stack([read_rgb(full_run.root / cams.files[i]) for i in ids])
    v, f, c = tsdf_mesh(depth[ids], frames, cams.K[ids], cams.c2w[ids], MeshConfig(resolution=256))
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f))
    mesh.vertex_colors = o3d.utility.Vector3dVector(c / 255.0)
    colour, shaded = mesh_preview(mesh, cams.K[2], cams.w2c[2], cams.width, cams.height)
    frame = read_rgb(full_run.root / cams.files[2])
    hit = (shaded != 255).any(2)  # misses are white; a hit facing the camera head-on is too (rare)
    assert hit.mean() > 0.6  # 0.74 measured: the TSDF leaves the sensor's holes and the borders open
    diff = np.abs(colour[hit].astype(float) - frame[hit])
    assert diff.mean() < 12  # 4.8 measured; against the frame shifted by one image row it is ~40


def copy_partial_run(full_run: RunPaths, root: Path) -> RunPaths:
    """Frames and poses of `full_run` only (as if the run had stopped after the split stage)."""
    partial = RunPaths(root)
    shutil.copytree(full_run.frames_dir, partial.frames_dir)
    shutil.copytree(full_run.root / "images", partial.root / "images")  # undistorted frames of cameras.json
    for f in (full_run.frames_json, full_run.cameras_json, full_run.split_json):
        shutil.copy(f, partial.root / f.name)
    return partial


def test_sections_without_their_stage_say_so(full_run: RunPaths, tmp_path: Path):
    partial = copy_partial_run(full_run, tmp_path / "partial")
    got = sections(write_report(partial).read_text())
    for anchor in ("frames", "cameras"):
        assert "<img " in got[anchor] and "Not available" not in got[anchor]
    assert "href='cameras.json'" in got["files"] and "splat/" not in got["files"]
    for anchor in ("stages", "depth", "alignment", "points", "training", "video", "renders", "splatdepth", "mesh"):
        assert "Not available yet" in got[anchor] and "<img " not in got[anchor], anchor

    empty = RunPaths(tmp_path / "empty")
    empty.root.mkdir()
    got = sections(write_report(empty).read_text())
    assert all("Not available yet" in html for html in got.values())


def test_a_damaged_file_breaks_only_its_section(full_run: RunPaths, tmp_path: Path):
    run = copy_partial_run(full_run, tmp_path / "run")
    run.alignment_json.parent.mkdir(parents=True)
    run.alignment_json.write_text("{ not json")
    got = sections(write_report(run).read_text())
    assert "Could not build this section" in got["alignment"]
    assert "<img " in got["frames"] and "<img " in got["cameras"]
    assert all("Could not build" not in html for a, html in got.items() if a != "alignment")


def test_point_preview_reproduces_the_frame_it_was_lifted_from(full_run: RunPaths):
    """Back-project frame 1's depth with its camera, splat it into the same camera: the frame comes back."""
    cams = CameraSet.load(full_run.cameras_json)
    depth = AlignedDepth.load(full_run.aligned_npz).depth[1]
    frame = read_rgb(full_run.root / cams.files[1])
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    K = cams.K[1]
    cam = np.stack([(u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, z], 1)
    world = cam @ cams.c2w[1][:3, :3].T + cams.c2w[1][:3, 3]
    image = render_points(world, frame[v, u], K, cams.w2c[1], cams.width, cams.height, radius=0)
    assert np.array_equal(image[v, u], frame[v, u])
    assert (image[depth == 0] == 255).all()  # nothing lands where no point projects


# ---------------------------------------------------------------- headless Chromium via DevTools


VIDEOS_JS = """Promise.all(Array.from(document.querySelectorAll('video')).map(v => new Promise(res => {
  const done = () => res([v.getAttribute('src'), v.readyState, v.videoWidth, v.videoHeight,
                          v.error ? v.error.code : 0]);
  if (v.readyState >= 2 || v.error) { done(); return; }
  v.addEventListener('loadeddata', done); v.addEventListener('error', done); setTimeout(done, 20000);
}))).then(JSON.stringify)"""
"""[src, readyState, videoWidth, videoHeight, MediaError code] of every <video>, once each has decoded its first
frame (readyState >= 2, HAVE_CURRENT_DATA), failed, or 20 s passed."""

ZOOM_JS = """(() => { const label = document.querySelector('label.zoom'); if (!label) return 'null';
  const img = label.querySelector('img'), before = img.getBoundingClientRect().width;
  label.click(); const after = img.getBoundingClientRect().width, position = getComputedStyle(img).position;
  label.click(); return JSON.stringify([before, after, position, innerWidth]); })()"""
"""Click the first zoomable image: [width before, width while enlarged, its CSS position then, window width]."""


def load_in_chromium(page: Path, timeout: float = 60.0) -> dict:
    """Open `page` in headless Chromium; return console errors, exceptions, requested URLs, images, videos
    (VIDEOS_JS) and the click-to-enlarge check (ZOOM_JS)."""
    with Chromium("--disable-gpu", timeout=timeout) as browser:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=page.resolve().as_uri())
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in browser.events):
            assert time.monotonic() < deadline, "the page did not finish loading"
            browser.receive()
        images = browser.evaluate(
            "JSON.stringify(Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]))"
        )
        videos = browser.evaluate(VIDEOS_JS, awaitPromise=True)
        zoom = browser.evaluate(ZOOM_JS)
        events = browser.events
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return {"errors": page_errors(events), "images": images, "requests": requests, "videos": videos, "zoom": zoom}


def page_errors(events: list[dict]) -> list[dict]:
    """Exceptions, console errors and log errors among DevTools events."""
    errors = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [
        e["params"]
        for e in events
        if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
    ]
    errors += [
        e["params"]["entry"]
        for e in events
        if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    return errors


@needs_chromium
def test_report_renders_in_headless_chromium(full_report: Path, tmp_path: Path):
    result = load_in_chromium(full_report)
    assert result["errors"] == []
    assert len(result["images"]) >= len(SECTIONS)
    broken = [alt for alt, complete, w, h in result["images"] if not (complete and w > 0 and h > 0)]
    assert broken == []
    assert all(u.startswith(("file:", "data:")) for u in result["requests"]), result["requests"]
    assert any(alt.startswith("test render") for alt, *_ in result["images"])  # the linked pair decodes
    # Both videos decode their first frame (H.264 in Debian's Chromium); sizes are the frames' (even-padded)
    assert [v[0] for v in result["videos"]] == ["depth/depth.mp4", "splat/renders.mp4"]
    for src, ready, width, height, error in result["videos"]:
        assert ready >= 2 and error == 0 and width > 0 and height > 0, src
    assert [v[2:4] for v in result["videos"]] == [[160, 120], [96, 72]]
    before, after, position, window = result["zoom"]
    assert position == "fixed" and after > before and after > 0.9 * window  # click to enlarge

    empty = RunPaths(tmp_path / "empty")
    empty.root.mkdir()
    result = load_in_chromium(write_report(empty))
    assert result["errors"] == [] and result["images"] == [] and result["videos"] == []


@needs_chromium
def test_the_browser_check_sees_a_broken_image(tmp_path: Path):
    """The check itself can fail: a page with an undecodable image, an undecodable video and a script error."""
    page = tmp_path / "bad.html"
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    page.write_text(
        "<!DOCTYPE html><html><body><img alt=bad src='data:image/png;base64,AAAA'>"
        "<video src='bad.mp4' preload=auto></video><script>undefined_function()</script></body></html>"
    )
    result = load_in_chromium(page)
    assert result["errors"]
    assert [w for _, _, w, _ in result["images"]] == [0]
    [[src, ready, width, _, error]] = result["videos"]
    assert src == "bad.mp4" and ready < 2 and width == 0 and error != 0
