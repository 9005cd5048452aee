"""Train 3D Gaussians on a run: photometric L1 + D-SSIM, an optional depth-prior loss, gsplat densification.

Inputs (RunPaths): cameras.json, split.json (train views only are fitted, test views are held out and
scored), frames, points/init.ply | sfm/ (initialisation), depth/aligned.npz (depth prior).
Outputs: splat/gaussians.ply, splat/checkpoint.pt, splat/train_log.jsonl, splat/test_renders/*.png,
splat/renders.mp4, metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from recon.atomic import atomic_path, write_json, write_text
from recon.artifacts.cameras import CameraSet
from recon.console import debug, info, progress, warn
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths
from recon.split import load_split
from splat import evaluate as ev
from splat.camera_path import render_path_video
from splat.gaussians import (
    InitConfig,
    gaussians_from_points,
    initial_points,
    scene_extent,
    to_numpy,
    to_parameters,
)
from splat.losses import DEPTH_LOSSES, depth_weight_at, exp_decay, photometric_loss
from splat.ply import read_gaussian_ply, sh_degree_from_bases, write_gaussian_ply


@dataclass
class TrainConfig:
    """Gaussian Splatting training (defaults = full quality on CUDA; see `TrainConfig.preset`)."""

    iterations: int = 30_000
    init: Literal["depth", "sfm", "random"] = "depth"
    """Initial Gaussians: depth-fused cloud (points/init.ply), SfM points (sfm/), or random in the scene bounds."""
    num_random: int = 100_000
    """Points for --init random."""
    max_init_points: int = 0
    """Keep at most this many initial points, chosen at random (0 = all)."""
    init_random_fill: int = 5_000
    """Random points added to a depth / SfM init: Gaussians for what the depth prior or the SfM points do
    not cover (pixels without valid depth, space no training view saw), which would otherwise render as
    background. Measured (CPU preset, black background): apple main job test PSNR 32.82 -> 34.10 dB (SSIM 0.968 -> 0.966);
    7-Scenes 3 views (benchmarks/sparse_view.py, 1000 steps) SfM init 21.28 -> 23.37 dB, stereo depth init +
    depth loss 21.30 -> 24.32 dB. 0 = off."""
    sfm_min_train_views: int = 2
    """--init sfm: keep SfM points observed by at least this many training views (0 = all points, even
    those only held-out test views saw)."""
    init_opacity: float = 0.1
    init_scale: float = 1.0
    """Initial sigma as a multiple of the mean distance to the 3 nearest points."""
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps (until sh_degree)."""
    ssim_lambda: float = 0.2
    depth_loss: Literal["none", "l1-inverse", "pearson"] = "l1-inverse"
    """Depth-prior loss against depth/aligned.npz. Chosen by benchmarks/sparse_view.py (7-Scenes, 3 views,
    300 CPU steps): with the GT-depth prior l1-inverse gave test depth AbsRel 0.072 vs 0.084 (pearson)
    and 0.084 (none) at equal SSIM; with the stereo prior on SfM init it gave +0.73 dB PSNR."""
    depth_weight: float = 0.5
    """Chosen on the same data: stereo prior + SfM init gave 15.76 / 16.11 / 15.91 dB for 0.1 / 0.5 / 2.0."""
    depth_weight_final: float = 0.1
    """Depth weight at the last step as a fraction of depth_weight (exponential decay; 1 = constant)."""
    strategy: Literal["default", "mcmc"] = "default"
    """gsplat densification: DefaultStrategy (3DGS) or MCMCStrategy (3DGS-MCMC; on the CPU its two
    CUDA-only ops run through splat.mcmc_cpu)."""
    max_gaussians: int = 3_000_000
    """Stop densifying (default strategy) once this many Gaussians exist; MCMC's cap_max."""
    refine_start: int = 500
    refine_stop: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 0.0002
    lr_means: float = 1.6e-4
    """Position learning rate per unit of scene extent (multiplied by the extent), decayed to lr_means_final."""
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    downscale: float = 1.0
    """Train and evaluate at frame resolution / downscale."""
    max_size: int = 0
    """Also cap the longest image side at this many pixels (0 = no cap)."""
    background: tuple[float, float, float] | None = None
    """Colour behind the Gaussians (RGB in [0,1]). None = automatic: the colour transparent input frames were
    composited on (frames.json `composited_on`, white for Blender renders), else the mean colour of the
    training images -- the least-squares guess for what no training view saw, which a sparse-view test view
    shows wherever it looks past the training views. Measured test PSNR on one SfM run of each scene, black ->
    mean colour -> mean colour with train_background "random" (the default): 7-Scenes 3 views
    (benchmarks/sparse_view.py, 1000 steps) SfM init 23.02 -> 23.09 -> 23.10 dB, stereo depth init + depth
    loss 23.72 -> 24.26 -> 24.50 dB; apple main job (dense views) 34.05 -> 33.64 -> 33.96 dB."""
    train_background: Literal["auto", "random", "fixed"] = "auto"
    """Background while training: "random" draws a new uniform colour every step (as splatfacto's
    background_color="random"), so no transparency can pass for scene colour and every observed pixel must be
    covered by Gaussians; "fixed" trains on `background`; "auto" = "random" when `background` is automatic and
    the frames are opaque, else "fixed" (frames composited on a colour, or a colour you set: the images'
    backdrop is that colour). Evaluation and renders always use `background`."""
    device: str = "auto"
    cpu_threads: int = 0
    """torch intra-op threads while training on the CPU (0 = torch's default). 1 is much faster on a
    machine whose cores are already busy (thread oversubscription)."""
    seed: int = 0
    checkpoint_every: int = 1000
    """Write splat/checkpoint.pt every this many steps (0 = only at the end)."""
    resume: bool = False
    """Continue from splat/checkpoint.pt."""
    eval_only: bool = False
    """Skip training; evaluate splat/checkpoint.pt (or splat/gaussians.ply) on the test views."""
    eval_initial: bool = False
    """Also score the initial Gaussians on the test views (initial_psnr in the summary)."""
    log_every: int = 10
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
    def preset(cls, name: Literal["cpu", "cuda"], /, **overrides: Any) -> TrainConfig:
        """Device-aware defaults: "cuda" = full quality; "cpu" = small images, minutes of training.

        `overrides` replace preset fields (e.g. `TrainConfig.preset("cpu", iterations=200)`).
        """
        if name == "cuda":
            base: dict[str, Any] = dict(device="cuda")
        elif name == "cpu":
            base = dict(
                device="cpu",
                iterations=600,
                max_size=128,
                sh_degree=1,
                sh_degree_interval=200,
                num_random=5_000,
                max_init_points=20_000,
                max_gaussians=40_000,
                refine_start=100,
                refine_stop=450,
                refine_every=50,
                reset_every=100_000,
                checkpoint_every=200,
                video_frames=60,
            )
        else:
            raise ReconError(f"unknown preset '{name}' (choose cpu or cuda)")
        base.update(overrides)
        return cls(**base)


