"""Pose-stage benchmark on the 7-Scenes redkitchen video (450 frames, 30 fps, GT trajectory).

For each frame count N: frames (N frames spread over the video, long side --max-size), then SfM with
pycolmap on the CPU; prints frames, registered, 3D points, mean reprojection error, seconds per step
(extract / match / map / undistort) and the ATE RMSE of the camera centres after Sim(3) alignment to GT.

    .venv/bin/python benchmarks/poses.py --sizes 60 150 450 [--mapper global] [--max-size 320] [--keep DIR]

--ladder: the SfM retry ladder (recon.poses.sfm_attempts) on the shared real clips and 7-Scenes (control), with
the CPU preset's frames (48 frames, long side 320) or --max-frames/--max-size: every attempt is run on its own
(features reused) and the table gives clip, frames, size, attempt, registered and seconds.

    .venv/bin/python benchmarks/poses.py --ladder [--max-frames 48] [--max-size 320]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depth.geometry import ate_rmse  # noqa: E402
from recon.artifacts import CameraSet, FramesIndex, RunPaths  # noqa: E402
from recon.console import set_verbosity  # noqa: E402
from recon.poses import SfmPlan, reconstruct, sfm_attempts  # noqa: E402
from recon.stages import StageContext  # noqa: E402
from recon.stages import frames as frames_stage  # noqa: E402
from recon.stages import poses as poses_stage  # noqa: E402
from recon.stages.frames import Config as FramesConfig  # noqa: E402
from recon.stages.poses import Config as PosesConfig  # noqa: E402

KITCHEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_rgbd"
CLIPS = {
    "davis_rollercoaster": KITCHEN.parent / "real_videos" / "davis_rollercoaster.mp4",
    "cotracker_apple": KITCHEN.parent / "real_videos" / "cotracker_apple.mp4",
    "cotracker_cat": KITCHEN.parent / "real_videos" / "cotracker_cat.mp4",
    "7scenes_redkitchen": KITCHEN / "video_30fps.mp4",
}


def gt_poses() -> dict[int, np.ndarray]:
    out = {}
    for line in (KITCHEN / "poses_c2w_all_frames.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        v = line.split()
        out[int(v[1])] = np.array(v[2:18], dtype=np.float64).reshape(4, 4)
    return out


def bench(n: int, root: Path, args: argparse.Namespace, gt: dict[int, np.ndarray]) -> dict:
    paths = RunPaths(root / f"redkitchen_{n}")
    shutil.rmtree(paths.root, ignore_errors=True)
    t0 = time.perf_counter()
    frames_stage.run(
        StageContext(paths, KITCHEN / "video_30fps.mp4"),
        FramesConfig(max_frames=n, max_size=args.max_size, dedup=False),
    )
    t_frames = time.perf_counter() - t0
    t0 = time.perf_counter()
    poses_stage.run(StageContext(paths), PosesConfig(mapper=args.mapper, num_threads=args.threads))
    t_poses = time.perf_counter() - t0
    cs = CameraSet.load(paths.cameras_json)
    idx = [s for s, r in zip(cs.source_index, cs.registered) if r]
    rmse, _, _ = ate_rmse(cs.centers[cs.registered], np.stack([gt[i][:3, 3] for i in idx]))
    sec = cs.sfm["seconds"]
    return {
        "frames": len(cs),
        "registered": int(cs.registered.sum()),
        "points": cs.sfm["points"],
        "reproj_px": cs.sfm["mean_reprojection_error_px"],
        "extract_s": sec["extract"],
        "match_s": sec["match"],
        "map_s": sec["map"],
        "undistort_s": sec["undistort"],
        "poses_total_s": t_poses,
        "frames_s": t_frames,
        "ate_cm": 100 * rmse,
        "focal_px": float(cs.K[0, 0, 0]),
    }


def ladder(root: Path, args: argparse.Namespace) -> None:
    """Each attempt of the retry ladder on each clip (frames as the CPU preset makes them); prints the table."""
    rows = []
    for clip, video in CLIPS.items():
        paths = RunPaths(root / clip)
        shutil.rmtree(paths.root, ignore_errors=True)
        frames_stage.run(StageContext(paths, video), FramesConfig(max_frames=args.max_frames, max_size=args.max_size))
        frames = FramesIndex.load(paths.frames_json)
        names = [Path(f).name for f in frames.files]
        cfg = PosesConfig(mapper=args.mapper, num_threads=args.threads)
        for attempt in sfm_attempts(frames, cfg):
            plan = SfmPlan.make(frames, cfg, attempt)
            t0 = time.perf_counter()
            rec, _, _ = reconstruct(paths.sfm_work_dir, paths.frames_dir, names, frames.size, plan, cfg)
            n = rec.num_reg_images() if rec is not None else 0
            rows.append((clip, len(names), "x".join(map(str, frames.size)), attempt.name, n, time.perf_counter() - t0))
            print(f"{clip}: {attempt.name}: {n}/{len(names)}", file=sys.stderr, flush=True)
    print(f"\nSfM retry ladder, frames: max {args.max_frames}, long side {args.max_size} px, threads {args.threads}")
    print("| clip | frames | size | attempt | registered | seconds |\n|---|---|---|---|---|---|")
    for clip, n, size, name, reg, sec in rows:
        print(f"| {clip} | {n} | {size} | {name} | {reg}/{n} | {sec:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[60, 150], help="frame counts (max 450)")
    ap.add_argument("--max-size", type=int, default=320, help="long side of the frames in pixels")
    ap.add_argument("--mapper", choices=["incremental", "global"], default="incremental")
    ap.add_argument("--threads", type=int, default=-1, help="COLMAP threads (-1 = all cores)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    ap.add_argument("--ladder", action="store_true", help="the SfM retry ladder on the shared clips")
    ap.add_argument("--max-frames", type=int, default=48, help="--ladder: frames per clip")
    args = ap.parse_args()
    set_verbosity(0)
    if args.ladder:
        root = args.keep or Path(tempfile.mkdtemp(prefix="bench_ladder_"))
        try:
            ladder(root, args)
        finally:
            if args.keep is None:
                shutil.rmtree(root, ignore_errors=True)
        return
    gt = gt_poses()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_poses_"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in args.sizes:
            rows.append(bench(n, root, args, gt))
            r = rows[-1]
            print(
                f"done {n}: {r['registered']}/{r['frames']} registered, ATE {r['ate_cm']:.2f} cm",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    cols = [
        "frames",
        "registered",
        "points",
        "reproj_px",
        "extract_s",
        "match_s",
        "map_s",
        "undistort_s",
        "poses_total_s",
        "ate_cm",
        "focal_px",
    ]
    print(f"\nredkitchen video, long side {args.max_size} px, mapper {args.mapper}, threads {args.threads}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
