"""The DVD depth backend: `DVDConfig` and `DVDBackend.estimate(frames) -> DepthResult`.

Takes the frames as one uint8 array (depth.result.DepthFrames); the model sees one window at a time. The
result is relative (affine-invariant) disparity, larger = nearer, with the per-window stitching report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from depth.checks import choice, device, flag, number, path_exists
from depth.dvd.weights import DVD_DEFAULT_FILE, resolve_weights
from depth.errors import DepthError
from depth.result import KIND_RELATIVE, DepthFrames, DepthResult

if TYPE_CHECKING:  # depth.dvd.clip imports torch; the configs load without it
    from depth.dvd.clip import WindowRunner

log = logging.getLogger(__name__)

DTYPES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


@dataclass
class DVDConfig:
    """Settings of the DVD depth backend (the application saves them with the run).

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
    workers: int = 0  # windows computed at once by the application's scheduler (0 = its default); see DVDBackend

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def validate(self, where: str = "depth.dvd", check_device: bool = True) -> DVDConfig:
        """DepthError unless every field is in range; `where` prefixes the field names in the message."""
        choice(self.stitch, f"{where}.stitch", DepthError, ("chain", "global"))
        choice(self.dtype, f"{where}.dtype", DepthError, DTYPES)
        number(self.window, f"{where}.window", DepthError, lo=1, hi=10_000, integer=True)
        number(self.overlap, f"{where}.overlap", DepthError, lo=0, integer=True)
        if not self.overlap < self.window:
            raise DepthError(f"DVD window {self.window} / overlap {self.overlap}: need 0 <= overlap < window")
        number(self.height, f"{where}.height", DepthError, lo=16, hi=8192, integer=True)
        number(self.width, f"{where}.width", DepthError, lo=16, hi=8192, integer=True)
        number(self.workers, f"{where}.workers", DepthError, lo=0, hi=4096, integer=True)
        number(self.lora_alpha, f"{where}.lora_alpha", DepthError, lo=0, hi=1e6, lo_open=True, optional=True)
        flag(self.allow_download, f"{where}.allow_download", DepthError)
        flag(self.vae_tiling, f"{where}.vae_tiling", DepthError)
        if not isinstance(self.dvd_file, str) or not self.dvd_file or Path(self.dvd_file).name != self.dvd_file:
            raise DepthError(f"{where}.dvd_file must be a file name such as {DVD_DEFAULT_FILE}, got {self.dvd_file!r}")
        for flag_name, path in (("--dvd-weights", self.dvd_weights), ("--vae-weights", self.vae_weights)):
            if path is not None and not path_exists(path):
                raise DepthError(f"{flag_name} {path} does not exist")
        if self.dvd_config is not None and not path_exists(self.dvd_config, is_file=True):
            raise DepthError(f"--dvd-config {self.dvd_config} does not exist")
        if check_device:
            device(self.device, f"{where}.device", DepthError)
        return self


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


def _model_report(reg, paths, cfg: DVDConfig) -> dict[str, Any]:
    """What the run records about the model: config, weight files, LoRA merge."""
    lora = reg.lora_info
    return {
        "backend": "dvd",
        "config": cfg.to_dict(),
        "weights": {"dit": str(paths.dit), "vae": str(paths.vae), "model_config": reg.config.source},
        "lora": None
        if lora is None
        else {
            "rank": lora.rank,
            "alpha": lora.alpha,
            "factor": lora.factor,
            "merged_layers": len(lora.merged_layers),
            "file_dtype": lora.file_dtype,
        },
    }


class DVDBackend:
    """DVD video depth: relative disparity for a frame sequence (weights resolved on first use).

    `window_runner` (depth.dvd.clip.WindowRunner) computes the clip's windows; None = here, one after the
    other. The application passes one that spreads them over `cfg.workers` devices (this library schedules
    nothing itself); with stitch "global" the result is the same either way.
    """

    name = "dvd"

    def __init__(self, cfg: DVDConfig | None = None, window_runner: WindowRunner | None = None):
        self.cfg = cfg or DVDConfig()
        self.window_runner = window_runner

    def estimate(self, frames: DepthFrames, progress: Callable[[int, int], None] | None = None) -> DepthResult:
        """Relative disparity float32 [T, H, W] at the frames' resolution (larger = nearer, affine-invariant).

        The report holds the config, weights, LoRA merge, processing size, per-window start/end/scale_raw/
        scale/shift/residual_before/residual_after/seconds, timings and the peak device memory.
        """
        import torch

        cfg = self.cfg
        cfg.validate()
        if len(frames) == 0:
            raise DepthError("DVD depth: no frames given")
        runner = self.window_runner
        if runner is not None and not getattr(runner, "needs_model", True):  # every window computed elsewhere
            return self._estimate_elsewhere(frames, runner, progress)
        t0 = time.perf_counter()
        reg, paths = load_regressor(cfg)
        t_load = time.perf_counter() - t0
        cuda = reg.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(reg.device)
        else:
            log.warning("depth: running DVD without CUDA; expect minutes per frame")
        log.info(
            f"DVD depth: {len(frames)} frames, windows of {cfg.window} (overlap {cfg.overlap}) at "
            f"~{cfg.height}x{cfg.width}, {reg.device} {str(reg.dtype).removeprefix('torch.')}, stitch {cfg.stitch}"
        )
        disparity, report = reg.predict_with_report(
            frames.images, cfg.height, cfg.width, cfg.window, cfg.overlap, cfg.stitch, progress, runner
        )
        report.update(
            _model_report(reg, paths, cfg),
            load_seconds=t_load,
            seconds_per_frame=report["seconds"] / len(frames),
            peak_device_memory_bytes=int(torch.cuda.max_memory_allocated(reg.device)) if cuda else None,
        )
        windows = list(report.get("windows", []))
        return DepthResult(disparity, KIND_RELATIVE, self.name, windows=windows, report=report)

    def _estimate_elsewhere(
        self, frames: DepthFrames, runner: WindowRunner, progress: Callable[[int, int], None] | None
    ) -> DepthResult:
        """`estimate` when the runner computes every window on its own workers: no model is loaded here."""
        from depth.dvd.clip import predict_clip

        cfg = self.cfg
        paths = resolve_weights(cfg.dvd_weights, cfg.vae_weights, cfg.cache_dir, cfg.allow_download, cfg.dvd_file)
        log.info(f"DVD depth: {len(frames)} frames, windows of {cfg.window} (overlap {cfg.overlap}) on workers")
        disparity, report = predict_clip(
            None, frames.images, cfg.height, cfg.width, cfg.window, cfg.overlap, cfg.stitch, progress, runner
        )
        report.update(
            backend="dvd",
            config=cfg.to_dict(),
            weights={"dit": str(paths.dit), "vae": str(paths.vae), "model_config": str(cfg.dvd_config or "default")},
            seconds_per_frame=report["seconds"] / len(frames),
        )
        windows = list(report.get("windows", []))
        return DepthResult(disparity, KIND_RELATIVE, self.name, windows=windows, report=report)
