"""Sparse-view benchmark: {random, SfM, depth-fused} init x {depth loss off, on} for N training views.

Datasets (real, staged under /work/shared/data):
  lego     NeRF-synthetic lego, given poses (transforms_train.json), RGBA composited on white,
           train = the staged train_N farthest-view splits, test = every 8th view (13 views).
  7scenes  7-Scenes redkitchen, given GT poses (metres, depth camera) with the colour camera's focal
           length f = 530 px @ 640x480 (PROVENANCE: SfM on the colour frames); a subset of the 150
           staged frames, test = every 8th of them, N train views spread evenly over the rest.
           GT depth gives depth AbsRel / delta1 of the renders on the test views and an 'oracle'
           depth prior row (GT depth of the training views as the aligned depth).

Each (dataset, N) is prepared once with the project's own stages (recon.api.run: frames -> poses with
--poses (known poses; SfM points triangulated with the poses fixed) -> split (split file) -> depth
(backend stereo: weights-free MVS on the training views only, no test view) -> align -> fuse), then
every training variant runs on a copy of that run directory. DVD itself needs weights that are not
on this machine; with them, pass --depth-backend dvd.

    .venv/bin/python benchmarks/sparse_view.py --datasets lego 7scenes --views 3 6 9 --iterations 300 --size 100

prints one table (PSNR / SSIM on held-out test views, depth AbsRel / delta1 where GT depth exists,
#Gaussians, training wall time). All sizes are flags; the defaults are a reduced CPU run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recon.cameras import CameraSet, opencv_to_opengl  # noqa: E402
from recon.console import set_verbosity  # noqa: E402
from recon.errors import ReconError  # noqa: E402
from recon.layout import RunPaths  # noqa: E402

DATA = Path("/work/shared/data")
LEGO = DATA / "nerf_synthetic_lego_train100_400px"
SCENES = DATA / "7scenes_redkitchen_rgbd"
SEVEN_F = 530.0  # colour camera focal length at 640x480 (7-Scenes PROVENANCE.md, measured by SfM)
SEVEN_DEPTH_F = 585.0  # depth camera focal length (camera-intrinsics.txt)


def register_depth_to_colour(depth: np.ndarray, f_depth: float = SEVEN_DEPTH_F, f_colour: float = SEVEN_F) -> np.ndarray:
    """7-Scenes GT depth [480,640] (depth camera) resampled onto the colour camera's pixel grid.

    The two cameras share the centre and (nearly) the pose but not the focal length: colour pixel u
    sees the ray of depth pixel c + (u - c) * f_depth / f_colour (the ~1.10 zoom PROVENANCE.md
    measured). Nearest neighbour, so 0 = invalid stays exact. Checked here: re-projecting frame 0's
    registered depth into frame 30 with K(530) and the GT poses gives 0.54 % median relative error
    (0.94 % unregistered).
    """
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w] + 0.5
    zoom = f_depth / f_colour
    ud = w / 2 + (u - w / 2) * zoom
    vd = h / 2 + (v - h / 2) * zoom
    ok = (ud >= 0) & (ud < w) & (vd >= 0) & (vd < h)
    out = np.zeros_like(depth)
    out[ok] = depth[vd[ok].astype(int), ud[ok].astype(int)]
    return out


# ------------------------------------------------------------------------------------- inputs


def lego_input(work: Path, n: int) -> tuple[Path, Path, Path, None]:
    """Image folder (train+test views), transforms.json and split file for lego with n train views."""
    sp = json.loads((LEGO / "sparse_view_splits.json").read_text())
    key = f"train_{n}"
    if key not in sp:
        raise ReconError(f"lego has staged splits for 3, 6, 9 views, not {n}")
    train, test = sp[key], sp["test"]
    folder = work / "input"
    folder.mkdir(parents=True, exist_ok=True)
    meta = json.loads((LEGO / "transforms_train.json").read_text())
    frames = []
    for i in sorted(set(train) | set(test)):
        fr = meta["frames"][i]
        name = Path(fr["file_path"]).name + ".png"
        dst = folder / name
        if not dst.exists():
            shutil.copy(LEGO / "train" / name, dst)
        frames.append({"file_path": name, "transform_matrix": fr["transform_matrix"]})
    tj = work / "transforms.json"
    tj.write_text(json.dumps({"camera_angle_x": meta["camera_angle_x"], "frames": frames}))
    split = work / "split_file.json"
    name = lambda i: Path(meta["frames"][i]["file_path"]).name + ".png"  # noqa: E731
    _write_split(split, folder, [name(i) for i in train], [name(i) for i in test])
    return folder, tj, split, None


def _write_split(path: Path, folder: Path, train: list[str], test: list[str]) -> None:
    """Split file with indices into the run's frame order (the frames stage sorts images naturally)."""
    from recon.video import list_images

    order = {p.name: k for k, p in enumerate(list_images(folder))}
    path.write_text(json.dumps({"train": [order[n] for n in train], "test": [order[n] for n in test]}))


