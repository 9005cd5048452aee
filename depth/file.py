"""Depth backend `file`: depth or disparity maps the user already has (sensor depth, another model).

Accepted inputs (`FileDepthConfig.path`):
  * a folder with one file per frame: 16-bit (or 8-bit) PNG, .npy, .npz, float TIFF;
  * one .npy / .npz holding a [T,H,W] array (T = number of frames, in frame order; an .npz may carry
    a "files" array of names to match by name).

Values: integer images / arrays are divided by `scale` (16-bit PNG in millimetres -> metres with the
default 1000); float arrays are taken as they are. Invalid pixels become 0: value 0, and 65535 in
16-bit data (the 7-Scenes / Kinect convention); negative depths too. NaN or inf in a file is an error
(say what it means instead: write 0 for "no value").

Matching files to frames (`match`):
  * "name": a frame "frames/000012.png" takes the file whose name before the first dot is "000012";
    failing that, the file whose name carries the same number (e.g. "frame-000012.depth.png").
    Extra files are ignored; a frame without a file is an error.
  * "order": the sorted files are taken in frame order; the counts must be equal.

Output: float32 [T,H,W] at the frame size, resized with nearest neighbour for depth (no invented
depths across edges) and validity-weighted area / bilinear for disparity. `FileBackend` returns depth as
metric disparity 1/depth ("metric_disparity": the alignment fits a scale only) and disparity as relative
disparity ("relative_disparity": scale and shift).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from depth.checks import choice, number, path_exists
from depth.errors import DepthError
from depth.result import KIND_METRIC, KIND_RELATIVE, DepthFrames, DepthResult, depth_to_disparity

Kind = Literal["depth", "disparity"]

DEPTH_FILE_SUFFIXES = (".png", ".npy", ".npz", ".tif", ".tiff")


@dataclass
class FileDepthConfig:
    path: Path
    """Folder of per-frame depth files, or one .npy/.npz with a [T,H,W] array."""
    kind: Kind = "depth"
    """What the values are: z-depth ("depth") or inverse depth / relative disparity ("disparity")."""
    scale: float = 1000.0
    """Integer data are divided by this (16-bit PNG millimetres -> metres); float data are not."""
    match: Literal["name", "order"] = "name"
    """How files are paired with frames (see module doc)."""

    def validate(self, where: str = "depth.file") -> FileDepthConfig:
        """DepthError unless the settings can work (the path exists; kind, match, scale in range)."""
        if not isinstance(self.path, (str, Path)) or not str(self.path):
            raise DepthError(f"{where}.path must be a folder or .npy/.npz file, got {self.path!r}")
        if not path_exists(self.path):
            raise DepthError(f"depth path {self.path} not found")
        choice(self.kind, f"{where}.kind", DepthError, ("depth", "disparity"))
        choice(self.match, f"{where}.match", DepthError, ("name", "order"))
        number(self.scale, f"{where}.scale", DepthError, lo=0, hi=1e9, lo_open=True)
        return self


def _key(name: str) -> str:
    return Path(name).name.split(".")[0]


def _number(name: str) -> int | None:
    digits = re.findall(r"\d+", Path(name).name.split(".")[0])
    return int(digits[-1]) if digits else None


def _read_array(path: Path) -> np.ndarray:
    """One depth file -> 2-D array of its stored dtype (may be integer or float)."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = next(
                    (k for k in ("depth", "disparity", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None
                )
                if key is None:
                    raise DepthError(
                        f"depth file {path} holds several arrays {keys}; name the map 'depth' or 'disparity'"
                    )
                arr = z[key]
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
                    raise DepthError(
                        f"depth file {path} is a {im.mode} colour image; expected a single-channel depth map"
                    )
                arr = np.array(im)
    except DepthError:
        raise
    except Exception as e:  # unreadable / truncated / not an image
        raise DepthError(f"cannot read depth file {path} ({type(e).__name__}: {e})") from e
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise DepthError(f"depth file {path} has shape {arr.shape}; expected one [H,W] map")
    return arr


def _to_float(arr: np.ndarray, scale: float, kind: Kind, what: str) -> np.ndarray:
    """Stored values -> float32 in units with 0 = invalid (see module doc)."""
    if arr.dtype.kind in "iub":
        invalid = arr == 0
        if arr.dtype == np.uint16:
            invalid |= arr == 65535
        out = arr.astype(np.float64) / float(scale)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            bad = int((~np.isfinite(arr)).sum())
            raise DepthError(f"{what} has {bad} NaN/inf values; store invalid pixels as 0")
        out = arr.astype(np.float64)
        invalid = out == 0
    else:
        raise DepthError(f"{what} has unsupported dtype {arr.dtype}")
    if kind == "depth":
        invalid |= out < 0
    out[invalid] = 0.0
    return out.astype(np.float32)


def _resize(arr: np.ndarray, size: tuple[int, int], kind: Kind) -> np.ndarray:
    """[H0,W0] float32 (0 invalid) -> [H,W]: nearest for depth; for disparity validity-weighted area
    averaging (shrink) or bilinear (enlarge), valid where over half the weight is valid."""
    W, H = size
    H0, W0 = arr.shape
    if (H0, W0) == (H, W):
        return arr
    if kind == "depth":
        ys = np.minimum(((np.arange(H) + 0.5) * H0 / H).astype(np.int64), H0 - 1)
        xs = np.minimum(((np.arange(W) + 0.5) * W0 / W).astype(np.int64), W0 - 1)
        return arr[ys[:, None], xs[None, :]]
    import torch
    import torch.nn.functional as F

    valid = torch.from_numpy((arr != 0).astype(np.float32))[None, None]
    val = torch.from_numpy(arr)[None, None] * valid
    # area averaging when shrinking (a box over the source pixels), bilinear when enlarging
    kw = {"mode": "area"} if (H <= H0 and W <= W0) else {"mode": "bilinear", "align_corners": False}
    v = F.interpolate(val, size=(H, W), **kw)
    w = F.interpolate(valid, size=(H, W), **kw)
    out = torch.where(w > 0.5, v / w.clamp_min(1e-6), torch.zeros_like(v))
    return out[0, 0].numpy().astype(np.float32)


def _check_aspect(shape: tuple[int, ...], size: tuple[int, int], what: str) -> None:
    H0, W0 = shape
    W, H = size
    if abs(W0 / H0 - W / H) > 0.01 * (W / H):
        raise DepthError(
            f"{what} is {W0}x{H0} but the frames are {W}x{H} (a different aspect ratio); "
            f"expected {W}x{H} or a multiple of it"
        )


def _list_files(folder: Path) -> list[Path]:
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in DEPTH_FILE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise DepthError(f"depth folder {folder} has no depth files ({', '.join(DEPTH_FILE_SUFFIXES)})")
    return files


def _match_names(frame_files: list[str], names: list[str], where: str) -> list[int]:
    """Index into `names` for each frame (exact key, then same number); DepthError if one is missing."""
    by_key: dict[str, int] = {}
    by_num: dict[int, list[int]] = {}
    clash: dict[str, str] = {}
    for i, n in enumerate(names):
        if _key(n) in by_key:
            clash.setdefault(_key(n), f"{names[by_key[_key(n)]]} and {n}")
        by_key.setdefault(_key(n), i)
        num = _number(n)
        if num is not None:
            by_num.setdefault(num, []).append(i)
    out, missing = [], []
    for f in frame_files:
        k = _key(f)
        if k in clash:
            raise DepthError(f"{where}: two depth files for frame {Path(f).name} ({clash[k]}); keep one per frame")
        if k in by_key:
            out.append(by_key[k])
            continue
        num = _number(f)
        cands = by_num.get(num, []) if num is not None else []
        if len(cands) == 1:
            out.append(cands[0])
        elif len(cands) > 1:
            two = f"{names[cands[0]]} and {names[cands[1]]}"
            raise DepthError(f"{where}: two depth files for frame {Path(f).name} ({two}); keep one per frame")
        else:
            missing.append(Path(f).name)
    if missing:
        raise DepthError(
            f"{where}: no depth file for {len(missing)} of {len(frame_files)} frames (first: {missing[0]}); "
            f"expected one file per frame named like the frame, or use match='order'"
        )
    return out


def _folder_maps(cfg: FileDepthConfig, path: Path, frame_files: list[str]) -> list[tuple[np.ndarray, str]]:
    """One (stored 2-D array, description) per frame from a folder of per-frame files."""
    files = _list_files(path)
    T = len(frame_files)
    if cfg.match == "order":
        if len(files) != T:
            raise DepthError(f"depth folder {path}: expected {T} depth files (one per frame), got {len(files)}")
        chosen = files
    else:
        chosen = [files[i] for i in _match_names(frame_files, [f.name for f in files], f"depth folder {path}")]
    return [(_read_array(f), f"depth file {f}") for f in chosen]


def _read_stack(cfg: FileDepthConfig, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The [T,H,W] array of one .npy/.npz file and the frame names an .npz may carry ("files")."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as z:
            keys = [k for k in z.keys() if k != "files"]
            key = next(
                (k for k in (cfg.kind, "depth", "disparity", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None
            )
            if key is None:
                raise DepthError(f"{path} holds several arrays {keys}; name the [T,H,W] map 'depth' or 'disparity'")
            names = [str(n) for n in z["files"]] if "files" in z.keys() else None
            return z[key], names
    except DepthError:
        raise
    except Exception as e:
        raise DepthError(f"cannot read depth file {path} ({type(e).__name__}: {e})") from e


def _stack_maps(cfg: FileDepthConfig, path: Path, frame_files: list[str]) -> list[tuple[np.ndarray, str]]:
    """One (stored 2-D array, description) per frame from one .npy/.npz holding a [T,H,W] array."""
    T = len(frame_files)
    stack, names = _read_stack(cfg, path)
    if stack.ndim == 2 and T == 1:
        stack = stack[None]
    if stack.ndim == 4 and stack.shape[-1] == 1:
        stack = stack[..., 0]
    if stack.ndim != 3:
        raise DepthError(f"{path} has shape {stack.shape}; expected [T,H,W] with T = {T} frames")
    if names is not None and len(names) != stack.shape[0]:
        raise DepthError(f"{path}: expected {stack.shape[0]} names in 'files' (one per map), got {len(names)}")
    if cfg.match == "name" and names is not None:
        idx = _match_names(frame_files, names, str(path))
    else:
        if stack.shape[0] != T:
            raise DepthError(f"{path}: expected {T} depth maps (one per frame), got {stack.shape[0]}")
        idx = list(range(T))
    return [(stack[i], f"{path}[{i}]") for i in idx]


def load_depth_files(
    cfg: FileDepthConfig, frame_files: list[str], size: tuple[int, int], rows: list[int] | None = None
) -> tuple[np.ndarray, Kind]:
    """Load the user's depth/disparity maps for the given frames.

    Args:
        cfg: where the maps are and how to read them.
        frame_files: [T] frame file names (e.g. the run's frame paths), used for name matching.
        size: (W, H) of the frames; the maps are resized to it.
        rows: return (and check) only these of the T frames, in this order (e.g. the prior frames when
            the files cover every frame in order); None = all T.
    Returns:
        (maps float32 [len(rows) or T, H, W] in scene/sensor units with 0 = invalid, kind "depth" | "disparity").
    Raises:
        DepthError: missing path, count or size mismatch, unreadable file, NaN, all-invalid map.
    """
    cfg.validate()
    path = Path(cfg.path)
    W, H = int(size[0]), int(size[1])
    if not path.exists():
        raise DepthError(f"depth path {path} not found")
    if path.is_dir():
        maps = _folder_maps(cfg, path, frame_files)
    elif path.suffix in (".npy", ".npz"):
        maps = _stack_maps(cfg, path, frame_files)
    else:
        raise DepthError(f"depth path {path} must be a folder of depth files or one .npy/.npz with [T,H,W] maps")
    if rows is not None:
        maps = [maps[r] for r in rows]
    out = np.zeros((len(maps), H, W), np.float32)
    shape0 = maps[0][0].shape if maps else ()  # only read inside the loop, when maps is non-empty
    for t, (arr, what) in enumerate(maps):
        if arr.shape != shape0:
            raise DepthError(
                f"{what} is {arr.shape[1]}x{arr.shape[0]} but the first map is {shape0[1]}x{shape0[0]}; "
                "all maps must share one size"
            )
        _check_aspect(arr.shape, (W, H), what)
        vals = _to_float(arr, cfg.scale, cfg.kind, what)
        if not np.any(vals != 0):
            raise DepthError(f"{what} has no valid pixel (all 0 / invalid)")
        out[t] = _resize(vals, (W, H), cfg.kind)
    return out, cfg.kind


class FileBackend:
    """Depth or disparity maps the user already has, paired with the frames by name (or by order)."""

    name = "file"

    def __init__(self, cfg: FileDepthConfig):
        self.cfg = cfg

    def _sequence(self, frames: DepthFrames) -> tuple[list[str], list[int] | None]:
        """Names to pair the files with, and the rows wanted: with match "order" the files cover the whole
        sequence the frames come from (frames.index / sequence_length), of which the frames are rows."""
        if self.cfg.match != "order" or frames.index is None:
            return list(frames.names), None
        rows = [int(i) for i in frames.index]
        total = frames.sequence_length if frames.sequence_length is not None else max(rows, default=-1) + 1
        names = [""] * total  # only the count matters when pairing by order
        for name, i in zip(frames.names, rows):
            names[i] = name
        return names, rows

    def estimate(self, frames: DepthFrames, progress: Callable[[int, int], None] | None = None) -> DepthResult:
        """The user's maps at the frames' size: depth -> 1/depth (metric), disparity as it is (relative)."""
        names, rows = self._sequence(frames)
        maps, file_kind = load_depth_files(self.cfg, names, frames.size, rows=rows)
        if progress is not None:
            progress(len(frames), len(frames))
        if file_kind == "disparity":
            disparity, kind = maps, KIND_RELATIVE
        else:
            disparity, kind = depth_to_disparity(maps), KIND_METRIC
        report: dict[str, Any] = {"path": str(self.cfg.path), "file_kind": file_kind, "match": self.cfg.match}
        return DepthResult(disparity, kind, self.name, report=report)
