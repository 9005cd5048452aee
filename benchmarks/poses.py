"""Pose-stage benchmark on the 7-Scenes redkitchen video (450 frames, 30 fps, GT trajectory).

--table (the default): for each frame count N (N frames spread over the video, long side --max-size), extract and
match once, then run the pose stage with each variant (mapper, keyframes, loop detection; extraction and matching
are reused where their settings agree, as a resumed run would). One table: frames, variant, mapper, matching,
keyframes, registered, ATE RMSE of the camera centres after Sim(3) alignment to GT, reprojection error, wall seconds
per step (extract / match / map / undistort), total, and CPU seconds of the SfM child (a loaded machine distorts
them far less than wall time). `default` marks the variant PosesConfig() picks at that N.

    .venv/bin/python benchmarks/poses.py [--sizes 150 450] [--variants incremental global keyframes ...]

--ladder: the SfM retry ladder (recon.poses.sfm_attempts) on the shared real clips and 7-Scenes (control), with
the CPU preset's frames (48 frames, long side 320) or --max-frames/--max-size: every attempt is run on its own
(features reused) and the table gives clip, frames, size, attempt, registered frames (those that keep a pose: see
recon.poses.drop_unsupported_frames) and seconds. COLMAP's threaded mapper is not deterministic: --seeds K runs every
attempt with seeds 0..K-1 and gives the registered counts of all of them.

    .venv/bin/python benchmarks/poses.py --ladder [--max-frames 48] [--max-size 320] [--seeds 4] [--clips ...]
"""

from __future__ import annotations

import argparse
import json
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
from recon.errors import ReconError  # noqa: E402
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


VARIANTS: dict[str, dict] = {
    "incremental": {"mapper": "incremental", "keyframes_above": 0},
    "global": {"mapper": "global", "keyframes_above": 0},
    "keyframes": {"mapper": "incremental", "keyframes_above": 1},
    "global+keyframes": {"mapper": "global", "keyframes_above": 1},
    "keyframes+loops": {"mapper": "incremental", "keyframes_above": 1, "loop_detection": True},
}
"""Pose-stage settings compared by --table (on top of PosesConfig()); loop detection re-matches, so it runs last."""


def bench(n: int, root: Path, args: argparse.Namespace, gt: dict[int, np.ndarray]) -> list[dict]:
    """Frames once, then the pose stage with each of args.variants on them; one row per variant."""
    paths = RunPaths(root / f"redkitchen_{n}")
    shutil.rmtree(paths.root, ignore_errors=True)
    frames_stage.run(
        StageContext(paths, KITCHEN / "video_30fps.mp4"),
        FramesConfig(max_frames=n, max_size=args.max_size, dedup=False),
    )
    frames = FramesIndex.load(paths.frames_json)
    default_key = SfmPlan.make(frames, PosesConfig(num_threads=args.threads)).keys
    rows = []
    for name in args.variants:
        cfg = PosesConfig(num_threads=args.threads, **VARIANTS[name])
        label = name + (" (default)" if SfmPlan.make(frames, cfg).keys == default_key else "")
        t0 = time.perf_counter()
        try:
            poses_stage.run(StageContext(paths), cfg)
        except ReconError as e:
            print(f"{n} {name}: failed: {e}", file=sys.stderr, flush=True)
            rows.append({"frames": len(frames), "variant": label, "registered": "failed"})
            continue
        rows.append(result_row(paths, cfg, label, gt, time.perf_counter() - t0))
        r = rows[-1]
        print(f"done {n} {name}: {r['registered']} registered, ATE {r['ATE cm']:.2f} cm", file=sys.stderr, flush=True)
    return rows


