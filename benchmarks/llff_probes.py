"""Probes of what limits the LLFF fern result at 3 views: each changes one thing of the prepared run and trains.

benchmarks/llff.py prepares the N-view run once (frames, the dataset's poses, the llff split, the stereo prior of
the training views, alignment, fusion); every probe below trains the CPU preset on a copy of it (depth-fused init,
504x378) with one change, and the table puts it beside the unchanged reference of the same session:

  oracle     the training views' stereo prior computed with all 20 views as neighbours (the dense reference of
             benchmarks/stereo.py; the protocol forbids it: an upper bound of what a better weights-free prior
             of the same kind could give), then aligned and fused again.
  fill-mean  the pixels the prior leaves empty get a depth by push-pull interpolation of the inverse depth around
             them; 5000 points back-projected from them replace the 5000 random fill points (init_random_fill).
  fill-far   the same, each hole taking the farthest (smallest inverse) depth around it (holes are mostly
             background seen past a foreground edge).
  frustum    the 5000 random fill points drawn in the training views' frustums (a random view, a uniform
             pixel, a depth uniform between 0.8 x the 1st and 1.2 x the 99th percentile of the fused points'
             depth) instead of in the 1-99 % box of the SfM points (which a few SfM points move). Since 2026-12-02
             the trainer itself draws the fill in the frustums (half at the scene's depths): the reference is no
             longer the box, and this probe measures uniform depth against that default.
  prune      Gaussians more than 10 % in front of a confident (>= 0.3) prior depth in some training view are
             removed every 100 steps up to densification's end (a prior-based form of CoR-GS's co-pruning: a
             Gaussian in front of the surface a training view sees is a floater that fits that view only).
  edge-loss  the depth loss l1-inverse without the prior's depth edges (relative inverse-depth jump > 5 % to a
             neighbour, dilated 3 px): its reference is l1-inverse on the unchanged prior.

    .venv/bin/python benchmarks/llff_probes.py                          # every probe, N = 3, seed 0, 300 steps
    .venv/bin/python benchmarks/llff_probes.py --probes oracle prune --seeds 0 1 2

Written by hand (not product code): each probe is a measurement of an idea that did not help; the figures are in
benchmarks/README.md, "llff.py".
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llff  # noqa: E402  (benchmarks/llff.py: prepare, copy_run, train_config, FERN)

from recon import api  # noqa: E402
from recon.artifacts import AlignedDepth, CameraSet, PointCloud, RunPaths, Split, read_rgb  # noqa: E402
from recon.artifacts.depth import DisparityMaps  # noqa: E402
from recon.console import set_verbosity  # noqa: E402
from recon.stages import StageContext  # noqa: E402

PROBES = ["oracle", "fill-mean", "fill-far", "frustum", "prune", "edge-loss"]
REFERENCE_LOSS = {"edge-loss": "l1-inverse"}  # every other probe is compared with depth loss "none"


def push_pull(inv: torch.Tensor, valid: torch.Tensor, far: bool) -> torch.Tensor:
    """Inverse depth [h,w] with every invalid pixel filled from the valid ones around it.

    Halve the map until no pixel is empty (a coarse pixel = the mean of its valid children, or with `far` their
    smallest inverse depth), then go back up, taking the upsampled coarse value where a level had no value."""
    levels = [(inv, valid.to(inv.dtype))]
    while bool((levels[-1][1] <= 0).any()) and min(levels[-1][0].shape) > 1:
        i, w = (t[None, None] for t in levels[-1])
        if far:
            ci = -F.max_pool2d(-torch.where(w > 0, i, torch.full_like(i, torch.inf)), 2, ceil_mode=True)
            cw = F.max_pool2d(w, 2, ceil_mode=True)
            ci = torch.where(torch.isfinite(ci), ci, torch.zeros_like(ci))
        else:
            s, cw = F.avg_pool2d(i * w, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)
            ci = torch.where(cw > 0, s / cw.clamp_min(1e-12), torch.zeros_like(s))
        levels.append((ci[0, 0], cw[0, 0]))
    out = levels[-1][0]
    for i, w in reversed(levels[:-1]):
        up = F.interpolate(out[None, None], size=tuple(i.shape), mode="bilinear", align_corners=False)[0, 0]
        out = torch.where(w > 0, i, up)
    return out


def _train_views(paths: RunPaths) -> tuple[CameraSet, list[int]]:
    return CameraSet.load(paths.cameras_json), sorted(Split.load(paths.split_json).prior)


def _budget(n: int, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `keep` of n fused points drawn at random (0 = all): the reference's init budget
    (max_init_points), drawn here because the probe's init is written with max_init_points 0."""
    return rng.choice(n, min(keep or n, n), replace=False)


