"""Stage `depth`: the depth prior on the prior frames -> RUN/depth/disparity.npz, windows.json, depth.mp4.

Reads RUN/cameras.json, RUN/split.json, the prior frames' images and (for stereo) RUN/sfm; runs the chosen
depth backend (depth.backend: dvd, stereo or file; "auto" = DVD when its weights and a CUDA device are
there, else stereo, with a one-line notice saying why) on the prior frames only (held-out test views are
never looked at unless the run asked for --prior-frames all).

Writes:
  RUN/depth/disparity.npz  `DisparityMaps`: disparity [T,H,W] in cameras.json frame order (0 = not computed /
                           invalid), computed [T], confidence (1 where the backend has none), kind, backend,
                           frames (the prior frames).
  RUN/depth/windows.json   {"backend", "kind", "frames": [prior frame indices = the sequence fed to the
                           backend], "windows": [DVD windows: start/end index into "frames", scale/shift,
                           overlap residual before/after], "report": backend report}.
  RUN/depth/depth.mp4      colour-mapped preview of the computed frames, one normalisation for all.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from depth.backend import DepthBackend, make_backend, select_backend
from depth.checks import choice, flag, number
from depth.dvd.backend import DVDBackend, DVDConfig
from depth.errors import DepthError
from depth.file import FileDepthConfig
from depth.preview import preview_frames
from depth.result import DepthFrames, DepthResult
from depth.stereo import StereoConfig
from recon.artifacts import CameraSet, DisparityMaps, RunPaths, Split, read_rgb
from recon.atomic import write_json
from recon.cluster import dvd_windows
from recon.console import info, progress
from recon.errors import ReconError
from recon.sfm import load_reconstruction, sfm_observations
from recon.stages import StageContext
from recon.video import write_mp4

Backend = Literal["auto", "dvd", "stereo", "file"]


@dataclass
class Config:
    backend: Backend = "auto"
    """auto: DVD when its weights are available and a CUDA device is present, else stereo."""
    dvd: DVDConfig = field(default_factory=DVDConfig)
    stereo: StereoConfig = field(default_factory=StereoConfig)
    file: FileDepthConfig | None = None
    """Backend "file": where the user's depth/disparity maps are and how to read them."""
    preview: bool = True
    """Write RUN/depth/depth.mp4."""
    preview_fps: float = 10.0

    def validate(self) -> Config:
        """ReconError unless every field is in range (the backends' configs through their own validate)."""
        choice(self.backend, "depth.backend", ReconError, ("auto", "dvd", "stereo", "file"))
        flag(self.preview, "depth.preview", ReconError)
        number(self.preview_fps, "depth.preview_fps", ReconError, lo=1, hi=240)
        if self.backend == "file" and self.file is None:
            raise ReconError("depth backend 'file' needs the maps: pass --depth-files PATH (folder or .npz)")
        try:
            self.dvd.validate("depth.dvd")
            self.stereo.validate("depth.stereo")
            if self.file is not None:
                self.file.validate("depth.file")
        except DepthError as e:
            raise ReconError(str(e)) from e
        return self


def _prior_frames(cams: CameraSet, split: Split) -> list[int]:
    T = len(cams)
    prior = sorted(split.prior)
    bad = [i for i in prior if not 0 <= i < T]
    if bad:
        raise ReconError(f"split.json names prior frames {bad[:5]} but cameras.json has {T} frames: re-run the split")
    if not prior:
        raise ReconError("split.json has no prior frames to compute depth for")
    return prior


def _posed_frames(backend: str, prior: list[int], cams: CameraSet) -> list[int]:
    """The prior frames the backend works on: all of them, or for stereo the registered ones (>= 2)."""
    if backend != "stereo":
        return prior
    reg = [i for i in prior if cams.registered[i]]
    if len(reg) < 2:
        raise ReconError(
            f"stereo needs at least 2 registered frames among the {len(prior)} prior frames, got {len(reg)} "
            "(with a sparse split, --prior-frames non-test computes the prior on every frame but the test views)"
        )
    return reg


