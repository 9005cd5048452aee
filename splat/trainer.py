"""Train 3D Gaussians on posed views: photometric L1 + D-SSIM, an optional depth-prior loss, gsplat densification.

A `Trainer` (in the style of gsplat's simple_trainer Runner) holds the Gaussians, their optimisers, the
densification strategy and the loop state. It takes arrays and tensors (`TrainViews`, initial points, a
`state_dict`) and returns them (`gaussians()`, `state_dict()`, metrics, rendered frames); it never touches a
file. Progress goes to the `callback` of `fit`, checkpoints to its `on_checkpoint`.

    trainer = Trainer.from_points(xyz, rgb, views, cfg, train=[0, 2, 5])
    trainer.fit(callback=lambda step, row: ..., on_checkpoint=lambda state: ...)
    metrics = trainer.evaluate([1, 3])
    params = trainer.gaussians()  # splat.ply layout
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import torch

from depth.checks import choice, device, number, rng_seed
from splat import evaluate as ev
from splat.camera_path import render_path
from splat.errors import SplatError
from splat.exposure import apply_affine, identity
from splat.gaussians import gaussians_from_points, to_numpy, to_parameters
from splat.losses import (
    DEPTH_LOSSES,
    binocular_loss,
    depth_pearson,
    depth_weight_at,
    exp_decay,
    photometric_loss,
)
from splat.ply import sh_degree_from_bases
from splat.pseudo import PseudoTargets, prior_depth_targets
from splat.render import gsplat_unavailable
from splat.views import TrainViews

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Gaussian Splatting training (defaults = full quality on CUDA; see `TrainConfig.preset`).

    Measured effects of the options are in benchmarks/README.md.
    """

    iterations: int = 30_000
    init: Literal["depth", "sfm", "random"] = "depth"
    """Initial Gaussians: the depth-fused cloud, the SfM points, or random points (in the box the training cameras
    look at when they converge on an object, else in the frustums of the frames the method sees, at and around the
    scene points' depths: splat.gaussians.frustum_points)."""
    num_random: int = 100_000
    """Points for --init random."""
    max_init_points: int = 0
    """Keep at most this many initial points, chosen at random (0 = all)."""
    init_random_fill: int = 5_000
    """Random points added to a depth / SfM init: Gaussians for what the depth prior or the SfM points do
    not cover (pixels without valid depth, space no training view saw), which would otherwise render as
    background (benchmarks/README.md, "init_random_fill"); drawn where --init random draws. 0 = off."""
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
    depth_loss: Literal["none", "l1-inverse", "pearson", "patch-pearson"] = "l1-inverse"
    """Depth-prior loss against the aligned depth, each pixel weighted by the prior's confidence (1 for DVD and
    file priors): L1 of inverse depth, 1 - Pearson correlation of inverse depth, or that correlation per 16x16
    patch (local depth normalisation, as DNGaussian; splat.losses.depth_patch_pearson). Chosen by
    benchmarks/sparse_view.py and benchmarks/llff.py: benchmarks/README.md, "depth_loss"."""
    depth_weight: float = 0.5
    """Weight of the depth loss at step 0 (benchmarks/README.md, "depth_weight")."""
    depth_weight_final: float = 0.1
    """Depth weight at the last step as a fraction of depth_weight (exponential decay; 1 = constant)."""
    strategy: Literal["default", "mcmc"] = "default"
    """gsplat densification: DefaultStrategy (3DGS) or MCMCStrategy (3DGS-MCMC; on the CPU its two
    CUDA-only ops run through splat.mcmc_cpu)."""
    max_gaussians: int = 3_000_000
    """Default strategy: no growth (clone / split, unpooling) while this many Gaussians exist; pruning goes on, and
    growth resumes below it (one densification step may pass it by what it grows). MCMC's cap_max."""
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
    composited on (white for Blender renders), else the mean colour of the training images -- the
    least-squares guess for what no training view saw, which a sparse-view test view shows wherever it looks
    past the training views (benchmarks/README.md, "background")."""
    train_background: Literal["auto", "random", "fixed"] = "auto"
    """Background while training: "random" draws a new uniform colour every step (as splatfacto's
    background_color="random"), so no transparency can pass for scene colour and every observed pixel must be
    covered by Gaussians; "fixed" trains on `background`; "auto" = "random" when `background` is automatic and
    the frames are opaque, else "fixed" (frames composited on a colour, or a colour you set: the images'
    backdrop is that colour). Evaluation and renders always use `background`."""
    exposure: Literal["auto"] | bool = False
    """Learn a per-image affine colour correction (3x4, exposure and white balance; splat.exposure) with the
    Gaussians, applied to each training render before the loss. Off by default: on the apple clip (no visible
    drift) it lowered raw test PSNR; it helps on clips whose exposure drifts. "auto" = on for video input, off for image
    folders (the application decides from its input; the Trainer alone treats "auto" as off); measured by
    benchmarks/exposure.py (README.md, "Exposure and white balance"). Test views are scored raw (psnr) and
    after a least-squares affine colour fit (psnr_cc)."""
    lr_exposure: float = 2e-2
    """Adam learning rate of the corrections at step 0, decayed exponentially to lr_exposure_final."""
    lr_exposure_final: float = 2e-3
    device: str = "auto"
    cpu_threads: int = 0
    """torch intra-op threads while training on the CPU (0 = torch's default). 1 is much faster on a
    machine whose cores are already busy (thread oversubscription)."""
    seed: int = 0
    drop_rate: float = 0.0
    """Random dropping of Gaussians (as DropGaussian, Park et al., CVPR 2025): every training step renders with
    this fraction of the Gaussians removed at random and the others' opacity scaled by 1 / (1 - rate), so that a
    Gaussian cannot fit one view alone; the rate grows linearly from 0 to `drop_rate` over the iterations. A
    sparse-view regulariser (benchmarks/llff.py measures it); 0 = off. Evaluation and renders use every Gaussian."""
    opacity_reset_at_start: bool = True
    """gsplat's DefaultStrategy resets (clamps) every opacity to 2 x its prune_opa = 0.01 after step 0, because its
    periodic reset fires at step % reset_every == 0 (gsplat issue / PR #735; 3DGS counts from 1 and does not), so
    init_opacity above 0.01 lasts one step. False undoes that reset, so init_opacity is what training starts from.
    True keeps gsplat's behaviour, which every figure in benchmarks/README.md was measured with."""
    opacity_decay: float = 1.0
    """Every step from refine_start on, each Gaussian's opacity is multiplied by this factor (as Binocular3DGS,
    Han et al., NeurIPS 2024: 0.995): a Gaussian the photometric loss does not keep pulling up fades below the
    pruning threshold, which removes floaters that fit one view. A sparse-view regulariser (benchmarks/llff.py
    measures it; recon's sparse-view settings set 0.995, 0.985 under the llff protocol); 1 = off."""
    binocular_weight: float = 0.0
    """Weight of the self-supervised stereo consistency (as Binocular3DGS; splat.losses.binocular_loss): each step
    from binocular_start on also renders the training view's camera moved sideways, warps that render back by the
    rendered depth and compares it with the training image. A sparse-view regulariser (benchmarks/llff.py measures
    it; one extra render per step; recon's sparse-view settings set 1.0); 0 = off."""
    binocular_disparity: float = 0.032
    """Largest sideways move of binocular_weight, as the disparity it gives at the view's median rendered depth, in
    image widths (0.032 = 16 px at LLFF's 504 px; the move is drawn uniform in [-1, 1] x that). Scale-free and
    resolution-free: a move in pixels would be 5x larger in image terms at 100 px than at 504 px, which cost 1.6 dB
    on 7-Scenes (benchmarks/README.md, "sparse-view settings")."""
    binocular_start: float = 0.66
    """binocular_weight acts from this fraction of the iterations on (Binocular3DGS: 20k of 30k), once the
    Gaussians hold a geometry to warp with."""
    co_reg_weight: float = 0.0
    """Pseudo-view co-regularisation (as CoR-GS, Zhang et al., ECCV 2024; splat.cotrain): a second field (the twin)
    trains beside this one from the same init with its own random draws, and each step from co_reg_start on
    renders both at a pseudo camera near the training cameras (splat.cotrain.pseudo_pose) and adds this weight x
    (1 - ssim_lambda) L1 + ssim_lambda D-SSIM between the two renders (CoR-GS: 1.0). The twin doubles the cost of
    a step; only this field is kept. 0 = off (with co_prune_every 0: no twin)."""
    co_reg_start: float = 0.2
    """co_reg_weight acts from this fraction of the iterations on (CoR-GS / FSGS: 2k of 10k)."""
    co_reg_noise: float = 0.25
    """Std of the pseudo camera's move from a training camera, as a fraction of the distance to its nearest other
    training camera."""
    co_prune_every: int = 0
    """Co-pruning (CoR-GS): every this many steps while densification runs (refine_start < step <= refine_stop),
    the Gaussians of either field whose centre has no centre of the other field within co_prune_distance are
    removed from it (CoR-GS: every 5 densification intervals). Trains the twin of co_reg_weight. 0 = off."""
    co_prune_distance: float = 0.02
    """Co-pruning's largest matching distance, as a fraction of the scene extent (the trainer's `extent`)."""
    unpool_every: int = 0
    """Proximity-guided unpooling (as FSGS, Zhu et al., ECCV 2024; splat.unpool): every this many steps while
    densification runs (refine_start < step < refine_stop) and before unpool_until, each Gaussian whose mean
    distance to its unpool_neighbours nearest Gaussians is above unpool_distance grows one new Gaussian at the
    middle of the edge to each of them: the neighbour's scale and opacity (as FSGS), identity rotation, the mean
    base colour of the two ends (FSGS starts it at zero, i.e. grey) and no higher SH. The most isolated grow first
    when max_gaussians leaves less room. Needs strategy default. 0 = off."""
    unpool_distance: float = 0.05
    """Unpooling's proximity threshold, as a fraction of the scene extent (the trainer's `extent`)."""
    unpool_neighbours: int = 3
    """Unpooling's K: the neighbours a Gaussian's proximity is averaged over and the edges it grows on (FSGS: 3)."""
    unpool_until: float = 0.5
    """Unpooling runs before this fraction of the iterations (FSGS: 2k of 10k, with densification from 0.5k)."""
    pseudo_depth_weight: float = 0.0
    """Pseudo-view depth (as FSGS, Zhu et al., ECCV 2024, with the depth prior in place of its monocular model;
    splat.pseudo): every pseudo_depth_every steps from pseudo_depth_start to pseudo_depth_end, the Gaussians are
    also rendered at one of pseudo_depth_views cameras near the training ones (splat.cotrain.pseudo_pose) and
    this weight x (1 - Pearson correlation) of the rendered and the target inverse depth joins the loss, ramped in
    over 5 % of the iterations (FSGS: 0.5, 500 of 10k steps). The target is the training views' prior surface
    seen from that camera, each pixel weighted by the prior's confidence there; pixels it does not reach stay out.
    Needs the prior of the training views; 0 = off."""
    pseudo_depth_every: int = 10
    """Steps between pseudo-view depth terms (FSGS: 10)."""
    pseudo_depth_start: float = 0.2
    """pseudo_depth_weight acts from this fraction of the iterations (FSGS: 2k of 10k) ..."""
    pseudo_depth_end: float = 0.95
    """... until this one (FSGS: 9.5k of 10k)."""
    pseudo_depth_views: int = 32
    """Pseudo cameras drawn once (from cfg.seed, so a resumed training draws the same) and cycled through."""
    pseudo_depth_noise: float = 0.25
    """Std of a pseudo camera's move from a training camera, as a fraction of the distance to its nearest other
    training camera (as co_reg_noise)."""
    checkpoint_every: int = 1000
    """Hand a checkpoint (`Trainer.state_dict`) to `fit`'s on_checkpoint every this many steps (0 = only at
    the end)."""
    log_every: int = 10

    @classmethod
    def preset(cls, name: Literal["cpu", "cuda"], /, **overrides: Any) -> Self:
        """Device-aware defaults: "cuda" = full quality; "cpu" = the frames' size, minutes of training.

        `overrides` replace preset fields (e.g. `TrainConfig.preset("cpu", iterations=200)`).
        """
        base = cls.preset_fields(name)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset_fields(cls, name: str) -> dict[str, Any]:
        """The fields a preset sets (subclasses add their own)."""
        if name == "cuda":
            return dict(device="cuda")
        if name == "cpu":
            # Trains and evaluates at the frame size (the cpu frames preset stores a 320 px long side) with SH
            # degree 3 (from step 450); per-step costs at 320 px in benchmarks/README.md, "training step profile".
            return dict(
                device="cpu",
                iterations=600,
                max_size=0,
                sh_degree=3,
                sh_degree_interval=150,
                num_random=5_000,
                max_init_points=20_000,
                max_gaussians=40_000,
                refine_start=100,
                refine_stop=450,
                refine_every=50,
                reset_every=100_000,
                checkpoint_every=200,
            )
        raise SplatError(f"unknown preset '{name}' (choose cpu or cuda)")

    def validate(self, where: str = "train") -> Self:
        """SplatError unless every field is in range; `where` prefixes the field names in the message."""
        n = f"{where}."
        self._validate_init(n)
        self._validate_regularisers(n)
        self._validate_optimisation(n)
        self._validate_output(n)
        return self

    def _count(self, n: str, name: str, lo: int, hi: int = 1_000_000_000, note: str = "") -> None:
        """SplatError unless field `name` is an integer in [lo, hi]; `n` is the message's prefix."""
        number(getattr(self, name), n + name, SplatError, lo=lo, hi=hi, integer=True, note=note)

    def _validate_init(self, n: str) -> None:
        """The run length and the initial Gaussians."""
        count = functools.partial(self._count, n)
        count("iterations", 1)
        choice(self.init, n + "init", SplatError, ("depth", "sfm", "random"))
        count("num_random", 1, 100_000_000)
        count("max_init_points", 0, note="0 = all")
        count("init_random_fill", 0, 100_000_000, note="0 = off")
        count("sfm_min_train_views", 0, 100_000)
        number(self.init_opacity, n + "init_opacity", SplatError, lo=0, hi=1, lo_open=True, hi_open=True)
        number(self.init_scale, n + "init_scale", SplatError, lo=0, hi=100, lo_open=True)
        count("sh_degree", 0, 4)
        count("sh_degree_interval", 1)

    def _validate_regularisers(self, n: str) -> None:
        """The sparse-view regularisers and the depth loss."""
        count = functools.partial(self._count, n)
        number(self.ssim_lambda, n + "ssim_lambda", SplatError, lo=0, hi=1)
        number(self.drop_rate, n + "drop_rate", SplatError, lo=0, hi=0.9, note="0 = off")
        number(self.opacity_decay, n + "opacity_decay", SplatError, lo=0.5, hi=1, note="1 = off")
        number(self.binocular_weight, n + "binocular_weight", SplatError, lo=0, hi=100, note="0 = off")
        number(self.binocular_disparity, n + "binocular_disparity", SplatError, lo=0, hi=1, lo_open=True)
        number(self.binocular_start, n + "binocular_start", SplatError, lo=0, hi=1)
        number(self.co_reg_weight, n + "co_reg_weight", SplatError, lo=0, hi=100, note="0 = off")
        number(self.co_reg_start, n + "co_reg_start", SplatError, lo=0, hi=1)
        number(self.co_reg_noise, n + "co_reg_noise", SplatError, lo=0, hi=10)
        count("co_prune_every", 0, note="0 = off")
        number(self.co_prune_distance, n + "co_prune_distance", SplatError, lo=0, hi=10, lo_open=True)
        count("unpool_every", 0, note="0 = off")
        number(self.unpool_distance, n + "unpool_distance", SplatError, lo=0, hi=10, lo_open=True)
        count("unpool_neighbours", 1, 64)
        number(self.unpool_until, n + "unpool_until", SplatError, lo=0, hi=1)
        number(self.pseudo_depth_weight, n + "pseudo_depth_weight", SplatError, lo=0, hi=100, note="0 = off")
        count("pseudo_depth_every", 1)
        number(self.pseudo_depth_start, n + "pseudo_depth_start", SplatError, lo=0, hi=1)
        number(self.pseudo_depth_end, n + "pseudo_depth_end", SplatError, lo=0, hi=1)
        count("pseudo_depth_views", 1, 4096)
        number(self.pseudo_depth_noise, n + "pseudo_depth_noise", SplatError, lo=0, hi=10)
        for name in ("co_prune_every", "unpool_every"):
            if getattr(self, name) > 0 and self.strategy != "default":
                raise SplatError(f"{n}{name} needs strategy default (MCMC keeps its own count of Gaussians)")
        choice(self.depth_loss, n + "depth_loss", SplatError, tuple(DEPTH_LOSSES) + ("none",))
        number(self.depth_weight, n + "depth_weight", SplatError, lo=0, hi=1000)
        number(self.depth_weight_final, n + "depth_weight_final", SplatError, lo=0, hi=1, note="1 = constant")

    def _validate_optimisation(self, n: str) -> None:
        """Densification, exposure and learning rates."""
        count = functools.partial(self._count, n)
        choice(self.strategy, n + "strategy", SplatError, ("default", "mcmc"))
        count("max_gaussians", 1)
        for name in ("refine_start", "refine_stop"):
            count(name, 0)
        for name in ("refine_every", "reset_every"):
            count(name, 1)
        number(self.grow_grad2d, n + "grow_grad2d", SplatError, lo=0, hi=1, lo_open=True)
        if not (isinstance(self.exposure, bool) or (isinstance(self.exposure, str) and self.exposure == "auto")):
            raise SplatError(f"{n}exposure must be true, false or auto, got {self.exposure!r}")
        lrs = ("lr_means", "lr_means_final", "lr_scales", "lr_quats", "lr_opacities", "lr_sh0", "lr_shN")
        for name in (*lrs, "lr_exposure", "lr_exposure_final"):
            number(getattr(self, name), n + name, SplatError, lo=0, hi=10)

    def _validate_output(self, n: str) -> None:
        """Resolution, background, threads, seed, checkpoints, logging and device."""
        count = functools.partial(self._count, n)
        number(self.downscale, n + "downscale", SplatError, lo=1, hi=64, note="1 = frame resolution")
        count("max_size", 0, 100_000, note="0 = no cap")
        if 0 < self.max_size < 8:
            raise SplatError(f"{n}max_size must be 0 (no cap) or >= 8 pixels, got {self.max_size}")
        if self.background is not None:
            bg = self.background
            if not isinstance(bg, (tuple, list)) or len(bg) != 3:
                raise SplatError(f"{n}background must be 3 numbers in [0, 1] (RGB), got {bg!r}")
            for c in bg:
                number(c, n + "background", SplatError, lo=0, hi=1, note="RGB")
        choice(self.train_background, n + "train_background", SplatError, ("auto", "random", "fixed"))
        count("cpu_threads", 0, 1024, note="0 = torch's default")
        rng_seed(self.seed, n + "seed", SplatError)
        count("checkpoint_every", 0, note="0 = only at the end")
        count("log_every", 1)
        device(self.device, n + "device", SplatError)


def config_json(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON values (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


# ---------------------------------------------------------------------------------------------------
# background


def resolve_background(
    background: Sequence[float] | None,
    composited_on: Sequence[float] | None,
    views: TrainViews,
    train: list[int],
) -> tuple[torch.Tensor, str]:
    """The training / rendering background (see TrainConfig.background): ([3] RGB in [0,1] on the views'
    device, where it came from: "config" | "composite" | "train-mean").

    Args:
        background: the configured colour, or None for automatic.
        composited_on: the colour transparent input frames were composited on, or None (opaque frames).
    """
    device = views.device
    if background is not None:
        bg = [float(c) for c in background]
        if len(bg) != 3 or not all(0.0 <= c <= 1.0 for c in bg):
            raise SplatError(f"train.background must be 3 numbers in [0, 1] (RGB), got {list(background)}")
        return torch.tensor(bg, dtype=torch.float32, device=device), "config"
    if composited_on is not None:
        return torch.tensor([float(c) for c in composited_on], dtype=torch.float32, device=device), "composite"
    mean = torch.stack([views.images[i].reshape(-1, 3).mean(0) for i in train]).mean(0)
    return mean.float().to(device), "train-mean"


def training_background(mode: str, background_source: str) -> Literal["random", "fixed"]:
    """TrainConfig.train_background resolved: "auto" is "random" only for an automatic background over opaque
    frames (`background_source` "train-mean"); composited frames and a colour set in the config keep it."""
    if mode not in ("auto", "random", "fixed"):
        raise SplatError(f"train.train_background must be auto, random or fixed, got {mode!r}")
    if mode == "auto":
        return "random" if background_source == "train-mean" else "fixed"
    return mode  # type: ignore[return-value]


@dataclass(frozen=True)
class Background:
    """The resolved background: colour (RGB in [0,1]), where it came from, and how training uses it."""

    color: tuple[float, float, float]
    source: str
    training: Literal["random", "fixed"]

    @classmethod
    def resolve(
        cls, cfg: TrainConfig, views: TrainViews, train: list[int], composited_on: Sequence[float] | None = None
    ) -> Background:
        color, source = resolve_background(cfg.background, composited_on, views, train)
        mode = training_background(cfg.train_background, source)
        return cls(tuple(float(c) for c in color.tolist()), source, mode)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# rendering


def render(
    params: torch.nn.ParameterDict | dict[str, torch.Tensor],
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int,
    background: torch.Tensor,
    opacity_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Render one view of Gaussians in the trainer's parameter layout (pre-activation).

    Args:
        viewmat: [4,4] w2c (OpenCV). K: [3,3] pixels at (width, height). background: [3].
        opacity_scale: optional [N] factor on the opacities (0 drops a Gaussian; Trainer's drop_rate).
    Returns:
        rgb [H,W,3], expected depth [H,W], alpha [H,W], meta (gsplat's info dict, means2d with grad).
    """
    from splat.render import rasterization

    colors = torch.cat([params["sh0"], params["shN"]], dim=1)
    opacities = torch.sigmoid(params["opacities"])
    if opacity_scale is not None:
        opacities = (opacities * opacity_scale).clamp(max=1.0)
    out, alpha, meta = rasterization(
        means=params["means"],
        quats=params["quats"],
        scales=torch.exp(params["scales"]),
        opacities=opacities,
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


def params_sh_degree(params: torch.nn.ParameterDict | dict[str, torch.Tensor]) -> int:
    return sh_degree_from_bases(params["shN"].shape[1] + 1)


# ---------------------------------------------------------------------------------------------------
# optimisation parts


def make_optimizers(
    params: torch.nn.ParameterDict, cfg: TrainConfig, extent: float
) -> dict[str, torch.optim.Optimizer]:
    """One Adam per parameter group (gsplat's strategies expect this layout); means' rate scales with the extent."""
    lrs = {
        "means": cfg.lr_means * extent,
        "scales": cfg.lr_scales,
        "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities,
        "sh0": cfg.lr_sh0,
        "shN": cfg.lr_shN,
    }
    fused = _fused_adam(params["means"].device)
    return {
        k: torch.optim.Adam([{"params": params[k], "lr": lrs[k], "name": k}], eps=1e-15, fused=fused)
        for k in params.keys()
    }


@torch.no_grad()
def unpooled_gaussians(
    params: torch.nn.ParameterDict | dict[str, torch.Tensor], src: torch.Tensor, dst: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The Gaussians FSGS's unpooling grows on the edges src[m] -> dst[m] ([M] int64 indices into params): centre
    halfway, the target's scale and opacity, identity rotation, the mean base colour (sh0) of the two ends, zero
    higher SH; any other parameter is the target's. Returns a dict of [M, ...] tensors with params' keys."""
    new = {k: v[dst].detach().clone() for k, v in params.items()}
    new["means"] = (params["means"][src] + params["means"][dst]) / 2
    new["quats"] = torch.zeros_like(new["quats"])
    new["quats"][:, 0] = 1.0
    new["sh0"] = (params["sh0"][src] + params["sh0"][dst]) / 2
    new["shN"] = torch.zeros_like(new["shN"])
    return new


@torch.no_grad()
def append_gaussians(
    params: torch.nn.ParameterDict, optimizers: dict[str, torch.optim.Optimizer], state: dict, new: dict
) -> None:
    """Append the Gaussians `new` (a dict of [M, ...] tensors with params' keys) in place: the parameters, their
    Adam moments (zero for the new rows) and the strategy's per-Gaussian statistics (zero for the new rows).

    gsplat's ops grow Gaussians only as copies of existing ones (duplicate / split); its own helper that swaps a
    parameter and its optimiser state together is used for the rest (private in gsplat 1.4, which the project pins).
    """
    from gsplat.strategy.ops import _update_param_with_optimizer

    n_old, m = len(params["means"]), len(new["means"])

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        return torch.nn.Parameter(torch.cat([p, new[name].to(p)]))

    def optimizer_fn(key: str, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, v.new_zeros((m, *v.shape[1:]))])

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and len(v) == n_old:
            state[k] = torch.cat([v, v.new_zeros((m, *v.shape[1:]))])


def decay_opacity_logits(logits: torch.Tensor, factor: float) -> torch.Tensor:
    """The opacity logits [N] of opacities sigmoid(logits) * factor (factor in (0, 1]); same shape and dtype."""
    return torch.logit(torch.sigmoid(logits) * factor)


def _fused_adam(device: torch.device) -> bool | None:
    """torch's fused Adam (one kernel per step instead of a dozen ops; ~3x faster per step on the CPU,
    benchmarks/README.md "training step profile") where it runs: CPU and CUDA; None = torch's default elsewhere."""
    return True if device.type in ("cpu", "cuda") else None


def make_strategy(cfg: TrainConfig, device: torch.device):
    """gsplat's DefaultStrategy or MCMCStrategy (CPU ops installed for MCMC on the CPU)."""
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if cfg.strategy == "mcmc":
        if device.type == "cpu":
            from splat.mcmc_cpu import install_cpu_mcmc_ops

            install_cpu_mcmc_ops()  # gsplat's relocation and covariance ops are CUDA-only; CUDA tensors are untouched
        elif device.type != "cuda":
            raise SplatError(f"train.strategy mcmc runs on CUDA or the CPU, not on {device.type}")
        elif why := gsplat_unavailable():  # its relocation and noise ops on CUDA tensors are gsplat's kernels
            raise SplatError(f"train.strategy mcmc on CUDA needs gsplat's CUDA kernels: {why}")
        return MCMCStrategy(
            cap_max=cfg.max_gaussians,
            refine_start_iter=cfg.refine_start,
            refine_stop_iter=cfg.refine_stop,
            refine_every=cfg.refine_every,
        )
    if cfg.strategy != "default":
        raise SplatError(f"unknown strategy '{cfg.strategy}' (choose default or mcmc)")
    return DefaultStrategy(
        refine_start_iter=cfg.refine_start,
        refine_stop_iter=cfg.refine_stop,
        refine_every=cfg.refine_every,
        reset_every=cfg.reset_every,
        grow_grad2d=cfg.grow_grad2d,
    )


def uses_depth(cfg: TrainConfig) -> bool:
    """Whether training uses a depth prior (raises SplatError for an unknown depth loss)."""
    if cfg.depth_loss not in ("none", *DEPTH_LOSSES):
        raise SplatError(f"unknown depth loss '{cfg.depth_loss}' (choose none, l1-inverse, pearson or patch-pearson)")
    return cfg.depth_loss != "none" and cfg.depth_weight > 0


def needs_prior(cfg: TrainConfig) -> bool:
    """Whether training reads the depth prior of the training views (a depth loss or pseudo-view depth)."""
    return uses_depth(cfg) or cfg.pseudo_depth_weight > 0


def _to_cpu(obj: Any) -> Any:
    """A copy of nested dicts / lists / tuples with every tensor detached and cloned onto the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------------
# validation of a state_dict read from a file

STATE_KEYS = ("step", "params", "optimizers", "strategy_state", "rng_numpy", "rng_torch", "log", "elapsed_s", "extent")
"""What `Trainer.state_dict()` always writes (also "rng_cuda", "config", and "exposure" / "exposure_optimizer",
None when exposure correction is off; a state without them is one trained without it)."""
_PER_GAUSSIAN_STATE = ("grad2d", "count", "radii")  # gsplat DefaultStrategy's per-Gaussian accumulators


def _check_params(params: Any) -> int:
    """The six Gaussian tensors (splat.ply layout): floating point, finite, N >= 1 rows that agree. Returns N."""
    if not isinstance(params, dict):
        raise SplatError("'params' is not a mapping of Gaussian tensors")
    keys = ("means", "scales", "quats", "opacities", "sh0", "shN")
    missing, extra = [k for k in keys if k not in params], sorted(str(k) for k in params if k not in keys)
    if missing or extra:
        raise SplatError(f"'params' must hold exactly {', '.join(keys)} (missing {missing}, unknown {extra})")
    for k in keys:
        v = params[k]
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise SplatError(f"parameter '{k}' is a {getattr(v, 'dtype', type(v).__name__)}, not a float tensor")
    n = int(params["means"].shape[0]) if params["means"].ndim else 0
    shapes = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3)}
    for k, shape in shapes.items():
        if tuple(params[k].shape) != shape:
            raise SplatError(f"parameter '{k}' has shape {tuple(params[k].shape)}, expected {shape}")
    shN = params["shN"]
    if shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
        raise SplatError(f"parameter 'shN' has shape {tuple(shN.shape)}, expected ({n}, K-1, 3)")
    sh_degree_from_bases(int(shN.shape[1]) + 1)
    if n == 0:
        raise SplatError("'params' holds no Gaussians")
    bad = [k for k in keys if not bool(torch.isfinite(params[k]).all())]
    if bad:
        raise SplatError(f"parameters {', '.join(bad)} hold NaN or infinite values")
    return n


def _check_optimizer(name: str, opt: Any, param: torch.Tensor) -> None:
    """One Adam `state_dict()` over `param` alone: one group of one parameter, moments of its shape."""
    where = f"optimizer '{name}'"
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        raise SplatError(f"{where} is not an optimizer state (needs 'state' and 'param_groups')")
    groups = opt["param_groups"]
    if len(groups) != 1 or not isinstance(groups[0], dict) or groups[0].get("params") != [0]:
        raise SplatError(f"{where} must have one parameter group holding its one parameter")
    if set(opt["state"]) - {0}:
        raise SplatError(f"{where} has state for {len(opt['state'])} parameters, expected 1")
    st = opt["state"].get(0, {})
    if not isinstance(st, dict):
        raise SplatError(f"{where} has a malformed per-parameter state")
    for k in ("exp_avg", "exp_avg_sq") if st else ():
        v = st.get(k)
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(param.shape) or not v.is_floating_point():
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise SplatError(f"{where}: {k} is {got}, but the parameter has shape {tuple(param.shape)}")
    if st and not isinstance(st.get("step"), (torch.Tensor, int, float)):
        raise SplatError(f"{where} has no step count")


def _check_rng(state: dict[str, Any]) -> None:
    try:
        np.random.default_rng().bit_generator.state = state["rng_numpy"]
        torch.Generator().set_state(state["rng_torch"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise SplatError(f"rng_numpy / rng_torch are not random generator states ({str(e).splitlines()[0]})") from e
    cuda = state.get("rng_cuda")
    if cuda is not None and not (
        isinstance(cuda, (list, tuple)) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)
    ):
        raise SplatError("rng_cuda is not a list of CUDA generator states")


def check_state(state: Any) -> int:
    """SplatError (one line) unless `state` is a `Trainer.state_dict()` whose parts agree; returns N Gaussians.

    Checks the six Gaussian tensors (N rows, float, finite), one Adam state per parameter with exp_avg /
    exp_avg_sq of its parameter's shape, the strategy's per-Gaussian tensors (N,), the RNG states, and
    step >= 0, extent > 0, elapsed_s >= 0, log a list of mappings.
    """
    if not isinstance(state, dict):
        raise SplatError("not a training state (not a mapping)")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise SplatError(f"not a training state (missing {', '.join(missing)})")
    n = _check_params(state["params"])
    opts = state["optimizers"]
    if not isinstance(opts, dict) or set(opts) != set(state["params"]):
        got = sorted(map(str, opts)) if isinstance(opts, dict) else type(opts).__name__
        raise SplatError(f"the optimizer states ({got}) do not match the parameters ({sorted(state['params'])})")
    for k, opt in opts.items():
        _check_optimizer(k, opt, state["params"][k])
    strat = state["strategy_state"]
    if not isinstance(strat, dict):
        raise SplatError("'strategy_state' is not a mapping")
    for k in _PER_GAUSSIAN_STATE:
        v = strat.get(k)
        if v is not None and (not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,)):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise SplatError(f"strategy state '{k}' is {shape}, expected ({n},) for {n} Gaussians")
    _check_rng(state)
    step, extent, elapsed = state["step"], state["extent"], state["elapsed_s"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise SplatError(f"'step' is {step!r}, not a count of steps")
    for name, v in (("extent", extent), ("elapsed_s", elapsed)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise SplatError(f"'{name}' is {v!r}, not a finite non-negative number")
    if extent <= 0:
        raise SplatError(f"'extent' is {extent!r}, not positive")
    if not isinstance(state["log"], list) or not all(isinstance(r, dict) for r in state["log"]):
        raise SplatError("'log' is not a list of log rows")
    _check_exposure(state)
    twin = state.get("twin")
    if twin is not None:
        try:
            check_state(twin)
        except SplatError as e:
            raise SplatError(f"the twin field's state: {e}") from e
        if twin["step"] != step:
            raise SplatError(f"the twin field's state is at step {twin['step']}, the field's at {step}")
    return n


def _check_exposure(state: dict[str, Any]) -> None:
    """The optional colour corrections: None, or a finite float [T, 3, 4] tensor with one Adam state over it."""
    A = state.get("exposure")
    if A is None:
        return
    if not isinstance(A, torch.Tensor) or not A.is_floating_point() or A.ndim != 3 or tuple(A.shape[1:]) != (3, 4):
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise SplatError(f"'exposure' is {got}, expected a float tensor (T, 3, 4)")
    if not bool(torch.isfinite(A).all()):
        raise SplatError("'exposure' holds NaN or infinite values")
    if state.get("exposure_optimizer") is not None:
        _check_optimizer("exposure", state["exposure_optimizer"], A)


def co_training(cfg: TrainConfig) -> bool:
    """Whether `cfg` trains a twin field (co-regularisation: co_reg_weight > 0 or co_prune_every > 0)."""
    return cfg.co_reg_weight > 0 or cfg.co_prune_every > 0


def twin_config(cfg: TrainConfig) -> TrainConfig:
    """The twin's config: `cfg` without co-regularisation of its own (the first field drives it)."""
    return dataclasses.replace(cfg, co_reg_weight=0.0, co_prune_every=0)


def _view_order(rng: np.random.Generator, train: list[int]) -> list[int]:
    return [train[j] for j in rng.permutation(len(train))]


# ---------------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Gaussians, optimisers, densification and loop state for one scene.

    Build it with `from_points` (a new training), `from_state` (resume a `state_dict`) or `from_gaussians`
    (evaluate trained Gaussians). `train` are the view indices fitted; `views` must hold their images (and,
    with a depth loss, their prior depth).
    """

    def __init__(
        self,
        params: torch.nn.ParameterDict,
        views: TrainViews,
        cfg: TrainConfig,
        train: list[int],
        background: Background,
        extent: float = 1.0,
        rng: np.random.Generator | None = None,
        trainable: bool = True,
    ):
        self.params, self.views, self.cfg = params, views, cfg
        self.train = [int(i) for i in train]
        self.device = views.device
        self.background = background
        self.bg_color = torch.tensor(background.color, dtype=torch.float32, device=self.device)
        self.extent = float(extent)
        self.rng = rng if rng is not None else np.random.default_rng(cfg.seed)
        self.global_step = 0
        self.log: list[dict[str, Any]] = []
        self.elapsed = 0.0
        self.use_depth = trainable and uses_depth(cfg)
        self._order: list[int] = []
        self._cap_warned = False
        self.optimizers: dict[str, torch.optim.Optimizer] | None = None
        self.strategy = self.strategy_state = None
        self.exposure: torch.nn.Parameter | None = None
        """[T, 3, 4] learned deltas D of the colour corrections (splat.exposure), one per frame of the views; None
        when off. Training view i is corrected by A_i = I + D_i - mean over the training views of D: the mean
        correction is the identity, so the Gaussians hold the training views' average exposure (the colour a
        held-out view is rendered in) instead of drifting to an arbitrary one."""
        self.exposure_optimizer: torch.optim.Optimizer | None = None
        self._pseudo: PseudoTargets | None = None
        self.twin: Trainer | None = None
        """The second field of co-regularisation (`co_training`), trained in the same steps; None when off."""
        if trainable:
            self._check_views()
            self.optimizers = make_optimizers(params, cfg, self.extent)
            if cfg.exposure is True:
                self.exposure = torch.nn.Parameter(torch.zeros(len(views.K), 3, 4, device=self.device))
                self.exposure_optimizer = torch.optim.Adam(
                    [{"params": [self.exposure], "lr": cfg.lr_exposure, "name": "exposure"}],
                    eps=1e-15,
                    fused=_fused_adam(self.device),
                )
            self.strategy = make_strategy(cfg, self.device)
            self.strategy_state = (
                self.strategy.initialize_state(scene_scale=self.extent)
                if cfg.strategy == "default"
                else self.strategy.initialize_state()
            )

    def _check_views(self) -> None:
        if not self.train:
            raise SplatError("no training views")
        missing = [i for i in self.train if i not in self.views.images]
        if missing:
            raise SplatError(f"training views {missing} have no image")
        if needs_prior(self.cfg):
            missing = [i for i in self.train if i not in self.views.prior_depth]
            if missing:
                what = f"depth loss {self.cfg.depth_loss}" if self.use_depth else "pseudo_depth_weight"
                raise SplatError(f"{what}: training views {missing} have no prior depth")

    # ------------------------------------------------------------------------------ constructors

    @classmethod
    def from_points(
        cls,
        xyz: np.ndarray,
        rgb: np.ndarray,
        views: TrainViews,
        cfg: TrainConfig,
        train: list[int] | None = None,
        background: Background | None = None,
        rng: np.random.Generator | None = None,
    ) -> Trainer:
        """A new training from initial points xyz [N,3] (scene units) and rgb [N,3] (uint8 or [0,1]).

        Args:
            train: the views to fit (default: every view with an image).
            background: the resolved background (default: `Background.resolve` without a composite colour).
            rng: the generator that drew the initial points, continued for the view order (default: seeded
                with cfg.seed).
        """
        from splat.gaussians import scene_extent

        torch.manual_seed(cfg.seed)
        train = sorted(views.images) if train is None else list(train)
        background = background or Background.resolve(cfg, views, train)
        extent = scene_extent(views.c2w[train], xyz)
        g = gaussians_from_points(xyz, rgb, cfg.sh_degree, cfg.init_opacity, cfg.init_scale)
        trainer = cls(to_parameters(g, views.device), views, cfg, train, background, extent, rng)
        if co_training(cfg):  # the twin starts from the same Gaussians with its own draws
            twin_g, twin_rng = to_parameters(g, views.device), np.random.default_rng([cfg.seed, 1])
            trainer.twin = cls(twin_g, views, twin_config(cfg), train, background, extent, twin_rng)
        for t in (trainer, trainer.twin):
            if t is not None:
                assert t.strategy is not None, "a trainable Trainer has a strategy"
                t.strategy.check_sanity(t.params, t.optimizers)
        log.info("initial Gaussians: %d from %s, scene extent %.3g", len(xyz), cfg.init, extent)
        return trainer

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        views: TrainViews,
        cfg: TrainConfig,
        train: list[int] | None = None,
        background: Background | None = None,
    ) -> Trainer:
        """Resume the training a `state_dict()` recorded (optimisers, strategy state, RNGs, log, step).

        The state is validated first (`check_state`): a state whose parts disagree is one SplatError."""
        check_state(state)
        train = sorted(views.images) if train is None else list(train)
        background = background or Background.resolve(cfg, views, train)
        params = to_parameters({k: v.numpy() for k, v in state["params"].items()}, views.device)
        trainer = cls(params, views, cfg, train, background, float(state["extent"]), np.random.default_rng(cfg.seed))
        assert trainer.optimizers is not None and trainer.strategy is not None, "a trainable Trainer has both"
        for k, o in trainer.optimizers.items():
            try:
                o.load_state_dict(state["optimizers"][k])
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise SplatError(f"optimizer '{k}' of the saved state does not fit ({str(e).splitlines()[0]})") from e
        fresh, saved = trainer.strategy_state or {}, state["strategy_state"]
        if set(fresh) != set(saved) or any(
            isinstance(v, torch.Tensor) and (not isinstance(saved[k], torch.Tensor) or saved[k].shape != v.shape)
            for k, v in fresh.items()
        ):
            raise SplatError(
                f"the saved strategy state ({', '.join(sorted(map(str, saved)))}) is not one of strategy "
                f"'{cfg.strategy}' ({', '.join(sorted(fresh))}): resume with the strategy it was trained with"
            )
        dev = views.device
        trainer.strategy_state = {
            k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in state["strategy_state"].items()
        }
        trainer.rng.bit_generator.state = state["rng_numpy"]
        torch.set_rng_state(state["rng_torch"])
        if state.get("rng_cuda") is not None and dev.type == "cuda":
            torch.cuda.set_rng_state_all(list(state["rng_cuda"]))
        trainer.global_step, trainer.log = int(state["step"]), [dict(r) for r in state["log"]]
        trainer.elapsed = float(state["elapsed_s"])
        trainer._load_exposure(state)
        trainer.strategy.check_sanity(trainer.params, trainer.optimizers)
        trainer._load_twin(state)
        log.info("resuming from step %d of %d", trainer.global_step, cfg.iterations)
        return trainer

    def _load_twin(self, state: dict[str, Any]) -> None:
        """The twin of a state_dict (SplatError if co-regularisation was on there but is off here, or the other
        way round)."""
        saved = state.get("twin")
        if (saved is None) == co_training(self.cfg):
            was = "without" if saved is None else "with"
            raise SplatError(
                f"the saved state was trained {was} co-regularisation (a twin field): resume with the same "
                "train.co_reg_weight and train.co_prune_every"
            )
        if saved is not None:
            self.twin = type(self).from_state(saved, self.views, twin_config(self.cfg), self.train, self.background)

    @classmethod
    def from_gaussians(
        cls,
        gaussians: dict[str, np.ndarray],
        views: TrainViews,
        cfg: TrainConfig,
        train: list[int] | None = None,
        background: Background | None = None,
    ) -> Trainer:
        """Trained Gaussians (splat.ply layout) for evaluation and rendering only (no optimiser)."""
        train = sorted(views.images) if train is None else list(train)
        background = background or Background.resolve(cfg, views, train)
        return cls(to_parameters(gaussians, views.device), views, cfg, train, background, trainable=False)

    # ------------------------------------------------------------------------------ training

    def step(self) -> dict[str, Any]:
        """One optimisation step on the next training view; returns its log row (step, loss terms, psnr, ...).

        With a twin (co-regularisation, `co_training`), the twin takes its step on its own next view in the same
        backward pass, joined by the pseudo-view term, and co-pruning runs when due."""
        if self.optimizers is None:
            raise SplatError("these Gaussians were loaded for evaluation only; they cannot be trained")
        loss, row, meta = self._forward()
        if self.twin is None:
            loss.backward()
            return self._finish(loss, row, meta)
        twin_loss, twin_row, twin_meta = self.twin._forward()
        co_reg = self._co_reg_term(row)
        (loss + twin_loss + co_reg).backward()
        self._finish(loss + co_reg, row, meta)
        twin_row = self.twin._finish(twin_loss, twin_row, twin_meta)
        row["twin_psnr"], row["twin_gaussians"] = twin_row["psnr"], twin_row["num_gaussians"]
        self._co_prune(row)
        return row

    def _forward(self) -> tuple[torch.Tensor, dict[str, Any], dict]:
        """The loss of this step's training view before backward: (loss, log row, gsplat's meta)."""
        assert self.strategy is not None, "the strategy is set with the optimizers"
        cfg, v, step = self.cfg, self.views, self.global_step
        # Views are drawn epoch by epoch from `rng`; an epoch restarts at every checkpoint, so a resumed
        # run (rng state restored from the checkpoint) sees the same views as an uninterrupted one.
        if not self._order:
            self._order = _view_order(self.rng, self.train)
        i = self._order.pop()
        sh_degree = self._sh_degree(step)
        bg = torch.rand(3, device=self.device) if self.background.training == "random" else self.bg_color
        drop = self._drop_scale(step)
        rgb, depth, alpha, meta = render(self.params, v.viewmats[i], v.K[i], v.width, v.height, sh_degree, bg, drop)
        if self.exposure is not None:
            rgb = apply_affine(rgb, self._correction(i))  # this image's exposure / white balance
        gt = v.images[i]
        loss, terms = photometric_loss(rgb, gt, cfg.ssim_lambda)
        row: dict[str, Any] = {"step": step + 1, **terms, "psnr": ev.psnr(rgb.detach(), gt)}
        if self.use_depth:
            loss = loss + self._depth_term(i, depth, alpha, row)
        if self._pseudo_due(step):
            loss = loss + self._pseudo_depth_term((sh_degree, bg, drop), row)
        if cfg.binocular_weight > 0 and step >= cfg.binocular_start * cfg.iterations:
            loss = loss + self._binocular_term(i, depth, alpha, (sh_degree, bg, drop), row)
        if cfg.strategy == "mcmc":
            # MCMC's opacity and scale regularisers (its paper's defaults).
            p = self.params
            loss = loss + 0.01 * torch.sigmoid(p["opacities"]).mean() + 0.01 * torch.exp(p["scales"]).mean()
        else:
            self.strategy.step_pre_backward(self.params, self.optimizers, self.strategy_state, step, meta)
        return loss, row, meta

    def _finish(self, loss: torch.Tensor, row: dict[str, Any], meta: dict) -> dict[str, Any]:
        """After backward: optimiser steps, densification and unpooling, the divergence check, the row completed."""
        self._optimise(meta)
        value = float(loss.detach())
        if not np.isfinite(value):
            raise SplatError(f"training diverged: the loss became {value} at step {self.global_step + 1}")
        row["loss"] = value
        self.global_step += 1
        self._unpool(row)
        row["num_gaussians"] = int(len(self.params["means"]))
        return row

    def _sh_degree(self, step: int) -> int:
        return min(step // max(self.cfg.sh_degree_interval, 1), self.cfg.sh_degree)

    def _co_reg_term(self, row: dict[str, Any]) -> torch.Tensor:
        """co_reg_weight x the photometric difference of this field and its twin at a pseudo camera
        (splat.cotrain.pseudo_pose); gradients reach both fields. Zero before co_reg_start or when off."""
        from depth.geometry import invert_pose
        from splat.cotrain import pseudo_pose

        cfg, v, step = self.cfg, self.views, self.global_step
        assert self.twin is not None, "co-regularisation has a twin"
        if cfg.co_reg_weight <= 0 or step < cfg.co_reg_start * cfg.iterations:
            return torch.zeros((), device=self.device)
        c2w = pseudo_pose(v.c2w[self.train], self.rng, cfg.co_reg_noise)
        w2c = torch.as_tensor(invert_pose(c2w), dtype=torch.float32, device=self.device)
        K, d = v.K[self.train[0]], self._sh_degree(step)
        mine, _, _, _ = render(self.params, w2c, K, v.width, v.height, d, self.bg_color)
        twins, _, _, _ = render(self.twin.params, w2c, K, v.width, v.height, d, self.bg_color)
        co, _ = photometric_loss(mine, twins, cfg.ssim_lambda)
        row["co_reg"] = float(co.detach())
        return cfg.co_reg_weight * co

    def _co_prune(self, row: dict[str, Any]) -> None:
        """CoR-GS's co-pruning when due (after this step's densification): each field loses the Gaussians whose
        centre has no centre of the other within co_prune_distance x extent (a field is never emptied)."""
        from gsplat.strategy.ops import remove

        from splat.cotrain import non_matching

        cfg, step, twin = self.cfg, self.global_step, self.twin
        assert twin is not None, "co-pruning has a twin"
        if cfg.co_prune_every <= 0 or step % cfg.co_prune_every or not cfg.refine_start < step <= cfg.refine_stop:
            return
        tau = cfg.co_prune_distance * self.extent
        a, b = (t.params["means"].detach().cpu().numpy() for t in (self, twin))
        masks = (non_matching(a, b, tau), non_matching(b, a, tau))
        row["co_pruned"] = 0
        for t, m in zip((self, twin), masks, strict=True):
            if m.any() and not m.all():
                assert t.optimizers is not None and t.strategy_state is not None, "a trained field"
                remove(t.params, t.optimizers, t.strategy_state, torch.as_tensor(m, device=t.device))
                row["co_pruned"] += int(m.sum())
        log.debug("co-pruning at step %d: %d + %d Gaussians without a match", step, *map(int, map(np.sum, masks)))

    def _unpool(self, row: dict[str, Any]) -> None:
        """FSGS's proximity-guided unpooling when due (after this step's densification; `unpool_every` counts the
        steps done): the new Gaussians join the parameters with zero Adam moments and densification statistics."""
        from splat.unpool import unpool_edges

        cfg, step, p = self.cfg, self.global_step, self.params
        stop = min(cfg.refine_stop, cfg.unpool_until * cfg.iterations)
        if cfg.unpool_every <= 0 or step % cfg.unpool_every or not cfg.refine_start < step < stop:
            return
        assert self.optimizers is not None and self.strategy_state is not None, "a trained field"
        means = p["means"].detach().cpu().numpy()
        edges = unpool_edges(means, cfg.unpool_neighbours, cfg.unpool_distance * self.extent)
        room = max(cfg.max_gaussians - len(means), 0)  # the cap stops unpooling as it stops growth
        src, dst = (torch.as_tensor(a[:room], device=self.device) for a in edges)
        row["unpooled"] = len(src)
        if len(src):
            append_gaussians(p, self.optimizers, self.strategy_state, unpooled_gaussians(p, src, dst))

    def _drop_scale(self, step: int) -> torch.Tensor | None:
        """[N] opacity factors of this step's random dropping (0 = dropped, 1 / (1 - rate) kept); None when off."""
        rate = self.cfg.drop_rate * min(1.0, (step + 1) / max(self.cfg.iterations, 1))
        if rate <= 0.0:
            return None
        means = self.params["means"]
        keep = torch.rand(len(means), device=means.device) >= rate
        return keep.to(means.dtype) / (1.0 - rate)

    def _binocular_term(
        self, i: int, depth: torch.Tensor, alpha: torch.Tensor, how: tuple, row: dict[str, Any]
    ) -> torch.Tensor:
        """binocular_weight x splat.losses.binocular_loss for training view i, the camera moved a random signed
        distance along its x axis (up to binocular_disparity image widths of disparity at the median rendered depth)."""
        cfg, v = self.cfg, self.views
        covered = alpha.detach() > 0.5
        if not bool(covered.any()):
            return depth.sum() * 0.0
        fx = float(v.K[i][0, 0])
        z_med = float(depth.detach()[covered].median())
        t = (2 * float(torch.rand(())) - 1) * cfg.binocular_disparity * v.width * z_med / fx
        viewmat = v.viewmats[i].clone()
        viewmat[0, 3] -= t  # camera centre moved +t along its own x axis: x_cam' = x_cam - t
        shifted, _, _, _ = render(self.params, viewmat, v.K[i], v.width, v.height, *how)
        if self.exposure is not None:
            shifted = apply_affine(shifted, self._correction(i))  # compared with image i, as the main render
        bl = binocular_loss(shifted, depth, alpha, v.images[i], fx * t)
        row["binocular"] = float(bl.detach())
        return cfg.binocular_weight * bl

    def _pseudo_due(self, step: int) -> bool:
        cfg = self.cfg
        it = cfg.iterations
        return (
            cfg.pseudo_depth_weight > 0
            and step % cfg.pseudo_depth_every == 0
            and cfg.pseudo_depth_start * it <= step < cfg.pseudo_depth_end * it
        )

    def pseudo_targets(self) -> PseudoTargets:
        """The pseudo cameras and their depth targets (splat.pseudo), made on first use: pseudo_depth_views
        cameras drawn by splat.cotrain.pseudo_pose from a generator seeded with cfg.seed, K of the first
        training view, the targets ray-cast from the training views' prior."""
        from splat.cotrain import pseudo_pose

        if self._pseudo is None:
            cfg, v, train = self.cfg, self.views, self.train
            rng = np.random.default_rng([cfg.seed, 2])
            c2w = np.stack(
                [pseudo_pose(v.c2w[train], rng, cfg.pseudo_depth_noise) for _ in range(cfg.pseudo_depth_views)]
            )
            prior = [v.prior_depth[i].cpu().numpy() for i in train]
            K = v.K[train].cpu().numpy().astype(np.float64)
            conf = None
            if any(i in v.prior_confidence for i in train):
                ones = np.ones((v.height, v.width), np.float32)
                conf = [v.prior_confidence[i].cpu().numpy() if i in v.prior_confidence else ones for i in train]
            self._pseudo = prior_depth_targets(prior, K, v.c2w[train], c2w, K[0], conf)
            log.info(
                "pseudo-view depth: %d cameras, %.0f %% of their pixels have a target",
                len(c2w),
                100 * self._pseudo.coverage,
            )
        return self._pseudo

    def _pseudo_depth_term(self, how: tuple, row: dict[str, Any]) -> torch.Tensor:
        """pseudo_depth_weight (ramped) x splat.losses.depth_pearson of the render at this step's pseudo camera
        against its target (TrainConfig.pseudo_depth_weight)."""
        from depth.geometry import invert_pose

        cfg, v, step = self.cfg, self.views, self.global_step
        targets = self.pseudo_targets()
        k = (step // cfg.pseudo_depth_every) % len(targets.c2w)
        w2c = torch.as_tensor(invert_pose(targets.c2w[k]), dtype=torch.float32, device=self.device)
        K = torch.as_tensor(targets.K, dtype=torch.float32, device=self.device)
        _, depth, alpha, _ = render(self.params, w2c, K, v.width, v.height, *how)
        target = torch.as_tensor(targets.depth[k], device=self.device)
        weight = torch.as_tensor(targets.confidence[k], device=self.device)
        pl = depth_pearson(depth, target, alpha.detach() > 0.01, weight)
        ramp = min(1.0, (step - cfg.pseudo_depth_start * cfg.iterations + 1) / max(0.05 * cfg.iterations, 1.0))
        row["pseudo_depth"] = float(pl.detach())
        return cfg.pseudo_depth_weight * ramp * pl

    def _depth_term(self, i: int, depth: torch.Tensor, alpha: torch.Tensor, row: dict[str, Any]) -> torch.Tensor:
        cfg = self.cfg
        w = depth_weight_at(self.global_step, cfg.depth_weight, cfg.depth_weight_final, cfg.iterations)
        # Expected depth is normalised by alpha, so it is meaningful wherever anything was hit.
        confidence = self.views.prior_confidence.get(i)
        dl = DEPTH_LOSSES[cfg.depth_loss](depth, self.views.prior_depth[i], alpha.detach() > 0.01, confidence)
        row["depth"], row["depth_weight"] = float(dl.detach()), w
        return w * dl

    def _optimise(self, meta: dict) -> None:
        """Optimiser steps, the means' learning-rate decay, densification, and the collapse check."""
        cfg, step = self.cfg, self.global_step
        assert self.optimizers is not None and self.strategy is not None, "step() checked the Trainer is trainable"
        means_lr = exp_decay(step, cfg.lr_means * self.extent, cfg.lr_means_final * self.extent, cfg.iterations)
        for g in self.optimizers["means"].param_groups:
            g["lr"] = means_lr
        for o in self.optimizers.values():
            o.step()
            o.zero_grad(set_to_none=True)
        if cfg.opacity_decay < 1.0 and step >= cfg.refine_start:
            with torch.no_grad():
                self.params["opacities"].copy_(decay_opacity_logits(self.params["opacities"], cfg.opacity_decay))
        if self.exposure_optimizer is not None:
            lr = exp_decay(step, cfg.lr_exposure, cfg.lr_exposure_final, cfg.iterations)
            for g in self.exposure_optimizer.param_groups:
                g["lr"] = lr
            self.exposure_optimizer.step()
            self.exposure_optimizer.zero_grad(set_to_none=True)
        if cfg.strategy == "mcmc":
            self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, step, meta, lr=means_lr)
        else:
            self._apply_cap(step)
            keep = None
            if step == 0 and not cfg.opacity_reset_at_start:
                keep = self.params["opacities"].detach().clone()  # no growth or pruning at step 0: same Gaussians
            self.strategy.step_post_backward(
                self.params, self.optimizers, self.strategy_state, step, meta, packed=False
            )
            if keep is not None:
                with torch.no_grad():
                    self.params["opacities"].copy_(keep)
        if len(self.params["means"]) == 0:
            raise SplatError(
                f"training collapsed: every Gaussian was pruned by step {step + 1} "
                "(try another --init or fewer iterations)"
            )

    def _apply_cap(self, step: int) -> None:
        """max_gaussians for the default strategy: it stops growth only (as MCMC's cap_max), so pruning goes on and
        growth resumes below the cap. Stateless, so a resumed run does the same."""
        assert self.strategy is not None, "a trainable Trainer has a strategy"
        cap = self.cfg.max_gaussians
        full = len(self.params["means"]) >= cap
        self.strategy.grow_grad2d = float("inf") if full else self.cfg.grow_grad2d  # inf: no clone or split
        if full and not self._cap_warned:
            self._cap_warned = True
            log.warning("max_gaussians=%d reached at step %d: no growth while at the cap", cap, step + 1)

    def fit(
        self,
        callback: Callable[[int, dict[str, Any]], None] | None = None,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    ) -> float:
        """Train from the current step to cfg.iterations; returns the accumulated training seconds.

        Args:
            callback: called as callback(step, log_row) after every step; an exception it raises stops
                training (the last checkpoint stays what it was).
            on_checkpoint: called with `state_dict()` every cfg.checkpoint_every steps and at the end.
        """
        cfg = self.cfg
        t0 = time.perf_counter() - self.elapsed
        while self.global_step < cfg.iterations:
            row = self.step()
            n = self.global_step
            self.elapsed = time.perf_counter() - t0
            if n % max(cfg.log_every, 1) == 0 or n == cfg.iterations:
                row["elapsed_s"] = self.elapsed
                self.log.append(row)
            if cfg.checkpoint_every > 0 and n % cfg.checkpoint_every == 0 and n < cfg.iterations:
                # Unconsumed views of the current epoch go back by re-seeding the order at checkpoint
                # boundaries: an epoch always restarts after a checkpoint, resumed or not.
                self._order = []
                if self.twin is not None:
                    self.twin._order = []
                if on_checkpoint is not None:
                    on_checkpoint(self.state_dict())
            if callback is not None:
                callback(n, row)
        self.elapsed = time.perf_counter() - t0
        if on_checkpoint is not None:
            on_checkpoint(self.state_dict())
        return self.elapsed

    # ------------------------------------------------------------------------------ results

    def state_dict(self) -> dict[str, Any]:
        """The whole training state: tensors (on the CPU) and plain Python values only, so that
        torch.load(weights_only=True) reads it back. `from_state` resumes from it."""
        cuda_rng = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # MCMC's relocation and noise draw on the device's generator: keep it so a CUDA resume repeats them too
            cuda_rng = [t.clone() for t in torch.cuda.get_rng_state_all()]
        return {
            "step": int(self.global_step),
            "params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
            "optimizers": {k: _to_cpu(o.state_dict()) for k, o in (self.optimizers or {}).items()},
            "strategy_state": _to_cpu(dict(self.strategy_state or {})),
            "rng_numpy": json.loads(json.dumps(self.rng.bit_generator.state)),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": cuda_rng,
            "log": [dict(r) for r in self.log],
            "elapsed_s": float(self.elapsed),
            "extent": float(self.extent),
            "config": config_json(self.cfg),
            "exposure": None if self.exposure is None else torch.from_numpy(self.corrections()),
            "exposure_optimizer": None
            if self.exposure_optimizer is None
            else _to_cpu(self.exposure_optimizer.state_dict()),
            "twin": None if self.twin is None else self.twin.state_dict(),
        }

    def _load_exposure(self, state: dict[str, Any]) -> None:
        """The corrections and their optimiser of a state_dict (SplatError if exposure was on there but is off
        here, or the other way round)."""
        saved = state.get("exposure")
        if (saved is None) != (self.exposure is None):
            was, now = ("false", "true") if saved is None else ("true", "false")
            raise SplatError(f"the saved state was trained with train.exposure={was}, not {now}: resume with {was}")
        if saved is None or self.exposure is None or self.exposure_optimizer is None:
            return
        if tuple(saved.shape) != tuple(self.exposure.shape):
            raise SplatError(
                f"the saved exposure corrections have shape {tuple(saved.shape)}, these views need "
                f"{tuple(self.exposure.shape)}"
            )
        with torch.no_grad():  # deltas D = A - I give the saved corrections back (their mean over train is 0)
            self.exposure.copy_(saved.to(self.device) - identity(len(saved), self.device))
        if state.get("exposure_optimizer") is not None:
            try:
                self.exposure_optimizer.load_state_dict(state["exposure_optimizer"])
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise SplatError(f"the saved exposure optimizer does not fit ({str(e).splitlines()[0]})") from e

    def _correction(self, i: int) -> torch.Tensor:
        """[3, 4] correction of training view i (see `self.exposure`), differentiable in the deltas."""
        assert self.exposure is not None, "exposure correction is on"
        D = self.exposure
        return torch.eye(3, 4, device=D.device) + D[i] - D[self.train].mean(0)

    @torch.no_grad()
    def corrections(self) -> np.ndarray | None:
        """The learned colour corrections float32 [T, 3, 4] (frame i: rgb' = A[i, :, :3] @ rgb + A[i, :, 3]; their
        mean over the training views is the identity; identity for frames not trained on), or None when off."""
        if self.exposure is None:
            return None
        A = identity(len(self.exposure), self.device)
        for i in self.train:
            A[i] = self._correction(i)
        return A.cpu().numpy()

    def gaussians(self) -> dict[str, np.ndarray]:
        """The Gaussians as float32 numpy arrays in splat.ply's layout (means, scales, quats, opacities, sh0, shN)."""
        return to_numpy(self.params)

    @property
    def num_gaussians(self) -> int:
        return int(len(self.params["means"]))

    def render(self, i: int, sh_degree: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """View i on the background: (rgb [H,W,3], expected depth [H,W], alpha [H,W])."""
        v = self.views
        d = params_sh_degree(self.params) if sh_degree is None else sh_degree
        rgb, depth, alpha, _ = render(self.params, v.viewmats[i], v.K[i], v.width, v.height, d, self.bg_color)
        return rgb, depth, alpha

    @torch.no_grad()
    def evaluate(
        self,
        views: list[int],
        gt_depth: dict[int, np.ndarray] | None = None,
        masks: dict[int, np.ndarray] | None = None,
        lpips: ev.LPIPS | None = None,
        depth_align: str = "median",
        sh_degree: int | None = None,
        keep_renders: bool = False,
    ) -> dict[str, Any]:
        """Score `views` (their images must be in the views): splat.evaluate.evaluate_views' dict.

        Args:
            gt_depth / masks: view -> [H,W] at training resolution (depth metrics / masked metrics).
            sh_degree: render with this SH degree (default: all the Gaussians have).
            keep_renders: also return "renders" {view: uint8 [H, 2W, 3] render | GT}.
        """
        return ev.evaluate_views(
            lambda i: self.render(i, sh_degree),
            {i: self.views.images[i] for i in views},
            keep_renders=keep_renders,
            gt_depth=gt_depth,
            lpips=lpips,
            depth_align=depth_align,
            masks=masks,
        )

    @torch.no_grad()
    def render_path(self, key_c2w: np.ndarray, K: torch.Tensor, num_frames: int) -> np.ndarray:
        """uint8 [num_frames, H, W, 3] frames along a smooth path through key poses c2w [T,4,4], intrinsics K [3,3]
        at the training resolution."""
        from depth.geometry import invert_pose

        v, d = self.views, params_sh_degree(self.params)

        def render_pose(c2w: np.ndarray) -> np.ndarray:
            w2c = torch.as_tensor(invert_pose(c2w), dtype=torch.float32, device=self.device)
            rgb, _, _, _ = render(self.params, w2c, K, v.width, v.height, d, self.bg_color)
            return ev.to_uint8(rgb)

        return render_path(render_pose, key_c2w, num_frames)
