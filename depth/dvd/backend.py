"""The depth stage's entry point for the DVD backend: `DVDConfig` and `run_dvd(frame_paths, cfg)`.

The orchestrator (depth/stage.py) calls `run_dvd` and writes RUN/depth/disparity.npz from the array
and RUN/depth/windows.json from `report`. Frames are PNG/JPEG files read lazily, one window at a time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depth.dvd.weights import DVD_DEFAULT_FILE, dvd_weights_available, resolve_weights
from recon.console import info
from recon.errors import ReconError


@dataclass
class DVDConfig:
    """Settings of the DVD depth backend (saved into RUN/manifest.json).

    stitch defaults to "global": the pipeline then fits ONE scale/shift of the whole disparity video to
    the SfM points, which needs windows that agree with each other everywhere. "chain" (the official
    script, reference-exact) aligns each window only to its predecessor, so fitting errors accumulate
    along the video and its [0.7, 1.5] scale clip can leave a real scale change uncorrected; the joint
    least squares of "global" uses every overlap at once (and also the second overlap of the last
    window) with window 0 fixed. Both are recorded per window in the report.
    """

    dvd_weights: Path | None = None  # DVD DiT checkpoint (model.safetensors / dvd_1.1.safetensors)
    vae_weights: Path | None = None  # Wan2.1_VAE.pth, a safetensors file, or a diffusers-format folder
    dvd_config: Path | None = None  # fixture-style config.json; None = shipped Wan2.1-T2V-1.3B config
    cache_dir: Path | None = None  # None = $DVD_SPLAT_CACHE or ~/.cache/dvd-splat
    allow_download: bool = True
    dvd_file: str = (
        DVD_DEFAULT_FILE  # release file to look for / download: model.safetensors (v1.0) or dvd_1.1.safetensors
    )
    window: int = 81  # frames per window (official openworld.sh)
    overlap: int = 21
    height: int = 480  # processing size target (each side rounded up to a multiple of 16)
    width: int = 640
    stitch: str = "global"  # "chain" | "global"
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    vae_tiling: bool = False  # diffusers' spatial VAE tiling (less memory at large sizes)
    lora_alpha: float | None = None  # None = config's lora.alpha (= rank for the release)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def validate(self) -> None:
        if self.stitch not in ("chain", "global"):
            raise ReconError(f"DVD stitch must be 'chain' or 'global', got {self.stitch!r}")
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ReconError(f"DVD window {self.window} / overlap {self.overlap}: need 0 <= overlap < window")
        if self.height < 16 or self.width < 16:
            raise ReconError(f"DVD processing size {self.height}x{self.width} is too small (minimum 16x16)")


class FrameFiles:
    """Lazily read RGB frames: `len()` and `frames[a:b]` -> uint8 [b - a, H, W, 3]."""

    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ReconError("DVD depth: no frames given")
        for p in self.paths:
            if not p.is_file():
                raise ReconError(f"frame file not found: {p}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice | int) -> np.ndarray:
        from PIL import Image

        paths = self.paths[index] if isinstance(index, slice) else [self.paths[index]]
        frames = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    frames.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            except OSError as e:
                raise ReconError(f"cannot read frame {p}: {e}") from None
        if len({f.shape for f in frames}) > 1:
            raise ReconError(f"frames {paths[0].name}..{paths[-1].name} do not all have the same size")
        return np.stack(frames)


_CACHE: dict[tuple, Any] = {}


def load_regressor(cfg: DVDConfig):
    """Resolve weights and build (or reuse) the DVDRegressor for `cfg`. Returns (regressor, weight paths)."""
    from depth.dvd.model import DVDRegressor

    paths = resolve_weights(cfg.dvd_weights, cfg.vae_weights, cfg.cache_dir, cfg.allow_download, cfg.dvd_file)
    key = (str(paths.dit), str(paths.vae), str(cfg.dvd_config), cfg.device, cfg.dtype, cfg.lora_alpha, cfg.vae_tiling)
    if key not in _CACHE:
        _CACHE.clear()  # keep at most one model in memory
        _CACHE[key] = DVDRegressor.from_checkpoints(
            dit=paths.dit,
            vae=paths.vae,
            config=cfg.dvd_config,
            device=cfg.device,
            dtype=None if cfg.dtype == "auto" else cfg.dtype,
            lora_alpha=cfg.lora_alpha,
            vae_tiling=cfg.vae_tiling,
        )
    return _CACHE[key], paths


def run_dvd(frame_paths: list[Path], cfg: DVDConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """DVD relative disparity for a frame sequence.

    Returns (disparity float32 [T, H, W] at the frames' resolution, larger = nearer, affine-invariant;
    report dict: config, weights, LoRA merge, processing size, per-window start/end/scale_raw/scale/
    shift/residual_before/residual_after/seconds, timings, peak device memory).
    """
    cfg.validate()
    frames = FrameFiles(list(frame_paths))
    t0 = time.perf_counter()
    reg, paths = load_regressor(cfg)
    t_load = time.perf_counter() - t0
    import torch

    if reg.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(reg.device)
    info(
        f"DVD depth: {len(frames)} frames, windows of {cfg.window} (overlap {cfg.overlap}) at ~{cfg.height}x{cfg.width}, "
        f"{reg.device} {str(reg.dtype).removeprefix('torch.')}, stitch {cfg.stitch}"
    )
    disparity, report = reg.predict_with_report(
        frames, height=cfg.height, width=cfg.width, window=cfg.window, overlap=cfg.overlap, stitch=cfg.stitch
    )
    report.update(
        backend="dvd",
        config=cfg.to_dict(),
        weights={"dit": str(paths.dit), "vae": str(paths.vae), "model_config": reg.config.source},
        lora=None
        if reg.lora_info is None
        else {
            "rank": reg.lora_info.rank,
            "alpha": reg.lora_info.alpha,
            "factor": reg.lora_info.factor,
            "merged_layers": len(reg.lora_info.merged_layers),
            "file_dtype": reg.lora_info.file_dtype,
        },
        load_seconds=t_load,
        seconds_per_frame=report["seconds"] / max(len(frames), 1),
        peak_device_memory_bytes=int(torch.cuda.max_memory_allocated(reg.device))
        if reg.device.type == "cuda"
        else None,
    )
    return disparity, report


__all__ = ["DVDConfig", "run_dvd", "dvd_weights_available", "FrameFiles", "load_regressor"]
