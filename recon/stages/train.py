"""Stage `train`: Gaussians trained on the training views, evaluated on the test views -> RUN/splat/, metrics.json.

Reads cameras.json, split.json, the frames (at training resolution), depth/aligned.npz (depth prior and its
confidence), frames.json (the composite colour) and the init source (points/init.ply or sfm/); writes
splat/gaussians.ply, splat/checkpoint.pt, splat/train_log.jsonl, splat/test_renders/*.png, splat/renders.mp4
and metrics.json. The training itself is splat.trainer.Trainer, on arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from depth.checks import choice, flag, number, path_exists
from depth.errors import DepthError
from recon.artifacts import (
    AlignedDepth,
    CameraSet,
    Checkpoint,
    FramesIndex,
    GaussiansFile,
    Metrics,
    PointCloud,
    RunPaths,
    Split,
    read_rgb,
    write_jsonl,
)
from recon.atomic import atomic_path
from recon.console import debug, info, progress, warn
from recon.errors import ReconError
from recon.stages import StageContext
from recon.stages.views import training_views
from recon.video import write_mp4
from splat.errors import SplatError
from splat.gaussians import (
    FillRegion,
    Frustums,
    InitConfig,
    camera_lookat_bounds,
    initial_points,
    visible_depths,
)
from splat.trainer import Background, TrainConfig, Trainer, config_json, needs_prior, uses_depth
from splat.views import TrainViews, resize_nearest, target_size


@dataclass
class Config(TrainConfig):
    """Training (splat.trainer.TrainConfig) plus what the stage reads and writes around it."""

    ONE_OFF: ClassVar[tuple[str, ...]] = ("resume", "eval_only")
    """Requests for one command (continue, evaluate): they make the stage run once, but are neither part of its
    fingerprint nor saved as the run's base config (recon.pipeline), so the next command trains as configured."""

    resume: bool = False
    """Continue from splat/checkpoint.pt."""
    eval_only: bool = False
    """Skip training; evaluate splat/checkpoint.pt (or splat/gaussians.ply) on the test views."""
    eval_initial: bool = False
    """Also score the initial Gaussians on the test views (initial_psnr in the summary)."""
    gt_depth: Path | None = None
    """npz with key `depth` [T,H,W] ground-truth z-depth (cameras.json order, 0 invalid) for depth metrics."""
    eval_mask: Path | None = None
    """npz with key `mask` [T,H,W] bool (cameras.json order): test pixels to score for the masked metrics
    psnr_masked / ssim_masked, e.g. co-visibility with the training views (splat.evaluate.covisibility_mask;
    the mPSNR / mSSIM of Gao et al. 2022). Unmasked PSNR / SSIM are always reported too."""
    gt_depth_align: Literal["median", "none"] = "median"
    """Scale rendered depth to the GT per view by the median ratio (needed for SfM-unit scenes)."""
    test_renders: bool = True
    video_frames: int = 120
    """Frames of splat/renders.mp4 along the camera path (0 = no video)."""
    video_fps: float = 30.0

    @classmethod
    def preset_fields(cls, name: str) -> dict[str, Any]:
        try:
            base = super().preset_fields(name)
        except SplatError as e:
            raise ReconError(str(e)) from e
        if name == "cpu":
            base["video_frames"] = 60
        return base

    def validate(self, where: str = "train") -> Config:
        """ReconError unless every field is in range (the training fields: TrainConfig.validate)."""
        try:
            super().validate(where)
        except SplatError as e:
            raise ReconError(str(e)) from e
        for name in ("resume", "eval_only", "eval_initial", "test_renders"):
            flag(getattr(self, name), f"{where}.{name}", ReconError)
        for name in ("gt_depth", "eval_mask"):
            path = getattr(self, name)
            if path is not None and not path_exists(path, is_file=True):
                raise ReconError(f"{where}.{name}: file {path} not found")
        choice(self.gt_depth_align, f"{where}.gt_depth_align", ReconError, ("median", "none"))
        number(self.video_frames, f"{where}.video_frames", ReconError, lo=0, hi=100_000, integer=True, note="0 = none")
        number(self.video_fps, f"{where}.video_fps", ReconError, lo=0, hi=1000, lo_open=True)
        return self


