"""`recon eval RUN`: score a run against ground truth, when the data has it.

- Poses: camera centres of registered frames vs GT centres, after the Sim(3) (Umeyama) alignment that
  maps SfM units onto GT units -> ATE RMSE; its scale is reported and reused for depth.
- Depth: RUN/depth/aligned.npz (scene units) times that Sim(3) scale vs GT depth maps (resized to the
  frame size with nearest), on the pixels the run marks valid -> depth.metrics (AbsRel, δ1, ...,
  coverage). Without GT poses, a per-sequence median scale is used instead (and reported as such).

GT files are found from patterns with `{source_index}` (the frame's index in the source video / image
list, e.g. 'depth/frame-{source_index:06d}.depth.png'); frames whose GT file is missing are skipped.
GT poses: a per-frame pattern of 4x4 c2w text files (OpenCV axes), or one text file whose rows are
`frame_id source_index m00 ... m33`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recon.artifacts import AlignedDepth, CameraSet, RunPaths
from recon.atomic import write_json
from recon.errors import ReconError


@dataclass
class EvalConfig:
    gt_depth: str | None = None
    """Pattern of GT depth files with {source_index}, e.g. 'DATA/depth/frame-{source_index:06d}.depth.png'."""
    gt_depth_scale: float = 1000.0
    """GT depth file value per unit (1000 for millimetre PNGs)."""
    gt_depth_invalid: tuple[int, ...] = (0, 65535)
    """Raw GT values that mean 'no depth'."""
    gt_poses: str | None = None
    """Pattern of 4x4 c2w text files with {source_index}, or one file of rows 'frame_id source_index m00..m33'."""
    max_depth: float = 10.0
    """GT depth above this (in GT units) is not evaluated."""


def _read_gt_poses(spec: str, source_index: list[int]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    if "{" in spec:
        for s in source_index:
            p = Path(spec.format(source_index=s))
            if p.exists():
                out[s] = np.loadtxt(p).reshape(4, 4)
        return out
    p = Path(spec)
    if not p.exists():
        raise ReconError(f"GT pose file {p} not found")
    rows = np.loadtxt(p, ndmin=2)
    if rows.shape[1] != 18:
        raise ReconError(
            f"GT pose file {p}: expected rows 'frame_id source_index m00..m33' (18 columns), got {rows.shape[1]}"
        )
    table = {int(r[1]): r[2:].reshape(4, 4) for r in rows}
    return {s: table[s] for s in source_index if s in table}


def _read_gt_depth(path: Path, size: tuple[int, int], scale: float, invalid: tuple[int, ...]) -> np.ndarray:
    raw = np.asarray(Image.open(path))
    valid = ~np.isin(raw, invalid)
    depth = np.where(valid, raw.astype(np.float64) / scale, 0.0)
    if (depth.shape[1], depth.shape[0]) != size:
        resized = Image.fromarray(depth.astype(np.float32)).resize(size, Image.Resampling.NEAREST)
        depth = np.asarray(resized, dtype=np.float64)
    return depth


def evaluate_run(paths: RunPaths, cfg: EvalConfig) -> dict[str, Any]:
    """Compute pose and depth scores for a run; writes RUN/eval.json and returns the dict."""
    from depth.geometry import ate_rmse
    from depth.metrics import depth_metrics

    cams = CameraSet.load(paths.cameras_json)
    result: dict[str, Any] = {}
    scale = None
    if cfg.gt_poses:
        gt = _read_gt_poses(cfg.gt_poses, cams.source_index)
        idx = [i for i in range(len(cams)) if cams.registered[i] and cams.source_index[i] in gt]
        if len(idx) < 3:
            raise ReconError(f"only {len(idx)} registered frames have GT poses; at least 3 are needed")
        gt_c = np.stack([gt[cams.source_index[i]][:3, 3] for i in idx])
        rmse, _, (s, _, _) = ate_rmse(cams.centers[idx], gt_c)
        scale = float(s)
        result["poses"] = {
            "frames": len(idx),
            "ate_rmse": float(rmse),
            "sim3_scale": scale,
            "registered": int(cams.registered.sum()),
            "total": len(cams),
        }
    if cfg.gt_depth:
        if not paths.aligned_npz.exists():
            raise ReconError(f"{paths.aligned_npz} not found: run `recon align` first")
        depth = AlignedDepth.load(paths.aligned_npz, (len(cams), cams.height, cams.width)).depth
        preds, gts = [], []
        for i, s in enumerate(cams.source_index):
            p = Path(cfg.gt_depth.format(source_index=s))
            if p.exists() and depth[i].any():
                preds.append(depth[i])
                gts.append(_read_gt_depth(p, (cams.width, cams.height), cfg.gt_depth_scale, cfg.gt_depth_invalid))
        if not preds:
            raise ReconError(f"no frame with depth has a GT depth file matching {cfg.gt_depth!r}")
        pred = np.stack(preds).astype(np.float64)
        gt_d = np.stack(gts)
        if scale is not None:
            m = depth_metrics(pred * scale, gt_d, align="none", max_depth=cfg.max_depth)
            m["scale_source"] = "sim3 of camera centres"
        else:
            m = depth_metrics(pred, gt_d, align="median", max_depth=cfg.max_depth)
            m["scale_source"] = "median (no GT poses given)"
        m["frames"] = len(preds)
        result["depth"] = m
    if not result:
        raise ReconError("nothing to evaluate: give --gt-depth and/or --gt-poses")
    write_json(paths.eval_json, result)
    return result
