"""Where every file of a run directory lives (see README "Run directory").

All code reaches run files through `RunPaths`, so the layout is defined once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # bookkeeping
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    # frames stage
    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def frames_json(self) -> Path:
        return self.root / "frames.json"

    # pose stage
    @property
    def sfm_dir(self) -> Path:
        """COLMAP binary model (cameras.bin, images.bin, points3D.bin), undistorted to PINHOLE."""
        return self.root / "sfm"

    @property
    def images_dir(self) -> Path:
        """Undistorted (PINHOLE) frames written by the pose stage; cameras.json `file` points here."""
        return self.root / "images"

    @property
    def sfm_work_dir(self) -> Path:
        """Intermediate COLMAP work (database, raw sparse models) kept so an interrupted run resumes."""
        return self.root / "sfm_work"

    @property
    def cameras_json(self) -> Path:
        return self.root / "cameras.json"

    @property
    def split_json(self) -> Path:
        """{"train": [frame indices], "test": [...], "prior": [...], "protocol": str}."""
        return self.root / "split.json"

    # depth stage
    @property
    def depth_dir(self) -> Path:
        return self.root / "depth"

    @property
    def disparity_npz(self) -> Path:
        return self.depth_dir / "disparity.npz"

    @property
    def depth_preview_mp4(self) -> Path:
        return self.depth_dir / "depth.mp4"

    @property
    def windows_json(self) -> Path:
        return self.depth_dir / "windows.json"

    @property
    def aligned_npz(self) -> Path:
        return self.depth_dir / "aligned.npz"

    @property
    def alignment_json(self) -> Path:
        return self.depth_dir / "alignment.json"

    # fusion
    @property
    def points_dir(self) -> Path:
        return self.root / "points"

    @property
    def init_ply(self) -> Path:
        return self.points_dir / "init.ply"

    # training
    @property
    def splat_dir(self) -> Path:
        return self.root / "splat"

    @property
    def gaussians_ply(self) -> Path:
        return self.splat_dir / "gaussians.ply"

    @property
    def checkpoint(self) -> Path:
        return self.splat_dir / "checkpoint.pt"

    @property
    def renders_mp4(self) -> Path:
        return self.splat_dir / "renders.mp4"

    @property
    def test_renders_dir(self) -> Path:
        return self.splat_dir / "test_renders"

    @property
    def train_log(self) -> Path:
        """One JSON object per logged training step (read_jsonl / write_jsonl)."""
        return self.splat_dir / "train_log.jsonl"

    @property
    def export_ply(self) -> Path:
        """`recon export ply RUN`: the trained Gaussians for viewers (with --full-sh: SH degree 3, zero-padded)."""
        return self.root / "export" / "gaussians.ply"

    @property
    def mesh_ply(self) -> Path:
        """Triangle mesh of the trained scene (`recon mesh`): binary PLY with vertex colours, SfM frame."""
        return self.root / "mesh" / "mesh.ply"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def eval_json(self) -> Path:
        """`recon eval`'s scores against ground truth."""
        return self.root / "eval.json"

    # export / report
    @property
    def transforms_json(self) -> Path:
        return self.root / "transforms.json"

    @property
    def ns_depth_dir(self) -> Path:
        """16-bit PNG depth maps for the nerfstudio export (depth_file_path)."""
        return self.root / "ns_depth"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"
