"""Frames stage: stream-decode a video (PyAV) or read an image folder, sample, de-duplicate, resize.

Writes RUN/frames/NNNNNN.png and RUN/frames.json:
    {"source": str, "source_type": "video"|"images", "fps": float|null, "original_size": [W, H],
     "size": [W, H], "exif_focal_px": float|null,
     "frames": [{"file": "frames/000000.png", "source_index": int, "timestamp": float|null}]}
`source_index` is the index of the frame in decode order of the video (or in the sorted image list).
The whole frames folder is written to a temporary directory and renamed, so it is either complete or absent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from recon.atomic import atomic_dir, write_json
from recon.console import debug, progress
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class FramesConfig:
    stride: int = 1
    """Keep every N-th frame of the video (applied before --max-frames)."""
    max_frames: int = 0
    """Keep at most N frames, spread evenly over the (strided) video; 0 = no limit."""
    target_fps: float = 0.0
    """Sample the video at about this rate (frames per second); 0 = the source rate."""
    max_size: int = 0
    """Resize so that the long side is at most this many pixels; 0 = keep the source size."""
    dedup: bool = True
    """Drop near-duplicate frames (camera not moving) with a cheap motion test."""
    dedup_threshold: float = 1.0
    """Mean absolute grey-level difference (0-255, on a 64-px thumbnail) below which a frame counts as a duplicate."""


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def list_images(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()), key=_natural_key
    )
    return files


def target_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(W, H) after shrinking so the long side is <= max_size (never enlarges; 0 = unchanged)."""
    if max_size <= 0 or max(width, height) <= max_size:
        return width, height
    s = max_size / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def select_indices(num_frames: int, fps: float | None, cfg: FramesConfig) -> list[int]:
    """Source frame indices kept by stride / target fps / max frames, in increasing order."""
    step = max(1, int(cfg.stride))
    if cfg.target_fps and cfg.target_fps > 0 and fps:
        step *= max(1, int(round(fps / cfg.target_fps)))
    idx = list(range(0, num_frames, step))
    if cfg.max_frames and cfg.max_frames > 0 and len(idx) > cfg.max_frames:
        pos = np.round(np.linspace(0, len(idx) - 1, cfg.max_frames)).astype(int)
        idx = [idx[p] for p in pos]
    return idx


def _thumb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L").resize((64, 64), Image.BILINEAR), dtype=np.float32)


COMPOSITE_BACKGROUND = (1.0, 1.0, 1.0)
"""Colour transparent input pixels are composited on (white: the NeRF-synthetic convention). frames.json
records it as `composited_on` when any frame had transparency; training then renders on it."""