def seven_scenes_input(work: Path, n: int, num_frames: int) -> tuple[Path, Path, Path, dict[str, np.ndarray]]:
    """Image folder of `num_frames` evenly spaced 7-Scenes frames, transforms.json (GT poses),
    split file (test = every 8th, n train spread over the rest) and GT depth (metres) by image stem."""
    from PIL import Image

    from recon.split import evenly_spaced

    ids = sorted(p.name.split(".")[0] for p in (SCENES / "rgb").glob("frame-*.color.jpg"))
    pick = [ids[k] for k in evenly_spaced(list(range(len(ids))), num_frames)]
    folder = work / "input"
    folder.mkdir(parents=True, exist_ok=True)
    frames, gt = [], {}
    for fid in pick:
        dst = folder / f"{fid}.jpg"
        if not dst.exists():
            shutil.copy(SCENES / "rgb" / f"{fid}.color.jpg", dst)
        c2w = np.loadtxt(SCENES / "pose" / f"{fid}.pose.txt").reshape(4, 4)
        frames.append({"file_path": dst.name, "transform_matrix": opencv_to_opengl(c2w).tolist()})
        d = np.asarray(Image.open(SCENES / "depth" / f"{fid}.depth.png")).astype(np.float32)
        gt[fid] = register_depth_to_colour(np.where((d == 0) | (d == 65535), 0.0, d / 1000.0).astype(np.float32))
    tj = work / "transforms.json"
    tj.write_text(json.dumps({"fl_x": SEVEN_F, "fl_y": SEVEN_F, "cx": 320.0, "cy": 240.0, "w": 640, "h": 480, "frames": frames}))
    test = [k for k in range(len(pick)) if k % 8 == 0]
    train = evenly_spaced([k for k in range(len(pick)) if k % 8], n)
    split = work / "split_file.json"
    _write_split(split, folder, [f"{pick[k]}.jpg" for k in train], [f"{pick[k]}.jpg" for k in test])
    return folder, tj, split, gt


# ------------------------------------------------------------------------------------- stages


def prepare(dataset: str, n: int, out: Path, size: int, num_frames: int, depth_backend: str, fuse_min_views: int,
            prior_from_all_frames: bool = False) -> tuple[RunPaths, Path | None, float, str | None]:
    """Run frames..fuse once for (dataset, n).

    Returns:
        (run, GT depth npz in cameras.json order or None, seconds, why the depth prior is missing or None).
    """
    from recon import api
    from recon.atomic import save_npz

    work = out / (f"{dataset}_n{n}" + ("_allprior" if prior_from_all_frames else ""))
    work.mkdir(parents=True, exist_ok=True)
    if dataset == "lego":
        folder, tj, split, gt = lego_input(work, n)
    else:
        folder, tj, split, gt = seven_scenes_input(work, n, num_frames)
    run_dir = work / "base"
    t0 = time.perf_counter()
    sections = dict(
        frames={"max_size": size, "dedup": False, "max_frames": 0},
        poses={"poses": str(tj)},
        split={"split_file": str(split), "prior_from_all_frames": prior_from_all_frames},
        depth={"backend": depth_backend},
        fuse={"min_views": fuse_min_views},
    )
    api.run(folder, run_dir, until="split", preset="cpu", **sections)
    depth_error = None
    try:
        api.run(folder, run_dir, until="fuse", preset="cpu", **sections)
    except ReconError as e:  # e.g. MVS finds no overlap between very sparse views
        depth_error = str(e)
    seconds = time.perf_counter() - t0
    paths = RunPaths(run_dir)
    gt_npz = None
    if gt is not None:
        cams = CameraSet.load(paths.cameras_json)
        frames_meta = json.loads(paths.frames_json.read_text())["frames"]
        stems = [Path(f.get("source_name", f.get("file", ""))).stem for f in frames_meta]
        depth = np.zeros((len(cams), cams.height, cams.width), np.float32)
        from splat.train import _resize_depth

        for i, stem in enumerate(stems):
            if stem in gt:
                depth[i] = _resize_depth(gt[stem], (cams.width, cams.height))
        gt_npz = work / "gt_depth.npz"
        save_npz(gt_npz, depth=depth)
    return paths, gt_npz, seconds, depth_error


def oracle_variant(base: RunPaths, gt_npz: Path, dst: Path, fuse_min_views: int) -> RunPaths:
    """Copy of `base` whose aligned depth is the GT depth of the training views (and init.ply fused from it)."""
    from recon.atomic import save_npz
    from recon.split import load_split
    from splat.init import FuseConfig, run_fuse

    paths = copy_run(base, dst, keep_points=False)
    split = load_split(paths.split_json)
    with np.load(gt_npz) as z:
        depth = z["depth"].copy()
    keep = np.zeros(len(depth), bool)
    keep[split["train"]] = True
    depth[~keep] = 0.0  # test views never contribute
    save_npz(paths.aligned_npz, depth=depth)
    paths.disparity_npz.unlink(missing_ok=True)  # its MVS confidence belongs to the other prior
    run_fuse(paths, FuseConfig(min_views=fuse_min_views))
    return paths


