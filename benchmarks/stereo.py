"""Benchmark of the plane-sweep stereo backend on 7-Scenes redkitchen (SfM poses, 320x240).

For each number of depth hypotheses: seconds per frame, peak memory of the stereo call, and depth
accuracy against the GT depth (stereo depth x the Sim(3) scale of the SfM trajectory onto the GT
trajectory; GT resized to the frame size with nearest neighbour, and also registered onto the colour
image as tests/test_stereo.py does; pixels the stereo marks valid).

    .venv/bin/python benchmarks/stereo.py                   # builds the 60-frame SfM run in /tmp
    .venv/bin/python benchmarks/stereo.py --run RUN --planes 64 128 --cost census ncc

Each configuration runs in its own subprocess, so the peak resident memory (CPU) or the peak CUDA
allocation is that of one stereo run. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KITCHEN = ROOT.parent / "shared" / "data" / "7scenes_redkitchen_rgbd"


def build_run(root: Path) -> Path:
    """The test suite's recipe: 60 frames of the redkitchen video at 320x240, default SfM."""
    from recon.artifacts import RunPaths
    from recon.stages import StageContext, frames, poses

    paths = RunPaths(root)
    if not paths.cameras_json.exists():
        frames.run(StageContext(paths, KITCHEN / "video_30fps.mp4"), frames.Config(max_frames=60, max_size=320))
        poses.run(StageContext(paths), poses.Config())
    return root


def gt_depth(source_index: int) -> np.ndarray | None:
    """7-Scenes GT z-depth [480, 640] in metres (0 = invalid) of a video frame, or None (every 3rd has one)."""
    from PIL import Image

    p = KITCHEN / "depth" / f"frame-{int(source_index):06d}.depth.png"
    if not p.exists():
        return None
    raw = np.asarray(Image.open(p)).astype(np.uint16)
    depth = raw.astype(np.float32) / 1000.0
    depth[(raw == 0) | (raw == 65535)] = 0.0
    return depth


