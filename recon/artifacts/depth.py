"""The depth files of a run: RUN/depth/disparity.npz (depth stage) and RUN/depth/aligned.npz (align stage).

disparity.npz: disparity float32 [T,H,W] in cameras.json frame order (0 = not computed / invalid), computed bool
    [T], confidence float32 [T,H,W] in [0, 1] (1 where the backend has none), kind str (depth.result kinds),
    backend str, frames int [T'] (the prior frames, in the order fed to the backend).
aligned.npz: depth float32 [T,H,W] z-depth in scene units (0 = invalid), mask bool [T,H,W], confidence float32
    [T,H,W] (carried from disparity.npz for fusion and the depth loss), scale / shift float32 [T] (aligned
    disparity = scale * disparity + shift).
Both are read with allow_pickle=False and validated against the run's frame count and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depth.result import DISPARITY_KINDS
from recon.atomic import save_npz
from recon.errors import ReconError


def _read_npz(path: Path, required: tuple[str, ...], rerun: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ReconError(f"{path} not found: run the {rerun} stage first (recon {rerun})")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / numpy raise several types for damaged or pickled files
        raise ReconError(f"cannot read {path} ({type(e).__name__}: {e}); re-run the {rerun} stage") from e
    missing = [k for k in required if k not in d]
    if missing:
        raise ReconError(f"{path} has no {', '.join(map(repr, missing))} array; re-run the {rerun} stage")
    return d


def _check_stack(path: Path, name: str, arr: np.ndarray, shape: tuple[int, ...] | None, rerun: str) -> None:
    if arr.ndim != 3:
        raise ReconError(f"{path}: '{name}' has shape {arr.shape}, expected [T, H, W]")
    if shape is not None and arr.shape != shape:
        got, want = "x".join(map(str, arr.shape)), "x".join(map(str, shape))
        raise ReconError(f"{path}: '{name}' is {got} but the run has {want} (frames x H x W): re-run the {rerun} stage")
    if arr.dtype.kind not in "fbiu":
        raise ReconError(f"{path}: '{name}' has dtype {arr.dtype}, expected numbers")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ReconError(f"{path}: '{name}' contains NaN or infinite values")


@dataclass
class DisparityMaps:
    """The depth prior of a run, one map per frame (frames outside `frames` are 0 and not computed)."""

    disparity: np.ndarray
    computed: np.ndarray
    confidence: np.ndarray
    kind: str
    backend: str
    frames: np.ndarray

    def save(self, path: str | Path) -> None:
        save_npz(
            path,
            disparity=np.asarray(self.disparity, np.float32),
            computed=np.asarray(self.computed, bool),
            confidence=np.asarray(self.confidence, np.float32),
            kind=np.array(self.kind),
            backend=np.array(self.backend),
            frames=np.asarray(self.frames, np.int64),
        )

    @classmethod
    def load(cls, path: str | Path, shape: tuple[int, ...] | None = None) -> DisparityMaps:
        """Read and validate; `shape` = (frames, H, W) of the run when known."""
        path = Path(path)
        d = _read_npz(path, ("disparity",), "depth")
        disp = d["disparity"]
        _check_stack(path, "disparity", disp, shape, "depth")
        disp = disp.astype(np.float32, copy=False)
        T = disp.shape[0]
        computed = d.get("computed")
        computed = np.any(disp > 0, axis=(1, 2)) if computed is None else np.asarray(computed, bool).reshape(-1)
        if computed.shape != (T,):
            raise ReconError(f"{path}: 'computed' has {computed.size} entries for {T} maps")
        conf = d.get("confidence")
        if conf is None:
            conf = np.ones_like(disp)
        _check_stack(path, "confidence", conf, disp.shape, "depth")
        kind = str(d["kind"]) if "kind" in d else DISPARITY_KINDS[0]
        if kind not in DISPARITY_KINDS:
            raise ReconError(f"{path}: unknown disparity kind {kind!r} (expected one of {DISPARITY_KINDS})")
        frames = np.asarray(d.get("frames", np.flatnonzero(computed)), np.int64).reshape(-1)
        if frames.size and (frames.min() < 0 or frames.max() >= T):
            raise ReconError(f"{path}: 'frames' names frames outside 0..{T - 1}")
        return cls(
            disparity=disp,
            computed=computed,
            confidence=np.clip(conf.astype(np.float32), 0.0, 1.0),
            kind=kind,
            backend=str(d.get("backend", "unknown")),
            frames=frames,
        )


@dataclass
class AlignedDepth:
    """Depth prior in scene units, one map per frame, with the per-pixel confidence it came with."""

    depth: np.ndarray
    mask: np.ndarray
    confidence: np.ndarray
    scale: np.ndarray
    shift: np.ndarray

    def save(self, path: str | Path) -> None:
        save_npz(
            path,
            depth=np.asarray(self.depth, np.float32),
            mask=np.asarray(self.mask, bool),
            confidence=np.asarray(self.confidence, np.float32),
            scale=np.asarray(self.scale, np.float32),
            shift=np.asarray(self.shift, np.float32),
        )

    @classmethod
    def load(cls, path: str | Path, shape: tuple[int, ...] | None = None) -> AlignedDepth:
        """Read and validate; `shape` = (frames, H, W) of the run when known."""
        path = Path(path)
        d = _read_npz(path, ("depth", "confidence"), "align")
        depth = d["depth"]
        _check_stack(path, "depth", depth, shape, "align")
        depth = depth.astype(np.float32, copy=False)
        if (depth < 0).any():
            raise ReconError(f"{path} contains negative depth: re-run the align stage")
        conf = d["confidence"]
        _check_stack(path, "confidence", conf, depth.shape, "align")
        mask = np.asarray(d.get("mask", depth > 0), bool)
        if mask.shape != depth.shape:
            raise ReconError(f"{path}: 'mask' has shape {mask.shape}, expected {depth.shape}")
        T = depth.shape[0]
        scale = np.asarray(d.get("scale", np.ones(T)), np.float32).reshape(-1)
        shift = np.asarray(d.get("shift", np.zeros(T)), np.float32).reshape(-1)
        if scale.shape != (T,) or shift.shape != (T,):
            raise ReconError(f"{path}: 'scale'/'shift' must have one value per frame ({T})")
        return cls(depth=depth, mask=mask & (depth > 0), confidence=np.clip(conf, 0, 1), scale=scale, shift=shift)

    def require_valid(self, views: list[int], path: str | Path = "aligned.npz") -> None:
        """ReconError unless some pixel of `views` has valid depth."""
        if not views or not (self.depth[views] > 0).any():
            raise ReconError(f"{path} has no valid depth on the training views: re-run the depth and align stages")
