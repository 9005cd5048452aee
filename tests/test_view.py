"""`recon view RUN` (recon.view): the viser viewer of a trained run, checked in headless Chromium.

The run: the shared NeRF-synthetic lego run (6 views at 64 px, given poses; conftest `lego_sparse_run`)
trained for 30 CPU steps with a checkpoint kept at step 15, so it has two training states. The viewer
listens on 127.0.0.1 (a free port); Chromium opens it; screenshots (DevTools Page.captureScreenshot) must
show the render the server sent (not a blank page), and change when the camera is moved through viser's
API; the frames the server renders from the browser's camera must equal direct renders of the run's
cameras (the viser <-> OpenCV camera convention, checked through the browser's own camera messages).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest
from support.chromium import Chromium, needs_chromium

from recon.artifacts import CameraSet, RunPaths
from recon.cli import main
from recon.view import (
    FAR,
    SplatRenderer,
    ViewConfig,
    Viewer,
    background_depth,
    depth_colors,
    load_scene,
    load_snapshots,
    opencv_to_viser,
    render_size,
    viser_to_opencv,
)

MAX_SIZE = 256  # refined render size of the browser tests (pixels, long side)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def trained(lego_sparse_run, tmp_path_factory) -> RunPaths:
    """A trained lego run with two training states: splat/checkpoint_step15.pt and splat/checkpoint.pt (30)."""
    from recon.stages import StageContext
    from recon.stages.train import Config
    from recon.stages.train import run as run_train

    paths = RunPaths(tmp_path_factory.mktemp("view") / "run")
    shutil.copytree(lego_sparse_run(n_train=6, size=64).root, paths.root)
    cfg = Config.preset(
        "cpu",
        init="random",
        num_random=1500,
        depth_loss="none",
        iterations=30,
        sh_degree=0,
        refine_start=1000,
        checkpoint_every=15,
        video_frames=0,
        device="cpu",
        cpu_threads=1,
        seed=0,
    )

    def keep_step_15(step: int, row: dict) -> None:
        if step == 20:  # the checkpoint of step 15 is the last one written
            shutil.copy(paths.checkpoint, paths.splat_dir / "checkpoint_step15.pt")

    run_train(StageContext(paths), cfg, callback=keep_step_15)
    return paths


# ---------------------------------------------------------------------------------------------------
# pure maths


def test_camera_conversion_round_trips_and_matches_viser_conventions():
    import viser.transforms as vtf

    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        c2w = np.eye(4)
        c2w[:3, :3] = vtf.SO3(q / np.linalg.norm(q)).as_matrix()
        c2w[:3, 3] = rng.normal(size=3) * 3
        W, H = int(rng.integers(40, 400)), int(rng.integers(40, 400))
        f = float(rng.uniform(30, 600))
        K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
        wxyz, position, fov = opencv_to_viser(c2w, K, W, H)
        # viser: wxyz is R_world_camera, look direction +z, up -y (CameraHandle.wxyz's setter)
        np.testing.assert_allclose(vtf.SO3(wxyz).as_matrix()[:, 2], c2w[:3, 2], atol=1e-9)
        w2c, K2, W2, H2 = viser_to_opencv(wxyz, position, fov, W / H, max(W, H))
        assert (W2, H2) == (W, H) or abs(W2 - W) + abs(H2 - H) <= 1
        np.testing.assert_allclose(w2c, np.linalg.inv(c2w), atol=1e-9)
        np.testing.assert_allclose(K2[1, 1], f * H2 / H, rtol=1e-9)
        np.testing.assert_allclose(K2[:2, 2], [W2 / 2, H2 / 2])
    # a world point on the camera's optical axis projects to the image centre
    w2c, K, W, H = viser_to_opencv(np.array([1.0, 0, 0, 0]), np.array([1.0, 2.0, 3.0]), 0.8, 2.0, 200)
    p = w2c @ np.array([1.0, 2.0, 8.0, 1.0])
    assert p[2] == pytest.approx(5.0) and (K @ p[:3] / p[2])[:2] == pytest.approx([W / 2, H / 2])
    assert (W, H) == (200, 100) and render_size(0.5, 200) == (100, 200)


def test_depth_display_and_compositing_depth():
    depth = np.array([[1.0, 2.0], [4.0, 3.0]], np.float32)
    alpha = np.array([[1.0, 1.0], [1.0, 0.1]], np.float32)
    rgb = depth_colors(depth, alpha)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert (rgb[1, 1] == 0).all()  # transparent: black
    assert rgb[0, 0, 0] > rgb[0, 0, 2] and rgb[1, 0, 2] > rgb[1, 0, 0]  # turbo: near red, far blue
    np.testing.assert_array_equal(background_depth(depth, alpha), [[1, 2], [4, FAR]])
    assert (depth_colors(depth, np.zeros_like(alpha)) == 0).all()


# ---------------------------------------------------------------------------------------------------
# the run's files and the command line


def test_snapshots_are_the_training_states_by_step(trained: RunPaths):
    snaps = load_snapshots(trained)
    # gaussians.ply holds the final checkpoint's Gaussians: not a third state
    assert [s.step for s in snaps] == [15, 30]
    assert not np.array_equal(snaps[0].params["means"], snaps[1].params["means"])


def test_a_run_without_a_trained_splat_is_one_error_line(trained: RunPaths, tmp_path: Path, capsys):
    untrained = tmp_path / "untrained"
    shutil.copytree(trained.root, untrained, ignore=shutil.ignore_patterns("splat"))
    for run in (untrained, tmp_path / "missing"):
        assert main(["view", str(run), "--port", str(free_port())]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    damaged = tmp_path / "damaged"
    shutil.copytree(trained.root, damaged)
    for f in (damaged / "splat").glob("checkpoint*.pt"):
        f.unlink()
    (damaged / "splat" / "gaussians.ply").write_bytes(b"ply\nnot really\n")
    assert main(["view", str(damaged)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gaussians.ply" in err[0], err
    for flags, message in ((["--port", "0"], "--port"), (["--host", "192.0.2.1"], "--host 192.0.2.1")):
        assert main(["view", str(trained.root), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


def test_one_training_state_has_no_slider_and_the_fused_cloud_toggles(trained: RunPaths, tmp_path: Path):
    from recon.artifacts import PointCloud

    run = tmp_path / "run"
    shutil.copytree(trained.root, run)
    (run / "splat" / "checkpoint_step15.pt").unlink()
    rng = np.random.default_rng(0)
    PointCloud(rng.uniform(-1, 1, (5000, 3)).astype(np.float32), rng.integers(0, 255, (5000, 3), np.uint8)).save(
        RunPaths(run).init_ply
    )
    scene = load_scene(run)
    assert len(scene.snapshots) == 1 and scene.points is not None and len(scene.points) == 5000
    viewer = Viewer(scene, ViewConfig(port=free_port(), device="cpu"))
    try:
        assert "step" not in viewer.controls and not viewer.controls["points"].disabled
        assert viewer.points is not None and not viewer.points.visible
        viewer.controls["points"].value = True  # callbacks run on viser's thread pool
        deadline = time.monotonic() + 10
        while not viewer.points.visible:
            assert time.monotonic() < deadline, "the point cloud toggle did nothing"
            time.sleep(0.05)
    finally:
        viewer.stop()


def test_the_command_prints_its_url_and_serves_the_page(trained: RunPaths):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recon.cli", "view", str(trained.root), "--port", str(port), "--max-size", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "viewer:" not in line:
            assert proc.poll() is None and time.monotonic() < deadline, "recon view did not print its URL"
            line = proc.stdout.readline()  # type: ignore[union-attr]
        url = line.split()[1]
        assert url == f"http://127.0.0.1:{port}"
        page = urlopen(url, timeout=30).read().decode()
        assert "<html" in page.lower()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------------
# in headless Chromium


class Browser(Chromium):
    """Headless Chromium (support.chromium) showing the page at `url`."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        super().__init__("--window-size=800,600", timeout=timeout)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def canvas(self) -> np.ndarray:
        """Screenshot of the largest canvas (the 3D view): uint8 [h, w, 3]."""
        from PIL import Image

        js = (
            "JSON.stringify(Array.from(document.querySelectorAll('canvas')).map(c => c.getBoundingClientRect())"
            ".map(r => [r.x, r.y, r.width, r.height]).sort((a, b) => b[2] * b[3] - a[2] * a[3])[0])"
        )
        x, y, w, h = (int(round(v)) for v in self.evaluate(js))
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[y : y + h, x : x + w]


