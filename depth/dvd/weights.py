"""Finding the DVD DiT checkpoint and the Wan 2.1 VAE: explicit path, cache folder, or the Hugging Face hub.

Order for each file: an explicit path (--dvd-weights / --vae-weights), else the cache folder
(`cache_dir`, else $DVD_SPLAT_CACHE, else ~/.cache/dvd-splat), else (if allowed) a download with
huggingface_hub into that cache folder. When that fails (offline, no access, interrupted) the user gets
ONE DepthError that names both files, their approximate sizes, the licences and where to put them.

`dvd_weights_available` answers the same question without any network access (backend 'auto').
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from depth.errors import DepthError

log = logging.getLogger(__name__)

DVD_REPO = "FayeHongfeiZhang/DVD"
DVD_FILES = {"v1.0": "model.safetensors", "v1.1": "dvd_1.1.safetensors"}
DVD_DEFAULT_FILE = DVD_FILES["v1.0"]  # what the official scripts load (ckpt/model.safetensors)
VAE_REPO = "Wan-AI/Wan2.1-T2V-1.3B"
VAE_FILE = "Wan2.1_VAE.pth"
# Approximate download sizes, for the message only.
DVD_SIZE = "~4-8 GB"  # 1.42 B base + ~0.7 B rank-512 LoRA parameters, bf16 or fp32
VAE_SIZE = "~0.5 GB"


def default_cache_dir() -> Path:
    """$DVD_SPLAT_CACHE, else ~/.cache/dvd-splat."""
    env = os.environ.get("DVD_SPLAT_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/dvd-splat").expanduser()


@dataclass(frozen=True)
class WeightPaths:
    dit: Path
    vae: Path  # a file (.pth / .safetensors) or a diffusers-format folder


def _check_reachable(timeout: float = 3.0) -> None:
    """OSError within `timeout` seconds unless the hub's host accepts a TCP connection (without network,
    huggingface_hub would retry for ~25 s before failing)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise OSError(f"{host} is not reachable (no network?): {e}") from None


def _hub_download(repo_id: str, filename: str, local_dir: Path) -> Path:
    """One file from the hub into `local_dir` (indirection so tests can forbid the network)."""
    from huggingface_hub import hf_hub_download

    _check_reachable()
    return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_dir=str(local_dir)))


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def _missing_message(cache: Path, dvd_file: str, reason: str) -> str:
    return (
        f"DVD weights are not available ({reason}). Needed: {dvd_file} ({DVD_SIZE}, huggingface.co/{DVD_REPO}, "
        f"licence CC-BY-NC-4.0: non-commercial use only) and {VAE_FILE} ({VAE_SIZE}, huggingface.co/{VAE_REPO}, "
        f"Apache-2.0). Put both in {cache} (or set $DVD_SPLAT_CACHE), or pass --dvd-weights/--vae-weights, "
        "or use --backend stereo which needs no weights."
    )


def _local_vae(cache: Path) -> Path | None:
    for cand in (cache / VAE_FILE, cache / "Wan2.1_VAE.safetensors", cache / "vae"):
        if cand.is_file() or (cand.is_dir() and (cand / "config.json").is_file()):
            return cand
    return None


def _check_explicit(path: Path | None, flag: str) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.exists():
        raise DepthError(f"{flag} {path} does not exist")
    return path


DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def check_vae_folder(vae: Path) -> None:
    """DepthError unless a diffusers-format VAE folder holds safetensors weights: pickled `.bin` weights are
    never loaded (unpickling a received file could run code from it)."""
    target = vae / "vae" if (vae / "vae" / "config.json").is_file() else vae
    if not (target / "config.json").is_file():
        raise DepthError(f"--vae-weights {vae} is a folder but not a diffusers-format VAE (no config.json)")
    if not any((target / n).is_file() for n in DIFFUSERS_WEIGHTS):
        raise DepthError(
            f"--vae-weights {vae} has no {DIFFUSERS_WEIGHTS[0]}: only safetensors weights are loaded from a folder "
            "(.bin files are pickles); pass Wan2.1_VAE.pth or a safetensors file instead"
        )


