"""Benchmark the CPU renderers (splat.render, backends "numba" and "torch"): forward+backward time and peak memory.

Scene: N Gaussians initialised as a 3DGS trainer would from a point cloud: points on the surfaces
of a few objects (sphere, box, ground plane) in front of the camera, isotropic scales = mean
distance to the 3 nearest neighbours, opacity 0.1, random colours, SH degree 0. Each
configuration runs in a fresh subprocess so that its peak RSS (whole process, torch included) is
its own. The compiled backend runs with 1 and 2 threads (`--threads`), the PyTorch one with torch's default
threads; `--rounds` repeats the whole table (configurations interleaved, so a busy machine slows every backend
alike) and the summary gives medians over rounds and same-round ratios.

    nice -n 0 .venv/bin/python benchmarks/render.py            # 50k@320x240 and 200k@640x480, both backends
    .venv/bin/python benchmarks/render.py --configs 50000@320x240 --rounds 5 --backends numba --threads 1,2,4
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
    n: int,
    width: int,
    height: int,
    repeats: int,
    chunk_elems: int,
    tile_size: int,
    threads: int | None,
    backend: str = "torch",
) -> dict:
    import torch

    if threads and backend == "torch":
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
    for i in range(repeats + 1):  # the first call also loads numba's compiled kernels
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
            backend=backend,
            num_threads=threads if backend == "numba" else None,
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
        "threads": (threads or _default_threads()) if backend == "numba" else torch.get_num_threads(),
        "backend": backend,
    }


def _default_threads() -> int:
    from splat.numba_raster import default_threads

    return default_threads()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="50000@320x240,200000@640x480", help="GAUSSIANS@WxH,...")
    ap.add_argument("--backends", default="numba,torch")
    ap.add_argument("--threads", default="1,2", help="numba threads to try (the torch backend: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process (median), after one warm-up")
    ap.add_argument("--rounds", type=int, default=3, help="times the whole table is measured (median, ratios)")
    ap.add_argument("--chunk-elems", type=int, default=None)
    ap.add_argument("--tile-size", type=int, default=8)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config, print JSON
    ap.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    ap.add_argument("--one-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from splat.cpu_raster import DEFAULT_CHUNK_ELEMS

    chunk = args.chunk_elems or DEFAULT_CHUNK_ELEMS
    if args.one:
        n, w, h = (int(v) for v in args.one.split(","))
        r = run_one(n, w, h, args.repeats, chunk, args.tile_size, args.one_threads, args.backend)
        print(json.dumps(r))
        return
    runs = []
    for cfg in args.configs.split(","):
        n, size = cfg.split("@")
        w, h = (int(v) for v in size.split("x"))
        for backend in args.backends.split(","):
            for t in args.threads.split(",") if backend == "numba" else [None]:
                runs.append((int(n), w, h, backend, int(t) if t else None))
    results: dict[tuple, list[dict]] = {run: [] for run in runs}
    for k in range(args.rounds):
        for run in runs:
            res = _subprocess(run, args.repeats, chunk, args.tile_size)
            if res is not None:
                res["round"] = k
                results[run].append(res)
    _print_table(results, args, chunk)


def _subprocess(run: tuple, repeats: int, chunk: int, tile_size: int) -> dict | None:
    """One configuration in a fresh process (its own peak RSS); None (and a line) when it fails."""
    n, w, h, backend, threads = run
    cmd = [sys.executable, __file__, "--one", f"{n},{w},{h}", "--repeats", str(repeats), "--chunk-elems", str(chunk)]
    cmd += ["--tile-size", str(tile_size), "--backend", backend]
    if threads:
        cmd += ["--one-threads", str(threads)]
    # OpenMP threads that spin while waiting are ruinous on a shared, loaded machine
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        print(f"{n:>9} {w}x{h} {backend} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _print_table(results: dict, args: argparse.Namespace, chunk: int) -> None:
    """One row per (configuration, backend, threads): medians over rounds; then same-round ratios."""
    print(
        f"{'gaussians':>9} {'size':>8} {'backend':>7} {'thr':>3} {'isects':>8} {'fwd s':>7} {'fwd+bwd s':>9} "
        f"{'cpu s':>7} {'peak RSS MB':>11}"
    )
    for (n, w, h, backend, _), rs in results.items():
        if not rs:
            continue
        med = {k: float(np.median([r[k] for r in rs])) for k in ("fwd_s", "fwd_bwd_s", "cpu_s", "peak_rss_mb")}
        print(
            f"{n:>9} {w}x{h:<4} {backend:>7} {rs[0]['threads']:>3} {rs[0]['isects']:>8} {med['fwd_s']:>7.3f} "
            f"{med['fwd_bwd_s']:>9.3f} {med['cpu_s']:>7.3f} {med['peak_rss_mb']:>11.0f}"
        )
    for n, w, h in dict.fromkeys((n, w, h) for n, w, h, _, _ in results):

        def per_round(backend: str, threads: int | None, cfg: tuple = (n, w, h)) -> dict[int, float]:
            return {r["round"]: r["fwd_bwd_s"] for r in results.get((*cfg, backend, threads), [])}

        torch_t, one, two = per_round("torch", None), per_round("numba", 1), per_round("numba", 2)
        parts = []
        for label, num, den in (("torch / numba 2 threads", torch_t, two), ("numba 1 / 2 threads", one, two)):
            ratios = [num[k] / den[k] for k in num if k in den]
            if ratios:
                parts.append(f"{label}: {np.median(ratios):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
        if parts:
            print(f"{n} @ {w}x{h}: same-round fwd+bwd ratios, median: " + "; ".join(parts))
    print(
        f"median over {args.rounds} rounds of each process's median of {args.repeats} calls after one warm-up; "
        f"tile {args.tile_size}, chunk {chunk} (torch backend); RGB+ED, SH degree 0, L1 + depth loss; 'cpu s' is "
        f"process CPU time (all threads); load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
