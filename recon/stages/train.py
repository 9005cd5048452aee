"""Stage `train`: Gaussians trained on the training views, evaluated on the test views -> RUN/splat/, metrics.json."""

from __future__ import annotations

from typing import Any

from recon.stages import StageContext
from splat.train import TrainConfig as Config
from splat.train import run_train


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    return run_train(ctx.paths, cfg)
