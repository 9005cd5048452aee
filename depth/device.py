"""One device-resolution rule for every layer: "auto" = CUDA when present, else the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from depth.errors import DepthError

if TYPE_CHECKING:
    import torch

DEVICE_HINT = "auto, cpu, cuda or cuda:N"


def cuda_available() -> bool:
    """True when torch sees a CUDA device (False when torch itself cannot initialise CUDA)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver install raises from inside torch
        return False


def resolve_device(name: str) -> torch.device:
    """ "auto" | "cpu" | "cuda" | "cuda:N" -> torch.device; DepthError for anything else or a missing GPU."""
    import torch

    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DepthError(f"device {name!r} is not a device ({DEVICE_HINT})") from None
    if device.type not in ("cpu", "cuda"):
        raise DepthError(f"device {name!r} is not supported ({DEVICE_HINT})")
    if device.type == "cuda":
        if not cuda_available():
            raise DepthError(f"device {name} requested but no CUDA GPU is available (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DepthError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) exist")
    return device
