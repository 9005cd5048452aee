"""Export a run as a nerfstudio dataset: RUN/transforms.json.

nerfstudio's `NerfstudioDataParser` (and so `ns-train splatfacto --data RUN/` or our own method) reads
it directly: paths are relative to RUN, the frames are the undistorted PINHOLE images the pose stage
wrote (RUN/images/), and c2w uses OpenGL camera axes (x right, y up, looking along -z), converted at
this boundary with recon.cameras.opencv_to_opengl. The world frame is the run's own (SfM units, no
re-orientation); nerfstudio's auto-orient/centre/scale then applies on load as usual.

Only registered frames are listed. Shared intrinsics are written once at the top level, otherwise
per frame. Optional per-frame `depth_file_path` (16-bit PNG depth; nerfstudio multiplies by
`depth_unit_scale_factor` to get scene units) and a top-level `ply_file_path` (initial point cloud,
in the same world frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recon.atomic import write_json
from recon.artifacts.cameras import CameraSet
from depth.geometry import opencv_to_opengl
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths


def _rel(paths: RunPaths, p: str | Path) -> str:
    """A path relative to RUN (as given if already relative)."""
    p = Path(p)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(paths.root.resolve())
        except ValueError as e:
            raise ReconError(f"export: {p} is outside the run directory {paths.root}") from e
    return p.as_posix()


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
    if depth_files is not None:
        if len(depth_files) == len(cs):
            depth_by_frame = list(depth_files)
        elif len(depth_files) == len(reg):
            depth_by_frame = [None] * len(cs)
            for i, d in zip(reg, depth_files):
                depth_by_frame[i] = d
        else:
            raise ReconError(
                f"export: {len(depth_files)} depth files given, expected one per frame ({len(cs)}) or per registered frame ({len(reg)})"
            )
        missing = [int(i) for i in reg if not depth_by_frame[i]]
        if missing and len(missing) < len(reg):
            raise ReconError(
                f"export: frames {missing[:5]} have no depth file; nerfstudio needs depth for every frame or none"
            )
        if len(missing) == len(reg):
            depth_by_frame = None
    else:
        depth_by_frame = None

    Ks = cs.K[reg]
    shared = bool(np.allclose(Ks, Ks[0], atol=1e-9))
    intr = lambda K: {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}  # noqa: E731
    out: dict[str, Any] = {"camera_model": "PINHOLE", "w": int(cs.width), "h": int(cs.height)}
    if shared:
        out.update(intr(Ks[0]))
    frames = []
    for i in reg:
        fr: dict[str, Any] = {
            "file_path": cs.files[i],
            "transform_matrix": opencv_to_opengl(cs.c2w[i]).tolist(),
            "source_index": int(cs.source_index[i]),
        }
        if not shared:
            fr.update(intr(cs.K[i]))
        if depth_by_frame is not None:
            fr["depth_file_path"] = depth_by_frame[i]
        frames.append(fr)
    out["frames"] = frames
    if ply_file:
        out["ply_file_path"] = ply_file
    if depth_unit_scale_factor is not None:
        out["depth_unit_scale_factor"] = float(depth_unit_scale_factor)
    return out


def export_transforms(
    paths: RunPaths,
    depth_files: list[str] | None = None,
    ply_file: str | None = None,
    depth_unit_scale_factor: float | None = None,
) -> Path:
    """Write RUN/transforms.json (nerfstudio format) from RUN/cameras.json; returns its path.

    Args:
        paths: the run.
        depth_files: depth PNG paths (absolute or relative to RUN), one per frame of cameras.json or per
            registered frame; None = no depth_file_path.
        ply_file: point cloud (absolute or relative to RUN) for `ply_file_path`; None = none.
        depth_unit_scale_factor: written as a top-level key when given (PNG value * factor = scene units).
    """
    cs = CameraSet.load(paths.cameras_json)
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
    d = transforms_dict(cs, depth_rel, ply_rel, depth_unit_scale_factor)
    write_json(paths.transforms_json, d)
    return paths.transforms_json
