"""Depth stage: run the chosen depth backend on the prior frames and store relative/scene disparity.

Backends:
  - "dvd": DVD video depth (depth.dvd.backend.run_dvd) -> relative (affine-invariant) disparity.
  - "stereo": weights-free plane-sweep stereo on the SfM poses (depth.stereo.run_stereo) -> disparity
    = 1/depth in scene units.
  - "file": depth or disparity maps the user already has (depth.file.load_depth_files).
  - "auto": DVD when its weights are available (local or downloadable) AND a CUDA device is present,
    otherwise stereo, with a one-line notice saying why and how to get DVD.

Depth is computed for split["prior"] frames only (held-out test views are never looked at unless the
run asked for --prior-from-all-frames).

Writes (RunPaths):
  RUN/depth/disparity.npz  disparity float32 [T,H,W] in cameras.json frame order (0 = not computed /
                           invalid), computed bool [T], confidence float32 [T,H,W] (1 where the
                           backend has none), kind str, backend str, frames int [T'] (the prior frames).
  RUN/depth/windows.json   {"backend", "frames": [prior frame indices = the sequence fed to the
                           backend], "windows": [DVD windows: start/end index into "frames",
                           scale/shift, overlap residual before/after], "report": backend report}.
  RUN/depth/depth.mp4      colour-mapped preview of the computed frames, one normalisation for all.

`kind` tells the alignment what to fit (see depth.align): "relative_disparity" (DVD, user disparity:
scale and shift) or "metric_disparity" (stereo in scene units, user depth e.g. in metres: scale only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from depth.align import KIND_METRIC, KIND_RELATIVE
from depth.dvd.backend import DVDConfig, dvd_weights_available, run_dvd
from depth.file import FileDepthConfig, load_depth_files
from depth.preview import write_depth_preview
from depth.stereo import StereoConfig, depth_to_disparity, run_stereo
from recon.atomic import save_npz, write_json
from recon.artifacts.cameras import CameraSet
from recon.console import info, warn
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths
from recon.split import load_split

Backend = Literal["auto", "dvd", "stereo", "file"]


@dataclass
class DepthConfig:
    backend: Backend = "auto"
    """auto: DVD when its weights are available and a CUDA device is present, else stereo."""
    dvd: DVDConfig = field(default_factory=DVDConfig)
    stereo: StereoConfig = field(default_factory=StereoConfig)
    file: FileDepthConfig | None = None
    """Backend "file": where the user's depth/disparity maps are and how to read them."""
    preview: bool = True
    """Write RUN/depth/depth.mp4."""
    preview_fps: float = 10.0


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def select_backend(cfg: DepthConfig) -> tuple[str, str]:
    """(backend name, reason) for `cfg.backend`; "auto" resolves to "dvd" or "stereo".

    Never downloads anything: DVD weights are only looked up (dvd_weights_available).
    """
    if cfg.backend in ("dvd", "stereo", "file"):
        return cfg.backend, "chosen"
    if cfg.backend != "auto":
        raise ReconError(f"unknown depth backend {cfg.backend!r} (auto, dvd, stereo or file)")
    device = str(getattr(cfg.dvd, "device", "auto"))
    cuda = _cuda_available() and not device.startswith("cpu")
    if not cuda:
        return "stereo", (
            "no CUDA device; DVD on CPU is impractically slow (force it with --backend dvd, "
            "or run on a CUDA machine with the DVD weights)"
        )
    ok, why = dvd_weights_available(cfg.dvd)
    if ok:
        return "dvd", "DVD weights found and CUDA present"
    down, down_why = _dvd_downloadable(cfg.dvd)
    if down:
        return "dvd", f"DVD weights downloadable ({down_why}) and CUDA present"
    return (
        "stereo",
        f"{why}; {down_why}. Get DVD by passing --dvd-weights and --vae-weights or by allowing the download",
    )


def _dvd_downloadable(dvd_cfg: DVDConfig) -> tuple[bool, str]:
    """(downloadable, reason): can the DVD and VAE files be fetched from the Hugging Face hub now?

    Asks the hub for the two files' metadata (a few seconds at most); never downloads them.
    """
    import os

    if not getattr(dvd_cfg, "allow_download", True):
        return False, "downloads are disabled (allow_download=False)"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        from depth.dvd.weights import DVD_REPO, VAE_FILE, VAE_REPO

        dvd_file = getattr(dvd_cfg, "dvd_file", "model.safetensors")
        for repo, fname in ((DVD_REPO, dvd_file), (VAE_REPO, VAE_FILE)):
            get_hf_file_metadata(hf_hub_url(repo, fname), timeout=5)
        return True, f"huggingface.co/{DVD_REPO} reachable"
    except Exception as e:
        return False, f"the Hugging Face hub cannot be reached ({type(e).__name__})"


def _prior_frames(cams: CameraSet, split: dict[str, Any]) -> list[int]:
    T = len(cams)
    prior = sorted(int(i) for i in split.get("prior", split.get("train", [])))
    bad = [i for i in prior if not 0 <= i < T]
    if bad:
        raise ReconError(f"split.json names prior frames {bad[:5]} but cameras.json has {T} frames: re-run the split")
    if not prior:
        raise ReconError("split.json has no prior frames to compute depth for")
    return prior


