"""`recon eval`: pose ATE and depth metrics of a run against 7-Scenes ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from depth.geometry import ate_rmse
from recon.artifacts import AlignedDepth, CameraSet

KITCHEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_rgbd"
PATTERN = str(KITCHEN / "depth" / "frame-{source_index:06d}.depth.png")


def test_eval_scores_poses_and_depth_against_gt(redkitchen_run_copy, redkitchen_gt):
    paths = redkitchen_run_copy
    cams = CameraSet.load(paths.cameras_json)
    rmse, _, (s, _, _) = ate_rmse(cams.centers, redkitchen_gt.centers(cams.source_index))
    # Aligned depth = GT depth in SfM units, with one frame's depth corrupted by +20 %.
    depth = np.zeros((len(cams), cams.height, cams.width), np.float32)
    with_gt = [i for i, si in enumerate(cams.source_index) if si % 3 == 0]
    for i in with_gt:
        gt = redkitchen_gt.read_depth(cams.source_index[i])
        gt = np.asarray(Image.fromarray(gt.astype(np.float32)).resize((cams.width, cams.height), Image.NEAREST))
        depth[i] = gt / s
    bad = with_gt[0]
    depth[bad] *= 1.2
    T = len(depth)
    AlignedDepth(depth, depth > 0, np.ones_like(depth), np.ones(T), np.zeros(T)).save(paths.aligned_npz)

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "recon.cli",
            "eval",
            str(paths.root),
            "--gt-depth",
            PATTERN,
            "--gt-poses",
            str(KITCHEN / "poses_c2w_all_frames.txt"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((paths.root / "eval.json").read_text())
    assert res["poses"]["ate_rmse"] == np.float64(rmse).item() and res["poses"]["ate_rmse"] < 0.05
    d = res["depth"]
    assert d["frames"] == len(with_gt) and d["scale_source"].startswith("sim3")
    # Only the corrupted frame is off, by exactly 20 %: AbsRel = 0.2 * its share of the pixels.
    share = (depth[bad] > 0).sum() / (depth[with_gt] > 0).sum()
    assert abs(d["abs_rel"] - 0.2 * share) < 1e-4
    assert d["coverage"] > 0.99


def test_eval_without_gt_is_a_clear_error(redkitchen_run_copy):
    r = subprocess.run(
        [sys.executable, "-m", "recon.cli", "eval", str(redkitchen_run_copy.root)], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: nothing to evaluate: give --gt-depth and/or --gt-poses"
