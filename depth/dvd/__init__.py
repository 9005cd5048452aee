"""DVD video depth (arXiv 2603.12250) on diffusers' Wan2.1 modules: model, checkpoints, windows, backend."""

from depth.dvd.backend import DVDConfig, run_dvd
from depth.dvd.config import DEFAULT_CONFIG, DVDModelConfig
from depth.dvd.model import DVDRegressor
from depth.dvd.weights import dvd_weights_available, resolve_weights

__all__ = [
    "DVDRegressor",
    "DVDModelConfig",
    "DEFAULT_CONFIG",
    "DVDConfig",
    "run_dvd",
    "dvd_weights_available",
    "resolve_weights",
]
