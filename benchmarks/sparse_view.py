"""Sparse-view benchmark: {random, SfM, depth-fused} init x {depth loss off, on} for N training views.

Datasets (real, staged under /work/shared/data):
  lego     NeRF-synthetic lego, given poses (transforms_train.json), RGBA composited on white,
           train = the staged train_N farthest-view splits, test = every 8th view (13 views).
  7scenes  7-Scenes redkitchen: a subset of the 150 staged frames, poses from the project's pose stage
           (pycolmap SfM on all frames of the subset, as for a video; --seven-poses gt uses the GT
           poses instead, metres, with the colour focal f = 530 px @ 640x480 from PROVENANCE),
           test = every 8th of them, N train views spread evenly over the rest.
           GT depth (registered to the colour camera) gives depth AbsRel / delta1 of the renders on
           the test views (median-scaled per view) and an 'oracle' depth prior row (GT depth of the
           training views, mapped to scene units by the median GT/SfM depth ratio, as aligned depth).

Each (dataset, N) is prepared once with the project's own stages (recon.api.run: frames -> poses (SfM,
or --poses for given poses: points triangulated with the poses fixed) -> split (split file) -> depth
(backend stereo: weights-free MVS on the --prior-frames, never a test view) -> align -> fuse from the
training views), then every training variant runs on a copy of that run directory. The SfM init keeps
the SfM points that >= 2 training views observe. DVD itself needs weights that are not on this
machine; with them, pass --depth-backend dvd.

    .venv/bin/python benchmarks/sparse_view.py --datasets lego 7scenes --views 3 6 9 --iterations 300 --size 100
    # the 7-Scenes table of the issue-5 note (5 s clip, prior from the clip's non-test frames, 1000 steps):
    .venv/bin/python benchmarks/sparse_view.py --datasets 7scenes --views 3 --seven-span 0 149 --num-frames 30 \
        --prior-frames non-test --iterations 1000 [--random-fill 0]

Training renders on TrainConfig.background's automatic colour (--background auto): white for lego (its
frames are composited on white), the training images' mean colour for 7-Scenes, which is what test pixels
that no training view observed show.

prints one table (PSNR / SSIM on held-out test views; mPSNR / mSSIM on the test pixels some training
view observes (co-visibility masks from GT depth + GT poses, Gao et al. NeurIPS 2022), with covis the
fraction of such pixels; depth AbsRel / delta1 where GT depth exists; #Gaussians; training wall time).
All sizes are flags; the defaults are a reduced CPU run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from depth.geometry import opencv_to_opengl  # noqa: E402
from recon.artifacts import CameraSet, RunPaths, Split  # noqa: E402
from recon.console import set_verbosity  # noqa: E402
from recon.errors import ReconError  # noqa: E402
from recon.stages import StageContext  # noqa: E402
from recon.stages.split import SPARSE_FUSE, SPARSE_VIEWS, sparse_train_settings  # noqa: E402

DATA = Path("/work/shared/data")
LEGO = DATA / "nerf_synthetic_lego_train100_400px"
SCENES = DATA / "7scenes_redkitchen_rgbd"
SEVEN_F = 530.0  # colour camera focal length at 640x480 (7-Scenes PROVENANCE.md, measured by SfM)
SEVEN_DEPTH_F = 585.0  # depth camera focal length (camera-intrinsics.txt)


def register_depth_to_colour(
    depth: np.ndarray, f_depth: float = SEVEN_DEPTH_F, f_colour: float = SEVEN_F
) -> np.ndarray:
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
    png_name = lambda i: Path(meta["frames"][i]["file_path"]).name + ".png"  # noqa: E731
    _write_split(split, folder, [png_name(i) for i in train], [png_name(i) for i in test])
    return folder, tj, split, None


def _write_split(path: Path, folder: Path, train: list[str], test: list[str]) -> None:
    """Split file with indices into the run's frame order (the frames stage sorts images naturally)."""
    from recon.video import list_images

    order = {p.name: k for k, p in enumerate(list_images(folder))}
    path.write_text(json.dumps({"train": [order[n] for n in train], "test": [order[n] for n in test]}))