def resolve_weights(
    dvd_weights: Path | None = None,
    vae_weights: Path | None = None,
    cache_dir: Path | None = None,
    allow_download: bool = True,
    dvd_file: str = DVD_DEFAULT_FILE,
) -> WeightPaths:
    """Paths of the DVD DiT checkpoint and the Wan VAE, downloading into the cache if allowed and needed."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dit = _check_explicit(dvd_weights, "--dvd-weights")
    vae = _check_explicit(vae_weights, "--vae-weights")
    if dit is not None and dit.is_dir():  # a folder like the official ckpt/ (holds model.safetensors)
        found = [dit / n for n in (dvd_file, *DVD_FILES.values()) if (dit / n).is_file()]
        if not found:
            raise DepthError(f"--dvd-weights folder {dit} holds none of {', '.join(DVD_FILES.values())}")
        dit = found[0]
    if vae is not None and vae.is_dir() and (vae / VAE_FILE).is_file():  # e.g. a Wan2.1-T2V-1.3B download
        vae = vae / VAE_FILE
    dit = dit or ((cache / dvd_file) if (cache / dvd_file).is_file() else None)
    vae = vae or _local_vae(cache)
    if vae is not None and vae.is_dir():
        check_vae_folder(vae)
    if dit is not None and vae is not None:
        return WeightPaths(dit, vae)
    missing = [name for name, p in ((dvd_file, dit), (VAE_FILE, vae)) if p is None]
    if not allow_download:
        raise DepthError(
            _missing_message(cache, dvd_file, f"{' and '.join(missing)} not found and downloads are disabled")
        )
    if _hub_offline():
        raise DepthError(
            _missing_message(cache, dvd_file, f"{' and '.join(missing)} not found and HF_HUB_OFFLINE is set")
        )
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if dit is None:
            log.info(f"downloading {dvd_file} ({DVD_SIZE}) from huggingface.co/{DVD_REPO} into {cache}")
            dit = _hub_download(DVD_REPO, dvd_file, cache)
        if vae is None:
            log.info(f"downloading {VAE_FILE} ({VAE_SIZE}) from huggingface.co/{VAE_REPO} into {cache}")
            vae = _hub_download(VAE_REPO, VAE_FILE, cache)
    except DepthError:
        raise
    except Exception as e:  # offline, gated, disk full, interrupted: one clear message
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DepthError(
            _missing_message(cache, dvd_file, f"download failed: {type(e).__name__}: {first[:200]}")
        ) from None
    return WeightPaths(dit, vae)


def require_obtainable(cfg) -> None:
    """DepthError (the message of `resolve_weights`) unless the DVD weights of a DVDConfig-like object are on
    disk or can be downloaded now; takes at most a few seconds without network, never downloads."""
    ok, _ = dvd_weights_available(cfg)
    if ok:
        return
    cache = Path(cfg.cache_dir).expanduser() if getattr(cfg, "cache_dir", None) else default_cache_dir()
    dvd_file = getattr(cfg, "dvd_file", DVD_DEFAULT_FILE)
    if not getattr(cfg, "allow_download", True):
        raise DepthError(_missing_message(cache, dvd_file, "not found and downloads are disabled"))
    if _hub_offline():
        raise DepthError(_missing_message(cache, dvd_file, "not found and HF_HUB_OFFLINE is set"))
    try:
        _check_reachable()
    except OSError as e:
        raise DepthError(_missing_message(cache, dvd_file, f"not found, and {e}")) from None


def dvd_weights_available(cfg) -> tuple[bool, str]:
    """(available, reason) for a DVDConfig-like object; never downloads and never raises.

    True only when both files are on disk (explicit paths or the cache folder).
    """
    try:
        cache = Path(cfg.cache_dir).expanduser() if getattr(cfg, "cache_dir", None) else default_cache_dir()
        dvd_file = getattr(cfg, "dvd_file", DVD_DEFAULT_FILE)
        dit = Path(cfg.dvd_weights).expanduser() if getattr(cfg, "dvd_weights", None) else cache / dvd_file
        vae_explicit = getattr(cfg, "vae_weights", None)
        vae = Path(vae_explicit).expanduser() if vae_explicit else _local_vae(cache)
        if not dit.is_file():
            return False, f"DVD checkpoint {dit} not found (download {dvd_file} from huggingface.co/{DVD_REPO})"
        if vae is None or not vae.exists():
            return False, f"Wan VAE not found in {cache} (download {VAE_FILE} from huggingface.co/{VAE_REPO})"
        return True, f"DVD weights found: {dit}, {vae}"
    except Exception as e:  # a malformed config must not crash backend selection
        return False, f"cannot check DVD weights: {e}"
