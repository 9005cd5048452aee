"""`recon view RUN`: the trained Gaussians of a run in the browser (viser), rendered live by splat.render.

The viser server (viser 0.2.7) sends the page and the scene to each browser; every browser tab (client) has
its own camera. On each camera message this module renders the Gaussians from that camera with
splat.render.rasterization (gsplat on CUDA, the CPU rasterizer otherwise) and sends the image as the scene's
background for that client, with its depth so that frustums and points are hidden behind the splat where
they should be (viser encodes that depth in [0, 167.77] scene units: farther surfaces composite as if at
167.77). While the camera moves it renders small (`ViewConfig.moving_side`: sized to render in about
`moving_budget_s`); once the camera has been still for `settle_s` it renders again at `max_size`.

Shown besides the render: training cameras (blue) and test cameras (orange) as frustums holding
thumbnails of their frames (click one to look through it), the fused point cloud RUN/points/init.ply
(toggle), a depth display (the expected depth as a colour map instead of colour) and, when the run holds
more than one training state, a slider over the training steps (see `load_snapshots`).

Run-directory reading (`load_scene`) and the viser session (`Viewer`) are here; the camera and image maths
are pure functions (`viser_to_opencv`, `opencv_to_viser`, `render_size`, `depth_colors`, `background_depth`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from depth.checks import device as check_device
from depth.checks import number
from recon.artifacts import CameraSet, Checkpoint, GaussiansFile, Metrics, PointCloud, RunPaths, Split, read_rgb
from recon.console import console, warn
from recon.errors import ReconError

if TYPE_CHECKING:
    import viser

TRAIN_COLOR = (40, 110, 255)
TEST_COLOR = (255, 140, 20)
FAR = 1e3  # background depth (scene units) where the splat is transparent: behind every scene element
START_S = 10.0  # see Viewer._connect
MAX_POINTS = 300_000  # the fused cloud is subsampled to this many points for the browser


@dataclass
class ViewConfig:
    """`recon view` options."""

    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only; reach it from elsewhere over an SSH tunnel)."""
    port: int = 8080
    """Port to listen on (viser takes the next free one when it is busy; the printed URL is the real one)."""
    max_size: int = 1024
    """Long side in pixels of the refined render, drawn once the camera stops."""
    moving_size: int = 0
    """Long side in pixels of the renders while the camera moves (0 = adaptive: see `moving_side`)."""
    moving_budget_s: float = 0.1
    """Adaptive moving size: render time aimed at per frame while the camera moves."""
    settle_s: float = 0.3
    """Seconds without camera motion before the refined render."""
    thumb_size: int = 96
    """Long side in pixels of the frame thumbnails on the frustums."""
    device: str = "auto"
    """Torch device for rendering (auto = cuda when available, else cpu)."""

    def validate(self) -> ViewConfig:
        number(self.port, "--port", ReconError, lo=1, hi=65535, integer=True)
        number(self.max_size, "--max-size", ReconError, lo=16, hi=8192, integer=True)
        number(self.moving_size, "ViewConfig.moving_size", ReconError, lo=0, hi=8192, integer=True, note="0 = adaptive")
        number(self.moving_budget_s, "ViewConfig.moving_budget_s", ReconError, lo=0, lo_open=True)
        number(self.settle_s, "ViewConfig.settle_s", ReconError, lo=0)
        number(self.thumb_size, "ViewConfig.thumb_size", ReconError, lo=8, hi=1024, integer=True)
        check_device(self.device, "--device", ReconError)
        return self

    def moving_side(self, aspect: float, seconds_per_pixel: float | None) -> int:
        """Long side of a render while the camera moves: `moving_size`, or (0) the largest that renders in
        about moving_budget_s at the measured seconds per pixel, clamped to [48, max_size / 2] (max_size / 4
        before anything was measured)."""
        if self.moving_size:
            return min(self.moving_size, self.max_size)
        if not seconds_per_pixel:
            return max(48, self.max_size // 4)
        pixels = self.moving_budget_s / seconds_per_pixel
        side = int(np.sqrt(pixels * max(aspect, 1.0 / aspect)))  # long side of a pixels-sized image of that aspect
        return int(np.clip(side, 48, max(48, self.max_size // 2)))


# ---------------------------------------------------------------------------------------------------
# camera and image maths (pure)


def render_size(aspect: float, max_side: int) -> tuple[int, int]:
    """(width, height) in pixels of an image of `aspect` = width / height whose long side is max_side."""
    if aspect >= 1.0:
        return max_side, max(1, int(round(max_side / aspect)))
    return max(1, int(round(max_side * aspect))), max_side


def viser_to_opencv(
    wxyz: np.ndarray, position: np.ndarray, fov: float, aspect: float, max_side: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A viser client camera -> (w2c [4, 4] float64, K [3, 3] float64 pixels, width, height) for splat.render.

    viser's conventions (viser/_viser.py `CameraHandle`, 0.2.7): `wxyz` is the quaternion (w, x, y, z) of
    R_world_camera, the rotation taking camera axes to world axes; `position` is the camera centre in world
    units; so c2w = [R | position]. Its camera axes are OpenCV's (+x right, +y down, +z = viewing direction),
    as are ours (cameras.json, splat.render), so no axis flip is needed. `fov` is the vertical field of view
    in radians and `aspect` the canvas width / height; the browser draws with a three.js perspective camera:
    square pixels, principal point at the canvas centre.

    Returns the camera rendered at `render_size(aspect, max_side)`: fy = fx = (H / 2) / tan(fov / 2),
    (cx, cy) = (W / 2, H / 2) (pixel centres at +0.5, as splat.render), w2c = inverse(c2w).
    """
    import viser.transforms as vtf

    q = np.asarray(wxyz, np.float64)
    R = vtf.SO3(q / np.linalg.norm(q)).as_matrix()
    W, H = render_size(aspect, max_side)
    f = 0.5 * H / np.tan(0.5 * fov)
    K = np.array([[f, 0.0, 0.5 * W], [0.0, f, 0.5 * H], [0.0, 0.0, 1.0]])
    w2c = np.eye(4)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ np.asarray(position, np.float64)
    return w2c, K, W, H


def opencv_to_viser(c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A run camera (c2w [4, 4] OpenCV axes, K [3, 3] pixels at width x height) -> viser's (wxyz [4], position [3],
    vertical fov in radians), the inverse of `viser_to_opencv` (viser has no principal-point offset and one
    focal length: it keeps fy and the centre)."""
    import viser.transforms as vtf

    R = np.asarray(c2w, np.float64)[:3, :3]
    wxyz = vtf.SO3.from_matrix(R).wxyz
    fov = 2.0 * float(np.arctan(0.5 * height / float(K[1, 1])))
    return np.asarray(wxyz, np.float64), np.asarray(c2w, np.float64)[:3, 3].copy(), fov


def depth_colors(depth: np.ndarray, alpha: np.ndarray, min_alpha: float = 0.5) -> np.ndarray:
    """Expected depth [H, W] (scene units) -> uint8 [H, W, 3] turbo colours of inverse depth (near = red),
    2-98 percentile range of the image; black where alpha [H, W] < min_alpha or the depth is not positive."""
    from depth.preview import colorize

    valid = (alpha >= min_alpha) & np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    inv = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0).astype(np.float32)
    lo, hi = np.percentile(inv[valid], [2, 98])
    return colorize(inv, (float(lo), float(max(hi, lo * (1 + 1e-6) + 1e-12))))[0]


def background_depth(depth: np.ndarray, alpha: np.ndarray, min_alpha: float = 0.5) -> np.ndarray:
    """The depth viser composites the background image with (z-depth [H, W], scene units): the rendered
    depth where the splat is opaque enough, FAR elsewhere (scene elements there stay visible)."""
    ok = (alpha >= min_alpha) & np.isfinite(depth) & (depth > 0)
    return np.where(ok, depth, FAR).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# the run's files


@dataclass
class Snapshot:
    """One training state to show: label for the GUI, training step (None: unknown) and Gaussians in
    splat.ply's layout (pre-activation)."""

    label: str
    step: int | None
    params: dict[str, np.ndarray]


def _checkpoint_snapshot(path: Path) -> Snapshot:
    state = Checkpoint.load(path).state
    step = int(state.get("step", 0))
    return Snapshot(f"step {step} ({path.name})", step, {k: v.numpy() for k, v in state["params"].items()})


def load_snapshots(paths: RunPaths) -> list[Snapshot]:
    """The training states of a run, oldest first: every RUN/splat/checkpoint*.pt by step, then
    RUN/splat/gaussians.ply unless it holds the same Gaussians as the last checkpoint.

    The train stage keeps one checkpoint (overwritten every train.checkpoint_every steps and at the end),
    so a finished run gives one state; copies kept as e.g. splat/checkpoint_step2000.pt give several.
    A damaged checkpoint is skipped with a warning. ReconError when no state can be read.
    """
    snaps: list[Snapshot] = []
    errors: list[str] = []
    for path in sorted(paths.splat_dir.glob("checkpoint*.pt")):
        try:
            snaps.append(_checkpoint_snapshot(path))
        except ReconError as e:
            errors.append(str(e))
    snaps.sort(key=lambda s: (s.step if s.step is not None else -1, s.label))
    if paths.gaussians_ply.exists():
        try:
            final = GaussiansFile.load(paths.gaussians_ply).params
            last = snaps[-1].params if snaps else None
            if last is None or not all(np.array_equal(last[k], final[k]) for k in ("means", "sh0", "opacities")):
                snaps.append(Snapshot("final (gaussians.ply)", None, final))
        except ReconError as e:
            errors.append(str(e))
    if not snaps:
        detail = f" ({errors[0]})" if errors else ""
        raise ReconError(
            f"{paths.root} has no trained splat (splat/gaussians.ply or splat/checkpoint.pt){detail}: "
            f"train it first (recon train --out {paths.root})"
        )
    for msg in errors:
        warn(f"view: skipped {msg}")
    return snaps


@dataclass
class ViewerScene:
    """What the viewer shows: cameras, their split, the training states, the fused cloud (or None) and the
    background colour the Gaussians were trained on (RGB in [0, 1])."""

    paths: RunPaths
    cams: CameraSet
    train: list[int]
    test: list[int]
    snapshots: list[Snapshot]
    points: PointCloud | None
    background: tuple[float, float, float]


def load_scene(run: Path) -> ViewerScene:
    """Read everything `recon view` shows from the run directory; ReconError (one line) when the run has no
    trained splat or no cameras. A missing split shows every registered camera as a training camera; a
    missing fused cloud disables its toggle."""
    paths = RunPaths(Path(run))
    if not paths.root.is_dir():
        raise ReconError(f"run directory {paths.root} does not exist")
    snapshots = load_snapshots(paths)
    cams = CameraSet.load(paths.cameras_json)
    registered = [int(i) for i in np.flatnonzero(cams.registered)]
    if paths.split_json.exists():
        split = Split.load(paths.split_json).validate(len(cams), cams.registered)
        train, test = split.train, split.test
    else:
        train, test = registered, []
    if not train + test:
        raise ReconError(f"{paths.cameras_json} has no registered camera to show")
    points = PointCloud.load(paths.init_ply) if paths.init_ply.exists() else None
    background = (0.0, 0.0, 0.0)
    if paths.metrics_json.exists():
        bg = Metrics.load(paths.metrics_json).summary.get("background")
        if isinstance(bg, list) and len(bg) == 3 and all(isinstance(c, (int, float)) for c in bg):
            background = (float(bg[0]), float(bg[1]), float(bg[2]))
    return ViewerScene(paths, cams, train, test, snapshots, points, background)


def thumbnail(path: Path, max_side: int) -> np.ndarray:
    """A frame file -> uint8 [h, w, 3] with its long side at most max_side pixels (box filter)."""
    from PIL import Image

    rgb = read_rgb(path)
    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    if s >= 1.0:
        return rgb
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


# ---------------------------------------------------------------------------------------------------
# rendering


class SplatRenderer:
    """The Gaussians of one snapshot on a torch device, rendered by splat.trainer.render (splat.render's
    rasterization: gsplat on CUDA, the CPU rasterizer otherwise). Thread-safe: one render at a time."""

    def __init__(self, device: str, background: tuple[float, float, float]) -> None:
        import torch

        from depth.device import resolve_device

        self.device = resolve_device(device)
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device)
        self.lock = threading.Lock()
        self.params: Any = None
        self.sh_degree = 0

    @property
    def backend(self) -> str:
        return "gsplat" if self.device.type == "cuda" else "CPU rasterizer"

    def use(self, params: dict[str, np.ndarray]) -> None:
        from splat.gaussians import to_parameters
        from splat.trainer import params_sh_degree

        p = to_parameters(params, self.device).requires_grad_(False)
        with self.lock:
            self.params, self.sh_degree = p, params_sh_degree(p)

    def render(self, w2c: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
        """One view: (rgb uint8 [H, W, 3], expected z-depth float32 [H, W] scene units, alpha float32 [H, W])."""
        import torch

        from splat.trainer import render

        with self.lock, torch.no_grad():
            vm = torch.as_tensor(w2c, dtype=torch.float32, device=self.device)
            Kt = torch.as_tensor(K, dtype=torch.float32, device=self.device)
            rgb, depth, alpha, _ = render(self.params, vm, Kt, width, height, self.sh_degree, self.background)
            rgb8 = (rgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
            return rgb8, depth.float().cpu().numpy(), alpha.float().cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# the viser session


@dataclass
class Frame:
    """The last image sent to a client: what was shown, whether it was the refined render, its camera
    version (see `_ClientView`) and render time in seconds."""

    image: np.ndarray
    refined: bool
    version: int
    seconds: float


class _ClientView:
    """One browser tab: renders on its own thread whenever its camera or the display settings change.

    `version` counts changes; `moved_at` is when the camera last moved (monotonic seconds, -inf after a
    display change, which is drawn refined at once). A change is drawn at the moving size at once, then
    refined once the camera has been still for settle_s."""

    def __init__(self, viewer: Viewer, client: viser.ClientHandle) -> None:
        self.viewer, self.client = viewer, client
        self.wake, self.stopped = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.version, self.moved_at = 0, float("-inf")
        self.sent: tuple[int, bool] = (-1, False)
        self.last: Frame | None = None
        self.failed = False
        self.thread = threading.Thread(target=self._loop, name=f"recon-view-{client.client_id}", daemon=True)

    def changed(self, moving: bool) -> None:
        with self.lock:
            self.version += 1
            self.moved_at = time.monotonic() if moving else float("-inf")
        self.wake.set()

    def _loop(self) -> None:
        settle = self.viewer.cfg.settle_s
        while not self.stopped.is_set():
            with self.lock:
                version, moved_at = self.version, self.moved_at
            still_for = time.monotonic() - moved_at
            refined = still_for >= settle
            if self.sent == (version, True) or (not refined and self.sent[0] == version):
                self.wake.wait(timeout=None if self.sent == (version, True) else settle - still_for)
                self.wake.clear()
                continue
            try:
                self._draw(version, refined)
            except Exception as e:  # a render that fails must not end the session: say it once, keep serving
                if not self.failed:
                    warn(f"view: rendering failed ({type(e).__name__}: {e})")
                self.failed = True
                self.sent = (version, True)

    def _draw(self, version: int, refined: bool) -> None:
        v, cfg = self.viewer, self.viewer.cfg
        with self.client.atomic():
            cam = self.client.camera
            wxyz, position, fov, aspect = cam.wxyz.copy(), cam.position.copy(), float(cam.fov), float(cam.aspect)
        if not (fov > 0 and aspect > 0):
            self.sent = (version, True)
            return
        side = cfg.max_size if refined else cfg.moving_side(aspect, v.seconds_per_pixel)
        w2c, K, W, H = viser_to_opencv(wxyz, position, fov, aspect, side)
        t0 = time.perf_counter()
        rgb, depth, alpha = v.renderer.render(w2c, K, W, H)
        seconds = time.perf_counter() - t0
        spp = seconds / (W * H)
        v.seconds_per_pixel = spp if v.seconds_per_pixel is None else 0.7 * v.seconds_per_pixel + 0.3 * spp
        image = depth_colors(depth, alpha) if v.show_depth else rgb
        self.client.scene.set_background_image(
            image, format="jpeg", jpeg_quality=90 if refined else 75, depth=background_depth(depth, alpha)
        )
        self.sent, self.last = (version, refined), Frame(image, refined, version, seconds)
        v.status.content = f"{'refined' if refined else 'moving'}: {W}x{H} in {seconds * 1000:.0f} ms"


def _check_host(host: str, port: int) -> None:
    """ReconError unless `host` is an address of this machine one can listen on (viser would otherwise try
    1000 ports and hang)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.bind((infos[0][4][0], 0))
    except OSError as e:
        raise ReconError(f"--host {host}: cannot listen on it ({e.strerror or e})") from None


class Viewer:
    """The viser server for one run: scene (frustums, points), GUI and one `_ClientView` per browser tab.

    `url` is where it listens; `stop()` ends it. `clients` maps viser client ids to their views (tests read
    `clients[id].last`); `controls` holds the GUI inputs by name (depth, points, train, test, step)."""

    def __init__(self, scene: ViewerScene, cfg: ViewConfig) -> None:
        import contextlib
        import io

        import viser

        self.scene, self.cfg = scene, cfg.validate()
        _check_host(cfg.host, cfg.port)
        self.renderer = SplatRenderer(cfg.device, scene.background)
        self.snapshot = len(scene.snapshots) - 1
        self.renderer.use(scene.snapshots[self.snapshot].params)
        self.show_depth = False
        self.seconds_per_pixel: float | None = None  # running estimate of the render time (adaptive moving size)
        self.clients: dict[int, _ClientView] = {}
        self.hidden: int | None = None  # the frustum hidden because a camera is inside it
        self._lock = threading.Lock()
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints its own address box; `url` is printed instead
            self.server = viser.ViserServer(host=cfg.host, port=cfg.port, verbose=False)
        try:
            self._add_scene()
            self._add_gui()
            self.server.on_client_connect(self._connect)
            self.server.on_client_disconnect(self._disconnect)
        except BaseException:
            self.server.stop()
            raise

    @property
    def url(self) -> str:
        host = self.server.get_host()
        host = "localhost" if host in ("0.0.0.0", "::") else host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.server.get_port()}"

    def stop(self) -> None:
        with self._lock:
            views = list(self.clients.values())
            self.clients.clear()
        for view in views:
            view.stopped.set()
            view.wake.set()
        self.server.stop()
        for view in views:
            view.thread.join(timeout=10)

    def redraw(self) -> None:
        """Draw every client again, refined (after a display setting changed)."""
        with self._lock:
            views = list(self.clients.values())
        for view in views:
            view.changed(moving=False)

    def look_through(self, client: viser.ClientHandle, i: int) -> None:
        """Put the client's camera at run camera i (its pose and vertical field of view)."""
        cams = self.scene.cams
        wxyz, position, fov = opencv_to_viser(cams.c2w[i], cams.K[i], cams.width, cams.height)
        with client.atomic():
            client.camera.fov = fov
            client.camera.position = position
            client.camera.wxyz = wxyz
        self._hide_frustum(i)

    def _hide_frustum(self, i: int | None) -> None:
        """Hide the frustum of camera i (the one looked through: it would frame the view), show the one hidden
        before; None shows it again."""
        with self._lock:
            before, self.hidden = self.hidden, i
        for j in (before, i):
            if j is not None:
                kind, handle = self.frustums[j]
                handle.visible = self.kinds_visible[kind] and j != i

    def _camera_moved(self, camera: viser.CameraHandle) -> None:
        """Hide the frustum a camera is in (closer than half a frustum to its centre: its thumbnail would cover
        the view), show it again when the camera leaves. Frustums are shared: the last camera moved decides."""
        ids = list(self.frustums)
        d = np.linalg.norm(self.scene.cams.c2w[ids, :3, 3] - camera.position, axis=1)
        k = int(np.argmin(d))
        inside = ids[k] if d[k] < 0.5 * self.frustum_scale else None
        if inside != self.hidden:
            self._hide_frustum(inside)

    def _connect(self, client: viser.ClientHandle) -> None:
        view = _ClientView(self, client)
        with self._lock:
            self.clients[client.client_id] = view
        first = (self.scene.train or self.scene.test)[0]
        own, connected = client.camera.position.copy(), time.monotonic()

        @client.camera.on_update
        def _(camera: viser.CameraHandle) -> None:
            # A page that just connected may report its own starting pose again after it was sent to the
            # first camera (it sends the pose it had before applying the jump; seen with viser 0.2.7 under
            # load): send it there again.
            if time.monotonic() - connected < START_S and np.allclose(camera.position, own, rtol=0, atol=1e-9):
                self.look_through(client, first)
            view.changed(moving=True)
            self._camera_moved(camera)

        self.look_through(client, first)
        view.thread.start()
        view.changed(moving=False)

    def _disconnect(self, client: viser.ClientHandle) -> None:
        with self._lock:
            view = self.clients.pop(client.client_id, None)
        if view is not None:
            view.stopped.set()
            view.wake.set()

    def _add_scene(self) -> None:
        """Frustums of the training and test cameras with thumbnails, the fused cloud (hidden), the up axis."""
        from splat.gaussians import scene_extent

        s, cams = self.scene, self.scene.cams
        shown = s.train + s.test
        extent = scene_extent(cams.c2w[shown]) if len(shown) > 1 else 1.0
        up = -cams.c2w[s.train or shown, :3, 1].mean(axis=0)  # OpenCV: -y is up in the image
        if np.linalg.norm(up) > 1e-6:
            self.server.scene.set_up_direction(tuple(up / np.linalg.norm(up)))
        self.frustum_scale = 0.06 * extent
        self.frustums: dict[int, tuple[str, Any]] = {}
        self.kinds_visible = {"train": True, "test": True}
        for kind, views, color in (("train", s.train, TRAIN_COLOR), ("test", s.test, TEST_COLOR)):
            for i in views:
                self.frustums[i] = (kind, self._add_frustum(kind, i, color, self.frustum_scale))
        self.points = None
        if s.points is not None and len(s.points):
            xyz, rgb = s.points.xyz, s.points.rgb
            if len(xyz) > MAX_POINTS:
                keep = np.random.default_rng(0).choice(len(xyz), MAX_POINTS, replace=False)
                xyz, rgb = xyz[keep], rgb[keep]
            self.points = self.server.scene.add_point_cloud(
                "/fused_points", xyz.astype(np.float32), rgb, point_size=0.004 * extent, visible=False
            )

    def _add_frustum(self, kind: str, i: int, color: tuple[int, int, int], scale: float) -> Any:
        cams = self.scene.cams
        wxyz, position, fov = opencv_to_viser(cams.c2w[i], cams.K[i], cams.width, cams.height)
        try:
            image: np.ndarray | None = thumbnail(self.scene.paths.root / cams.files[i], self.cfg.thumb_size)
        except ReconError as e:
            warn(f"view: no thumbnail for camera {i} ({e})")
            image = None
        handle = self.server.scene.add_camera_frustum(
            f"/cameras/{kind}/{i:05d}",
            fov=fov,
            aspect=cams.width / cams.height,
            scale=scale,
            color=color,
            image=image,
            wxyz=wxyz,
            position=position,
        )
        handle.on_click(lambda event: self.look_through(event.client, i))
        return handle

    def _add_gui(self) -> None:
        """Info, display toggles, the training-step slider (only with several training states), render status."""
        s, gui = self.scene, self.server.gui
        n = len(s.snapshots[self.snapshot].params["means"])
        gui.add_markdown(
            f"**{s.paths.root.name}**: {n:,} Gaussians, {self.renderer.backend} on {self.renderer.device}; "
            f"{len(s.train)} training (blue) and {len(s.test)} test (orange) cameras: click one to look through it."
        )
        depth = gui.add_checkbox("Depth", False, hint="Show the rendered depth (turbo map of 1/depth, near = red)")
        points = gui.add_checkbox(
            "Fused point cloud",
            False,
            disabled=self.points is None,
            hint="points/init.ply" if self.points is not None else "this run has no points/init.ply",
        )
        train = gui.add_checkbox("Training cameras", True)
        test = gui.add_checkbox("Test cameras", True, disabled=not s.test)
        self.controls: dict[str, Any] = {"depth": depth, "points": points, "train": train, "test": test}

        @depth.on_update
        def _(_: Any) -> None:
            self.show_depth = bool(depth.value)
            self.redraw()

        @points.on_update
        def _(_: Any) -> None:
            if self.points is not None:
                self.points.visible = bool(points.value)

        for box, kind in ((train, "train"), (test, "test")):
            box.on_update(self._camera_toggle(box, kind))
        if len(s.snapshots) > 1:
            self._add_step_slider()
        self.status = gui.add_markdown("waiting for a browser")

    def _camera_toggle(self, box: Any, kind: str) -> Any:
        def toggled(_: Any) -> None:
            self._show_cameras(kind, bool(box.value))

        return toggled

    def _show_cameras(self, kind: str, visible: bool) -> None:
        self.kinds_visible[kind] = visible
        for i, (k, handle) in self.frustums.items():
            if k == kind:
                handle.visible = visible and i != self.hidden

    def _add_step_slider(self) -> None:
        snaps = self.scene.snapshots
        marks = tuple((k, str(sn.step) if sn.step is not None else "final") for k, sn in enumerate(snaps))
        slider = self.server.gui.add_slider(
            "Training step", 0, len(snaps) - 1, 1, self.snapshot, marks=marks, hint="training states of this run"
        )
        label = self.server.gui.add_markdown(snaps[self.snapshot].label)
        self.controls["step"] = slider

        @slider.on_update
        def _(_: Any) -> None:
            k = int(slider.value)
            if k != self.snapshot:
                self.snapshot = k
                self.renderer.use(snaps[k].params)
                label.content = f"{snaps[k].label}: {len(snaps[k].params['means']):,} Gaussians"
                self.redraw()


def serve(run: Path, cfg: ViewConfig) -> int:
    """`recon view RUN`: load the run, serve it until Ctrl-C (exit status 0); prints the URL (stdout)."""
    cfg = cfg.validate()
    viewer = None
    try:
        viewer = Viewer(load_scene(run), cfg)
        print(f"viewer: {viewer.url}  (Ctrl-C to stop)", flush=True)
        if viewer.server.get_port() != cfg.port:
            console.print(f"port {cfg.port} was busy: listening on {viewer.server.get_port()} instead")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        if viewer is not None:
            viewer.stop()
