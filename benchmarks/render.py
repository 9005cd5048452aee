"""Benchmark the CPU renderer (splat.render, backend "torch"): forward+backward time and peak memory.

Scene: N Gaussians initialised as a 3DGS trainer would from a point cloud: points on the surfaces
of a few objects (sphere, box, ground plane) in front of the camera, isotropic scales = mean
distance to the 3 nearest neighbours, opacity 0.1, random colours, SH degree 0. Each
configuration runs in a fresh subprocess so that its peak RSS (whole process, torch included) is
its own.

    .venv/bin/python benchmarks/render.py                      # full table
    .venv/bin/python benchmarks/render.py --counts 50000 --sizes 320x240 --repeats 5
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_scene(n: int, seed: int = 0):
    """Points on a sphere, a box and a ground plane, z forward from a camera at the origin."""
    import torch
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    k = n // 3
    sph = rng.normal(size=(k, 3))
    sph = sph / np.linalg.norm(sph, axis=1, keepdims=True) * 0.8 + [-0.6, 0.0, 4.0]
    face = rng.integers(0, 6, size=k)
    box = rng.uniform(-0.5, 0.5, size=(k, 3))
    box[np.arange(k), face % 3] = np.where(face < 3, -0.5, 0.5)
    box = box + [0.8, 0.2, 3.5]
    m = n - 2 * k
    plane = np.stack([rng.uniform(-3, 3, m), np.full(m, 0.9), rng.uniform(2.0, 8.0, m)], 1)
    pts = np.concatenate([sph, box, plane]).astype(np.float32)
    dist, _ = cKDTree(pts).query(pts, k=4)
    scale = dist[:, 1:].mean(1).clip(1e-4)
    means = torch.from_numpy(pts)
    scales = torch.from_numpy(np.repeat(scale[:, None], 3, 1).astype(np.float32))
    quats = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n, 4)).astype(np.float32)), dim=-1)
    opacities = torch.full((n,), 0.1)
    sh0 = torch.from_numpy(rng.uniform(-1, 1, size=(n, 1, 3)).astype(np.float32))
    return means, quats, scales, opacities, sh0


def run_one(
    n: int, width: int, height: int, repeats: int, chunk_elems: int, tile_size: int, threads: int | None
) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from splat.render import rasterization

    means, quats, scales, opacities, sh0 = make_scene(n)
    params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, sh0)]
    f = 0.9 * width
    Ks = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], dtype=torch.float32)
    viewmats = torch.eye(4)[None]
    target = torch.rand(1, height, width, 3)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fwd, total, cpu = [], [], []
    for i in range(repeats + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        img, alpha, meta = rasterization(
            params[0],
            params[1],
            params[2],
            params[3],
            params[4],
            viewmats,
            Ks,
            width,
            height,
            sh_degree=0,
            chunk_elems=chunk_elems,
            tile_size=tile_size,
            render_mode="RGB+ED",
        )
        meta["means2d"].retain_grad()
        t1 = time.perf_counter()
        loss = (img[..., :3] - target).abs().mean() + 0.1 * img[..., 3].mean()
        loss.backward()
        t2, c2 = time.perf_counter(), time.process_time()
        for p in params:
            p.grad = None
        if i > 0:  # first call warms up allocator and caches
            fwd.append(t1 - t0)
            total.append(t2 - t0)
            cpu.append(c2 - c0)
    n_isects = int(meta["flatten_ids"].numel())
    return {
        "n": n,
        "size": f"{width}x{height}",
        "fwd_s": float(np.median(fwd)),
        "fwd_bwd_s": float(np.median(total)),
        "cpu_s": float(np.median(cpu)),
        "isects": n_isects,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_rss_mb": base_rss,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="10000,50000,100000")
    ap.add_argument("--sizes", default="160x120,320x240,640x480")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-elems", type=int, default=None)
    ap.add_argument("--tile-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = ap.parse_args()
    from splat.cpu_raster import DEFAULT_CHUNK_ELEMS

    chunk = args.chunk_elems or DEFAULT_CHUNK_ELEMS
    if args.one:
        n, w, h = (int(v) for v in args.one.split(","))
        print(json.dumps(run_one(n, w, h, args.repeats, chunk, args.tile_size, args.threads)))
        return
    rows = []
    print(
        f"{'gaussians':>9} {'size':>8} {'isects':>8} {'fwd s':>7} {'fwd+bwd s':>9} {'cpu s':>7} "
        f"{'peak RSS MB':>11} {'base MB':>8}"
    )
    for n in (int(v) for v in args.counts.split(",")):
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{n},{w},{h}",
                "--repeats",
                str(args.repeats),
                "--chunk-elems",
                str(chunk),
                "--tile-size",
                str(args.tile_size),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            # OpenMP threads that spin while waiting are ruinous on a shared, loaded machine
            env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            if out.returncode != 0:
                print(f"{n:>9} {size:>8} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(
                f"{r['n']:>9} {r['size']:>8} {r['isects']:>8} {r['fwd_s']:>7.3f} {r['fwd_bwd_s']:>9.3f} "
                f"{r['cpu_s']:>7.3f} {r['peak_rss_mb']:>11.0f} {r['base_rss_mb']:>8.0f}"
            )
    load = os.getloadavg()[0]
    print(
        f"torch threads: {rows[0]['threads'] if rows else '?'}, tile {args.tile_size}, chunk {chunk}; median of "
        f"{args.repeats} runs after one warm-up; RGB+ED, SH degree 0, L1 + depth loss; 'cpu s' is process CPU "
        f"time (all threads); load average at the end {load:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