def settled(view, at: np.ndarray, timeout: float = 60.0, quiet: float = 0.5):
    """Wait until the browser reports its camera at `at` (world position; a page that just connected first
    sends poses it had before), that change is drawn refined and nothing changed for `quiet` s; its Frame."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while True:
        version = view.version
        if version != seen:
            seen, since = version, time.monotonic()
        there = np.linalg.norm(view.client.camera.position - at) < 1e-4
        if there and view.sent == (version, True) and time.monotonic() - since >= quiet:
            return view.last
        assert time.monotonic() < deadline, f"no refined render of camera version {version} (sent {view.sent})"
        time.sleep(0.05)


def left_part(a: np.ndarray) -> np.ndarray:
    """The canvas left of viser's GUI panel (which covers its right side)."""
    return a[:, : int(a.shape[1] * 0.55)].astype(np.float32)


def shown(browser: Browser, frame, keep: Path, timeout: float = 20.0) -> np.ndarray:
    """The canvas once it shows `frame` (the image the server last sent, stretched over the canvas): the
    median pixel differs by < 12 of 255 (frustums drawn over it are outliers); fails after `timeout`,
    leaving the screenshot and the frame in folder `keep`."""
    from PIL import Image

    deadline = time.monotonic() + timeout
    while True:
        shot = browser.canvas()
        sent = np.asarray(
            Image.fromarray(frame.image).resize((shot.shape[1], shot.shape[0]), Image.Resampling.BILINEAR)
        )
        err = float(np.median(np.abs(left_part(shot) - left_part(sent)).max(axis=2)))
        if err < 12:
            return shot
        if time.monotonic() > deadline:
            Image.fromarray(np.concatenate([shot, sent], axis=1)).save(keep / "page_and_render.png")
            raise AssertionError(f"the page does not show the render (median difference {err:.1f}; see {keep})")
        time.sleep(0.3)


