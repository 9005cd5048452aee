"""The `dvd-splat` nerfstudio method: `ns-train dvd-splat --data RUN`.

Optimiser settings are splatfacto's (nerfstudio 1.1.5 `method_configs["splatfacto"]`), written out
as values: a plugin must not import nerfstudio's method_configs, which discovers plugins itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification
from torch.optim.lr_scheduler import LambdaLR

from splat.nerfstudio.dataparser import DVDSplatDataParserConfig, DVDSplatDataset
from splat.nerfstudio.model import DVDSplatModelConfig

MAX_ITERATIONS = 30000


def _plain_float(f: Callable[[int], float]) -> Callable[[int], float]:
    """`f` with its result converted to a Python float."""
    return lambda step: float(f(step))


class PlainFloatExponentialDecayScheduler(ExponentialDecayScheduler):
    """nerfstudio's exponential decay, with learning rates kept as Python floats.

    The stock schedule computes them with numpy, so checkpoints hold numpy scalars, which
    `torch.load(weights_only=True)` (the default since torch 2.6) refuses: `ns-export` and
    `ns-eval` could then not read a `dvd-splat` checkpoint.
    """

    def get_scheduler(self, optimizer, lr_init: float):
        # the parent builds a LambdaLR but declares the LRScheduler base class
        scheduler = cast(LambdaLR, super().get_scheduler(optimizer, lr_init))
        scheduler.lr_lambdas = [_plain_float(f) for f in scheduler.lr_lambdas]
        for group in optimizer.param_groups:
            group["lr"] = float(group["lr"])
        scheduler._last_lr = [float(lr) for lr in scheduler._last_lr]
        return scheduler


@dataclass
class PlainFloatExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    _target: type = field(default_factory=lambda: PlainFloatExponentialDecayScheduler)


def _adam(lr: float, final: float | None = None, warmup: int = 0) -> dict:
    """One optimizer group: Adam at `lr`, exponentially decayed to `final` over training when given."""
    scheduler = None
    if final is not None:
        scheduler = PlainFloatExponentialDecaySchedulerConfig(
            lr_final=final, max_steps=MAX_ITERATIONS, warmup_steps=warmup, lr_pre_warmup=0 if warmup else 1e-8
        )
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


def dvd_splat_config() -> TrainerConfig:
    return TrainerConfig(
        method_name="dvd-splat",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=MAX_ITERATIONS,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=FullImageDatamanagerConfig(
                _target=FullImageDatamanager[DVDSplatDataset],
                dataparser=DVDSplatDataParserConfig(),
                cache_images_type="uint8",
            ),
            model=DVDSplatModelConfig(),
        ),
        optimizers={
            "means": _adam(1.6e-4, final=1.6e-6),
            "features_dc": _adam(0.0025),
            "features_rest": _adam(0.0025 / 20),
            "opacities": _adam(0.05),
            "scales": _adam(0.005),
            "quats": _adam(0.001),
            "camera_opt": _adam(1e-4, final=5e-7, warmup=1000),
            "bilateral_grid": _adam(2e-3, final=1e-4, warmup=1000),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


dvd_splat_method = MethodSpecification(
    config=dvd_splat_config(),
    description="DVD-Splat: splatfacto initialised from the run's depth-fused cloud, with a video-depth prior loss.",
)
