"""`recon export nerfstudio RUN`: the run as a nerfstudio dataset, read in place by `ns-train`.

Writes RUN/ns_depth/NNNNNN.png (16-bit depth, value x depth_unit_scale_factor = scene units, 0 =
invalid; frames without a depth prior are all 0) and RUN/transforms.json (via
`recon.export.export_transforms`) with per-frame `depth_file_path`, top-level `ply_file_path`
(points/init.ply), `depth_unit_scale_factor` and the run's train/val/test file lists, so that
`ns-train dvd-splat --data RUN` and `ns-train splatfacto --data RUN` both read it directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from recon.atomic import atomic_dir, write_json
from recon.artifacts.cameras import CameraSet
from recon.console import info
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths

PNG_MAX = 65535


@dataclass
class NerfstudioExportConfig:
    depth: bool = True
    """Write the aligned depth as 16-bit PNGs (needs depth/aligned.npz)."""
    depth_unit_scale_factor: float | None = None
    """PNG value x this = scene units. None: 1e-3 (millimetres for metric scenes) when the depths fit
    16 bits with at least ~1000 levels at the median depth, else max depth / 65000."""


def choose_depth_unit_scale(depth: np.ndarray) -> float:
    """Scale factor for storing depth (any shape, scene units, 0 = invalid) as uint16 without overflow."""
    valid = depth[depth > 0]
    if valid.size == 0:
        return 1e-3
    top, median = float(valid.max()), float(np.median(valid))
    if top / 1e-3 <= PNG_MAX and median >= 1.0:
        return 1e-3
    return top / 65000.0


def depth_to_png16(depth: np.ndarray, unit: float) -> np.ndarray:
    """Depth [H, W] float (scene units, 0 = invalid) -> uint16 [H, W] with value * unit ~ depth.

    Depths that would round to 0 or exceed 65535 are stored as 0 (invalid) rather than clipped.
    """
    q = np.round(np.nan_to_num(depth, nan=0.0, posinf=0.0) / unit)
    q[(q < 1) | (q > PNG_MAX)] = 0
    return q.astype(np.uint16)


def load_aligned_depth(paths: RunPaths, num_frames: int) -> np.ndarray:
    """RUN/depth/aligned.npz -> depth [T, H, W] float32 (scene units, 0 = invalid) for every frame."""
    if not paths.aligned_npz.exists():
        raise ReconError(f"{paths.aligned_npz} not found: run the align stage first (or export without depth)")
    with np.load(paths.aligned_npz) as z:
        if "depth" not in z.files:
            raise ReconError(f"{paths.aligned_npz} has no 'depth' array")
        depth = np.asarray(z["depth"], dtype=np.float32)
    if depth.ndim != 3 or len(depth) != num_frames:
        raise ReconError(f"{paths.aligned_npz}: depth has shape {depth.shape}, expected [{num_frames}, H, W]")
    return depth


def write_depth_pngs(paths: RunPaths, cams: CameraSet, depth: np.ndarray, unit: float) -> list[str]:
    """Write RUN/ns_depth/<frame stem>.png for every frame; returns their paths relative to the run."""
    names = []
    with atomic_dir(paths.ns_depth_dir) as tmp:
        for i, frame_file in enumerate(cams.files):
            d = depth[i]
            if d.shape != (cams.height, cams.width):
                d = cv2.resize(d, (cams.width, cams.height), interpolation=cv2.INTER_NEAREST)
            name = f"{Path(frame_file).stem}.png"
            if not cv2.imwrite(str(tmp / name), depth_to_png16(d, unit)):
                raise ReconError(f"could not write depth PNG {paths.ns_depth_dir / name}")
            names.append(f"{paths.ns_depth_dir.name}/{name}")
    return names


def add_split_lists(transforms: Path, paths: RunPaths, cams: CameraSet) -> None:
    """Put the run's split into transforms.json as nerfstudio's train/val/test_filenames (val = test).

    nerfstudio matches these entries against the frames' `file_path`, so the same strings are used.
    Without held-out views the eval split is the training views (nerfstudio needs a non-empty one).
    """
    if not paths.split_json.exists():
        return
    meta = json.loads(transforms.read_text())
    split = json.loads(paths.split_json.read_text())
    by_name = {Path(f["file_path"]).name: f["file_path"] for f in meta.get("frames", [])}

    def file_path(i: int) -> str:
        name = Path(cams.files[i]).name
        if name not in by_name:
            raise ReconError(f"{transforms} has no frame {name} (split.json frame {i})")
        return by_name[name]

    train = [file_path(i) for i in split["train"]]
    test = [file_path(i) for i in split["test"]] or train
    meta.update(train_filenames=train, val_filenames=test, test_filenames=test)
    write_json(transforms, meta)


def export_nerfstudio(paths: RunPaths, cfg: NerfstudioExportConfig | None = None) -> Path:
    """Export run `paths` for nerfstudio (see module docstring); returns RUN/transforms.json."""
    from recon.export import export_transforms

    cfg = cfg or NerfstudioExportConfig()
    cams = CameraSet.load(paths.cameras_json)
    depth_files, unit = None, None
    if cfg.depth:
        depth = load_aligned_depth(paths, len(cams))
        unit = cfg.depth_unit_scale_factor or choose_depth_unit_scale(depth)
        depth_files = write_depth_pngs(paths, cams, depth, unit)
    ply = paths.init_ply.relative_to(paths.root).as_posix() if paths.init_ply.exists() else None
    out = export_transforms(paths, depth_files=depth_files, ply_file=ply, depth_unit_scale_factor=unit)
    add_split_lists(out, paths, cams)
    info(f"nerfstudio export: {out} ({len(cams)} frames" + (f", depth PNG unit {unit:.3g})" if unit else ", no depth)"))
    return out
