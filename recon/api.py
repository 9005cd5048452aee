"""Python API: run the pipeline and read a run directory back as arrays.

    from recon import api
    run = api.run("clip.mp4", "runs/clip", train={"iterations": 500}, depth={"backend": "stereo"})
    run.frames        # uint8 [T, H, W, 3]
    run.cameras       # CameraSet: K [T,3,3], c2w [T,4,4] (OpenCV), registered [T]
    run.depth         # float32 [T, H, W] aligned z-depth in scene units, 0 = invalid
    run.points        # float32 [N, 3] fused cloud, run.point_colors uint8 [N, 3]
    run.render(i)     # the trained Gaussians seen from camera i: uint8 [H, W, 3]

Everything is read lazily from the files the stages wrote, each through its reader in recon.artifacts, so
`load_run` on a half-finished run works and raises ReconError only for what is missing. Reading takes no lock;
`run` and `Run.report` write and hold the run directory's writer lock (recon.lock): while another process
writes into it they raise ReconError `RUN is in use by process PID since TIME`.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from recon.artifacts import (
    AlignedDepth,
    CameraSet,
    DisparityMaps,
    FramesIndex,
    GaussiansFile,
    Metrics,
    PointCloud,
    RunPaths,
    Split,
    read_json_object,
    read_jsonl,
    read_rgb,
    read_rgb_stack,
)
from recon.errors import ReconError


def make_config(preset: str = "auto", config: str | Path | None = None, **sections: dict[str, Any]):
    """A RunConfig as the CLI builds it: device preset, then a YAML file, then per-stage overrides.

    Args:
        preset: "cpu", "cuda" or "auto" (cuda when torch sees a GPU).
        config: optional YAML with one mapping per stage (frames:, poses:, depth:, ...).
        sections: stage name -> {field: value}, e.g. train={"iterations": 500}.
    """
    from recon.config import apply_mapping, load_yaml, preset_config, validate_run_config
    from recon.stages.split import protocol_settings, sparse_settings, sparse_view

    def build(cfg):
        if config is not None:
            cfg = apply_mapping(cfg, load_yaml(config))
        for name, values in sections.items():
            if not isinstance(values, dict):
                raise ReconError(f"override {name}= must be a mapping of fields, e.g. {name}={{'field': value}}")
            cfg = apply_mapping(cfg, {name: values})
        return protocol_settings(cfg)

    cfg = build(preset_config(preset))
    if sparse_view(cfg):  # the sparse-view settings sit between the preset and everything the caller set
        cfg = build(sparse_settings(preset_config(preset), cfg.split.protocol))
    return validate_run_config(cfg)


def run(
    input: str | Path | None,
    out: str | Path,
    until: str = "report",
    force: tuple[str, ...] | list[str] = (),
    preset: str = "auto",
    config: str | Path | None = None,
    **sections: dict[str, Any],
) -> Run:
    """Run the pipeline on a video / image folder into run directory `out` and return the loaded run.

    Runs every stage up to and including `until` in pipeline order (frames, poses, split, depth,
    align, fuse, train, export, report); finished stages with unchanged inputs are skipped, as with
    the CLI. `sections` override stage configs, e.g.
    `run("clip.mp4", "out", frames={"max_frames": 24}, train={"iterations": 300})`.
    """
    from recon.console import configure_logging
    from recon.pipeline import STAGES, plan, run_pipeline

    configure_logging()  # the libraries' log records print like the stages' messages
    if until not in STAGES:
        raise ReconError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    cfg = make_config(preset, config, **sections)
    # every stage up to `until` in pipeline order (the optional mesh only when asked for), the report last
    upto = [s for s in STAGES[: STAGES.index(until) + 1] if s != "mesh" or until == "mesh"]
    run_pipeline(input, out, cfg, force=tuple(force), stages=plan(until, also=upto))
    return load_run(out)


def load_run(out: str | Path) -> Run:
    """Open run directory `out` for reading (nothing is loaded until used)."""
    root = Path(out)
    if not root.is_dir():
        raise ReconError(f"run directory {root} does not exist")
    return Run(RunPaths(root))


@dataclasses.dataclass
class Run:
    """A run directory's outputs as arrays (lazy; see module docstring). Every file is read through
    recon.artifacts, so a damaged or missing file is one ReconError naming it."""

    paths: RunPaths

    @cached_property
    def cameras(self) -> CameraSet:
        return CameraSet.load(self.paths.cameras_json)

    @cached_property
    def frame_files(self) -> list[str]:
        """Frame files relative to the run: cameras.json's (undistorted) frames, else frames.json's."""
        if self.paths.cameras_json.exists():
            return self.cameras.files
        return FramesIndex.load(self.paths.frames_json).files

    def frame(self, i: int) -> np.ndarray:
        """Frame i as uint8 [H, W, 3] RGB."""
        return read_rgb(self.paths.root / self.frame_files[i])

    @cached_property
    def frames(self) -> np.ndarray:
        """All frames, uint8 [T, H, W, 3] RGB."""
        return read_rgb_stack(self.paths.root, self.frame_files)

    @cached_property
    def split(self) -> dict[str, Any]:
        """{"train": [...], "test": [...], "prior": [...], "protocol": str} (frame indices)."""
        return Split.load(self.paths.split_json).to_json()

    @cached_property
    def _disparity(self) -> DisparityMaps:
        return DisparityMaps.load(self.paths.disparity_npz)

    @property
    def disparity(self) -> np.ndarray:
        """Depth-stage output, float32 [T, H, W] (relative or metric disparity, see disparity_info)."""
        return self._disparity.disparity

    @property
    def disparity_info(self) -> dict[str, Any]:
        """kind, backend, the per-frame `computed` flags, `confidence` [T, H, W] and the prior `frames`."""
        d = self._disparity
        return {
            "computed": d.computed,
            "confidence": d.confidence,
            "kind": d.kind,
            "backend": d.backend,
            "frames": d.frames,
        }

    @cached_property
    def depth(self) -> np.ndarray:
        """Aligned z-depth, float32 [T, H, W] in scene units, 0 = invalid."""
        return AlignedDepth.load(self.paths.aligned_npz).depth

    @cached_property
    def alignment(self) -> dict[str, Any]:
        return read_json_object(self.paths.alignment_json, "alignment report", "align")

    @cached_property
    def _cloud(self) -> PointCloud:
        if not self.paths.init_ply.exists():
            raise ReconError(f"{self.paths.init_ply} not found: run the fuse stage first")
        return PointCloud.load(self.paths.init_ply)

    @property
    def points(self) -> np.ndarray:
        """Fused point cloud, float32 [N, 3] in scene units."""
        return self._cloud.xyz

    @property
    def point_colors(self) -> np.ndarray:
        """uint8 [N, 3] RGB of `points`."""
        return self._cloud.rgb

    @cached_property
    def gaussians(self) -> dict[str, np.ndarray]:
        """Trained Gaussians (splat.ply layout: means, scales (log), quats, opacities (logit), sh0, shN)."""
        return GaussiansFile.load(self.paths.gaussians_ply).params

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: summary figures (psnr, ssim, ...), `splat_per_view` and `splat_config`."""
        return Metrics.load(self.paths.metrics_json).to_json()

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return read_json_object(self.paths.manifest, "manifest", "any")

    @property
    def train_log(self) -> list[dict[str, Any]]:
        """splat/train_log.jsonl rows (step, loss terms, psnr, num_gaussians)."""
        if not self.paths.train_log.exists():
            raise ReconError(f"{self.paths.train_log} not found: run the train stage first")
        return read_jsonl(self.paths.train_log, "training log")

    def render(self, i: int, width: int | None = None, height: int | None = None, device: str = "auto") -> np.ndarray:
        """The trained Gaussians seen from camera i of the run, uint8 [H, W, 3] (frame size by default)."""
        import torch

        from depth.device import resolve_device
        from splat.render import rasterization

        cams = self.cameras
        if not 0 <= i < len(cams):
            raise ReconError(f"camera {i} out of range: the run has {len(cams)} cameras")
        W, H = width or cams.width, height or cams.height
        K = cams.K[i].copy()
        K[0] *= W / cams.width
        K[1] *= H / cams.height
        dev = resolve_device(device)
        g = {k: torch.as_tensor(v, dtype=torch.float32, device=dev) for k, v in self.gaussians.items()}
        colors = torch.cat([g["sh0"], g["shN"]], dim=1)
        sh_degree = int(round(colors.shape[1] ** 0.5)) - 1
        with torch.no_grad():
            rgb, _, _ = rasterization(
                g["means"],
                g["quats"],
                torch.exp(g["scales"]),
                torch.sigmoid(g["opacities"]),
                colors,
                torch.as_tensor(cams.w2c[i][None], dtype=torch.float32, device=dev),
                torch.as_tensor(K[None], dtype=torch.float32, device=dev),
                W,
                H,
                sh_degree=sh_degree,
            )
        return (rgb[0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)

    def report(self) -> Path:
        """Write (or refresh) RUN/report.html and return its path (holding RUN's writer lock, recon.lock)."""
        from recon.stages.report import write_report

        return write_report(self.paths)