def direct_render(renderer: SplatRenderer, c2w: np.ndarray, fov: float, size: tuple[int, int]):
    """Camera c2w (OpenCV) rendered at `size` (W, H) with the browser's vertical fov, principal point centred."""
    W, H = size
    f = 0.5 * H / np.tan(0.5 * fov)
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    return renderer.render(np.linalg.inv(c2w), K, W, H)


def between(cams: CameraSet, a: int, b: int) -> np.ndarray:
    """c2w [4, 4] (OpenCV) halfway between lego cameras a and b on their sphere, looking at the origin, +z up
    (NeRF-synthetic cameras all look at the origin from 4.03 units)."""
    pa, pb = cams.c2w[a, :3, 3], cams.c2w[b, :3, 3]
    p = (pa + pb) / np.linalg.norm(pa + pb) * np.linalg.norm(pa)
    z = -p / np.linalg.norm(p)
    x = np.cross(z, [0.0, 0.0, -1.0])  # image +y points down the world z axis
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    c2w[:3, 3] = p
    return c2w


@needs_chromium
def test_viewer_draws_the_scene_and_follows_the_camera_in_chromium(trained: RunPaths, tmp_path: Path):
    scene = load_scene(trained.root)
    assert scene.points is None and scene.background == (1.0, 1.0, 1.0)  # lego: composited on white, no fusion
    viewer = Viewer(scene, ViewConfig(host="127.0.0.1", port=free_port(), max_size=MAX_SIZE, device="cpu"))
    browser = None
    try:
        assert viewer.url.startswith("http://127.0.0.1:")
        browser = Browser(viewer.url)
        deadline = time.monotonic() + 60
        while not viewer.clients:
            assert time.monotonic() < deadline, "the page did not connect to the viewer"
            time.sleep(0.1)
        view = next(iter(viewer.clients.values()))
        cam, cams = view.client.camera, scene.cams
        reference = SplatRenderer("cpu", scene.background)
        reference.use(scene.snapshots[-1].params)

        # the browser looks through the first training camera; the server drew it and the page shows it
        first = settled(view, at=cams.c2w[scene.train[0], :3, 3])
        size = (first.image.shape[1], first.image.shape[0])
        assert max(size) == MAX_SIZE and abs(size[0] / size[1] - cam.aspect) < 0.02
        rgb, depth, alpha = direct_render(reference, cams.c2w[scene.train[0]], cam.fov, size)
        assert np.abs(first.image.astype(float) - rgb).mean() < 2.0
        a = shown(browser, first, tmp_path)
        not_white = (left_part(a).min(axis=2) < 200).mean()
        assert not_white > 0.1 and left_part(a).std() > 20, (not_white, left_part(a).std())

        # move the camera through viser's API (between two cameras: no frustum in front): a new render, a new page
        c2w = between(cams, scene.train[0], scene.test[0])
        wxyz, position, _ = opencv_to_viser(c2w, cams.K[0], cams.width, cams.height)
        with view.client.atomic():
            cam.position = position
            cam.wxyz = wxyz
        moved = settled(view, at=position)  # as the browser reports it
        rgb, depth, alpha = direct_render(reference, c2w, cam.fov, size)
        assert np.abs(moved.image.astype(float) - rgb).mean() < 2.0
        b = shown(browser, moved, tmp_path)
        assert np.abs(left_part(a) - left_part(b)).mean() > 15

        # depth display, then the training-step slider (the run has states at steps 15 and 30)
        viewer.controls["depth"].value = True
        in_depth = settled(view, at=position)
        assert np.abs(in_depth.image.astype(float) - depth_colors(depth, alpha)).mean() < 3.0
        shown(browser, in_depth, tmp_path)
        viewer.controls["step"].value = 0
        earlier = settled(view, at=position)
        assert np.abs(earlier.image.astype(float) - in_depth.image).mean() > 3.0
    finally:
        if browser is not None:
            browser.close()
        viewer.stop()
