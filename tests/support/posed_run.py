"""Build a run directory from a posed image set with known cameras (tests and benchmarks).

Writes RUN/frames/*.png, RUN/frames.json, RUN/cameras.json (OpenCV c2w, K at the stored resolution)
and RUN/split.json, so the training stage can run without the frames/poses stages. Two sources:
the NeRF-synthetic layout (transforms_train.json, OpenGL axes, RGBA composited on a background)
and an RGB-D sequence with per-frame c2w (7-Scenes layout), which also yields a GT depth npz.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from depth.geometry import opengl_to_opencv
from recon.artifacts import CameraSet, FramesIndex, RunPaths, Split
from recon.atomic import atomic_path, save_npz
from recon.errors import ReconError


def _save_frame(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def composite_rgba(rgba: np.ndarray, background: tuple[float, float, float]) -> np.ndarray:
    """uint8 [H,W,4] straight-alpha RGBA over a constant background (RGB in [0,1]) -> uint8 [H,W,3]."""
    rgba = np.asarray(rgba, np.float32) / 255.0
    a = rgba[..., 3:4]
    rgb = rgba[..., :3] * a + np.asarray(background, np.float32) * (1.0 - a)
    return (np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def _read_rgba(path: Path, size: int) -> np.ndarray:
    """uint8 [size, size, 4] RGBA of a dataset image, resized in premultiplied alpha (no dark fringes) as staged."""
    from PIL import Image

    img = Image.open(path).convert("RGBA")
    if img.size == (size, size):
        return np.asarray(img)
    arr = np.asarray(img, np.float32)
    arr[..., :3] *= arr[..., 3:4] / 255.0
    small = np.stack(
        [np.asarray(Image.fromarray(arr[..., c]).resize((size, size), Image.Resampling.BOX)) for c in range(4)], -1
    )
    a = np.maximum(small[..., 3:4], 1e-6)
    small[..., :3] = np.where(small[..., 3:4] > 0, small[..., :3] * 255.0 / a, 0.0)
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


def build_nerf_synthetic_run(
    src: Path,
    root: Path,
    train: list[int],
    test: list[int],
    size: int = 100,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> RunPaths:
    """A run from a NeRF-synthetic scene (transforms_train.json + RGBA PNGs).

    Args:
        src: dataset folder. root: run directory to create.
        train, test: indices into frames[] of transforms_train.json.
        size: stored square frame size in pixels.
        background: RGB in [0,1] the RGBA images are composited on (white is NeRF practice).
    Returns:
        RunPaths of the run; its frames are train+test in dataset order, split.json indexes them.
    """

    meta_path = Path(src) / "transforms_train.json"
    if not meta_path.exists():
        raise ReconError(f"{meta_path} not found")
    meta = json.loads(meta_path.read_text())
    frames = meta["frames"]
    chosen = sorted(set(train) | set(test))
    paths = RunPaths(Path(root))
    files, K, c2w = [], [], []
    f = 0.5 * size / np.tan(0.5 * float(meta["camera_angle_x"]))
    for j, idx in enumerate(chosen):
        fr = frames[idx]
        rgba = _read_rgba(Path(src) / (fr["file_path"].lstrip("./") + ".png"), size)
        name = f"frames/{j:06d}.png"
        _save_frame(paths.root / name, composite_rgba(rgba, background))
        files.append(name)
        K.append([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
        c2w.append(opengl_to_opencv(np.array(fr["transform_matrix"], np.float64)))
    cams = CameraSet(
        width=size,
        height=size,
        files=files,
        source_index=chosen,
        K=np.array(K, np.float64),
        c2w=np.array(c2w, np.float64),
        registered=np.ones(len(chosen), bool),
        sfm={"source": "nerf_synthetic transforms_train.json (given poses)"},
    )
    cams.save(paths.cameras_json)
    # As the frames stage writes it for transparent inputs: training renders on the composite colour.
    FramesIndex(
        source=str(src),
        source_type="images",
        size=(size, size),
        frames=[
            {
                "file": n,
                "source_index": int(i),
                "timestamp": None,
                "source_name": Path(frames[i]["file_path"]).name + ".png",
            }
            for n, i in zip(files, chosen)
        ],
        composited_on=(float(background[0]), float(background[1]), float(background[2])),
        extra={"dropped_duplicates": 0},
    ).save(paths.frames_json)
    pos = {idx: j for j, idx in enumerate(chosen)}
    tr = [pos[i] for i in train]
    Split(train=tr, test=[pos[i] for i in test], prior=tr, protocol="given").save(paths.split_json)
    return paths


def build_rgbd_run(
    frames: list[tuple[Path, np.ndarray, Path | None]],
    K: np.ndarray,
    root: Path,
    train: list[int],
    test: list[int],
    size: tuple[int, int] | None = None,
    depth_scale: float = 1000.0,
    depth_invalid: tuple[int, ...] = (0, 65535),
) -> tuple[RunPaths, Path | None]:
    """A run from posed RGB(-D) frames: (colour image path, c2w [4,4] OpenCV, depth PNG path | None).

    Args:
        K: [3,3] intrinsics of the colour images at their own resolution (pixels).
        size: (width, height) to store the frames at (None = as is); K is scaled to match.
        depth_scale: depth PNG units per scene unit (1000 = millimetres -> metres).
    Returns:
        (RunPaths, path of RUN/gt_depth.npz with key `depth` [T,H,W] float32 or None without depth).
    """
    from PIL import Image

    paths = RunPaths(Path(root))
    files, c2ws, depths = [], [], []
    W0 = H0 = None
    for j, (img_path, c2w, depth_path) in enumerate(frames):
        img = Image.open(img_path).convert("RGB")
        W0, H0 = img.size
        W, H = size or (W0, H0)
        if img.size != (W, H):
            img = img.resize((W, H), Image.BOX)
        name = f"frames/{j:06d}.png"
        _save_frame(paths.root / name, np.asarray(img))
        files.append(name)
        c2ws.append(np.asarray(c2w, np.float64))
        if depth_path is not None:
            d = np.asarray(Image.open(depth_path)).astype(np.float64)
            bad = np.isin(d, depth_invalid)
            d = np.where(bad, 0.0, d / depth_scale).astype(np.float32)
            if d.shape != (H, W):
                ys = np.minimum(((np.arange(H) + 0.5) * d.shape[0] / H).astype(int), d.shape[0] - 1)
                xs = np.minimum(((np.arange(W) + 0.5) * d.shape[1] / W).astype(int), d.shape[1] - 1)
                d = d[ys][:, xs]
            depths.append(d)
    W, H = size or (W0, H0)
    Ks = np.repeat(np.asarray(K, np.float64)[None], len(files), axis=0)
    Ks[:, 0, :] *= W / W0
    Ks[:, 1, :] *= H / H0
    cams = CameraSet(
        width=W,
        height=H,
        files=files,
        source_index=list(range(len(files))),
        K=Ks,
        c2w=np.array(c2ws),
        registered=np.ones(len(files), bool),
        sfm={"source": "given poses"},
    )
    cams.save(paths.cameras_json)
    Split(train=list(train), test=list(test), prior=list(train), protocol="given").save(paths.split_json)
    gt = None
    if depths and len(depths) == len(files):
        gt = paths.root / "gt_depth.npz"
        save_npz(gt, depth=np.stack(depths))
    return paths, gt