def _sparse_hint(backend: str, prior: list[int], split: dict[str, Any], num_frames: int) -> str:
    """Advice for a stereo prior that failed on a few far-apart training views."""
    test = set(split.get("test", []))
    if backend == "stereo" and len(prior) < num_frames - len(test):
        return (
            ": the views are too few or too far apart to match; --prior-frames non-test lets stereo use every "
            "frame but the test views (fusion and the depth loss still use the training views only)"
        )
    return ""


def run_depth(paths: RunPaths, cfg: DepthConfig) -> dict[str, Any]:
    """Compute the depth prior for the prior frames and write disparity.npz, windows.json, depth.mp4.

    Returns a summary dict (backend, kind, frames, mean coverage, seconds, why the backend was chosen).
    """
    cams = CameraSet.load(paths.cameras_json)
    split = load_split(paths.split_json)
    prior = _prior_frames(cams, split)
    T, W, H = len(cams), cams.width, cams.height
    backend, reason = select_backend(cfg)
    if cfg.backend == "auto":
        info(f"depth: backend {backend} ({reason})")
    frame_paths = [paths.root / cams.files[i] for i in prior]
    missing = [p for p in frame_paths if not p.exists()]
    if missing:
        raise ReconError(
            f"frame {missing[0]} listed in cameras.json is missing ({len(missing)} missing): re-run the pose stage"
        )

    t0 = time.perf_counter()
    confidence_sub = None
    windows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    if backend == "dvd":
        if not _cuda_available():
            warn("depth: running DVD without CUDA; expect minutes per frame")
        disp_sub, report = run_dvd(frame_paths, cfg.dvd)
        kind = KIND_RELATIVE
        windows = list(report.get("windows", []))
    elif backend == "stereo":
        disp_sub, confidence_sub, report = run_stereo(paths, prior, cfg.stereo)
        kind = KIND_METRIC
    else:
        if cfg.file is None:
            raise ReconError("depth backend 'file' needs the maps: pass --depth-files PATH (folder or .npz)")
        if cfg.file.match == "order":
            # Files in frame order cover every frame of the run; keep the prior rows.
            maps, file_kind = load_depth_files(cfg.file, list(cams.files), (W, H), rows=prior)
        else:
            maps, file_kind = load_depth_files(cfg.file, [cams.files[i] for i in prior], (W, H))
        if file_kind == "disparity":
            disp_sub, kind = maps, KIND_RELATIVE
        else:
            disp_sub, kind = depth_to_disparity(maps), KIND_METRIC
        report = {"path": str(cfg.file.path), "file_kind": file_kind, "match": cfg.file.match}
    seconds = time.perf_counter() - t0

    disp_sub = np.asarray(disp_sub, dtype=np.float32)
    if disp_sub.shape != (len(prior), H, W):
        got = "x".join(map(str, disp_sub.shape))
        raise ReconError(
            f"depth backend {backend} returned maps of shape {got}; expected {len(prior)}x{H}x{W} (prior frames x H x W)"
        )
    if not np.all(np.isfinite(disp_sub)):
        raise ReconError(f"depth backend {backend} returned NaN/inf disparity")
    disp_sub = np.where(disp_sub > 0, disp_sub, 0).astype(np.float32)
    if not np.any(disp_sub > 0):
        raise ReconError(
            f"depth backend {backend} produced no valid depth on any of the {len(prior)} prior frames"
            + _sparse_hint(backend, prior, split, T)
        )

    disparity = np.zeros((T, H, W), np.float32)
    confidence = np.ones((T, H, W), np.float32)
    computed = np.zeros(T, bool)
    disparity[prior] = disp_sub
    computed[prior] = True
    if confidence_sub is not None:
        confidence[prior] = np.clip(np.asarray(confidence_sub, np.float32), 0.0, 1.0)
    save_npz(
        paths.disparity_npz,
        disparity=disparity,
        computed=computed,
        confidence=confidence,
        kind=np.array(kind),
        backend=np.array(backend),
        frames=np.asarray(prior, dtype=np.int64),
    )
    write_json(
        paths.windows_json,
        {"backend": backend, "kind": kind, "frames": prior, "windows": windows, "report": _jsonable(report)},
    )
    value_range = None
    if cfg.preview:
        value_range = write_depth_preview(paths.depth_preview_mp4, disp_sub, fps=cfg.preview_fps)
    coverage = (disp_sub > 0).mean(axis=(1, 2))
    info(f"depth: {backend} on {len(prior)} frames, mean coverage {coverage.mean():.0%}, {seconds:.1f} s")
    return {
        "backend": backend,
        "reason": reason,
        "kind": kind,
        "frames": len(prior),
        "coverage_mean": float(coverage.mean()),
        "coverage_min": float(coverage.min()),
        "seconds": seconds,
        "seconds_per_frame": seconds / len(prior),
        "windows": len(windows),
        "preview_range": value_range,
    }


def _jsonable(obj: Any) -> Any:
    """Backend reports -> JSON-safe (numpy arrays to lists, unknown objects to repr)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 100_000 else f"<array {obj.shape}>"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)