def seven_scenes_input(
    work: Path, n: int, num_frames: int, poses: str, span: tuple[int, int] = (0, 449)
) -> tuple[Path, Path | None, Path, tuple[dict, dict]]:
    """Image folder of `num_frames` evenly spaced 7-Scenes frames, transforms.json of the GT poses (only
    for poses == "gt"; None = the pose stage runs SfM), split file (test = every 8th, n train spread over
    the rest) and (GT depth (metres, depth camera grid, 0 = invalid), GT c2w (metres)) by image stem. `span`: first and
    last video frame of the clip the frames are taken from (the staged files are every 3rd frame)."""
    from PIL import Image

    from recon.stages.split import evenly_spaced

    ids = sorted(p.name.split(".")[0] for p in (SCENES / "rgb").glob("frame-*.color.jpg"))
    ids = [i for i in ids if span[0] <= int(i.split("-")[1]) <= span[1]]
    if len(ids) < num_frames:
        raise ReconError(
            f"7-Scenes frames {span[0]}-{span[1]} hold {len(ids)} staged frames, fewer than --num-frames {num_frames}"
        )
    pick = [ids[k] for k in evenly_spaced(list(range(len(ids))), num_frames)]
    folder = work / "input"
    folder.mkdir(parents=True, exist_ok=True)
    frames, gt, gt_c2w = [], {}, {}
    for fid in pick:
        dst = folder / f"{fid}.jpg"
        if not dst.exists():
            shutil.copy(SCENES / "rgb" / f"{fid}.color.jpg", dst)
        c2w = np.loadtxt(SCENES / "pose" / f"{fid}.pose.txt").reshape(4, 4)
        gt_c2w[fid] = c2w
        frames.append({"file_path": dst.name, "transform_matrix": opencv_to_opengl(c2w).tolist()})
        d = np.asarray(Image.open(SCENES / "depth" / f"{fid}.depth.png")).astype(np.float32)
        gt[fid] = np.where((d == 0) | (d == 65535), 0.0, d / 1000.0).astype(np.float32)
    tj = None
    if poses == "gt":
        tj = work / "transforms.json"
        tj.write_text(
            json.dumps(
                {"fl_x": SEVEN_F, "fl_y": SEVEN_F, "cx": 320.0, "cy": 240.0, "w": 640, "h": 480, "frames": frames}
            )
        )
    test = [k for k in range(len(pick)) if k % 8 == 0]
    train = evenly_spaced([k for k in range(len(pick)) if k % 8], n)
    split = work / "split_file.json"
    _write_split(split, folder, [f"{pick[k]}.jpg" for k in train], [f"{pick[k]}.jpg" for k in test])
    return folder, tj, split, (gt, gt_c2w)


# ------------------------------------------------------------------------------------- stages