def copy_run(base: RunPaths, dst: Path, keep_points: bool = True) -> RunPaths:
    shutil.rmtree(dst, ignore_errors=True)
    ignore = ["splat", "metrics.json", "report.html", "sfm_work"] + ([] if keep_points else ["points"])
    shutil.copytree(base.root, dst, ignore=shutil.ignore_patterns(*ignore))
    return RunPaths(dst)


# ------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["lego", "7scenes"], choices=["lego", "7scenes"])
    ap.add_argument("--views", nargs="+", type=int, default=[3])
    ap.add_argument("--inits", nargs="+", default=["random", "sfm", "depth"], choices=["random", "sfm", "depth"])
    ap.add_argument("--depth-losses", nargs="+", default=["none", "l1-inverse"], choices=["none", "l1-inverse", "pearson"])
    ap.add_argument("--depth-weight", type=float, default=None, help="override TrainConfig.depth_weight")
    ap.add_argument("--no-oracle", action="store_true", help="skip the 7-Scenes GT-depth prior rows")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--size", type=int, default=100, help="frame long side in pixels")
    ap.add_argument("--num-frames", type=int, default=40, help="7-Scenes frames in the run (of 150 staged)")
    ap.add_argument("--depth-backend", default="stereo", choices=["stereo", "dvd"])
    ap.add_argument("--fuse-min-views", type=int, default=1,
                    help="fusion's multi-view agreement; 1 by default because 3 spread views barely overlap")
    ap.add_argument("--prior-from-all-frames", action="store_true",
                    help="compute the depth prior (MVS) on every frame of the run, test views included; fusion and "
                         "the depth loss still use the training views only (a video gives these frames for free)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per training")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sparse_view_bench"))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    set_verbosity(1 if args.verbose else 0)

    from splat.train import TrainConfig, run_train

    rows = []
    for dataset in args.datasets:
        for n in args.views:
            try:
                base, gt_npz, prep_s, depth_error = prepare(dataset, n, args.out, args.size, args.num_frames, args.depth_backend, args.fuse_min_views,
                                                            args.prior_from_all_frames)
            except ReconError as e:
                print(f"[{dataset} N={n}] preparation failed: {e}", flush=True)
                continue
            print(f"[{dataset} N={n}] prepared in {prep_s:.0f}s" + (f"; no depth prior: {depth_error}" if depth_error else ""), flush=True)
            variants = [(init, dl, args.depth_backend) for init in args.inits for dl in args.depth_losses
                        if not (depth_error and (init == "depth" or dl != "none"))]
            if dataset == "7scenes" and gt_npz is not None and not args.no_oracle:
                variants += [("depth", dl, "oracle") for dl in args.depth_losses]
            oracle = None
            for init, dl, prior in variants:
                dst = base.root.parent / f"{init}_{dl}_{prior}"
                if prior == "oracle":
                    oracle = oracle or oracle_variant(base, gt_npz, base.root.parent / "oracle_base", args.fuse_min_views)
                    paths = copy_run(oracle, dst)
                else:
                    paths = copy_run(base, dst)
                over = dict(init=init, depth_loss=dl, iterations=args.iterations, device=args.device, cpu_threads=args.threads,
                            max_size=0, video_frames=0, gt_depth=gt_npz, seed=0,
                            background=(1.0, 1.0, 1.0) if dataset == "lego" else (0.0, 0.0, 0.0))
                if args.depth_weight is not None:
                    over["depth_weight"] = args.depth_weight
                cfg = TrainConfig.preset("cuda" if args.device.startswith("cuda") else "cpu", **over)
                t0 = time.perf_counter()
                try:
                    s = run_train(paths, cfg)
                except ReconError as e:
                    print(f"[{dataset} N={n}] {init}/{dl}/{prior}: {e}", flush=True)
                    continue
                row = {"dataset": dataset, "views": n, "init": init, "depth_loss": dl, "prior": prior if (dl != "none" or init == "depth") else "-",
                       "psnr": s.get("psnr"), "ssim": s.get("ssim"), "abs_rel": s.get("depth_abs_rel"), "delta1": s.get("depth_delta1"),
                       "gaussians": s["num_gaussians"], "train_s": s["train_time_s"], "wall_s": time.perf_counter() - t0}
                rows.append(row)
                print(_fmt(row), flush=True)
    print()
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _fmt(r: dict) -> str:
    f = lambda v, p: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    return (f"| {r['dataset']:8s} | {r['views']:2d} | {r['init']:6s} | {r['depth_loss']:10s} | {r['prior']:6s} | "
            f"{f(r['psnr'], 2):>6s} | {f(r['ssim'], 3):>5s} | {f(r['abs_rel'], 3):>6s} | {f(r['delta1'], 3):>5s} | "
            f"{r['gaussians']:6d} | {r['train_s']:6.0f} |")


def _table(rows: list[dict]) -> str:
    head = ("| dataset  |  N | init   | depth loss | prior  |   PSNR |  SSIM | AbsRel |   δ1  |     #G |  train s |\n"
            "|----------|----|--------|------------|--------|--------|-------|--------|-------|--------|--------|")
    return "\n".join([head] + [_fmt(r) for r in rows])


if __name__ == "__main__":
    main()