def result_row(paths: RunPaths, cfg: PosesConfig, label: str, gt: dict[int, np.ndarray], run_s: float) -> dict:
    """The table row of a finished pose stage: cameras.json against GT, and sfm_work/state.json's step times."""
    cs = CameraSet.load(paths.cameras_json)
    state = json.loads((paths.sfm_work_dir / "state.json").read_text())
    idx = [s for s, r in zip(cs.source_index, cs.registered) if r]
    rmse, _, _ = ate_rmse(cs.centers[cs.registered], np.stack([gt[i][:3, 3] for i in idx]))
    sec, steps = cs.sfm["seconds"], ("extract", "match", "map", "undistort")
    return {
        "frames": len(cs),
        "variant": label,
        "mapper": cfg.mapper,
        "matching": "sequential" + (" + loop detection" if cfg.loop_detection else ""),
        "keyframes": state["map"].get("keyframes", len(cs)),
        "registered": f"{int(cs.registered.sum())}/{len(cs)}",
        "ATE cm": 100 * rmse,
        "reproj px": cs.sfm["mean_reprojection_error_px"],
        **{f"{k} s": float(sec[k]) for k in steps},
        "total s": sum(float(sec[k]) for k in steps),
        "run s": run_s,
        "SfM CPU s": sum(float(state[k].get("cpu_seconds", "nan")) for k in steps[:3]),
    }


def ladder(root: Path, args: argparse.Namespace) -> None:
    """Each attempt of the retry ladder on each clip (frames as the CPU preset makes them); prints the table."""
    rows = []
    for clip in args.clips:
        video = CLIPS[clip]
        paths = RunPaths(root / clip)
        shutil.rmtree(paths.root, ignore_errors=True)
        frames_stage.run(StageContext(paths, video), FramesConfig(max_frames=args.max_frames, max_size=args.max_size))
        frames = FramesIndex.load(paths.frames_json)
        names = [Path(f).name for f in frames.files]
        for attempt in sfm_attempts(frames, PosesConfig()):
            counts, t0 = [], time.perf_counter()
            for seed in range(args.seeds):
                cfg = PosesConfig(mapper=args.mapper, num_threads=args.threads, seed=seed)
                plan = SfmPlan.make(frames, cfg, attempt)
                rec, _, _ = reconstruct(paths.sfm_work_dir, paths.frames_dir, names, frames.size, plan, cfg)
                counts.append(rec.num_reg_images() if rec is not None else 0)
            sec = (time.perf_counter() - t0) / args.seeds
            rows.append((clip, len(names), "x".join(map(str, frames.size)), attempt.name, counts, sec))
            print(f"{clip}: {attempt.name}: {counts} of {len(names)}", file=sys.stderr, flush=True)
    print(
        f"\nSfM retry ladder, frames: max {args.max_frames}, long side {args.max_size} px, threads {args.threads}, "
        f"seeds 0-{args.seeds - 1}"
    )
    print("| clip | frames | size | attempt | registered (per seed) | seconds (mean) |\n|---|---|---|---|---|---|")
    for clip, n, size, name, counts, sec in rows:
        print(f"| {clip} | {n} | {size} | {name} | {' '.join(map(str, counts))} | {sec:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[150, 450], help="frame counts (max 450)")
    ap.add_argument("--max-size", type=int, default=320, help="long side of the frames in pixels")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="--table rows")
    ap.add_argument("--mapper", choices=["incremental", "global"], default="incremental", help="--ladder's mapper")
    ap.add_argument("--threads", type=int, default=-1, help="COLMAP threads (-1 = all cores)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    ap.add_argument("--table", action="store_true", help="sizes x variants table (the default mode)")
    ap.add_argument("--ladder", action="store_true", help="the SfM retry ladder on the shared clips")
    ap.add_argument("--max-frames", type=int, default=48, help="--ladder: frames per clip")
    ap.add_argument("--seeds", type=int, default=1, help="--ladder: COLMAP seeds 0..K-1 per attempt")
    ap.add_argument("--clips", nargs="+", choices=list(CLIPS), default=list(CLIPS), help="--ladder's clips")
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
    rows: list[dict] = []
    try:
        for n in args.sizes:
            rows += bench(n, root, args, gt)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nredkitchen video, long side {args.max_size} px, COLMAP threads {args.threads}. Seconds: wall time of each"
    )
    print("step as a fresh run takes it (extract and match measured once per frame count, then reused); run s: this")
    print("variant's call; SfM CPU s: CPU time of the SfM child process in extract + match + map (all its threads)")
    cols = max(rows, key=len)
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = (r.get(c, "") for c in cols)
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in cells) + " |")


if __name__ == "__main__":
    main()