# ---------------------------------------------------------------------------------------------------
# data


@dataclass
class _Views:
    """Images and cameras at training resolution (all tensors on the training device)."""

    width: int
    height: int
    K: torch.Tensor  # [T,3,3] pixels at (width, height)
    viewmats: torch.Tensor  # [T,4,4] w2c
    c2w: np.ndarray  # [T,4,4]
    images: dict[int, torch.Tensor] = field(default_factory=dict)  # view -> [H,W,3] in [0,1]
    prior_depth: dict[int, torch.Tensor] = field(default_factory=dict)  # view -> [H,W]
    names: dict[int, str] = field(default_factory=dict)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReconError(f"--device {name} requested but no CUDA GPU is available (use --device cpu)")
    return torch.device(name)


def _target_size(width: int, height: int, cfg: TrainConfig) -> tuple[int, int]:
    s = max(cfg.downscale, 1.0)
    if cfg.max_size > 0:
        s = max(s, max(width, height) / cfg.max_size)
    return max(int(round(width / s)), 1), max(int(round(height / s)), 1)


def validate_split(split: dict, cams: CameraSet, root: Path) -> tuple[list[int], list[int]]:
    """Check split.json against the cameras and frame files; return (train, test) view indices."""
    out = []
    for key in ("train", "test"):
        items = split.get(key, [])
        if not isinstance(items, list):
            raise ReconError(f"split.json: '{key}' must be a list of frame indices")
        for i in items:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(cams):
                raise ReconError(f"split.json names {key} frame {i!r}, but cameras.json has {len(cams)} frames")
            if not (root / cams.files[i]).exists():
                raise ReconError(f"split.json names {key} frame {i}, but its image {root / cams.files[i]} is missing")
            if not cams.registered[i]:
                raise ReconError(f"split.json names {key} frame {i}, which has no camera pose (unregistered)")
        out.append(list(items))
    train, test = out
    if not train:
        raise ReconError("split.json has no training views")
    if set(train) & set(test):
        raise ReconError(f"split.json: frames {sorted(set(train) & set(test))} are both train and test views")
    return train, test