@contextmanager
def _library_errors() -> Iterator[None]:
    """splat / depth errors surface as the application's one-line ReconError."""
    try:
        yield
    except (SplatError, DepthError) as e:
        raise ReconError(str(e)) from e


# ---------------------------------------------------------------------------------------------------
# reading


def load_views(
    paths: RunPaths, cams: CameraSet, views: list[int], cfg: TrainConfig, device: Any, prior: AlignedDepth | None
) -> TrainViews:
    """Frames `views` (and, with `prior`, their depth prior and confidence) at training resolution."""
    from depth.geometry import scale_intrinsics

    W, H = target_size(cams.width, cams.height, cfg.downscale, cfg.max_size)
    images = {i: read_rgb(paths.root / cams.files[i], (W, H)) for i in views}
    depth = conf = None
    if prior is not None:
        depth = {i: resize_nearest(prior.depth[i], (W, H)) for i in views}
        conf = {i: resize_nearest(prior.confidence[i], (W, H)) for i in views}
    with _library_errors():
        return TrainViews.from_arrays(
            images,
            scale_intrinsics(cams.K, W / cams.width, H / cams.height),
            cams.c2w,
            prior_depth=depth,
            prior_confidence=conf,
            names={i: Path(cams.files[i]).stem for i in views},
            device=device,
        )


def load_prior(paths: RunPaths, cams: CameraSet, train: list[int]) -> AlignedDepth:
    """depth/aligned.npz, checked to hold valid depth on the training views."""
    if not paths.aligned_npz.exists():
        raise ReconError(
            f"{paths.aligned_npz} not found: run the depth and align stages first, or train without the prior "
            "(--depth-loss none and train.pseudo_depth_weight=0)"
        )
    prior = AlignedDepth.load(paths.aligned_npz, (len(cams), cams.height, cams.width))
    prior.require_valid(train, paths.aligned_npz)
    return prior


