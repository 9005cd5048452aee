"""Decoding the user's input: stream a video (PyAV) or read an image folder, frame by frame, as PIL images.

Pure helpers for the frames stage (recon.stages.frames), which owns the run directory: they take the input
path and sampling settings and yield images; they know nothing of RUN/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from recon.errors import ReconError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

COMPOSITE_BACKGROUND = (1.0, 1.0, 1.0)
"""Colour transparent input pixels are composited on (white: the NeRF-synthetic convention). frames.json
records it as `composited_on` when any frame had transparency; training then renders on it."""

Selector = Callable[[int, "float | None"], list[int]]
"""(number of source frames, source fps or None) -> source indices to keep, increasing."""


@dataclass
class FrameSource:
    """An opened input: what it is, and an iterator over the selected frames.

    Attributes:
        source_type: "video" or "images".
        fps: source frame rate (videos whose container says), else None.
        original_size: (W, H) of the source frames in pixels.
        exif_focal_px: focal length in source pixels from EXIF (image folders), else None.
        count: how many frames `frames` yields.
        frames: iterator of (source index, timestamp in seconds or None, PIL image).
        names: source file name of each yielded frame (image folders), else None.
    """

    source_type: str
    fps: float | None
    original_size: tuple[int, int]
    exif_focal_px: float | None
    count: int
    frames: Iterator[tuple[int, float | None, Image.Image]]
    names: list[str] | None = field(default=None)


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def list_images(folder: Path) -> list[Path]:
    """Image files of `folder` in natural order (r_2.png before r_10.png)."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()), key=_natural_key
    )


def target_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(W, H) after shrinking so the long side is <= max_size (never enlarges; 0 = unchanged)."""
    if max_size <= 0 or max(width, height) <= max_size:
        return width, height
    s = max_size / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def select_indices(
    num_frames: int, fps: float | None, stride: int = 1, target_fps: float = 0.0, max_frames: int = 0
) -> list[int]:
    """Source frame indices kept by stride / target fps / max frames, in increasing order."""
    step = max(1, int(stride))
    if target_fps and target_fps > 0 and fps:
        step *= max(1, int(round(fps / target_fps)))
    idx = list(range(0, num_frames, step))
    if max_frames and max_frames > 0 and len(idx) > max_frames:
        pos = np.round(np.linspace(0, len(idx) - 1, max_frames)).astype(int)
        idx = [idx[p] for p in pos]
    return idx


def thumbnail(img: Image.Image) -> np.ndarray:
    """float32 [64, 64] grey thumbnail for the near-duplicate test."""
    return np.asarray(img.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)


def to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    """(RGB image, whether it had transparency): transparent pixels composited on COMPOSITE_BACKGROUND."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, tuple(int(round(255 * c)) for c in COMPOSITE_BACKGROUND) + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB"), True
    return img.convert("RGB"), False


def resize_to(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` at (W, H): Lanczos when shrinking, bicubic when enlarging; unchanged when already that size."""
    if img.size == tuple(size):
        return img
    return img.resize(size, Image.Resampling.LANCZOS if img.size[0] > size[0] else Image.Resampling.BICUBIC)


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


def open_input(path: Path, select: Selector) -> FrameSource:
    """A video file or an image folder (see probe_input), sampled by `select`."""
    return open_image_folder(path, select) if path.is_dir() else open_video(path, select)


def _open_container(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.InvalidDataError, av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ReconError(f"{path} is not a readable video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise ReconError(f"{path} has no video stream")
    return container


def _count_frames(container, stream) -> int:
    num = int(stream.frames or 0)
    if num <= 0:  # container does not say: count packets (no decoding)
        num = sum(1 for p in container.demux(stream) if p.size > 0)
        container.seek(0)
    return num


def open_video(path: Path, select: Selector) -> FrameSource:
    """Stream-decode a video; only the frames `select` keeps are converted to images."""
    container = _open_container(path)
    stream = container.streams.video[0]
    fps = float(stream.average_rate) if stream.average_rate else None
    num = _count_frames(container, stream)
    if num < 2:
        container.close()
        raise ReconError(
            f"{path} has {num} frame(s); a reconstruction needs a video with camera motion (at least 2 frames)"
        )
    wanted = select(num, fps)
    size = (stream.codec_context.width, stream.codec_context.height)
    return FrameSource("video", fps, size, None, len(wanted), _decode(path, container, stream, wanted, num))


def _decode(
    path: Path, container, stream, wanted: list[int], num: int
) -> Iterator[tuple[int, float | None, Image.Image]]:
    import av

    wanted_set, last, i = set(wanted), wanted[-1], -1
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


def _open_image(p: Path) -> Image.Image:
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ReconError(f"image {p} cannot be read ({type(e).__name__}): remove or replace it") from e
    return ImageOps.exif_transpose(img)


def open_image_folder(folder: Path, select: Selector) -> FrameSource:
    """Read an image folder in natural order; every image is brought to the first kept image's size."""
    files = list_images(folder)
    if len(files) < 2:
        raise ReconError(
            f"{folder} holds {len(files)} image(s) ({', '.join(sorted(IMAGE_EXTENSIONS))}); at least 2 are needed"
        )
    wanted = select(len(files), None)
    first = _open_image(files[wanted[0]])
    size = (first.size[0], first.size[1])

    def gen() -> Iterator[tuple[int, float | None, Image.Image]]:
        for i in wanted:
            img = _open_image(files[i])
            if img.size != size:
                w0, h0 = size
                if abs(img.size[0] / img.size[1] - w0 / h0) > 0.01:
                    raise ReconError(
                        f"image {files[i].name} is {img.size[0]}x{img.size[1]} but {files[wanted[0]].name} is "
                        f"{w0}x{h0}: all images must share one aspect ratio"
                    )
                img = img.resize(size, Image.Resampling.LANCZOS)
            yield i, None, img

    names = [files[i].name for i in wanted]
    return FrameSource("images", None, size, _exif_focal_px(first), len(wanted), gen(), names)


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    options: dict[str, str] | None = None,
    pad: Literal["edge", "black"] = "edge",
) -> None:
    """Encode uint8 [T, H, W, 3] RGB frames as an mp4 at `path`, atomically (recon.atomic).

    H.264 (libx264, with `options` such as {"crf": "20"}) where PyAV has it, else MPEG-4 part 2. yuv420p needs
    even sizes: an odd height or width gets one more row / column, copied from the edge or black (`pad`).
    """
    from fractions import Fraction

    import av

    from recon.atomic import atomic_path

    if len(frames) == 0:
        raise ReconError(f"no frames to write to {path}")
    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2
    codec: Literal["libx264", "mpeg4"] = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            if codec == "libx264" and options:
                stream.options = dict(options)
            for f in frames:
                f = np.asarray(f, np.uint8)
                if f.shape[:2] != (H, W):
                    widths = ((0, H - h), (0, W - w), (0, 0))
                    f = np.pad(f, widths, mode="edge") if pad == "edge" else np.pad(f, widths)
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
