"""Stage `export` (`recon export nerfstudio RUN`): the run as a nerfstudio dataset, read in place by `ns-train`.

Writes RUN/ns_depth/<frame stem>.png (16-bit depth, value x depth_unit_scale_factor = scene units, 0 = invalid;
frames without a depth prior are all 0) and RUN/transforms.json, which nerfstudio's `NerfstudioDataParser`
reads directly (`ns-train dvd-splat --data RUN` and `ns-train splatfacto --data RUN`):
    paths relative to RUN; the frames are the undistorted PINHOLE images the pose stage wrote (RUN/images/);
    c2w `transform_matrix` with OpenGL camera axes (x right, y up, looking along -z), converted at this
    boundary with depth.geometry.opencv_to_opengl; the world frame is the run's own (SfM units, no
    re-orientation; nerfstudio's auto-orient/centre/scale applies on load as usual); only registered frames;
    shared intrinsics once at the top level, otherwise per frame; per-frame `source_index` and
    `depth_file_path`, top-level `ply_file_path` (points/init.ply), `depth_unit_scale_factor`, and the run's
    split as train/val/test_filenames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depth.geometry import opencv_to_opengl
from recon.artifacts import AlignedDepth, CameraSet, GaussiansFile, RunPaths, Split
from recon.atomic import atomic_dir, write_json
from recon.console import info
from recon.errors import ReconError
from recon.stages import StageContext

PNG_MAX = 65535


@dataclass
class Config:
    depth: bool = True
    """Write the aligned depth as 16-bit PNGs (needs depth/aligned.npz)."""
    depth_unit_scale_factor: float | None = None
    """PNG value x this = scene units. None: 1e-3 (millimetres for metric scenes) when the depths fit
    16 bits with at least ~1000 levels at the median depth, else max depth / 65000."""


# --------------------------------------------------------------------------------------------------
# pure helpers


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


def _depth_by_frame(cs: CameraSet, reg: np.ndarray, depth_files: list[str | None] | None) -> list | None:
    """depth_files (one per frame or per registered frame) -> one entry per frame, or None for no depth."""
    if depth_files is None:
        return None
    if len(depth_files) == len(cs):
        by_frame = list(depth_files)
    elif len(depth_files) == len(reg):
        by_frame = [None] * len(cs)
        for i, d in zip(reg, depth_files):
            by_frame[i] = d
    else:
        raise ReconError(
            f"export: {len(depth_files)} depth files given, expected one per frame ({len(cs)}) "
            f"or per registered frame ({len(reg)})"
        )
    missing = [int(i) for i in reg if not by_frame[i]]
    if missing and len(missing) < len(reg):
        raise ReconError(
            f"export: frames {missing[:5]} have no depth file; nerfstudio needs depth for every frame or none"
        )
    return None if len(missing) == len(reg) else by_frame


def _intrinsics(K: np.ndarray) -> dict[str, float]:
    return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}


def transforms_dict(
    cs: CameraSet,
    depth_files: list[str | None] | None = None,
    ply_file: str | None = None,
    depth_unit_scale_factor: float | None = None,
) -> dict[str, Any]:
    """nerfstudio transforms dict for the registered frames of `cs` (paths as given, relative to RUN).

    Args:
        cs: the run's cameras (OpenCV c2w, PINHOLE K at cs.width x cs.height).
        depth_files: one entry per frame of `cs` (None/"" = no depth), or one per registered frame.
        ply_file: point cloud path relative to RUN.
        depth_unit_scale_factor: multiplier from depth PNG values to scene units (e.g. 1e-3 for mm).
    """
    reg = np.flatnonzero(cs.registered)
    if len(reg) == 0:
        raise ReconError("export: the run has no registered frames")
    depth_by_frame = _depth_by_frame(cs, reg, depth_files)
    Ks = cs.K[reg]
    shared = bool(np.allclose(Ks, Ks[0], atol=1e-9))
    out: dict[str, Any] = {"camera_model": "PINHOLE", "w": int(cs.width), "h": int(cs.height)}
    if shared:
        out.update(_intrinsics(Ks[0]))
    frames = []
    for i in reg:
        fr: dict[str, Any] = {
            "file_path": cs.files[i],
            "transform_matrix": opencv_to_opengl(cs.c2w[i]).tolist(),
            "source_index": int(cs.source_index[i]),
        }
        if not shared:
            fr.update(_intrinsics(cs.K[i]))
        if depth_by_frame is not None:
            fr["depth_file_path"] = depth_by_frame[i]
        frames.append(fr)
    out["frames"] = frames
    if ply_file:
        out["ply_file_path"] = ply_file
    if depth_unit_scale_factor is not None:
        out["depth_unit_scale_factor"] = float(depth_unit_scale_factor)
    return out


def split_lists(transforms: dict[str, Any], cs: CameraSet, split: Split) -> dict[str, list[str]]:
    """The run's split as nerfstudio's train/val/test_filenames (val = test), the frames' own `file_path`s.

    Without held-out views the eval split is the training views (nerfstudio needs a non-empty one).
    """
    by_name = {Path(f["file_path"]).name: f["file_path"] for f in transforms.get("frames", [])}

    def file_path(i: int) -> str:
        name = Path(cs.files[i]).name
        if name not in by_name:
            raise ReconError(f"transforms.json has no frame {name} (split.json frame {i})")
        return by_name[name]

    train = [file_path(i) for i in split.train]
    test = [file_path(i) for i in split.test] or train
    return {"train_filenames": train, "val_filenames": test, "test_filenames": test}


# --------------------------------------------------------------------------------------------------
# run files


def _rel(paths: RunPaths, p: str | Path) -> str:
    """A path relative to RUN (as given if already relative)."""
    p = Path(p)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(paths.root.resolve())
        except ValueError as e:
            raise ReconError(f"export: {p} is outside the run directory {paths.root}") from e
    return p.as_posix()


def _checked_files(
    paths: RunPaths, cs: CameraSet, depth_files: Sequence[str | None] | None, ply_file: str | None
) -> tuple[list[str | None] | None, str | None]:
    """Frames, depth files and point cloud exist; returns the depth files and cloud relative to RUN."""
    for f in cs.files:
        if not (paths.root / f).exists():
            raise ReconError(f"export: frame {f} listed in cameras.json is missing; re-run the pose stage")
    depth_rel = None
    if depth_files is not None:
        depth_rel = [(_rel(paths, d) if d else None) for d in depth_files]
        for d in depth_rel:
            if d and not (paths.root / d).exists():
                raise ReconError(f"export: depth file {d} does not exist")
    ply_rel = None
    if ply_file:
        ply_rel = _rel(paths, ply_file)
        if not (paths.root / ply_rel).exists():
            raise ReconError(f"export: point cloud {ply_rel} does not exist")
    return depth_rel, ply_rel


def export_transforms(
    paths: RunPaths,
    depth_files: Sequence[str | None] | None = None,
    ply_file: str | None = None,
    depth_unit_scale_factor: float | None = None,
    split: Split | None = None,
) -> Path:
    """Write RUN/transforms.json (nerfstudio format) from RUN/cameras.json; returns its path.

    Args:
        paths: the run.
        depth_files: depth PNG paths (absolute or relative to RUN), one per frame of cameras.json or per
            registered frame; None = no depth_file_path.
        ply_file: point cloud (absolute or relative to RUN) for `ply_file_path`; None = none.
        depth_unit_scale_factor: written as a top-level key when given (PNG value * factor = scene units).
        split: written as train/val/test_filenames when given.
    """
    cs = CameraSet.load(paths.cameras_json)
    depth_rel, ply_rel = _checked_files(paths, cs, depth_files, ply_file)
    d = transforms_dict(cs, depth_rel, ply_rel, depth_unit_scale_factor)
    if split is not None:
        d.update(split_lists(d, cs, split))
    write_json(paths.transforms_json, d)
    return paths.transforms_json


def write_depth_pngs(paths: RunPaths, cams: CameraSet, depth: np.ndarray, unit: float) -> list[str]:
    """Write RUN/ns_depth/<frame stem>.png for every frame; returns their paths relative to the run."""
    import cv2

    names = []
    with atomic_dir(paths.ns_depth_dir) as tmp:
        for i, frame_file in enumerate(cams.files):
            d = depth[i]
            if d.shape != (cams.height, cams.width):
                d = cv2.resize(d, (cams.width, cams.height), interpolation=cv2.INTER_NEAREST)
            name = f"{Path(frame_file).stem}.png"
            ok, png = cv2.imencode(".png", depth_to_png16(d, unit))
            if not ok:
                raise ReconError(f"could not encode depth PNG {paths.ns_depth_dir / name}")
            try:
                (tmp / name).write_bytes(png.tobytes())
            except OSError as e:  # a failed write() names no file; recon.atomic maps tmp/name to the final name
                e.filename = e.filename or str(tmp / name)
                raise
            names.append(f"{paths.ns_depth_dir.name}/{name}")
    return names


def _aligned_depth(paths: RunPaths, num_frames: int) -> np.ndarray:
    """RUN/depth/aligned.npz -> depth [T, H, W] float32 (scene units, 0 = invalid) for every frame."""
    if not paths.aligned_npz.exists():
        raise ReconError(f"{paths.aligned_npz} not found: run the align stage first (or export without depth)")
    depth = AlignedDepth.load(paths.aligned_npz).depth
    if len(depth) != num_frames:
        raise ReconError(f"{paths.aligned_npz}: depth has shape {depth.shape}, expected [{num_frames}, H, W]")
    return depth


def run(ctx: StageContext, cfg: Config | None = None) -> dict[str, Any]:
    """Export the run for nerfstudio (see module docstring); the summary names RUN/transforms.json."""
    paths, cfg = ctx.paths, cfg or Config()
    cams = CameraSet.load(paths.cameras_json)
    depth_files, unit = None, None
    if cfg.depth:
        depth = _aligned_depth(paths, len(cams))
        unit = cfg.depth_unit_scale_factor or choose_depth_unit_scale(depth)
        depth_files = write_depth_pngs(paths, cams, depth, unit)
    ply = paths.init_ply.relative_to(paths.root).as_posix() if paths.init_ply.exists() else None
    split = Split.load(paths.split_json) if paths.split_json.exists() else None
    out = export_transforms(paths, depth_files, ply, unit, split)
    info(f"nerfstudio export: {out} ({len(cams)} frames" + (f", depth PNG unit {unit:.3g})" if unit else ", no depth)"))
    return {"transforms.json": str(out)}


def export_ply(paths: RunPaths, full_sh: bool = False) -> Path:
    """`recon export ply RUN`: RUN/splat/gaussians.ply -> RUN/export/gaussians.ply (same SfM frame as
    cameras.json), with full_sh the original 3DGS layout (SH degree 3: 45 f_rest_*, untrained bands zero)."""
    g = GaussiansFile.load(paths.gaussians_ply)
    g.save(paths.export_ply, pad_to_degree=3 if full_sh else None)
    info(f"gaussians: {paths.export_ply} ({len(g)} Gaussians{', SH padded to degree 3' if full_sh else ''})")
    return paths.export_ply