def _load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        im = Image.open(path)
        im.load()
    except Exception as e:  # PIL raises many types for unreadable files
        raise ReconError(f"cannot read frame {path} ({e})") from e
    im = im.convert("RGB")
    if im.size != size:
        im = im.resize(size, Image.BOX if im.size[0] > size[0] else Image.BICUBIC)
    return np.asarray(im, np.uint8)


def load_prior_depth(path: Path, cams: CameraSet, views: list[int]) -> np.ndarray:
    """depth/aligned.npz -> [T,H,W] float32 z-depth; ReconError if missing, NaN or empty on `views`."""
    if not path.exists():
        raise ReconError(f"{path} not found: run the depth and align stages first, or train with --depth-loss none")
    try:
        with np.load(path) as z:
            depth = np.asarray(z["depth"], np.float32)
    except (KeyError, ValueError, OSError) as e:
        raise ReconError(f"{path} is not a depth file with key 'depth' ({e})") from e
    if depth.ndim != 3 or len(depth) != len(cams):
        raise ReconError(f"{path}: depth has shape {depth.shape}, expected [{len(cams)}, H, W] (one map per camera)")
    sel = depth[views]
    if not np.isfinite(sel).all():
        raise ReconError(f"{path} contains NaN or infinite depth on training views: re-run the align stage")
    if not (sel > 0).any():
        raise ReconError(f"{path} is all zero (no valid depth) on the training views: re-run the depth stage")
    if (sel < 0).any():
        raise ReconError(f"{path} contains negative depth on training views")
    return depth