def gt_centres(source_indices: list[int]) -> np.ndarray:
    """[N, 3] GT camera centres (metres) of video frames."""
    poses = {}
    for line in (KITCHEN / "poses_c2w_all_frames.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            v = line.split()
            poses[int(v[1])] = np.array(v[2:18], dtype=np.float64).reshape(4, 4)
    return np.stack([poses[int(i)][:3, 3] for i in source_indices])


def registered_gt(full: np.ndarray, W: int, H: int) -> np.ndarray:
    """7-Scenes GT depth [480,640] sampled at the colour pixels of a WxH frame, using the registration
    PROVENANCE.md measured: depth pixel = 1.10 x (colour pixel - centre) + centre + (9, 5) at 640x480."""
    Hd, Wd = full.shape
    v, u = np.mgrid[0:H, 0:W]
    ud = np.round(1.10 * ((u + 0.5) * Wd / W - Wd / 2) + Wd / 2 + 9 - 0.5).astype(int)
    vd = np.round(1.10 * ((v + 0.5) * Hd / H - Hd / 2) + Hd / 2 + 5 - 0.5).astype(int)
    ok = (ud >= 0) & (ud < Wd) & (vd >= 0) & (vd < Hd)
    out = np.zeros((H, W), np.float32)
    out[ok] = full[vd[ok], ud[ok]]
    return out


def worker(run: Path, planes: int, cost: str, frames_limit: int, device: str, threads: int) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from depth.geometry import umeyama
    from depth.metrics import depth_metrics
    from depth.stereo import StereoConfig, depth_range, stereo_depth
    from recon.artifacts import CameraSet, RunPaths
    from recon.stages.depth import depth_frames

    paths = RunPaths(run)
    cams = CameraSet.load(paths.cameras_json)
    reg = [i for i in range(len(cams)) if cams.registered[i]]
    gt_all = {i: gt_depth(cams.source_index[i]) for i in reg}
    gt_full = {i: d for i, d in gt_all.items() if d is not None}
    ids = [i for i in reg if i in gt_full][:frames_limit]
    s, _, _ = umeyama(cams.centers[reg], gt_centres([cams.source_index[i] for i in reg]))
    frames = depth_frames(paths, cams, reg, sfm=True)  # every registered frame may serve as a neighbour
    assert frames.K is not None and frames.c2w is not None, "depth_frames always fills K and c2w"
    assert frames.points is not None and frames.observed is not None, "depth_frames(sfm=True) fills the SfM points"
    pos = {i: n for n, i in enumerate(reg)}
    # an unknown name reaches the stereo module, which rejects it with a DepthError
    cfg = StereoConfig(num_planes=planes, cost=cast(Literal["census", "ncc"], cost), device=device)
    rows = [pos[i] for i in ids]
    near, far = depth_range(frames.c2w[rows], frames.points, [frames.observed[r] for r in rows], cfg.range_percentiles)
    gt = np.stack([gt_full[i][1::2, 1::2] for i in ids])  # nearest 640x480 -> 320x240
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    depth, _ = stereo_depth(frames.images, frames.K, frames.c2w, rows, (near, far), cfg)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak_mb = (
        (torch.cuda.max_memory_allocated() / 2**20)
        if cuda
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    )
    m = depth_metrics(depth * s, gt)
    med = depth_metrics(depth * s, gt, align="median")
    reg_gt = np.stack([registered_gt(gt_full[i], cams.width, cams.height) for i in ids])
    m_reg = depth_metrics(depth * s, reg_gt)
    return {
        "planes": planes,
        "cost": cost,
        "frames": len(ids),
        "size": f"{cams.width}x{cams.height}",
        "s_per_frame": seconds / len(ids),
        "peak_mb": peak_mb,
        "memory": "cuda peak alloc" if cuda else "CPU RSS growth",
        "abs_rel": m["abs_rel"],
        "delta1": m["delta1"],
        "coverage": m["coverage"],
        "abs_rel_median_aligned": med["abs_rel"],
        "abs_rel_registered": m_reg["abs_rel"],
        "delta1_registered": m_reg["delta1"],
        "coverage_registered": m_reg["coverage"],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run",
        type=Path,
        default=Path("/tmp/dvd_splat_bench_stereo_run"),
        help="run dir with cameras.json + sfm (built if missing)",
    )
    ap.add_argument("--planes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--cost", nargs="+", default=["census"])
    ap.add_argument("--frames", type=int, default=100, help="at most this many GT frames")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--worker", nargs=2, metavar=("PLANES", "COST"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.run, int(args.worker[0]), args.worker[1], args.frames, args.device, args.threads)))
        return
    build_run(args.run)
    rows = []
    for cost in args.cost:
        for planes in args.planes:
            cmd = [
                sys.executable,
                __file__,
                "--run",
                str(args.run),
                "--frames",
                str(args.frames),
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--worker",
                str(planes),
                cost,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"worker failed for planes={planes} cost={cost}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"\nplane-sweep stereo, 7-Scenes redkitchen, {r0['size']}, {r0['frames']} GT frames, threads {r0['threads']}")
    print(
        f"{'cost':<7} {'planes':>6} {'s/frame':>8} {'peak MB':>8} {'AbsRel':>7} {'delta1':>7} {'coverage':>8} "
        f"{'AbsRel(med)':>11} {'AbsRel(reg)':>11} {'d1(reg)':>7}"
    )
    for r in rows:
        print(
            f"{r['cost']:<7} {r['planes']:>6} {r['s_per_frame']:>8.2f} {r['peak_mb']:>8.0f} {r['abs_rel']:>7.4f} "
            f"{r['delta1']:>7.4f} {r['coverage']:>8.3f} {r['abs_rel_median_aligned']:>11.4f} "
            f"{r['abs_rel_registered']:>11.4f} {r['delta1_registered']:>7.4f}"
        )
    print(f"(memory: {rows[0]['memory']}; AbsRel(med): after a median scale, which removes the SfM-vs-GT scale bias;")
    print(" (reg): against GT depth registered onto the colour image, zoom 1.10 + shift (9, 5) px at 640x480)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