def probe_oracle(paths: RunPaths, cfg: Any) -> None:
    """Replace the training views' prior by stereo with all views as neighbours; align and fuse again."""
    from depth.result import depth_to_disparity
    from depth.stereo import stereo_depth
    from recon.stages import align, fuse
    from recon.stages.depth import depth_frames

    cams, train = _train_views(paths)
    frames = depth_frames(paths, cams, list(range(len(cams))), sfm=True)
    assert frames.bounds is not None and frames.K is not None and frames.c2w is not None, "LLFF poses give all"
    b = frames.bounds[train]
    depth, conf = stereo_depth(frames.images, frames.K, frames.c2w, train, (b[:, 0], b[:, 1]), cfg.depth.stereo)
    maps = DisparityMaps.load(paths.disparity_npz)
    disp, confidence = maps.disparity.copy(), maps.confidence.copy()
    disp[train], confidence[train] = depth_to_disparity(depth), conf
    DisparityMaps(disp, maps.computed, confidence, maps.kind, maps.backend, maps.frames).save(paths.disparity_npz)
    align.run(StageContext(paths), cfg.align)
    fuse.run(StageContext(paths), cfg.fuse)


def probe_fill(paths: RunPaths, far: bool, keep: int, count: int = 5000, seed: int = 0) -> None:
    """The init with the reference's budget (`keep` of the fused points, `_budget`), with `count` points
    back-projected from the prior's holes (every 2nd pixel) in place of the `count` random fill points."""
    from depth.geometry import backproject

    cams, train = _train_views(paths)
    aligned = AlignedDepth.load(paths.aligned_npz)
    cloud = PointCloud.load(paths.init_ply)
    xyz, rgb = [], []
    for v in train:
        d = torch.from_numpy(aligned.depth[v]).double()
        ok = (d > 0) & (torch.from_numpy(aligned.confidence[v]) >= 0.1)
        inv = push_pull(torch.where(ok, 1.0 / d.clamp_min(1e-9), torch.zeros_like(d)), ok, far).numpy()
        grid = np.zeros(ok.shape, bool)
        grid[::2, ::2] = True
        sel = ~ok.numpy() & grid & (inv > 0)
        depth = np.where(sel, 1.0 / np.maximum(inv, 1e-9), 0.0)
        xyz.append(backproject(depth, cams.K[v], cams.c2w[v], mask=sel))
        rgb.append(read_rgb(paths.root / cams.files[v], (cams.width, cams.height), resize=False)[sel])
    fx, fc = np.concatenate(xyz), np.concatenate(rgb)
    rng = np.random.default_rng(seed)
    fused = _budget(len(cloud.xyz), keep, rng)
    pick = rng.choice(len(fx), min(count, len(fx)), replace=False)
    xyz_all = np.concatenate([cloud.xyz[fused], fx[pick]]).astype(np.float32)
    PointCloud(xyz_all, np.concatenate([cloud.rgb[fused], fc[pick]]).astype(np.uint8), None).save(paths.init_ply)