def _resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [H,W] depth (keeps 0 = invalid exact)."""
    h, w = depth.shape
    W, H = size
    if (w, h) == (W, H):
        return depth
    ys = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    xs = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    return depth[ys][:, xs]


def load_views(
    paths: RunPaths, cams: CameraSet, views: list[int], cfg: TrainConfig, device: torch.device, prior: np.ndarray | None
) -> _Views:
    W, H = _target_size(cams.width, cams.height, cfg)
    K = cams.K.copy()
    K[:, 0, :] *= W / cams.width
    K[:, 1, :] *= H / cams.height
    out = _Views(
        width=W,
        height=H,
        K=torch.as_tensor(K, dtype=torch.float32, device=device),
        viewmats=torch.as_tensor(cams.w2c, dtype=torch.float32, device=device),
        c2w=cams.c2w,
    )
    for i in views:
        img = _load_image(paths.root / cams.files[i], (W, H))
        out.images[i] = torch.from_numpy(np.array(img)).to(device).float() / 255.0
        out.names[i] = Path(cams.files[i]).stem
        if prior is not None:
            out.prior_depth[i] = torch.as_tensor(_resize_depth(prior[i], (W, H)), device=device)
    return out


def resolve_background(
    background: tuple[float, float, float] | None, paths: RunPaths, views: _Views, train: list[int]
) -> tuple[torch.Tensor, str]:
    """The training / rendering background (see TrainConfig.background): ([3] RGB in [0,1] on the views'
    device, where it came from: "config" | "composite" | "train-mean")."""
    device = views.viewmats.device
    if background is not None:
        bg, source = [float(c) for c in background], "config"
        if len(bg) != 3 or not all(0.0 <= c <= 1.0 for c in bg):
            raise ReconError(f"train.background must be 3 numbers in [0, 1] (RGB), got {list(background)}")
        return torch.tensor(bg, dtype=torch.float32, device=device), source
    if paths.frames_json.exists():
        comp = json.loads(paths.frames_json.read_text()).get("composited_on")
        if comp is not None:
            return torch.tensor([float(c) for c in comp], dtype=torch.float32, device=device), "composite"
    mean = torch.stack([views.images[i].reshape(-1, 3).mean(0) for i in train]).mean(0)
    return mean.float().to(device), "train-mean"


def training_background(mode: str, background_source: str) -> Literal["random", "fixed"]:
    """TrainConfig.train_background resolved: "auto" is "random" only for an automatic background over opaque
    frames (`background_source` "train-mean"); composited frames and a colour set in the config keep it."""
    if mode not in ("auto", "random", "fixed"):
        raise ReconError(f"train.train_background must be auto, random or fixed, got {mode!r}")
    if mode == "auto":
        return "random" if background_source == "train-mean" else "fixed"
    return mode  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# rendering


def _rasterization():
    from splat.render import rasterization

    return rasterization


def render(
    params: torch.nn.ParameterDict | dict[str, torch.Tensor],
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int,
    background: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Render one view.

    Args:
        viewmat: [4,4] w2c (OpenCV). K: [3,3] pixels at (width, height). background: [3].
    Returns:
        rgb [H,W,3], expected depth [H,W], alpha [H,W], meta (gsplat's info dict, means2d with grad).
    """
    colors = torch.cat([params["sh0"], params["shN"]], dim=1)
    out, alpha, meta = _rasterization()(
        means=params["means"],
        quats=params["quats"],
        scales=torch.exp(params["scales"]),
        opacities=torch.sigmoid(params["opacities"]),
        colors=colors,
        viewmats=viewmat[None],
        Ks=K[None],
        width=width,
        height=height,
        sh_degree=sh_degree,
        render_mode="RGB+ED",
        backgrounds=background[None],
    )
    return out[0, ..., :3], out[0, ..., 3], alpha[0, ..., 0], meta


# ---------------------------------------------------------------------------------------------------
# optimisation


def _make_optimizers(
    params: torch.nn.ParameterDict, cfg: TrainConfig, extent: float
) -> dict[str, torch.optim.Optimizer]:
    lrs = {
        "means": cfg.lr_means * extent,
        "scales": cfg.lr_scales,
        "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities,
        "sh0": cfg.lr_sh0,
        "shN": cfg.lr_shN,
    }
    return {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k], "name": k}], eps=1e-15) for k in params.keys()}


def _make_strategy(cfg: TrainConfig, device: torch.device):
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if cfg.strategy == "mcmc":
        if device.type == "cpu":
            from splat.mcmc_cpu import install_cpu_mcmc_ops

            install_cpu_mcmc_ops()  # gsplat's relocation and covariance ops are CUDA-only; CUDA tensors are untouched
        elif device.type != "cuda":
            raise ReconError(f"--strategy mcmc runs on CUDA or the CPU, not on {device.type}")
        return MCMCStrategy(
            cap_max=cfg.max_gaussians,
            refine_start_iter=cfg.refine_start,
            refine_stop_iter=cfg.refine_stop,
            refine_every=cfg.refine_every,
        )
    if cfg.strategy != "default":
        raise ReconError(f"unknown strategy '{cfg.strategy}' (choose default or mcmc)")
    return DefaultStrategy(
        refine_start_iter=cfg.refine_start,
        refine_stop_iter=cfg.refine_stop,
        refine_every=cfg.refine_every,
        reset_every=cfg.reset_every,
        grow_grad2d=cfg.grow_grad2d,
    )


