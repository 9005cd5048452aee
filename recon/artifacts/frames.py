"""RUN/frames.json (the frames index) and the one reader of frame images.

frames.json:
    {"source": str, "source_type": "video"|"images", "fps": float|null, "original_size": [W, H],
     "size": [W, H], "exif_focal_px": float|null, "composited_on": [r, g, b]|absent,
     "frames": [{"file": "frames/000000.png", "source_index": int, "timestamp": float|null,
                 "source_name": str (image folders)}]}
`source_index` is the index of the frame in decode order of the video (or in the sorted image list).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon.atomic import write_json
from recon.errors import ReconError


def read_rgb(path: str | Path, size: tuple[int, int] | None = None, resize: bool = True) -> np.ndarray:
    """One image file -> uint8 [H, W, 3] RGB.

    Args:
        path: the image file.
        size: (width, height) wanted, or None for the file's own size.
        resize: when the file's size differs from `size`, resample it (box filter when shrinking, bicubic when
            enlarging); False makes a size mismatch an error instead.
    Raises:
        ReconError: unreadable file, or a size mismatch with resize=False.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except Exception as e:  # PIL raises many unrelated types for unreadable files
        raise ReconError(f"cannot read frame {path} ({e})") from e
    if size is not None and rgb.size != tuple(size):
        if not resize:
            raise ReconError(f"frame {path} is {rgb.size[0]}x{rgb.size[1]} but the run says {size[0]}x{size[1]}")
        shrinking = rgb.size[0] > size[0]
        rgb = rgb.resize((size[0], size[1]), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def read_rgb_stack(root: Path, files: list[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames `files` (relative to `root`) -> uint8 [T, H, W, 3]; all must share `size` (or the first's size)."""
    out = []
    resize = size is not None  # a size given: resample to it; none given: every frame must match the first
    for f in files:
        img = read_rgb(Path(root) / f, size, resize=resize)
        if size is None:
            size = (img.shape[1], img.shape[0])
        elif img.shape[:2] != (size[1], size[0]):
            raise ReconError(f"frame {Path(root) / f} is {img.shape[1]}x{img.shape[0]}, expected {size[0]}x{size[1]}")
        out.append(img)
    if not out:
        return np.zeros((0, 1, 1, 3), np.uint8)
    return np.stack(out)


@dataclass
class FramesIndex:
    """What the frames stage stored: where the frames came from and one entry per stored frame."""

    source: str
    source_type: str
    size: tuple[int, int]
    frames: list[dict[str, Any]]
    original_size: tuple[int, int] | None = None
    fps: float | None = None
    exif_focal_px: float | None = None
    composited_on: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("source", "source_type", "size", "frames", "original_size", "fps", "exif_focal_px", "composited_on")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def files(self) -> list[str]:
        return [str(f["file"]) for f in self.frames]

    def by_source_index(self) -> dict[int, dict[str, Any]]:
        return {int(f["source_index"]): f for f in self.frames}

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d.update(
            source=self.source,
            source_type=self.source_type,
            fps=self.fps,
            original_size=list(self.original_size) if self.original_size else None,
            size=list(self.size),
            exif_focal_px=self.exif_focal_px,
            frames=self.frames,
        )
        if self.composited_on is not None:
            d["composited_on"] = list(self.composited_on)
        return d

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> FramesIndex:
        path = Path(path)
        if not path.exists():
            raise ReconError(f"{path} not found: run the frames stage first (recon frames)")
        try:
            d = json.loads(path.read_text())
            frames = [dict(f) for f in d["frames"]]
            for i, f in enumerate(frames):
                f["file"] = str(f["file"])
                f["source_index"] = int(f.get("source_index", i))
            size = tuple(int(v) for v in d["size"])
            orig = d.get("original_size")
            comp = d.get("composited_on")
            out = cls(
                source=str(d.get("source", "")),
                source_type=str(d.get("source_type", "")),
                size=(size[0], size[1]),
                frames=frames,
                original_size=(int(orig[0]), int(orig[1])) if orig else None,
                fps=float(d["fps"]) if d.get("fps") is not None else None,
                exif_focal_px=float(d["exif_focal_px"]) if d.get("exif_focal_px") is not None else None,
                composited_on=(float(comp[0]), float(comp[1]), float(comp[2])) if comp is not None else None,
                extra={k: v for k, v in d.items() if k not in cls._KNOWN},
            )
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            raise ReconError(f"{path} is not a valid frames.json ({e}); re-run the frames stage") from e
        if min(out.size) <= 0:
            raise ReconError(f"{path}: frame size {out.size} is not positive; re-run the frames stage")
        return out
