"""The depth-backend interface: `DepthFrames` in, `DepthResult` out; choosing and building a backend.

Backends:
  - "dvd": DVD video depth (depth.dvd.backend.DVDBackend) -> relative (affine-invariant) disparity.
  - "stereo": weights-free plane-sweep stereo on known poses (depth.stereo.StereoBackend) -> disparity
    = 1/depth in scene units.
  - "file": depth or disparity maps the user already has (depth.file.FileBackend).
  - "auto" (`select_backend`): DVD when its weights are available (local or downloadable) AND a CUDA device
    is present, otherwise stereo, with the reason (and how to get DVD).
A new backend is one module with a class that has a `name` and an `estimate` method, plus a line in
`make_backend`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from depth.device import cuda_available
from depth.dvd.backend import DVDBackend, DVDConfig
from depth.dvd.weights import DVD_REPO, VAE_FILE, VAE_REPO, dvd_weights_available
from depth.errors import DepthError
from depth.file import FileBackend, FileDepthConfig
from depth.result import DepthFrames, DepthResult

BACKENDS = ("dvd", "stereo", "file")
HUB_TIMEOUT_S = 4.0
"""Longest the hub check of `dvd_downloadable` may take, DNS included."""


class DepthBackend(Protocol):
    """What every depth backend offers."""

    name: str

    def estimate(self, frames: DepthFrames, progress: Callable[[int, int], None] | None = None) -> DepthResult:
        """Disparity for `frames` (same order and size); `progress(done, total)` as the work advances."""
        ...


def make_backend(name: str, cfg: Any = None) -> DepthBackend:
    """The backend `name` ("dvd", "stereo" or "file") with its config (DVDConfig, StereoConfig,
    FileDepthConfig; None = defaults, except "file", which needs to know where the maps are)."""
    if name == "dvd":
        return DVDBackend(cfg)
    if name == "stereo":
        from depth.stereo import StereoBackend  # torch at import time: only when asked for

        return StereoBackend(cfg)
    if name == "file":
        if not isinstance(cfg, FileDepthConfig):
            raise DepthError("depth backend 'file' needs the maps: pass --depth-files PATH (folder or .npz)")
        return FileBackend(cfg)
    raise DepthError(f"unknown depth backend {name!r} ({', '.join(BACKENDS)})")


def select_backend(choice: str, dvd: DVDConfig) -> tuple[str, str]:
    """(backend name, reason) for the user's `choice`; "auto" resolves to "dvd" or "stereo".

    Depends only on the DVD config, on whether CUDA is present and on whether the DVD weights are on disk
    or downloadable; never downloads anything.
    """
    if choice in BACKENDS:
        return choice, "chosen"
    if choice != "auto":
        raise DepthError(f"unknown depth backend {choice!r} (auto, {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]})")
    if not cuda_available() or str(dvd.device).startswith("cpu"):
        return "stereo", (
            "no CUDA device; DVD on CPU is impractically slow (force it with --backend dvd, "
            "or run on a CUDA machine with the DVD weights)"
        )
    ok, why = dvd_weights_available(dvd)
    if ok:
        return "dvd", "DVD weights found and CUDA present"
    down, down_why = dvd_downloadable(dvd)
    if down:
        return "dvd", f"DVD weights downloadable ({down_why}) and CUDA present"
    return (
        "stereo",
        f"{why}; {down_why}. Get DVD by passing --dvd-weights and --vae-weights or by allowing the download",
    )


def _hub_files_reachable(files: list[tuple[str, str]], results: list[BaseException | None]) -> None:
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        for repo, fname in files:
            get_hf_file_metadata(hf_hub_url(repo, fname), timeout=HUB_TIMEOUT_S)
        results.append(None)
    except Exception as e:  # offline, DNS failure, gated repo, missing file: all mean "not now"
        results.append(e)


def dvd_downloadable(dvd: DVDConfig) -> tuple[bool, str]:
    """(downloadable, reason): can the DVD and VAE files be fetched from the Hugging Face hub now?

    Asks the hub for the two files' metadata, never downloads them, and gives up after HUB_TIMEOUT_S
    seconds in all (the check runs in a daemon thread, so a hanging DNS lookup cannot hold it up).
    """
    if not dvd.allow_download:
        return False, "downloads are disabled (allow_download=False)"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    results: list[BaseException | None] = []
    files = [(DVD_REPO, dvd.dvd_file), (VAE_REPO, VAE_FILE)]
    probe = threading.Thread(target=_hub_files_reachable, args=(files, results), daemon=True)
    probe.start()
    probe.join(HUB_TIMEOUT_S)
    if not results:
        return False, f"the Hugging Face hub did not answer within {HUB_TIMEOUT_S:g} s"
    if results[0] is not None:
        return False, f"the Hugging Face hub cannot be reached ({type(results[0]).__name__})"
    return True, f"huggingface.co/{DVD_REPO} reachable"