def _config_json(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _save_checkpoint(
    path: Path,
    step: int,
    params,
    optimizers,
    strategy_state,
    rng: np.random.Generator,
    log: list,
    elapsed: float,
    cfg: TrainConfig,
    extent: float,
) -> None:
    state = {
        "step": step,
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "strategy_state": {
            k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in strategy_state.items()
        },
        "rng_numpy": rng.bit_generator.state,
        "rng_torch": torch.get_rng_state(),
        # MCMC's relocation and noise draw on the device's generator: keep it so a CUDA resume repeats them too
        "rng_cuda": torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None,
        "log": log,
        "elapsed_s": elapsed,
        "extent": float(extent),
        "config": _config_json(cfg),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise ReconError(f"{path} not found: nothing to resume (train without --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises pickle/zip errors for a damaged file
        raise ReconError(f"{path} is not a readable checkpoint ({e})") from e


def _write_log(path: Path, log: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in log))


def _view_order(rng: np.random.Generator, train: list[int]) -> list[int]:
    return [train[j] for j in rng.permutation(len(train))]


# ---------------------------------------------------------------------------------------------------
# entry point


def run_train(paths: RunPaths, cfg: TrainConfig, callback: Callable[[int, dict], None] | None = None) -> dict:
    """Train (or with cfg.eval_only just evaluate) the Gaussians of a run; write all splat outputs.

    Args:
        paths: the run directory.
        cfg: training configuration.
        callback: called as callback(step, log_row) after every optimisation step (for tests/tools);
            an exception it raises interrupts training like a kill would (the last checkpoint stays).
    Returns:
        summary dict (also merged into RUN/metrics.json): psnr, ssim, [lpips], [depth_abs_rel,
        depth_delta1], num_gaussians, train_time_s, iterations, num_train_views, num_test_views, ...
    """
    paths = RunPaths(paths.root) if not isinstance(paths, RunPaths) else paths
    device = _resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _run_train(paths, cfg, device, callback)
    finally:
        torch.set_num_threads(threads)


def _run_train(paths: RunPaths, cfg: TrainConfig, device: torch.device, callback) -> dict:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    cams = CameraSet.load(paths.cameras_json)
    train, test = validate_split(load_split(paths.split_json), cams, paths.root)
    use_depth = cfg.depth_loss != "none" and cfg.depth_weight > 0 and not cfg.eval_only
    if cfg.depth_loss not in ("none", *DEPTH_LOSSES):
        raise ReconError(f"unknown depth loss '{cfg.depth_loss}' (choose none, l1-inverse or pearson)")
    prior = load_prior_depth(paths.aligned_npz, cams, train) if use_depth else None
    views = load_views(paths, cams, sorted(set(train) | set(test)), cfg, device, prior)
    gt_depth = _load_gt_depth(cfg, cams, test, (views.width, views.height))
    eval_masks = _load_eval_masks(cfg, cams, test, (views.width, views.height))
    background, background_source = resolve_background(cfg.background, paths, views, train)
    train_background = training_background(cfg.train_background, background_source)
    debug(
        f"background {[round(float(c), 3) for c in background]} ({background_source}), training on {train_background}"
    )
    info(
        f"train: {len(train)} train / {len(test)} test views at {views.width}x{views.height} on {device}, "
        f"init={cfg.init}, depth_loss={cfg.depth_loss if use_depth else 'none'}"
    )

    start_step, log, elapsed = 0, [], 0.0
    strategy = _make_strategy(cfg, device)
    summary_extra: dict[str, Any] = {}
    extent = 1.0
    if cfg.eval_only:
        params = _load_trained(paths, device)
        optimizers, strategy_state = None, None
    elif cfg.resume:
        ck = _load_checkpoint(paths.checkpoint)
        extent = float(ck["extent"])
        params = to_parameters({k: v.numpy() for k, v in ck["params"].items()}, device)
        optimizers = _make_optimizers(params, cfg, extent)
        for k, o in optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        strategy_state = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in ck["strategy_state"].items()
        }
        rng.bit_generator.state = ck["rng_numpy"]
        torch.set_rng_state(ck["rng_torch"])
        if ck.get("rng_cuda") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(ck["rng_cuda"])
        start_step, log, elapsed = int(ck["step"]), list(ck["log"]), float(ck["elapsed_s"])
        info(f"resuming from step {start_step} of {cfg.iterations}")
    else:
        icfg = InitConfig(
            init=cfg.init,
            num_random=cfg.num_random,
            max_points=cfg.max_init_points,
            sfm_min_train_views=cfg.sfm_min_train_views,
            random_fill=cfg.init_random_fill,
        )
        xyz, rgb = initial_points(paths, icfg, cams, train, rng)
        extent = scene_extent(cams.c2w[train], xyz)
        params = to_parameters(gaussians_from_points(xyz, rgb, cfg.sh_degree, cfg.init_opacity, cfg.init_scale), device)
        optimizers = _make_optimizers(params, cfg, extent)
        strategy_state = (
            strategy.initialize_state(scene_scale=extent) if cfg.strategy == "default" else strategy.initialize_state()
        )
        info(f"initial Gaussians: {len(xyz)} from {cfg.init}, scene extent {extent:.3g}")

    if optimizers is not None:
        strategy.check_sanity(params, optimizers)

    def render_view(i: int, sh_degree: int | None = None):
        d = _params_sh_degree(params) if sh_degree is None else sh_degree
        rgb, depth, alpha, _ = render(params, views.viewmats[i], views.K[i], views.width, views.height, d, background)
        return rgb, depth, alpha

    if cfg.eval_initial and test and start_step == 0 and not cfg.eval_only:
        with torch.no_grad():
            init_eval = ev.evaluate_views(lambda i: render_view(i, 0), {i: views.images[i] for i in test})
        summary_extra["initial_psnr"] = init_eval["psnr"]
        summary_extra["initial_ssim"] = init_eval["ssim"]
        info(f"initial test PSNR {init_eval['psnr']:.2f} dB")

    if not cfg.eval_only:
        elapsed = _optimise(
            paths,
            cfg,
            params,
            optimizers,
            strategy,
            strategy_state,
            views,
            train,
            rng,
            log,
            start_step,
            elapsed,
            extent,
            background,
            train_background == "random",
            use_depth,
            callback,
        )
        write_gaussian_ply(paths.gaussians_ply, to_numpy(params))

    # evaluation
    lp = ev.maybe_lpips(device)
    with torch.no_grad():
        metrics = (
            ev.evaluate_views(
                render_view,
                {i: views.images[i] for i in test},
                names=views.names,
                out_dir=paths.test_renders_dir if cfg.test_renders else None,
                gt_depth=gt_depth,
                lpips=lp,
                depth_align=cfg.gt_depth_align,
                masks=eval_masks,
            )
            if test
            else {"num_views": 0}
        )
    if not test:
        warn("split has no test views: no held-out metrics")
    if cfg.video_frames > 0:
        _render_video(paths, cfg, params, views, cams, background)

    summary = {
        **{k: v for k, v in metrics.items() if k != "per_view"},
        **summary_extra,
        "num_gaussians": int(len(params["means"])),
        "train_time_s": float(elapsed),
        "iterations": int(cfg.iterations),
        "num_train_views": len(train),
        "num_test_views": len(test),
        "resolution": [views.width, views.height],
        "device": str(device),
        "init": cfg.init,
        "depth_loss": cfg.depth_loss if use_depth else "none",
        "strategy": cfg.strategy,
        "background": [round(float(c), 4) for c in background],
        "background_source": background_source,
        "train_background": train_background,
        "lpips_available": lp is not None,
    }
    _merge_metrics(paths.metrics_json, summary, metrics.get("per_view", []), cfg)
    msg = f"test PSNR {summary.get('psnr', float('nan')):.2f} dB, SSIM {summary.get('ssim', float('nan')):.3f}"
    if "psnr_masked" in summary:
        msg += f" (co-visible pixels: {summary['psnr_masked']:.2f} dB, {summary['ssim_masked']:.3f})"
    if "depth_abs_rel" in summary:
        msg += f", depth AbsRel {summary['depth_abs_rel']:.3f}"
    info(msg + f", {summary['num_gaussians']} Gaussians, {elapsed:.0f}s training")
    return summary


def _optimise(
    paths,
    cfg,
    params,
    optimizers,
    strategy,
    strategy_state,
    views: _Views,
    train,
    rng,
    log,
    start_step,
    elapsed,
    extent,
    background,
    random_bg: bool,
    use_depth,
    callback,
) -> float:
    """The training loop from `start_step` to cfg.iterations; returns the accumulated training seconds."""
    depth_fn = DEPTH_LOSSES.get(cfg.depth_loss)
    order: list[int] = []
    # Views are drawn epoch by epoch from `rng`; an epoch restarts at every checkpoint, so a resumed
    # run (rng state restored from the checkpoint) sees the same views as an uninterrupted one.
    t0 = time.perf_counter() - elapsed
    capped = False
    with progress() as bar:
        task = bar.add_task("train", total=cfg.iterations, completed=start_step, status="")
        for step in range(start_step, cfg.iterations):
            if not order:
                order = _view_order(rng, train)
            i = order.pop()
            sh_degree = min(step // max(cfg.sh_degree_interval, 1), cfg.sh_degree)
            bg = torch.rand(3, device=background.device) if random_bg else background
            rgb, depth, alpha, meta = render(
                params, views.viewmats[i], views.K[i], views.width, views.height, sh_degree, bg
            )
            gt = views.images[i]
            loss, terms = photometric_loss(rgb, gt, cfg.ssim_lambda)
            row: dict[str, Any] = {"step": step + 1, **terms}
            if use_depth:
                w = depth_weight_at(step, cfg.depth_weight, cfg.depth_weight_final, cfg.iterations)
                # Expected depth is normalised by alpha, so it is meaningful wherever anything was hit.
                dl = depth_fn(depth, views.prior_depth[i], alpha.detach() > 0.01)
                loss = loss + w * dl
                row["depth"], row["depth_weight"] = float(dl.detach()), w
            if cfg.strategy == "mcmc":
                # MCMC's opacity and scale regularisers (its paper's defaults).
                loss = (
                    loss + 0.01 * torch.sigmoid(params["opacities"]).mean() + 0.01 * torch.exp(params["scales"]).mean()
                )
            else:
                strategy.step_pre_backward(params, optimizers, strategy_state, step, meta)
            loss.backward()
            means_lr = exp_decay(step, cfg.lr_means * extent, cfg.lr_means_final * extent, cfg.iterations)
            for g in optimizers["means"].param_groups:
                g["lr"] = means_lr
            for o in optimizers.values():
                o.step()
                o.zero_grad(set_to_none=True)
            if cfg.strategy == "mcmc":
                strategy.step_post_backward(params, optimizers, strategy_state, step, meta, lr=means_lr)
            else:
                strategy.step_post_backward(params, optimizers, strategy_state, step, meta, packed=False)
                if not capped and len(params["means"]) >= cfg.max_gaussians:
                    strategy.refine_stop_iter = step + 1  # densification stops at the cap (pruning too)
                    capped = True
                    warn(f"reached max_gaussians={cfg.max_gaussians} at step {step + 1}: densification stopped")
            if len(params["means"]) == 0:
                raise ReconError(
                    f"training collapsed: every Gaussian was pruned by step {step + 1} (try another --init or fewer iterations)"
                )
            if not np.isfinite(float(loss.detach())):
                raise ReconError(f"training diverged: the loss became {float(loss.detach())} at step {step + 1}")
            row["loss"] = float(loss.detach())
            row["psnr"] = ev.psnr(rgb.detach(), gt)
            row["num_gaussians"] = int(len(params["means"]))
            if (step + 1) % max(cfg.log_every, 1) == 0 or step + 1 == cfg.iterations:
                row["elapsed_s"] = time.perf_counter() - t0
                log.append(row)
            bar.update(
                task, advance=1, status=f"loss {row['loss']:.4f}  PSNR {row['psnr']:.2f}  N {row['num_gaussians']}"
            )
            if cfg.checkpoint_every > 0 and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.iterations:
                # Unconsumed views of the current epoch go back by re-seeding the order at checkpoint
                # boundaries: an epoch always restarts after a checkpoint, resumed or not.
                order = []
                _save_checkpoint(
                    paths.checkpoint,
                    step + 1,
                    params,
                    optimizers,
                    strategy_state,
                    rng,
                    log,
                    time.perf_counter() - t0,
                    cfg,
                    extent,
                )
                _write_log(paths.splat_dir / "train_log.jsonl", log)
            if callback is not None:
                callback(step + 1, row)
    elapsed = time.perf_counter() - t0
    _save_checkpoint(
        paths.checkpoint, cfg.iterations, params, optimizers, strategy_state, rng, log, elapsed, cfg, extent
    )
    _write_log(paths.splat_dir / "train_log.jsonl", log)
    return elapsed


def _params_sh_degree(params) -> int:
    return sh_degree_from_bases(params["shN"].shape[1] + 1)


def _load_trained(paths: RunPaths, device: torch.device) -> torch.nn.ParameterDict:
    if paths.checkpoint.exists():
        ck = _load_checkpoint(paths.checkpoint)
        return to_parameters({k: v.numpy() for k, v in ck["params"].items()}, device)
    if paths.gaussians_ply.exists():
        return to_parameters(read_gaussian_ply(paths.gaussians_ply), device)
    raise ReconError(f"--eval-only: neither {paths.checkpoint} nor {paths.gaussians_ply} exists (train first)")


def _load_gt_depth(
    cfg: TrainConfig, cams: CameraSet, test: list[int], size: tuple[int, int]
) -> dict[int, np.ndarray] | None:
    if cfg.gt_depth is None:
        return None
    depth = _load_frame_stack(Path(cfg.gt_depth), "depth", "ground-truth depth", cams)
    return {i: _resize_depth(np.nan_to_num(depth[i].astype(np.float32), nan=0.0), size) for i in test}


def _load_eval_masks(
    cfg: TrainConfig, cams: CameraSet, test: list[int], size: tuple[int, int]
) -> dict[int, np.ndarray] | None:
    if cfg.eval_mask is None:
        return None
    mask = _load_frame_stack(Path(cfg.eval_mask), "mask", "evaluation mask", cams)
    return {i: _resize_depth(mask[i].astype(np.float32), size) > 0.5 for i in test}


def _load_frame_stack(path: Path, key: str, what: str, cams: CameraSet) -> np.ndarray:
    """[T,H,W] array `key` of an npz, one map per frame of cameras.json."""
    if not path.exists():
        raise ReconError(f"{what} {path} not found")
    with np.load(path) as z:
        if key not in z:
            raise ReconError(f"{what} {path} has no key '{key}'")
        arr = np.asarray(z[key])
    if arr.ndim != 3 or len(arr) != len(cams):
        raise ReconError(f"{what} {path} has shape {arr.shape}, expected [{len(cams)}, H, W]")
    return arr


def _render_video(paths: RunPaths, cfg: TrainConfig, params, views: _Views, cams: CameraSet, background) -> None:
    from depth.geometry import invert_pose

    keys = cams.c2w[cams.registered]
    K = views.K[int(np.flatnonzero(cams.registered)[0])]

    @torch.no_grad()
    def render_pose(c2w: np.ndarray) -> np.ndarray:
        w2c = torch.as_tensor(invert_pose(c2w), dtype=torch.float32, device=K.device)
        rgb, _, _, _ = render(params, w2c, K, views.width, views.height, _params_sh_degree(params), background)
        return ev.to_uint8(rgb)

    n = render_path_video(render_pose, keys, paths.renders_mp4, cfg.video_frames, cfg.video_fps)
    debug(f"wrote {paths.renders_mp4} ({n} frames)")


def _merge_metrics(path: Path, summary: dict, per_view: list, cfg: TrainConfig) -> None:
    """Update RUN/metrics.json (other stages may have written their own keys there)."""
    data: dict = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    data.update(dict(summary.items()))
    data["splat_per_view"] = per_view
    data["splat_config"] = _config_json(cfg)
    write_json(path, data)
