"""What splatfacto needs to run on a machine without CUDA or internet, applied only around our calls.

splatfacto's constructor moves the seed colours with `.cuda()` and builds an LPIPS metric whose
AlexNet weights torchvision downloads on first use. Both are swapped out *only while* our model's
constructor runs (`splatfacto_construction`), so a plain `splatfacto` in the same process is untouched.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch

log = logging.getLogger(__name__)


def lpips_weights_cached() -> bool:
    """True when torchvision's AlexNet weights (the LPIPS backbone) are already in the torch hub cache."""
    from torchvision.models import AlexNet_Weights

    name = AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).exists()


class UnavailableMetric(torch.nn.Module):
    """Stands in for a metric whose weights are not available offline: every call returns NaN."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.tensor(float("nan"))


def offline_lpips(lpips_cls: Callable[..., torch.nn.Module], **kwargs) -> torch.nn.Module:
    """`lpips_cls(**kwargs)` when its backbone weights are cached, else a NaN-returning stand-in."""
    if lpips_weights_cached():
        return lpips_cls(**kwargs)
    log.warning("LPIPS backbone weights (torchvision AlexNet) are not cached offline: lpips is reported as nan")
    return UnavailableMetric("lpips")


def _cuda_is_cpu(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return self


@contextlib.contextmanager
def splatfacto_construction() -> Iterator[None]:
    """Context for `SplatfactoModel.populate_modules`: offline LPIPS, and `.cuda()` a no-op without CUDA."""
    from torchmetrics.image import lpip

    factory = functools.partial(offline_lpips, lpip.LearnedPerceptualImagePatchSimilarity)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(lpip, "LearnedPerceptualImagePatchSimilarity", factory))
        if not torch.cuda.is_available():
            stack.enter_context(mock.patch.object(torch.Tensor, "cuda", _cuda_is_cpu))
        yield
