"""RUN/report.html: content per stage, graceful degradation, and a clean load in headless Chromium.

The full run is made by the real pipeline (recon.api.run) on the 5 ICL-NUIM living-room frames at
160x120 with their GT poses (known-poses import, triangulated SfM points) and their sensor depth
(depth backend "file"), then align, fuse, a 4-step CPU training, export and report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest

from depth.geometry import opencv_to_opengl
from recon.artifacts import AlignedDepth, CameraSet, RunPaths, read_rgb
from recon.report import SECTIONS, render_points
from recon.stages.report import write_report

ICL = Path(__file__).resolve().parents[2] / "shared" / "data" / "icl_nuim_livingroom_5frames"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


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
        depth={
            "backend": "file",
            "preview": False,
            "file": {"path": str(ICL / "depth"), "kind": "depth", "scale": 1000.0},
        },
        train={"iterations": 4, "max_init_points": 500, "max_size": 96, "video_frames": 0},
        until="export",  # the report is written by the tests
    )
    return run.paths


@pytest.fixture(scope="module")
def full_report(full_run: RunPaths) -> Path:
    return write_report(full_run)


def sections(page: str) -> dict[str, str]:
    """section id -> its inner HTML."""
    return dict(re.findall(r"<section id='([a-z]+)'>(.*?)</section>", page, flags=re.S))


def assert_self_contained(page: str) -> None:
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, flags=re.I)
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//)", page, flags=re.I)
    assert not re.search(r"url\(", page)
    for src in re.findall(r"<img[^>]*\bsrc='([^']*)'", page):
        assert src.startswith("data:image/png;base64,")


def test_every_section_has_content_on_a_full_pipeline_run(full_run: RunPaths, full_report: Path):
    page = full_report.read_text()
    assert_self_contained(page)
    got = sections(page)
    assert list(got) == [anchor for anchor, _, _ in SECTIONS]
    for anchor, html in got.items():
        assert "Not available" not in html and "Could not build" not in html, anchor
    images = {a: len(re.findall(r"<img ", h)) for a, h in got.items()}
    assert all(n >= 1 for n in images.values()), images
    assert "test_every=8: 4 train, 1 test" in got["cameras"]
    metrics = json.loads(full_run.metrics_json.read_text())
    assert f"{metrics['psnr']:.4g}" in got["renders"]


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
    for anchor in ("stages", "depth", "alignment", "points", "training", "renders"):
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


def load_in_chromium(page: Path, timeout: float = 60.0) -> dict:
    """Open `page` in headless Chromium; return console errors, exceptions, requested URLs and images."""
    import websocket

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-extensions",
                "--no-first-run",
                "--mute-audio",
                "--remote-allow-origins=*",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            targets = json.loads(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout).read())
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
            ids = iter(range(1, 10**6))
            events: list[dict] = []

            def call(method: str, **params) -> dict:
                msg_id = next(ids)
                ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv())
                    if msg.get("id") == msg_id:
                        assert "error" not in msg, msg
                        return msg.get("result", {})
                    events.append(msg)

            for domain in ("Page", "Runtime", "Log", "Network"):
                call(f"{domain}.enable")
            call("Page.navigate", url=page.resolve().as_uri())
            while not any(e.get("method") == "Page.loadEventFired" for e in events):
                assert time.monotonic() < deadline, "the page did not finish loading"
                events.append(json.loads(ws.recv()))
            js = (
                "JSON.stringify(Array.from(document.images)"
                ".map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]))"
            )
            images = json.loads(call("Runtime.evaluate", expression=js, returnByValue=True)["result"]["value"])
            ws.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
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
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return {"errors": errors, "images": images, "requests": requests}


@needs_chromium
def test_report_renders_in_headless_chromium(full_report: Path, tmp_path: Path):
    result = load_in_chromium(full_report)
    assert result["errors"] == []
    assert len(result["images"]) >= len(SECTIONS)
    broken = [alt for alt, complete, w, h in result["images"] if not (complete and w > 0 and h > 0)]
    assert broken == []
    assert all(u.startswith(("file:", "data:")) for u in result["requests"]), result["requests"]

    empty = RunPaths(tmp_path / "empty")
    empty.root.mkdir()
    result = load_in_chromium(write_report(empty))
    assert result["errors"] == [] and result["images"] == []


@needs_chromium
def test_the_browser_check_sees_a_broken_image(tmp_path: Path):
    """The check itself can fail: a page with an undecodable image and a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><img alt=bad src='data:image/png;base64,AAAA'>"
        "<script>undefined_function()</script></body></html>"
    )
    result = load_in_chromium(page)
    assert result["errors"]
    assert [w for _, _, w, _ in result["images"]] == [0]
