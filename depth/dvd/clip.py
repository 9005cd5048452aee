"""One clip as independent window jobs: plan the windows, infer one window, stitch all windows.

The sequential path (`DVDRegressor.predict_with_report`) and any scheduler that spreads the windows of a
clip over several devices (the application's Ray actors, recon.cluster) call the same functions, so both
produce the same numbers:

    plan = plan_clip(frames, height, width, window, overlap)          # sizes and spans, no model
    outputs = [infer_window(reg, window_frames(frames, plan, i), plan) for i in range(len(plan.spans))]
    disparity, infos = stitch_clip(outputs, plan, "global")          # after all windows exist

Windows are independent of each other until stitching: with "global" stitching (windows.stitch_global)
every window's scale and shift is solved jointly once all windows exist, so they may run in any order and
on any device. Each job holds one window of frames: memory per worker is bounded by one window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from depth.dvd import windows
from depth.errors import DepthError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ClipPlan:
    """How a clip of `num_frames` frames of `input_size` (h0, w0) pixels is cut into windows.

    processing_size: (h, w) the model sees (windows.processing_size); spans: [start, end) frame ranges.
    """

    num_frames: int
    input_size: tuple[int, int]
    processing_size: tuple[int, int]
    spans: tuple[tuple[int, int], ...]
    window: int
    overlap: int


@dataclass
class WindowOutput:
    """One window's result: disparity float32 [L, h, w] at the processing size, its seconds, who computed it."""

    disparity: np.ndarray
    seconds: float
    worker: str | None = None


class WindowRunner(Protocol):
    """Computes every window of a plan (in any order, on any devices) and returns them in span order.

    A runner may set `needs_model = False` when it computes no window with the `reg` it is given (then
    the caller need not load one and passes None).
    """

    def __call__(
        self, reg: Any, frames: np.ndarray | Sequence[np.ndarray], plan: ClipPlan, progress: Progress | None
    ) -> list[WindowOutput]: ...


def plan_clip(
    frames: np.ndarray | Sequence[np.ndarray], height: int, width: int, window: int, overlap: int
) -> ClipPlan:
    """The window plan of uint8 frames [T, H0, W0, 3] (or a sequence whose slices give such arrays)."""
    num_frames = len(frames)
    if num_frames == 0:
        raise DepthError("no frames to process")
    first = np.asarray(frames[0:1])
    if first.ndim != 4 or first.shape[-1] != 3:
        raise DepthError(f"DVD expects RGB frames [T, H, W, 3], got {first.shape[1:]} per frame")
    if first.dtype != np.uint8:
        raise DepthError(f"DVD predict expects uint8 frames (0-255), got {first.dtype}; use predict_window for floats")
    h0, w0 = int(first.shape[1]), int(first.shape[2])
    size = windows.processing_size(h0, w0, height, width)
    spans = tuple(windows.plan_windows(num_frames, window, overlap))
    return ClipPlan(num_frames, (h0, w0), size, spans, window, overlap)


def window_frames(frames: np.ndarray | Sequence[np.ndarray], plan: ClipPlan, index: int) -> np.ndarray:
    """The uint8 frames [L, H0, W0, 3] of window `index` (read lazily from `frames`), shape-checked."""
    start, end = plan.spans[index]
    clip = np.asarray(frames[start:end])
    if clip.shape[1:] != (*plan.input_size, 3):
        raise DepthError(f"frames {start}..{end - 1} have shape {clip.shape[1:]}, expected {(*plan.input_size, 3)}")
    return clip


def infer_window(reg: Any, clip: np.ndarray, processing_size: tuple[int, int]) -> np.ndarray:
    """One window through the model: uint8 [L, H0, W0, 3] -> resize to processing_size (h, w) -> 4n+1 pad ->
    `reg.predict_window` -> disparity float32 [L, h, w] (the padding frames dropped)."""
    xt = torch.from_numpy(clip.astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # [L, 3, H0, W0]
    x = windows.resize_bilinear(xt, processing_size).permute(0, 2, 3, 1).numpy()  # [L, h, w, 3]
    del xt
    return reg.predict_window(windows.temporal_pad(x))[: len(clip)]


def run_sequential(
    reg: Any, frames: np.ndarray | Sequence[np.ndarray], plan: ClipPlan, progress: Progress | None = None
) -> list[WindowOutput]:
    """Every window of `plan` in order on `reg`'s device (one window on the device at a time)."""
    outputs = []
    for i in range(len(plan.spans)):
        t0 = time.perf_counter()
        disparity = infer_window(reg, window_frames(frames, plan, i), plan.processing_size)
        outputs.append(WindowOutput(disparity, time.perf_counter() - t0))
        free = getattr(reg, "_free", None)
        if free is not None:
            free()
        if progress is not None:
            progress(i + 1, len(plan.spans))
    return outputs


def stitch_clip(
    outputs: list[WindowOutput], plan: ClipPlan, method: str
) -> tuple[np.ndarray, list[windows.WindowInfo]]:
    """Stitch the windows (windows.stitch: "chain" or "global") and resize back: disparity float32
    [T, H0, W0] and one WindowInfo per window (with its seconds and worker)."""
    if len(outputs) != len(plan.spans):
        raise DepthError(f"{len(outputs)} window results for {len(plan.spans)} windows")
    stitched, infos = windows.stitch([o.disparity for o in outputs], list(plan.spans), plan.num_frames, method)
    for info, out in zip(infos, outputs):
        info.seconds, info.worker = out.seconds, out.worker
    disparity = windows.resize_bilinear(torch.from_numpy(stitched)[:, None], plan.input_size)[:, 0].numpy()
    return np.ascontiguousarray(disparity, dtype=np.float32), infos


def predict_clip(
    reg: Any,
    frames: np.ndarray | Sequence[np.ndarray],
    height: int,
    width: int,
    window: int,
    overlap: int,
    stitch: str,
    progress: Progress | None = None,
    runner: WindowRunner | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Whole clip: plan -> every window (by `runner`, default `run_sequential` on `reg`) -> stitch.

    `reg` may be None when the runner computes every window elsewhere. Returns (disparity float32
    [T, H0, W0], report with processing_size, input_size, windows (WindowInfo dicts), seconds, device, dtype).
    """
    plan = plan_clip(frames, height, width, window, overlap)
    t_start = time.perf_counter()
    outputs = (runner or run_sequential)(reg, frames, plan, progress)
    disparity, infos = stitch_clip(outputs, plan, stitch)
    del outputs
    report = {
        "processing_size": list(plan.processing_size),
        "input_size": list(plan.input_size),
        "num_frames": plan.num_frames,
        "window": window,
        "overlap": overlap,
        "stitch": stitch,
        "windows": [info.to_dict() for info in infos],
        "seconds": time.perf_counter() - t_start,
        "device": str(reg.device) if reg is not None else None,
        "dtype": str(reg.dtype).removeprefix("torch.") if reg is not None else None,
        "workers": len({o for o in (i.worker for i in infos) if o is not None}) or 1,
    }
    return disparity, report