def _sfm_points(paths: RunPaths, cams: CameraSet, frame_ids: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """SfM points [N,3] (scene units) and, per frame of `frame_ids`, the indices of the points it observes."""
    rec = load_reconstruction(paths.sfm_dir)
    ids = sorted(rec.points3D)
    points = np.array([rec.points3D[p].xyz for p in ids], np.float64).reshape(-1, 3)
    row = {p: n for n, p in enumerate(ids)}
    obs = sfm_observations(rec, cams, frame_ids, max_reproj_error=np.inf, min_track_length=0)
    empty = np.zeros(0, np.int64)
    observed = [np.array([row[int(p)] for p in obs[i].point_ids], np.int64) if i in obs else empty for i in frame_ids]
    return points, observed


def _pose_bounds(cams: CameraSet, frame_ids: list[int]) -> np.ndarray | None:
    """[len(frame_ids), 2] (near, far) from cameras.json sfm.bounds (LLFF poses); None unless every frame has them."""
    rows = cams.sfm.get("bounds")
    if not isinstance(rows, list) or len(rows) != len(cams) or any(rows[i] is None for i in frame_ids):
        return None
    return np.array([rows[i] for i in frame_ids], np.float64).reshape(len(frame_ids), 2)


def depth_frames(paths: RunPaths, cams: CameraSet, frame_ids: list[int], sfm: bool = False) -> DepthFrames:
    """What a depth backend gets for the run's frames `frame_ids`: their images (read here, and only
    these), names, K, c2w, their positions among the run's frames and the pose file's near/far bounds (LLFF);
    with `sfm` also the SfM points."""
    files = [cams.files[i] for i in frame_ids]
    missing = [paths.root / f for f in files if not (paths.root / f).exists()]
    if missing:
        raise ReconError(
            f"frame {missing[0]} listed in cameras.json is missing ({len(missing)} missing): re-run the pose stage"
        )
    size = (cams.width, cams.height)
    images = np.stack([read_rgb(paths.root / f, size, resize=False) for f in files])
    points, observed = _sfm_points(paths, cams, frame_ids) if sfm else (None, None)
    return DepthFrames(
        bounds=_pose_bounds(cams, frame_ids),
        images=images,
        names=files,
        K=cams.K[frame_ids],
        c2w=cams.c2w[frame_ids],
        points=points,
        observed=observed,
        index=list(frame_ids),
        sequence_length=len(cams),
    )


def _estimate(backend: DepthBackend, frames: DepthFrames) -> DepthResult:
    """The backend's result, with a progress bar."""
    with progress() as bar:
        task = bar.add_task(f"{backend.name} depth", total=len(frames), status="")
        return backend.estimate(frames, progress=lambda done, total: bar.update(task, completed=done, total=total))


def _on_prior(result: DepthResult, posed: list[int], prior: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(disparity, confidence) over all prior frames; frames the backend did not get are 0 (no depth)."""
    if posed == prior:
        return result.disparity, result.confidence
    pos = {i: n for n, i in enumerate(prior)}
    rows = [pos[i] for i in posed]
    disparity = np.zeros((len(prior), *result.disparity.shape[1:]), np.float32)
    confidence = np.zeros_like(disparity)
    disparity[rows] = result.disparity
    confidence[rows] = 1.0 if result.confidence is None else result.confidence
    return disparity, confidence


def _sparse_hint(backend: str, prior: list[int], split: Split, num_frames: int) -> str:
    """Advice for a stereo prior that failed on a few far-apart training views."""
    if backend == "stereo" and len(prior) < num_frames - len(split.test):
        return (
            ": the views are too few or too far apart to match; --prior-frames non-test lets stereo use every "
            "frame but the test views (fusion and the depth loss still use the training views only)"
        )
    return ""


def write_depth_video(path: str | Path, disparity: np.ndarray, fps: float = 10.0) -> tuple[float, float]:
    """Colour-mapped disparity [T,H,W] (one normalisation for all frames) as an H.264 mp4, written atomically.

    Odd sizes are padded by one black row/column (yuv420p needs even sizes). Returns the (lo, hi) disparity
    range mapped to the ends of the colour map.
    """
    frames, value_range = preview_frames(disparity)
    write_mp4(path, frames, fps, options={"crf": "18", "preset": "veryfast"}, pad="black")
    return value_range


def _write(paths: RunPaths, cfg: Config, result: DepthResult, prior, disp_sub, conf_sub, T: int):
    """disparity.npz, windows.json and (if asked) depth.mp4; returns the preview's value range or None."""
    H, W = disp_sub.shape[1:]
    disparity = np.zeros((T, H, W), np.float32)
    confidence = np.ones((T, H, W), np.float32)
    computed = np.zeros(T, bool)
    disparity[prior] = disp_sub
    computed[prior] = True
    if conf_sub is not None:
        confidence[prior] = np.clip(np.asarray(conf_sub, np.float32), 0.0, 1.0)
    DisparityMaps(disparity, computed, confidence, result.kind, result.backend, np.asarray(prior)).save(
        paths.disparity_npz
    )
    windows = {"backend": result.backend, "kind": result.kind, "frames": prior, "windows": result.windows}
    write_json(paths.windows_json, {**windows, "report": _jsonable(result.report)})
    return write_depth_video(paths.depth_preview_mp4, disp_sub, fps=cfg.preview_fps) if cfg.preview else None


def preflight(cfg: Config) -> None:
    """What can be checked before any stage of the command runs: `--backend dvd` needs its weights on disk or
    downloadable now, so an offline machine hears it in seconds, not after the frames and poses."""
    if cfg.backend == "dvd":
        from depth.dvd.weights import require_obtainable

        require_obtainable(cfg.dvd)


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    """Compute the depth prior for the prior frames and write disparity.npz, windows.json, depth.mp4.

    Returns a summary dict (backend, kind, frames, mean coverage, seconds, why the backend was chosen).
    """
    paths = ctx.paths
    cams = CameraSet.load(paths.cameras_json)
    split = Split.load(paths.split_json)
    prior = _prior_frames(cams, split)
    name, reason = select_backend(cfg.backend, cfg.dvd)
    if cfg.backend == "auto":
        info(f"depth: backend {name} ({reason})")
    backend = make_backend(name, {"dvd": cfg.dvd, "stereo": cfg.stereo, "file": cfg.file}[name])
    posed = _posed_frames(name, prior, cams)
    frames = depth_frames(paths, cams, posed, sfm=name == "stereo")
    t0 = time.perf_counter()
    with dvd_windows(cfg.dvd) if name == "dvd" else contextlib.nullcontext() as runner:
        if isinstance(backend, DVDBackend):  # its windows on Ray actors with depth.dvd.workers > 1 (recon.cluster)
            backend.window_runner = runner
        result = _estimate(backend, frames).validate(len(frames), frames.size)
    seconds = time.perf_counter() - t0
    disp_sub, conf_sub = _on_prior(result, posed, prior)
    if name == "stereo":
        result.report.update(frames=len(prior), unregistered_frames=[i for i in prior if i not in posed])
    if not np.any(disp_sub > 0):
        raise ReconError(
            f"depth backend {name} produced no valid depth on any of the {len(prior)} prior frames"
            + _sparse_hint(name, prior, split, len(cams))
        )
    value_range = _write(paths, cfg, result, prior, disp_sub, conf_sub, len(cams))
    coverage = (disp_sub > 0).mean(axis=(1, 2))
    info(f"depth: {name} on {len(prior)} frames, mean coverage {coverage.mean():.0%}, {seconds:.1f} s")
    return {
        "backend": name,
        "reason": reason,
        "kind": result.kind,
        "frames": len(prior),
        "coverage_mean": float(coverage.mean()),
        "coverage_min": float(coverage.min()),
        "seconds": seconds,
        "seconds_per_frame": seconds / len(prior),
        "windows": len(result.windows),
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