def _frame_stack(path: Path, key: str, what: str, cams: CameraSet) -> np.ndarray:
    """[T,H,W] array `key` of an npz, one map per frame of cameras.json."""
    if not path.exists():
        raise ReconError(f"{what} {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z:
                raise ReconError(f"{what} {path} has no key '{key}'")
            arr = np.asarray(z[key])
    except ReconError:
        raise
    except Exception as e:  # zipfile / numpy raise several types for damaged or pickled files
        raise ReconError(f"{what} {path} is not a readable npz ({type(e).__name__}: {e})") from e
    if arr.ndim != 3 or len(arr) != len(cams):
        raise ReconError(f"{what} {path} has shape {arr.shape}, expected [{len(cams)}, H, W]")
    return arr


def load_gt_depth(cfg: Config, cams: CameraSet, test: list[int], size: tuple[int, int]) -> dict[int, np.ndarray] | None:
    if cfg.gt_depth is None:
        return None
    depth = _frame_stack(Path(cfg.gt_depth), "depth", "ground-truth depth", cams)
    return {i: resize_nearest(np.nan_to_num(depth[i].astype(np.float32), nan=0.0), size) for i in test}


def load_eval_masks(
    cfg: Config, cams: CameraSet, test: list[int], size: tuple[int, int]
) -> dict[int, np.ndarray] | None:
    if cfg.eval_mask is None:
        return None
    mask = _frame_stack(Path(cfg.eval_mask), "mask", "evaluation mask", cams)
    return {i: resize_nearest(mask[i].astype(np.float32), size) > 0.5 for i in test}


def composited_on(paths: RunPaths) -> tuple[float, float, float] | None:
    """The colour frames.json says transparent input frames were composited on (None: opaque or no frames.json)."""
    return FramesIndex.load(paths.frames_json).composited_on if paths.frames_json.exists() else None


def reference_points(paths: RunPaths, points: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray | None:
    """The points that give the scene's depth range for random points: the init's own points (depth / SfM),
    else the run's SfM points, else its fused points, else None. xyz [N,3] scene units."""
    from recon.sfm import read_sfm_points

    if points is not None and len(points[0]):
        return np.asarray(points[0])
    if paths.sfm_dir.exists():
        return read_sfm_points(paths.sfm_dir)[0]
    if paths.init_ply.exists():
        return PointCloud.load(paths.init_ply).xyz
    return None


def read_initial_points(
    paths: RunPaths,
    cfg: TrainConfig,
    cams: CameraSet,
    train: list[int],
    rng: np.random.Generator,
    seen: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The initial points of --init depth | sfm | random (with cfg.init_random_fill random points added to a
    depth or SfM init): xyz float32 [N,3], rgb uint8 [N,3]. Random points fill the box the training cameras look
    at when they converge on an object, else the frustums of the `seen` frames (the frames the method may look
    at: the training views and the depth prior's frames; default the training views) at the depths of the scene's
    points in them (`reference_points`, `splat.gaussians.frustum_points`): a box around the SfM points of a
    forward-facing scene leaves the near field empty and moves with a few outlying points (benchmarks/README.md,
    "init_random_fill")."""
    from recon.sfm import read_sfm_points

    icfg = InitConfig(
        init=cfg.init,
        num_random=cfg.num_random,
        max_points=cfg.max_init_points,
        sfm_min_train_views=cfg.sfm_min_train_views,
        random_fill=cfg.init_random_fill,
    )
    points = None
    if cfg.init == "depth":
        if not paths.init_ply.exists():
            raise ReconError(f"{paths.init_ply} not found: run the fuse stage first, or train with --init sfm|random")
        cloud = PointCloud.load(paths.init_ply)
        points = (cloud.xyz, cloud.rgb)
    elif cfg.init == "sfm":
        names = {Path(cams.files[i]).name for i in train}
        points = read_sfm_points(paths.sfm_dir, names, cfg.sfm_min_train_views)
        debug(f"sfm init: {len(points[0])} points seen by >= {cfg.sfm_min_train_views} of {len(train)} training views")

    def region() -> FillRegion:
        box = camera_lookat_bounds(cams.c2w[train], cams.K[train], cams.width, cams.height)
        if box is not None:
            return box
        ref = reference_points(paths, points)
        if ref is None:
            raise ReconError(
                "random points need scene bounds: cameras do not converge and the run has no SfM or fused points"
            )
        views = seen or train
        c2w, K = cams.c2w[views], cams.K[views]
        depths = visible_depths(ref, c2w, K, cams.width, cams.height)
        debug(f"random points in the frustums of {len(views)} frames, at the depths of {len(ref)} scene points")
        return Frustums(c2w, K, cams.width, cams.height, depths)

    with _library_errors():
        return initial_points(icfg, points, region, rng)


# ---------------------------------------------------------------------------------------------------
# writing


def save_png(path: Path, image: np.ndarray) -> None:
    """uint8 [H,W,3] -> PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _save_checkpoint(paths: RunPaths, state: dict[str, Any], run_id: str, train: list[int]) -> None:
    Checkpoint(state).save(paths.checkpoint, run_id=run_id, train_views=train)
    write_jsonl(paths.splat_dir / "train_log.jsonl", state["log"])


# ---------------------------------------------------------------------------------------------------
# the stage


@dataclass
class _Setup:
    """What the stage read for one training: cameras, views and what scores them."""

    cams: CameraSet
    train: list[int]
    test: list[int]
    views: TrainViews
    background: Background
    use_depth: bool
    gt_depth: dict[int, np.ndarray] | None
    eval_masks: dict[int, np.ndarray] | None
    seen: list[int]
    """The frames the method may look at (training and depth-prior frames, never a test view): their frustums
    hold the random points when the training cameras do not converge."""


def resolve_exposure(paths: RunPaths, cfg: Config) -> Config:
    """`cfg` with train.exposure "auto" decided: when resuming or evaluating, as the checkpoint was trained;
    else on for video input (frames.json source_type "video"), off for image folders and runs without
    frames.json."""
    import dataclasses

    if cfg.exposure != "auto":
        return cfg
    if (cfg.resume or cfg.eval_only) and paths.checkpoint.exists():
        on = Checkpoint.load(paths.checkpoint).state.get("exposure") is not None
    else:
        on = paths.frames_json.exists() and FramesIndex.load(paths.frames_json).source_type == "video"
    return dataclasses.replace(cfg, exposure=on)


def _check_llff_size(cams: CameraSet, cfg: Config) -> None:
    """The llff split protocol trains and evaluates at the frame (input) size: ReconError if the config would not."""
    size = target_size(cams.width, cams.height, cfg.downscale, cfg.max_size)
    if size != (cams.width, cams.height):
        raise ReconError(
            f"split.protocol llff evaluates at the frame size {cams.width}x{cams.height}, but train.max_size "
            f"{cfg.max_size} and train.downscale {cfg.downscale:g} give {size[0]}x{size[1]}: set train.max_size=0 "
            "and train.downscale=1 (the CLI's --split-protocol llff does)"
        )


def _setup(paths: RunPaths, cfg: Config, device: Any) -> _Setup:
    with _library_errors():
        use_depth = uses_depth(cfg) and not cfg.eval_only  # the depth loss the summary reports
        read_prior = needs_prior(cfg) and not cfg.eval_only  # the depth loss or pseudo-view depth
    cams = CameraSet.load(paths.cameras_json)
    split = Split.load(paths.split_json)
    if split.protocol.startswith("llff"):
        _check_llff_size(cams, cfg)
    train, test = training_views(paths, cams, split)
    prior = load_prior(paths, cams, train) if read_prior else None
    views = load_views(paths, cams, sorted(set(train) | set(test)), cfg, device, prior)
    size = (views.width, views.height)
    gt_depth = load_gt_depth(cfg, cams, test, size)
    eval_masks = load_eval_masks(cfg, cams, test, size)
    with _library_errors():
        background = Background.resolve(cfg, views, train, composited_on(paths))
    debug(
        f"background {[round(c, 3) for c in background.color]} ({background.source}), training on {background.training}"
    )
    info(
        f"train: {len(train)} train / {len(test)} test views at {views.width}x{views.height} on {device}, "
        f"init={cfg.init}, depth_loss={cfg.depth_loss if use_depth else 'none'}, "
        f"exposure={'on' if cfg.exposure is True else 'off'}"
    )
    seen = sorted((set(train) | set(split.prior)) - set(test))
    return _Setup(cams, train, test, views, background, use_depth, gt_depth, eval_masks, seen)


def _trainer(paths: RunPaths, cfg: Config, s: _Setup) -> Trainer:
    """The trainer for eval-only (saved Gaussians), resume (the checkpoint) or a new training (the init)."""
    if cfg.eval_only:
        if paths.checkpoint.exists():
            ck = Checkpoint.load(paths.checkpoint, expected_run_id=s.cams.run_id())
            params = {k: v.numpy() for k, v in ck.state["params"].items()}
        elif paths.gaussians_ply.exists():
            params = GaussiansFile.load(paths.gaussians_ply).params
        else:
            raise ReconError(
                f"train.eval_only: neither {paths.checkpoint} nor {paths.gaussians_ply} exists (train first)"
            )
        return Trainer.from_gaussians(params, s.views, cfg, train=s.train, background=s.background)
    if cfg.resume:
        state = Checkpoint.load(paths.checkpoint, expected_run_id=s.cams.run_id(), expected_train_views=s.train).state
        return Trainer.from_state(state, s.views, cfg, train=s.train, background=s.background)
    rng = np.random.default_rng(cfg.seed)
    xyz, rgb = read_initial_points(paths, cfg, s.cams, s.train, rng, seen=s.seen)
    return Trainer.from_points(xyz, rgb, s.views, cfg, rng=rng, train=s.train, background=s.background)


def _fit(
    paths: RunPaths, cfg: Config, trainer: Trainer, callback: Callable[[int, dict], None] | None, run_id: str
) -> None:
    with progress() as bar:
        task = bar.add_task("train", total=cfg.iterations, completed=trainer.global_step, status="")

        def step_done(step: int, row: dict[str, Any]) -> None:
            status = f"loss {row['loss']:.4f}  PSNR {row['psnr']:.2f}  N {row['num_gaussians']}"
            bar.update(task, advance=1, status=status)
            if callback is not None:
                callback(step, row)

        trainer.fit(step_done, lambda state: _save_checkpoint(paths, state, run_id, trainer.train))
    GaussiansFile(trainer.gaussians()).save(paths.gaussians_ply)


def _evaluate(paths: RunPaths, cfg: Config, trainer: Trainer, s: _Setup) -> tuple[dict[str, Any], bool]:
    """Score the test views, write their renders; (metrics, whether LPIPS was available)."""
    from splat.evaluate import maybe_lpips

    if not s.test:
        warn("split has no test views: no held-out metrics")
        return {"num_views": 0}, False
    lp = maybe_lpips(trainer.device)
    metrics = trainer.evaluate(s.test, s.gt_depth, s.eval_masks, lp, cfg.gt_depth_align, keep_renders=cfg.test_renders)
    for i, image in metrics.pop("renders", {}).items():
        save_png(paths.test_renders_dir / f"{s.views.names.get(i, f'{i:06d}')}.png", image)
    return metrics, lp is not None


def _render_video(paths: RunPaths, cfg: Config, trainer: Trainer, cams: CameraSet) -> None:
    keys = cams.c2w[cams.registered]
    K = trainer.views.K[int(np.flatnonzero(cams.registered)[0])]
    frames = trainer.render_path(keys, K, cfg.video_frames)
    write_mp4(paths.renders_mp4, frames, cfg.video_fps, options={"crf": "20"}, pad="edge")
    debug(f"wrote {paths.renders_mp4} ({len(frames)} frames)")


def _summary(cfg: Config, trainer: Trainer, s: _Setup, metrics: dict, extra: dict) -> dict[str, Any]:
    bg = trainer.background
    return {
        **{k: v for k, v in metrics.items() if k != "per_view"},
        **extra,
        "num_gaussians": trainer.num_gaussians,
        "train_time_s": float(trainer.elapsed),
        "iterations": int(cfg.iterations),
        "num_train_views": len(s.train),
        "num_test_views": len(s.test),
        "resolution": [s.views.width, s.views.height],
        "device": str(trainer.device),
        "init": cfg.init,
        "depth_loss": cfg.depth_loss if s.use_depth else "none",
        "strategy": cfg.strategy,
        "exposure": cfg.exposure is True,
        "background": [round(float(c), 4) for c in bg.color],
        "background_source": bg.source,
        "train_background": bg.training,
    }


def _train(paths: RunPaths, cfg: Config, device: Any, callback: Callable[[int, dict], None] | None) -> dict[str, Any]:
    cfg = resolve_exposure(paths, cfg)
    s = _setup(paths, cfg, device)
    trainer = _trainer(paths, cfg, s)
    extra: dict[str, Any] = {}
    if cfg.eval_initial and s.test and trainer.global_step == 0 and not cfg.eval_only:
        init_eval = trainer.evaluate(s.test, sh_degree=0)
        extra = {"initial_psnr": init_eval["psnr"], "initial_ssim": init_eval["ssim"]}
        info(f"initial test PSNR {init_eval['psnr']:.2f} dB")
    if not cfg.eval_only:
        _fit(paths, cfg, trainer, callback, s.cams.run_id())
    metrics, lpips_available = _evaluate(paths, cfg, trainer, s)
    if cfg.video_frames > 0:
        _render_video(paths, cfg, trainer, s.cams)
    summary = {**_summary(cfg, trainer, s, metrics, extra), "lpips_available": lpips_available}
    Metrics(summary, metrics.get("per_view", []), config_json(cfg)).save(paths.metrics_json)
    msg = f"test PSNR {summary.get('psnr', float('nan')):.2f} dB, SSIM {summary.get('ssim', float('nan')):.3f}"
    if "psnr_cc" in summary:
        msg += f" (colour-corrected: {summary['psnr_cc']:.2f} dB)"
    if "psnr_masked" in summary:
        msg += f" (co-visible pixels: {summary['psnr_masked']:.2f} dB, {summary['ssim_masked']:.3f})"
    if "depth_abs_rel" in summary:
        msg += f", depth AbsRel {summary['depth_abs_rel']:.3f}"
    info(msg + f", {summary['num_gaussians']} Gaussians, {trainer.elapsed:.0f}s training")
    return summary


def run(ctx: StageContext, cfg: Config, callback: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Train (or with cfg.eval_only just evaluate) the Gaussians of a run; write all splat outputs.

    Args:
        callback: called as callback(step, log_row) after every optimisation step (for tests/tools);
            an exception it raises interrupts training like a kill would (the last checkpoint stays).
    Returns:
        summary dict (also RUN/metrics.json, replacing an earlier evaluation): psnr, ssim, [lpips],
        [depth_abs_rel, depth_delta1], num_gaussians, train_time_s, iterations, num_train_views, ...
    """
    import torch

    from depth.device import resolve_device

    with _library_errors():
        device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        with _library_errors():
            return _train(ctx.paths, cfg, device, callback)
    finally:
        torch.set_num_threads(threads)