def prepare(
    dataset: str,
    n: int,
    out: Path,
    frame_size: int,
    num_frames: int,
    depth_backend: str,
    fuse_min_views: int,
    prior_frames: str = "train",
    seven_poses: str = "sfm",
    seven_span: tuple[int, int] = (0, 449),
    sparse: bool = True,
    reuse: bool = False,
) -> tuple[RunPaths, Path | None, float, str | None]:
    """Run frames..fuse once for (dataset, n).

    Returns:
        (run, GT depth npz in cameras.json order or None, seconds, why the depth prior is missing or None).
        With `sparse`, N <= 9 views fuse with the sparse-view settings `recon run --train-views N` uses
        (recon.stages.split.SPARSE_FUSE; this benchmark gives its views as a split file, which does not set them).
        With `reuse`, an earlier preparation of the same settings in `out` is returned as it is (prepared.json).
        Beside the GT depth npz, eval_mask.npz holds the test views' co-visibility masks (pixels some
        training view observes, from GT depth and GT poses alone, so every variant is scored on the same
        pixels) for the masked metrics.
    """
    from recon import api
    from recon.atomic import save_npz

    work = out / (
        f"{dataset}_n{n}"
        + ("" if prior_frames == "train" else f"_prior-{prior_frames}")
        + ("_gtposes" if dataset == "7scenes" and seven_poses == "gt" else "")
        + (f"_{seven_span[0]}-{seven_span[1]}" if dataset == "7scenes" and tuple(seven_span) != (0, 449) else "")
    )
    work.mkdir(parents=True, exist_ok=True)
    key = dict(
        frame_size=frame_size,
        num_frames=num_frames,
        depth_backend=depth_backend,
        fuse_min_views=fuse_min_views,
        sparse=sparse,
    )
    if reuse and (done := _prepared(work, key)) is not None:
        return done
    tj: Path | None
    if dataset == "lego":
        folder, tj, split, gt = lego_input(work, n)
    else:
        folder, tj, split, gt = seven_scenes_input(work, n, num_frames, seven_poses, seven_span)
    run_dir = work / "base"
    t0 = time.perf_counter()
    sections: dict[str, Any] = dict(
        frames={"max_size": frame_size, "dedup": False, "max_frames": 0},
        poses={"poses": str(tj)} if tj is not None else {},
        split={"split_file": str(split), "prior_frames": prior_frames},
        depth={"backend": depth_backend},
        fuse={**(SPARSE_FUSE if sparse and n <= SPARSE_VIEWS else {}), "min_views": fuse_min_views},
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
        gt_depths, gt_c2w = gt
        cams = CameraSet.load(paths.cameras_json)
        frames_meta = json.loads(paths.frames_json.read_text())["frames"]
        stems = [Path(f.get("source_name", f.get("file", ""))).stem for f in frames_meta]
        depth = np.zeros((len(cams), cams.height, cams.width), np.float32)
        from splat.views import resize_nearest

        f_colour = float(cams.K[0][0, 0]) * 640.0 / cams.width  # the run's (SfM or given) colour focal at 640 px
        for i, stem in enumerate(stems):
            if stem in gt_depths:
                depth[i] = resize_nearest(
                    register_depth_to_colour(gt_depths[stem], f_colour=f_colour), (cams.width, cams.height)
                )
        gt_npz = work / "gt_depth.npz"
        save_npz(gt_npz, depth=depth)
        save_npz(work / "eval_mask.npz", mask=seven_scenes_covisibility(paths, depth, [gt_c2w[s] for s in stems]))
    record = dict(key=key, seconds=seconds, depth_error=depth_error, gt_depth=gt_npz is not None)
    (work / "prepared.json").write_text(json.dumps(record, indent=1))
    return paths, gt_npz, seconds, depth_error


def _prepared(work: Path, key: dict[str, Any]) -> tuple[RunPaths, Path | None, float, str | None] | None:
    """The earlier preparation in `work` when its prepared.json names the same settings (--reuse-prepared),
    e.g. a run directory prepared on a CPU machine and carried to a GPU one for training only."""
    f = work / "prepared.json"
    if not f.exists():
        return None
    rec = json.loads(f.read_text())
    if rec.get("key") != key:
        print(f"[{work.name}] prepared with other settings ({rec.get('key')}); preparing again", flush=True)
        return None
    gt_npz = work / "gt_depth.npz" if rec["gt_depth"] else None
    return RunPaths(work / "base"), gt_npz, float(rec["seconds"]), rec["depth_error"]


def seven_scenes_covisibility(paths: RunPaths, depth: np.ndarray, c2w: list[np.ndarray]) -> np.ndarray:
    """[T,H,W] bool: pixels of each test view that a training view observes (GT depth in metres on the
    colour grid, GT poses in metres, the run's colour K; occlusion-checked against the training views'
    GT depth with 5 % tolerance). Non-test frames are all False."""
    from splat.evaluate import covisibility_mask

    cams = CameraSet.load(paths.cameras_json)
    split = Split.load(paths.split_json)
    train = split.train
    c2w_all = np.stack(c2w)
    mask = np.zeros(depth.shape, bool)
    for t in split.test:
        mask[t] = covisibility_mask(
            depth[t], cams.K[t], c2w_all[t], cams.K[train], c2w_all[train], [depth[j] for j in train]
        )
    return mask


def oracle_variant(base: RunPaths, gt_npz: Path, dst: Path, fuse_min_views: int) -> RunPaths:
    """Copy of `base` whose depth prior is the GT depth (metres) of the training views, run through the
    project's own stages: file backend (kind depth) -> align (scale fitted to the training views' SfM
    points, so metres become scene units; scale 1 with GT poses) -> fuse."""
    from dataclasses import replace

    from depth.file import FileDepthConfig
    from recon.atomic import save_npz
    from recon.stages import align, fuse
    from recon.stages import depth as depth_stage

    paths = copy_run(base, dst, keep_points=False)
    split = Split.load(paths.split_json)
    with np.load(gt_npz) as z:
        depth = z["depth"].copy()
    keep = np.zeros(len(depth), bool)
    keep[split.train] = True
    depth[~keep] = 0.0  # test views never contribute
    for f in (paths.disparity_npz, paths.aligned_npz):
        f.unlink(missing_ok=True)
    replace(split, prior=sorted(split.train)).save(paths.split_json)  # the oracle covers the training views only
    save_npz(dst.parent / "oracle_depth.npz", depth=depth)
    ctx = StageContext(paths)
    oracle = FileDepthConfig(path=dst.parent / "oracle_depth.npz", kind="depth", match="order")
    depth_stage.run(ctx, depth_stage.Config(backend="file", file=oracle, preview=False))
    align.run(ctx, align.Config())
    fuse.run(ctx, fuse.Config(min_views=fuse_min_views))
    return paths


def copy_run(base: RunPaths, dst: Path, keep_points: bool = True) -> RunPaths:
    shutil.rmtree(dst, ignore_errors=True)
    ignore = ["splat", "metrics.json", "report.html", "sfm_work"] + ([] if keep_points else ["points"])
    shutil.copytree(base.root, dst, ignore=shutil.ignore_patterns(*ignore))
    return RunPaths(dst)


# ------------------------------------------------------------------------------------- main


def _add_variant_args(ap: argparse.ArgumentParser) -> None:
    """What is compared: datasets, view counts, inits, depth losses and their settings."""
    ap.add_argument("--datasets", nargs="+", default=["lego", "7scenes"], choices=["lego", "7scenes"])
    ap.add_argument("--views", nargs="+", type=int, default=[3])
    ap.add_argument("--inits", nargs="+", default=["random", "sfm", "depth"], choices=["random", "sfm", "depth"])
    ap.add_argument(
        "--depth-losses",
        nargs="+",
        default=["none", "l1-inverse"],
        choices=["none", "l1-inverse", "pearson", "patch-pearson"],
    )
    ap.add_argument("--depth-weight", type=float, default=None, help="override TrainConfig.depth_weight")
    ap.add_argument(
        "--random-fill",
        type=int,
        default=None,
        help="random points added to the SfM and depth inits (default: TrainConfig.init_random_fill, 5000; "
        "0 = off): Gaussians for what the SfM points / depth prior do not cover",
    )
    ap.add_argument(
        "--background",
        default="auto",
        choices=["auto", "black", "white"],
        help="TrainConfig.background: auto (default) = white for lego (frames composited on white), the "
        "training images' mean colour for 7-Scenes",
    )


def _add_run_args(ap: argparse.ArgumentParser) -> None:
    """How each variant is prepared and trained."""
    ap.add_argument("--no-oracle", action="store_true", help="skip the 7-Scenes GT-depth prior rows")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--size", type=int, default=100, help="training / evaluation image long side in pixels")
    ap.add_argument(
        "--frame-size",
        type=int,
        default=320,
        help="frame long side for poses, depth prior and fusion (SfM at 100 px registers too few frames)",
    )
    ap.add_argument("--num-frames", type=int, default=40, help="7-Scenes frames in the run (of 150 staged)")
    ap.add_argument("--depth-backend", default="stereo", choices=["stereo", "dvd"])
    ap.add_argument(
        "--fuse-min-views",
        type=int,
        default=1,
        help="fusion's multi-view agreement; 1 by default because 3 spread views barely overlap",
    )
    ap.add_argument(
        "--prior-frames",
        default="train",
        choices=["train", "non-test", "all"],
        help="frames the depth prior (MVS) is computed on: the training views only (default), every frame "
        "of the run but the test views (what a video depth model sees of the clip), or all frames; "
        "fusion and the depth loss use the training views only in every case",
    )
    ap.add_argument(
        "--seven-poses",
        default="sfm",
        choices=["sfm", "gt"],
        help="7-Scenes poses: the pose stage's SfM (default) or the GT poses (metres)",
    )
    ap.add_argument(
        "--seven-span",
        nargs=2,
        type=int,
        default=[0, 449],
        metavar=("FIRST", "LAST"),
        help="7-Scenes: first and last video frame of the clip (default: all 450 staged frames, 15 s)",
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="training seed (initial points, view order, random backgrounds)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per training")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--no-sparse-settings",
        action="store_true",
        help="fuse and train with the preset's settings, not the sparse-view ones (recon.stages.split.SPARSE_*)",
    )
    ap.add_argument(
        "--reuse-prepared",
        action="store_true",
        help="train on the run directories an earlier call prepared in --out with the same settings (prepared.json)",
    )
    ap.add_argument("--set", nargs="*", default=[], help="extra train fields, KEY=JSON (e.g. opacity_decay=0.99)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sparse_view_bench"))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("-v", "--verbose", action="store_true")


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_variant_args(ap)
    _add_run_args(ap)
    return ap.parse_args()


