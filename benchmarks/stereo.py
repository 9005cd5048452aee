"""Benchmark of the plane-sweep stereo backend (depth.stereo): coverage and accuracy per scene, one table.

Rows (the stereo defaults of StereoConfig unless flags change them):
  7scenes GT   7-Scenes redkitchen, the test suite's run (60 frames of the video at 320x240, pycolmap SfM);
               depth for the registered frames that have GT depth (every registered frame may be a neighbour;
               the geometric check uses the computed frames), as tests/test_stereo.py does; views = computed /
               registered frames.
  7scenes 3v   frames 2, 11, 17 of that run only (video frames 15, 84, 129, ~4 s apart): nothing else to match.
  fern 20v     LLFF fern at 504x378 with its poses_bounds.npy (near/far bounds bound the sweep): all 20 views.
               This is the dense reference of the next row (LLFF has no GT depth; DVD needs weights).
  fern 3v      the LLFF protocol's 3 training views 1, 10, 19 alone, compared with the fern 20v depth.

Columns, 7-Scenes rows (GT depth registered onto the colour image, zoom 1.10 + shift (9, 5) px at 640x480,
see the data's PROVENANCE.md):
  coverage     fraction of the GT-valid pixels that have stereo depth;
  AbsRel traj  mean |d - g| / g over those pixels, d = stereo depth x the Sim(3) scale of the SfM trajectory
               onto the GT trajectory; it includes the SfM structure's own bias vs GT (GT depth / (SfM point
               depth x s) = 1.09 on this run), which no stereo can remove: it follows the focal length SfM
               self-calibrates (`--focal F` fixes it instead);
  AbsRel med   the same after one median scale over all frames (the stereo's own error);
  delta1       fraction with max(d/g, g/d) < 1.25 (median scale);
  px<=7%       fraction of the GT-valid pixels that have depth with |d - g| / g <= 0.07 (median scale);
  goal         "yes" when coverage >= 0.60 and AbsRel (the column named) <= 0.07 (issue 16): both are
               pooled over all evaluated frames' pixels, not per frame.
Fern rows: coverage = fraction of all pixels with depth; AbsRel / delta1 / px<=7% against the fern 20v depth of
the same views over the pixels valid in both (no scaling: same poses, same units).
seconds = wall time of the stereo call (all frames of the row).

    .venv/bin/python benchmarks/stereo.py --threads 1      # builds the runs in /tmp on first use
    .venv/bin/python benchmarks/stereo.py --threads 1 --no-fern --focal 280   # SfM with a fixed focal length
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # seven_scenes: the 7-Scenes GT reader the tests use

DATA = ROOT.parent / "shared" / "data"
KITCHEN = DATA / "7scenes_redkitchen_rgbd"
FERN = DATA / "llff_fern_504x378"
SPARSE_KITCHEN = [2, 11, 17]
FERN_TRAIN = [1, 10, 19]


def build_kitchen(root: Path, focal: float = 0.0) -> Path:
    """The test suite's recipe: 60 frames of the redkitchen video at 320x240, SfM on one COLMAP thread (its threaded
    mapper is not deterministic); focal > 0: with that focal length (px at 320x240) fixed (poses.refine_focal=false)
    instead of self-calibrated."""
    from recon.artifacts import RunPaths
    from recon.stages import StageContext, frames, poses

    paths = RunPaths(root)
    if not paths.cameras_json.exists():
        frames.run(StageContext(paths, KITCHEN / "video_30fps.mp4"), frames.Config(max_frames=60, max_size=320))
        cfg = poses.Config(num_threads=1, focal_px=focal, refine_focal=focal <= 0)
        poses.run(StageContext(paths), cfg)
    return root


def build_fern(root: Path) -> Path:
    """fern with its LLFF poses up to the depth stage (llff protocol, 3 training views), as tests/test_stereo.py."""
    from recon.cli import main

    if not (root / "cameras.json").exists():
        argv = ["depth", str(FERN / "images_8"), "--out", str(root), "--preset", "cpu", "-q", "--backend", "stereo"]
        llff = ["--poses", str(FERN / "poses_bounds.npy"), "--split-protocol", "llff", "--train-views", "3"]
        if main([*argv, *llff]) != 0:
            raise SystemExit("building the fern run failed")
    return root


def _stereo(frames, cfg) -> tuple[np.ndarray, float]:
    """(depth [T,H,W] scene units, seconds) of the backend on DepthFrames."""
    from depth.result import disparity_to_depth
    from depth.stereo import StereoBackend

    t0 = time.perf_counter()
    result = StereoBackend(cfg).estimate(frames)
    return disparity_to_depth(result.disparity), time.perf_counter() - t0


def _scores(d: np.ndarray, g: np.ndarray) -> dict:
    """AbsRel, delta1, px<=7% of depth d against reference g over the pixels valid in both; coverage of g's."""
    ok = (d > 0) & (g > 0)
    rel = np.abs(d[ok] - g[ok]) / g[ok]
    ratio = np.maximum(d[ok] / g[ok], g[ok] / d[ok])
    return {
        "coverage": float(ok.sum() / max((g > 0).sum(), 1)),
        "abs_rel": float(rel.mean()),
        "delta1": float(np.mean(ratio < 1.25)),
        "px7": float((rel <= 0.07).sum() / max((g > 0).sum(), 1)),
    }