def _to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    """(RGB image, whether it had transparency): transparent pixels composited on COMPOSITE_BACKGROUND."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, tuple(int(round(255 * c)) for c in COMPOSITE_BACKGROUND) + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB"), True
    return img.convert("RGB"), False


def _exif_focal_px(img: Image.Image) -> float | None:
    """Focal length in pixels of this image from EXIF FocalLengthIn35mmFilm, if present."""
    try:
        exif = img.getexif()
        f35 = exif.get_ifd(0x8769).get(0xA405) or exif.get(0xA405)
    except Exception:
        return None
    if not f35:
        return None
    return float(f35) / 36.0 * max(img.size)


def _video_frames(path: Path, cfg: FramesConfig) -> tuple[dict, Iterator[tuple[int, float | None, Image.Image]], int]:
    import av

    try:
        container = av.open(str(path))
    except (av.error.InvalidDataError, av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ReconError(f"{path} is not a readable video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise ReconError(f"{path} has no video stream")
    stream = container.streams.video[0]
    fps = float(stream.average_rate) if stream.average_rate else None
    num = int(stream.frames or 0)
    if num <= 0:  # container does not say: count packets (no decoding)
        num = sum(1 for p in container.demux(stream) if p.size > 0)
        container.seek(0)
    width, height = stream.codec_context.width, stream.codec_context.height
    if num < 2:
        container.close()
        raise ReconError(
            f"{path} has {num} frame(s); a reconstruction needs a video with camera motion (at least 2 frames)"
        )
    wanted = select_indices(num, fps, cfg)
    meta = {"source_type": "video", "fps": fps, "original_size": [width, height], "exif_focal_px": None}

    def gen() -> Iterator[tuple[int, float | None, Image.Image]]:
        wanted_set = set(wanted)
        last = wanted[-1]
        i = -1
        try:
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                i += 1
                if i in wanted_set:
                    yield i, (float(frame.time) if frame.time is not None else None), frame.to_image()
                if i >= last:
                    break
        except av.error.FFmpegError as e:
            raise ReconError(
                f"{path} could not be decoded after frame {i} ({e}); the file may be truncated or corrupt"
            ) from e
        finally:
            container.close()
        decoded = i + 1
        if decoded < last + 1 and decoded < 0.9 * num:
            raise ReconError(
                f"{path} ended after {decoded} of the {num} frames its header announces; the file is truncated or corrupt"
            )

    return meta, gen(), len(wanted)


def _image_frames(folder: Path, cfg: FramesConfig) -> tuple[dict, Iterator[tuple[int, float | None, Image.Image]], int]:
    files = list_images(folder)
    if len(files) < 2:
        raise ReconError(
            f"{folder} holds {len(files)} image(s) ({', '.join(sorted(IMAGE_EXTENSIONS))}); at least 2 are needed"
        )
    wanted = select_indices(len(files), None, cfg)

    def open_image(p: Path) -> Image.Image:
        try:
            img = Image.open(p)
            img.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ReconError(f"image {p} cannot be read ({type(e).__name__}): remove or replace it") from e
        return img

    first = ImageOps.exif_transpose(open_image(files[wanted[0]]))
    meta = {
        "source_type": "images",
        "fps": None,
        "original_size": list(first.size),
        "exif_focal_px": _exif_focal_px(first),
    }

    def gen() -> Iterator[tuple[int, float | None, Image.Image]]:
        for i in wanted:
            img = ImageOps.exif_transpose(open_image(files[i]))
            if img.size != tuple(meta["original_size"]):
                w0, h0 = meta["original_size"]
                if abs(img.size[0] / img.size[1] - w0 / h0) > 0.01:
                    raise ReconError(
                        f"image {files[i].name} is {img.size[0]}x{img.size[1]} but {files[wanted[0]].name} is {w0}x{h0}: all images must share one aspect ratio"
                    )
                img = img.resize((w0, h0), Image.LANCZOS)
            yield i, None, img

    meta["names"] = [files[i].name for i in wanted]
    return meta, gen(), len(wanted)


def probe_input(input_path: str | Path) -> Path:
    """Check that INPUT exists and is a video file or an image folder; returns it resolved."""
    p = Path(input_path).expanduser()
    if not p.exists():
        raise ReconError(f"input {p} does not exist")
    if p.is_dir():
        return p.resolve()
    if p.stat().st_size == 0:
        raise ReconError(f"input {p} is an empty file")
    return p.resolve()


def extract_frames(input_path: str | Path, paths: RunPaths, cfg: FramesConfig) -> dict:
    """Run the frames stage. Returns a summary dict (frames kept, size, source fps...)."""
    src = probe_input(input_path)
    meta, frames, total = (_image_frames if src.is_dir() else _video_frames)(src, cfg)
    W0, H0 = meta["original_size"]
    W, H = target_size(W0, H0, cfg.max_size)
    names = meta.pop("names", None)
    kept: list[dict] = []
    dropped = 0
    last_thumb = None
    composited = False
    with atomic_dir(paths.frames_dir) as tmp, progress() as bar:
        task = bar.add_task("frames", total=total, status="")
        for i, ts, img in frames:
            bar.advance(task)
            img, had_alpha = _to_rgb(img)
            composited |= had_alpha
            if img.size != (W, H):
                img = img.resize((W, H), Image.LANCZOS if (img.size[0] > W) else Image.BICUBIC)
            th = _thumb(img)
            if cfg.dedup and last_thumb is not None and float(np.abs(th - last_thumb).mean()) < cfg.dedup_threshold:
                dropped += 1
                debug(f"frame {i}: near-duplicate of the previous kept frame, dropped")
                continue
            last_thumb = th
            name = f"{len(kept):06d}.png"
            img.save(tmp / name, compress_level=1)
            entry = {"file": f"frames/{name}", "source_index": int(i), "timestamp": ts}
            if names is not None:
                entry["source_name"] = names[len(kept) + dropped]
            kept.append(entry)
            bar.update(task, status=f"kept {len(kept)}")
        if len(kept) < 2:
            raise ReconError(
                f"{src}: only {len(kept)} distinct frame(s) after dropping {dropped} near-duplicates; the camera does not move. "
                "Record with more camera motion, or pass known poses with --poses"
            )
    info = {"source": str(src), **meta, "size": [W, H], "frames": kept, "dropped_duplicates": dropped}
    if composited:
        info["composited_on"] = list(COMPOSITE_BACKGROUND)
    write_json(paths.frames_json, info)
    return {
        "frames": len(kept),
        "size": f"{W}x{H}",
        "source": src.name,
        "dropped near-duplicates": dropped,
        "source fps": (round(meta["fps"], 3) if meta.get("fps") else "-"),
    }


def load_frames_json(paths: RunPaths) -> dict:
    import json

    if not paths.frames_json.exists():
        raise ReconError(f"{paths.frames_json} not found: run the frames stage first (recon frames)")
    return json.loads(paths.frames_json.read_text())


def read_frame(paths: RunPaths, file: str) -> np.ndarray:
    """Read one stored frame as uint8 [H, W, 3] RGB."""
    return np.asarray(Image.open(paths.root / file).convert("RGB"))


def read_frames(paths: RunPaths, files: list[str]) -> np.ndarray:
    """Read stored frames as uint8 [T, H, W, 3] RGB."""
    return np.stack([read_frame(paths, f) for f in files])
