"""DVD video depth (arXiv 2603.12250) on diffusers' Wan2.1 modules: model, checkpoints, windows, backend.

`DVDRegressor` (torch + diffusers) is imported on first use, so the configs load without them.
"""

from typing import Any

from depth.dvd.backend import DVDBackend, DVDConfig
from depth.dvd.config import DEFAULT_CONFIG, DVDModelConfig
from depth.dvd.weights import dvd_weights_available, resolve_weights

__all__ = [
    "DVDRegressor",
    "DVDModelConfig",
    "DEFAULT_CONFIG",
    "DVDBackend",
    "DVDConfig",
    "dvd_weights_available",
    "resolve_weights",
]


def __getattr__(name: str) -> Any:
    if name == "DVDRegressor":
        from depth.dvd.model import DVDRegressor

        return DVDRegressor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
