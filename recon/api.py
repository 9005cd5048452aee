"""Python API: run the pipeline and read a run directory back as arrays.

    from recon import api
    run = api.run("clip.mp4", "runs/clip", train={"iterations": 500}, depth={"backend": "stereo"})
    run.frames        # uint8 [T, H, W, 3]
    run.cameras       # CameraSet: K [T,3,3], c2w [T,4,4] (OpenCV), registered [T]
    run.depth         # float32 [T, H, W] aligned z-depth in scene units, 0 = invalid
    run.points        # float32 [N, 3] fused cloud, run.point_colors uint8 [N, 3]
    run.render(i)     # the trained Gaussians seen from camera i: uint8 [H, W, 3]

Everything is read lazily from the files the stages wrote (layout: recon.layout.RunPaths), so
`load_run` on a half-finished run works and raises ReconError only for what is missing.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from recon.artifacts.cameras import CameraSet
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths


def make_config(preset: str = "auto", config: str | Path | None = None, **sections: dict[str, Any]):
    """A RunConfig as the CLI builds it: device preset, then a YAML file, then per-stage overrides.

    Args:
        preset: "cpu", "cuda" or "auto" (cuda when torch sees a GPU).
        config: optional YAML with one mapping per stage (frames:, poses:, depth:, ...).
        sections: stage name -> {field: value}, e.g. train={"iterations": 500}.
    """
    from recon.config import apply_mapping, load_yaml, preset_path
    from recon.pipeline import RunConfig

    if preset == "auto":
        import torch

        preset = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = RunConfig()
    from splat.train import TrainConfig

    cfg = dataclasses.replace(cfg, train=TrainConfig.preset(preset))
    cfg = apply_mapping(cfg, load_yaml(preset_path(preset)))
    if config is not None:
        cfg = apply_mapping(cfg, load_yaml(config))
    for name, values in sections.items():
        if not isinstance(values, dict):
            raise ReconError(f"override {name}= must be a mapping of fields, e.g. {name}={{'field': value}}")
        cfg = apply_mapping(cfg, {name: values})
    return cfg


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
    from recon.pipeline import STAGES, run_pipeline

    if until not in STAGES:
        raise ReconError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    cfg = make_config(preset, config, **sections)
    run_pipeline(input, out, cfg, force=tuple(force), stages=list(STAGES[: STAGES.index(until) + 1]))
    return load_run(out)


def load_run(out: str | Path) -> Run:
    """Open run directory `out` for reading (nothing is loaded until used)."""
    root = Path(out)
    if not root.is_dir():
        raise ReconError(f"run directory {root} does not exist")
    return Run(RunPaths(root))


@dataclasses.dataclass
class Run:
    """A run directory's outputs as arrays (lazy; see module docstring)."""

    paths: RunPaths

    @cached_property
    def cameras(self) -> CameraSet:
        return CameraSet.load(self.paths.cameras_json)

    @cached_property
    def frame_files(self) -> list[str]:
        if self.paths.cameras_json.exists():
            return self.cameras.files
        files = sorted(p.relative_to(self.paths.root).as_posix() for p in self.paths.frames_dir.glob("*.png"))
        if not files:
            raise ReconError(f"{self.paths.frames_dir} has no frames: run the frames stage first")
        return files

    def frame(self, i: int) -> np.ndarray:
        """Frame i as uint8 [H, W, 3] RGB."""
        from PIL import Image

        return np.asarray(Image.open(self.paths.root / self.frame_files[i]).convert("RGB"))

    @cached_property
    def frames(self) -> np.ndarray:
        """All frames, uint8 [T, H, W, 3] RGB."""
        return np.stack([self.frame(i) for i in range(len(self.frame_files))])

    @cached_property
    def split(self) -> dict[str, Any]:
        """{"train": [...], "test": [...], "prior": [...], "protocol": str} (frame indices)."""
        return _read_json(self.paths.split_json, "split")

    @cached_property
    def disparity(self) -> np.ndarray:
        """Depth-stage output, float32 [T, H, W] (relative or metric disparity, see disparity_info)."""
        return _read_npz(self.paths.disparity_npz, "depth", "disparity").astype(np.float32)

    @cached_property
    def disparity_info(self) -> dict[str, Any]:
        """kind, backend and the per-frame `computed` flags of the depth stage."""
        if not self.paths.disparity_npz.exists():
            raise ReconError(f"{self.paths.disparity_npz} not found: run the depth stage first")
        with np.load(self.paths.disparity_npz) as z:
            return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files if k != "disparity"}

    @cached_property
    def depth(self) -> np.ndarray:
        """Aligned z-depth, float32 [T, H, W] in scene units, 0 = invalid."""
        return _read_npz(self.paths.aligned_npz, "align", "depth").astype(np.float32)

    @cached_property
    def alignment(self) -> dict[str, Any]:
        return _read_json(self.paths.alignment_json, "align")

    @cached_property
    def _cloud(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.paths.init_ply.exists():
            raise ReconError(f"{self.paths.init_ply} not found: run the fuse stage first")
        import open3d as o3d

        pcd = o3d.io.read_point_cloud(str(self.paths.init_ply))
        pts = np.asarray(pcd.points, np.float32)
        cols = (
            (np.asarray(pcd.colors) * 255 + 0.5).astype(np.uint8)
            if pcd.has_colors()
            else np.zeros((len(pts), 3), np.uint8)
        )
        return pts, cols

    @property
    def points(self) -> np.ndarray:
        """Fused point cloud, float32 [N, 3] in scene units."""
        return self._cloud[0]

    @property
    def point_colors(self) -> np.ndarray:
        """uint8 [N, 3] RGB of `points`."""
        return self._cloud[1]

    @cached_property
    def gaussians(self) -> dict[str, np.ndarray]:
        """Trained Gaussians (splat.ply layout: means, scales (log), quats, opacities (logit), sh0, shN)."""
        if not self.paths.gaussians_ply.exists():
            raise ReconError(f"{self.paths.gaussians_ply} not found: run the train stage first")
        from splat.ply import read_gaussian_ply

        return read_gaussian_ply(self.paths.gaussians_ply)

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return _read_json(self.paths.metrics_json, "train")

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return _read_json(self.paths.manifest, "any")

    @property
    def train_log(self) -> list[dict[str, Any]]:
        """splat/train_log.jsonl rows (step, loss terms, psnr, num_gaussians)."""
        log = self.paths.splat_dir / "train_log.jsonl"
        if not log.exists():
            raise ReconError(f"{log} not found: run the train stage first")
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def render(self, i: int, width: int | None = None, height: int | None = None, device: str = "auto") -> np.ndarray:
        """The trained Gaussians seen from camera i of the run, uint8 [H, W, 3] (frame size by default)."""
        import torch

        from splat.render import rasterization

        cams = self.cameras
        if not 0 <= i < len(cams):
            raise ReconError(f"camera {i} out of range: the run has {len(cams)} cameras")
        W, H = width or cams.width, height or cams.height
        K = cams.K[i].copy()
        K[0] *= W / cams.width
        K[1] *= H / cams.height
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
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
        """Write (or refresh) RUN/report.html and return its path."""
        from recon.report import write_report

        return write_report(self.paths)


def _read_json(path: Path, stage: str) -> Any:
    if not path.exists():
        raise ReconError(f"{path} not found: run the {stage} stage first")
    return json.loads(path.read_text())


def _read_npz(path: Path, stage: str, key: str) -> np.ndarray:
    if not path.exists():
        raise ReconError(f"{path} not found: run the {stage} stage first")
    with np.load(path) as z:
        if key not in z.files:
            raise ReconError(f"{path} has no '{key}' array")
        return z[key]