def _variants(args: argparse.Namespace, dataset: str, gt_npz: Path | None, depth_error: str | None) -> list:
    """(init, depth loss, prior) of every training of one prepared (dataset, N)."""
    variants = [
        (init, dl, args.depth_backend)
        for init in args.inits
        for dl in args.depth_losses
        if not (depth_error and (init == "depth" or dl != "none"))
    ]
    if dataset == "7scenes" and gt_npz is not None and not args.no_oracle:
        variants += [("depth", dl, "oracle") for dl in args.depth_losses]
    return variants


def _train_config(args: argparse.Namespace, init: str, dl: str, n: int, gt_npz: Path | None):
    from recon.stages.train import Config as TrainConfig

    preset: Literal["cpu", "cuda"] = "cuda" if args.device.startswith("cuda") else "cpu"
    over: dict[str, Any] = {}
    if n <= SPARSE_VIEWS and not args.no_sparse_settings:  # what `recon run --train-views N` starts from
        over.update(sparse_train_settings(TrainConfig.preset(preset).max_gaussians))
    over.update(
        init=init,
        depth_loss=dl,
        iterations=args.iterations,
        device=args.device,
        cpu_threads=args.threads,
        max_size=args.size,
        video_frames=0,
        gt_depth=gt_npz,
        seed=args.seed,
        eval_mask=(gt_npz.parent / "eval_mask.npz") if gt_npz is not None else None,
        background={"auto": None, "black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}[args.background],
    )
    if args.depth_weight is not None:
        over["depth_weight"] = args.depth_weight
    if args.random_fill is not None:
        over["init_random_fill"] = args.random_fill
    for item in args.set:
        key, _, value = item.partition("=")
        over[key] = json.loads(value)
    return TrainConfig.preset(preset, **over)


def _row(dataset: str, n: int, init: str, dl: str, prior: str, s: dict, wall_s: float) -> dict:
    return {
        "dataset": dataset,
        "views": n,
        "init": init,
        "depth_loss": dl,
        "prior": prior if (dl != "none" or init == "depth") else "-",
        "psnr": s.get("psnr"),
        "ssim": s.get("ssim"),
        "mpsnr": s.get("psnr_masked"),
        "mssim": s.get("ssim_masked"),
        "covis": s.get("mask_fraction"),
        "abs_rel": s.get("depth_abs_rel"),
        "delta1": s.get("depth_delta1"),
        "gaussians": s["num_gaussians"],
        "train_s": s["train_time_s"],
        "wall_s": wall_s,
    }


def _bench_views(args: argparse.Namespace, dataset: str, n: int) -> list[dict]:
    """Prepare (dataset, n) once, then train and score every variant on a copy of the run."""
    from recon.stages.train import run as run_train

    try:
        base, gt_npz, prep_s, depth_error = prepare(
            dataset,
            n,
            args.out,
            args.frame_size,
            args.num_frames,
            args.depth_backend,
            args.fuse_min_views,
            args.prior_frames,
            args.seven_poses,
            tuple(args.seven_span),
            not args.no_sparse_settings,
            args.reuse_prepared,
        )
    except ReconError as e:
        print(f"[{dataset} N={n}] preparation failed: {e}", flush=True)
        return []
    print(
        f"[{dataset} N={n}] prepared in {prep_s:.0f}s" + (f"; no depth prior: {depth_error}" if depth_error else ""),
        flush=True,
    )
    rows, oracle = [], None
    for init, dl, prior in _variants(args, dataset, gt_npz, depth_error):
        dst = base.root.parent / f"{init}_{dl}_{prior}"
        if prior == "oracle":
            assert gt_npz is not None, "_variants adds oracle rows only when there is GT depth"
            oracle = oracle or oracle_variant(base, gt_npz, base.root.parent / "oracle_base", args.fuse_min_views)
            paths = copy_run(oracle, dst)
        else:
            paths = copy_run(base, dst)
        _reset_peak(args.device)
        t0 = time.perf_counter()
        try:
            cfg = _train_config(args, init, dl, n, gt_npz)
            s = run_train(StageContext(paths), cfg)
        except ReconError as e:
            print(f"[{dataset} N={n}] {init}/{dl}/{prior}: {e}", flush=True)
            continue
        rows.append(_row(dataset, n, init, dl, prior, s, time.perf_counter() - t0))
        rows[-1].update(iterations=cfg.iterations, size=cfg.max_size, strategy=cfg.strategy, **_peak(args.device))
        print(_fmt(rows[-1]), flush=True)
    return rows


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: str) -> dict[str, float]:
    """{"peak_gib": torch's peak allocated CUDA memory during the training} on CUDA, else {}."""
    if not device.startswith("cuda"):
        return {}
    import torch

    return {"peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def main() -> None:
    args = _parse_args()
    set_verbosity(1 if args.verbose else 0)
    rows = [row for dataset in args.datasets for n in args.views for row in _bench_views(args, dataset, n)]
    print()
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _fmt(r: dict) -> str:
    f = lambda v, p: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    return (
        f"| {r['dataset']:8s} | {r['views']:2d} | {r['init']:6s} | {r['depth_loss']:10s} | {r['prior']:6s} | "
        f"{f(r['psnr'], 2):>6s} | {f(r['ssim'], 3):>5s} | {f(r.get('mpsnr'), 2):>6s} | {f(r.get('mssim'), 3):>5s} | "
        f"{f(r.get('covis'), 2):>5s} | {f(r['abs_rel'], 3):>6s} | {f(r['delta1'], 3):>5s} | "
        f"{r['gaussians']:6d} | {r['train_s']:6.0f} |" + (f" {r['peak_gib']:.2f} GiB |" if "peak_gib" in r else "")
    )


def _table(rows: list[dict]) -> str:
    head = (
        "| dataset  |  N | init   | depth loss | prior  |   PSNR |  SSIM |  mPSNR | mSSIM | covis | AbsRel "
        "|   δ1  |     #G | train s |\n"
        "|----------|----|--------|------------|--------|--------|-------|--------|-------|-------|--------"
        "|-------|--------|--------|"
    )
    return "\n".join([head] + [_fmt(r) for r in rows])


if __name__ == "__main__":
    main()