def probe_frustum(paths: RunPaths, keep: int, count: int = 5000, seed: int = 0) -> None:
    """The init with the reference's budget (`keep` of the fused points, `_budget`), with the `count` random fill
    points drawn in the training views' frustums instead of the SfM points' box: a random training view, a
    uniform pixel, a depth uniform in [0.8 x 1st, 1.2 x 99th percentile] of the fused points' depth in the
    training views; random colours, as the box fill's."""
    from depth.geometry import invert_pose

    cams, train = _train_views(paths)
    cloud = PointCloud.load(paths.init_ply)
    z = []
    for v in train:
        w2c = invert_pose(cams.c2w[v])
        zv = (cloud.xyz @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
        z.append(zv[zv > 0])
    near, far = 0.8 * np.percentile(np.concatenate(z), 1), 1.2 * np.percentile(np.concatenate(z), 99)
    rng = np.random.default_rng(seed)
    view = rng.choice(train, count)
    u, r = rng.random(count) * cams.width, rng.random(count) * cams.height
    d = near + rng.random(count) * (far - near)
    K, c2w = cams.K[view], cams.c2w[view]
    cam = np.stack([(u - K[:, 0, 2]) / K[:, 0, 0], (r - K[:, 1, 2]) / K[:, 1, 1], np.ones(count)], 1) * d[:, None]
    xyz = np.einsum("nij,nj->ni", c2w[:, :3, :3], cam) + c2w[:, :3, 3]
    rgb = (rng.random((count, 3)) * 255).astype(np.uint8)
    fused = _budget(len(cloud.xyz), keep, rng)
    xyz_all = np.concatenate([cloud.xyz[fused], xyz]).astype(np.float32)
    PointCloud(xyz_all, np.concatenate([cloud.rgb[fused], rgb]), None).save(paths.init_ply)


def probe_edge_loss(paths: RunPaths, jump: float = 0.05, dilate: int = 3) -> None:
    """Zero the prior's confidence (the depth loss's per-pixel weight) on and next to its depth edges."""
    from scipy import ndimage

    _, train = _train_views(paths)
    a = AlignedDepth.load(paths.aligned_npz)
    conf = a.confidence.copy()
    for v in train:
        d = a.depth[v]
        inv = np.where(d > 0, 1.0 / np.maximum(d, 1e-9), 0.0)
        gx = np.abs(np.diff(inv, axis=1, append=inv[:, -1:]))
        gy = np.abs(np.diff(inv, axis=0, append=inv[-1:]))
        edge = (np.maximum(gx, gy) / np.maximum(inv, 1e-9) > jump) & (d > 0)
        conf[v][ndimage.binary_dilation(edge, iterations=dilate)] = 0.0
    AlignedDepth(a.depth, a.mask, conf, a.scale, a.shift).save(paths.aligned_npz)


def floaters(means: torch.Tensor, views: Any, prior: dict[int, tuple[torch.Tensor, torch.Tensor]], tol: float):
    """bool [N]: Gaussian centres (scene units) more than `tol` (relative) in front of a confident (>= 0.3) prior
    depth at their pixel in some view of `prior` (view -> (depth [H,W], confidence [H,W]))."""
    bad = torch.zeros(len(means), dtype=torch.bool, device=means.device)
    for v, (depth, conf) in prior.items():
        vm, K = views.viewmats[v].float(), views.K[v].float()
        cam = means @ vm[:3, :3].T + vm[:3, 3]
        z = cam[:, 2]
        u = K[0, 0] * cam[:, 0] / z.clamp_min(1e-9) + K[0, 2]
        r = K[1, 1] * cam[:, 1] / z.clamp_min(1e-9) + K[1, 2]
        h, w = depth.shape
        inside = (z > 0) & (u >= 0) & (u < w) & (r >= 0) & (r < h)
        ui, ri = u.clamp(0, w - 1).long(), r.clamp(0, h - 1).long()
        d, c = depth[ri, ui], conf[ri, ui]
        bad |= inside & (d > 0) & (c >= 0.3) & (z < d * (1.0 - tol))
    return bad


@contextmanager
def pruning(paths: RunPaths, every: int = 100, until: int = 450, tol: float = 0.1) -> Iterator[list[int]]:
    """While open, every Trainer removes the `floaters` every `every` steps up to `until` (a patch of
    Trainer._optimise: the probe is not a product option). Yields the list of counts removed."""
    from gsplat.strategy.ops import remove

    from splat.trainer import Trainer

    _, train = _train_views(paths)
    a = AlignedDepth.load(paths.aligned_npz)
    prior = {v: (torch.from_numpy(a.depth[v]).float(), torch.from_numpy(a.confidence[v]).float()) for v in train}
    removed: list[int] = []
    original = Trainer._optimise

    def optimise(self: Trainer, meta: dict) -> None:
        original(self, meta)
        if self.global_step % every == 0 and self.global_step <= until:
            with torch.no_grad():
                bad = floaters(self.params["means"].detach(), self.views, prior, tol)
            removed.append(int(bad.sum()))
            if bool(bad.any()) and not bool(bad.all()):
                remove(self.params, self.optimizers, self.strategy_state, bad)

    with mock.patch.object(Trainer, "_optimise", optimise):
        yield removed


def _changes(probe: str, paths: RunPaths, cfg: Any, train_cfg: Any) -> tuple[dict[str, Any], Callable[[], Any]]:
    """Apply `probe` to the run copy `paths`; (train overrides, context the training runs in)."""
    if probe == "oracle":
        probe_oracle(paths, cfg)
    elif probe in ("fill-mean", "fill-far"):
        probe_fill(paths, probe == "fill-far", train_cfg.max_init_points, train_cfg.init_random_fill)
        return {"init_random_fill": 0, "max_init_points": 0}, nullcontext
    elif probe == "frustum":
        probe_frustum(paths, train_cfg.max_init_points, train_cfg.init_random_fill)
        return {"init_random_fill": 0, "max_init_points": 0}, nullcontext
    elif probe == "edge-loss":
        probe_edge_loss(paths)
    elif probe == "prune":
        return {}, lambda: pruning(paths)
    return {}, nullcontext


def train(paths: RunPaths, args: argparse.Namespace, loss: str, seed: int, over: dict, ctx: Callable) -> dict:
    from recon.stages.train import run as run_train

    base = llff.train_config(args, "depth", loss, seed, args.views)
    t0 = time.perf_counter()
    with ctx() as removed:
        s = run_train(StageContext(paths), dataclasses.replace(base, **over))
    row = {"psnr": s["psnr"], "ssim": s["ssim"], "wall_s": time.perf_counter() - t0}
    if removed is not None:
        row["removed"] = sum(removed)
    return row


def run_probe(base: RunPaths, probe: str, args: argparse.Namespace, cfg: Any) -> list[dict]:
    rows = []
    for seed in args.seeds:
        name = f"{probe}_s{seed}"
        paths = llff.copy_run(base, base.root.parent / name)
        loss = args.loss or REFERENCE_LOSS.get(probe, "none")
        train_cfg = llff.train_config(args, "depth", loss, seed, args.views)
        over, ctx = _changes(probe, paths, cfg, train_cfg) if probe != "reference" else ({}, nullcontext)
        row = {"probe": probe, "seed": seed, "loss": loss, **train(paths, args, loss, seed, over, ctx)}
        print(f"  {probe:10s} {loss:10s} seed {seed}: PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.3f}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", nargs="+", default=PROBES, choices=PROBES)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for training (0 = all)")
    ap.add_argument("--loss", help="depth loss of every row (default: none; l1-inverse for edge-loss)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/llff_probes"))
    ap.add_argument("--no-reference", action="store_true", help="skip the unchanged run (already measured)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    set_verbosity(1 if args.verbose else 0)
    args.set = []  # llff.train_config's extra fields
    base, _, why = llff.prepare(llff.FERN, args.views, args.out, "stereo")
    if why:
        raise SystemExit(f"no depth prior: {why}")
    cfg = api.make_config("cpu", **llff.sections(llff.FERN, args.views, "stereo"))
    refs = sorted({args.loss or REFERENCE_LOSS.get(p, "none") for p in args.probes})
    rows = []
    for loss in [] if args.no_reference else refs:  # the unchanged run with each loss the probes are compared with
        rows += run_probe(base, "reference", argparse.Namespace(**{**vars(args), "loss": loss}), cfg)
    for probe in args.probes:
        rows += run_probe(base, probe, args, cfg)
    print(f"\nfern, {args.views} views, {args.iterations} steps, depth-fused init, mean over seeds {args.seeds}")
    print("| probe | depth loss | PSNR | SSIM |\n|---|---|---|---|")
    for key in dict.fromkeys((r["probe"], r["loss"]) for r in rows):
        rs = [r for r in rows if (r["probe"], r["loss"]) == key]
        psnr, ssim = np.mean([r["psnr"] for r in rs]), np.mean([r["ssim"] for r in rs])
        print(f"| {key[0]} | {key[1]} | {psnr:.2f} | {ssim:.3f} |")


if __name__ == "__main__":
    main()