def _kitchen_depth(paths, cams, ids: list[int], pool: list[int], cfg) -> tuple[np.ndarray, float]:
    """(depth [len(ids),H,W] SfM units, seconds): stereo for frames `ids`, neighbours from `pool`, range from
    the SfM points each frame observes (as StereoBackend does; tests/test_stereo.py's kitchen fixture)."""
    from depth.stereo import depth_range, stereo_depth
    from recon.stages.depth import depth_frames

    frames = depth_frames(paths, cams, pool, sfm=True)
    assert frames.K is not None and frames.c2w is not None and frames.points is not None
    assert frames.observed is not None
    pos = {i: n for n, i in enumerate(pool)}
    rows = [pos[i] for i in ids]
    near, far = depth_range(frames.c2w[rows], frames.points, [frames.observed[r] for r in rows])
    t0 = time.perf_counter()
    depth, _ = stereo_depth(frames.images, frames.K, frames.c2w, rows, (near, far), cfg)
    return depth, time.perf_counter() - t0


def kitchen_rows(run: Path, cfg) -> list[dict]:
    from depth.geometry import umeyama
    from recon.artifacts import CameraSet, RunPaths

    paths = RunPaths(run)
    cams = CameraSet.load(paths.cameras_json)
    reg = [i for i in range(len(cams)) if cams.registered[i]]
    from seven_scenes import RedkitchenGT

    ref = RedkitchenGT()
    s, _, _ = umeyama(cams.centers[reg], ref.centers([cams.source_index[i] for i in reg]))
    with_gt = [i for i in reg if ref.depth_file(cams.source_index[i]) is not None]
    rows = []
    for scene, ids, pool, views in (
        ("7scenes GT", with_gt, reg, f"{len(with_gt)}/{len(reg)}"),
        ("7scenes 3v", SPARSE_KITCHEN, SPARSE_KITCHEN, "3"),
    ):
        depth, seconds = _kitchen_depth(paths, cams, ids, pool, cfg)
        depth = depth * s
        gt = np.stack([ref.registered_depth(cams.source_index[i], cams.width, cams.height) for i in ids])
        both = (depth > 0) & (gt > 0)
        med = float(np.median(gt[both]) / np.median(depth[both]))
        m_med, m_traj = _scores(depth * med, gt), _scores(depth, gt)
        rows.append({"scene": scene, "views": views, **m_med, "abs_rel_traj": m_traj["abs_rel"], "s": seconds})
    return rows


def fern_rows(run: Path, cfg) -> list[dict]:
    from recon.artifacts import CameraSet, RunPaths
    from recon.stages.depth import depth_frames

    paths = RunPaths(run)
    cams = CameraSet.load(paths.cameras_json)
    dense, s_dense = _stereo(depth_frames(paths, cams, list(range(len(cams))), sfm=True), cfg)
    sparse, s_sparse = _stereo(depth_frames(paths, cams, FERN_TRAIN, sfm=True), cfg)
    ref = dense[FERN_TRAIN]
    m = _scores(sparse, ref)
    m["coverage"] = float((sparse > 0).mean())
    return [
        {"scene": "fern 20v", "views": len(cams), "coverage": float((dense > 0).mean()), "s": s_dense},
        {"scene": "fern 3v", "views": len(FERN_TRAIN), **m, "s": s_sparse},
    ]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kitchen-run", type=Path, default=Path("/tmp/dvd_splat_bench_stereo_run"))
    ap.add_argument("--fern-run", type=Path, default=Path("/tmp/dvd_splat_bench_stereo_fern"))
    ap.add_argument("--planes", type=int, default=None, help="depth hypotheses (default: StereoConfig's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument(
        "--focal",
        type=float,
        default=0.0,
        help="7-Scenes SfM with this focal length (px at 320x240) fixed instead of self-calibrated (its own run "
        "folder: --kitchen-run + _f<F>); the trajectory scale follows the focal length (README, 'Known focal length')",
    )
    ap.add_argument("--no-fern", action="store_true", help="7-Scenes rows only")
    args = ap.parse_args()

    from depth.stereo import StereoConfig

    cfg = StereoConfig(device=args.device, cpu_threads=args.threads)
    if args.planes:
        cfg.num_planes = args.planes
    kitchen = (
        args.kitchen_run.with_name(f"{args.kitchen_run.name}_f{args.focal:g}") if args.focal > 0 else args.kitchen_run
    )
    rows = kitchen_rows(build_kitchen(kitchen, args.focal), cfg)
    if not args.no_fern:
        rows += fern_rows(build_fern(args.fern_run), cfg)
    levels = f"scale {cfg.scale}, coarse {cfg.coarse_scale}"
    print(f"\nplane-sweep stereo (planes {cfg.num_planes}, views {cfg.num_views}, {levels})")
    head = f"{'scene':<11} {'views':>11} {'coverage':>8} {'AbsRel traj':>11} {'AbsRel med':>10} {'delta1':>6}"
    print(head + f" {'px<=7%':>6} {'goal traj':>9} {'goal med':>8} {'seconds':>7}")
    for r in rows:
        cov, a_med, a_traj = r["coverage"], r.get("abs_rel"), r.get("abs_rel_traj")
        goal_med = "-" if a_med is None else ("yes" if cov >= 0.6 and a_med <= 0.07 else "no")
        goal_traj = "-" if a_traj is None else ("yes" if cov >= 0.6 and a_traj <= 0.07 else "no")
        print(
            f"{r['scene']:<11} {r['views']!s:>11} {cov:>8.3f} {_fmt(a_traj, '.4f'):>11} {_fmt(a_med, '.4f'):>10} "
            f"{_fmt(r.get('delta1'), '.3f'):>6} {_fmt(r.get('px7'), '.3f'):>6} {goal_traj:>9} {goal_med:>8} "
            f"{r['s']:>7.1f}"
        )
    print("(fern 3v: AbsRel / delta1 / px<=7% against the fern 20v depth, no scaling; see the module doc)")


if __name__ == "__main__":
    main()
