"""DVDRegressor: the DVD video depth model assembled from diffusers' Wan modules.

One window: frames [T, H, W, 3] in [0, 1] -> `x * 2 - 1` -> Wan 2.1 VAE encode (mean, no sampling) ->
per-channel latent normalisation -> one WanTransformer3DModel pass at timestep 1000 * denoise_step with an
all-zero text context [1, 512, 4096] -> its output is the depth latent -> un-normalise -> VAE decode ->
clamp [-1, 1] -> (y + 1) / 2 -> clip [0, 1] -> mean over the 3 channels = relative disparity [T, H, W].
Long videos (`predict`) add the resize / window / pad / stitch rules of `windows.py`.

Parity with the official code (shared/fixtures/dvd-tiny) needs two details diffusers does not do by
default: the timestep sinusoid in float64 (`Float64Timesteps`) and, for non-default VAEs, the
config-derived key conversion in `convert.py`. No Wan module is hand-written.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depth.device import resolve_device
from depth.dvd import clip
from depth.dvd.clip import WindowRunner
from depth.dvd.config import DVDModelConfig
from depth.dvd.convert import (
    LoraMergeInfo,
    check_vae_matches_config,
    dit_to_diffusers,
    is_diffusers_vae_state,
    read_dvd_checkpoint,
    read_wan_vae,
    wan_vae_to_diffusers,
)
from depth.errors import DepthError

log = logging.getLogger(__name__)

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def _device(device: str | torch.device) -> torch.device:
    """A torch.device as it is; a name through the one device rule (depth.device.resolve_device)."""
    return device if isinstance(device, torch.device) else resolve_device(str(device))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto'/None -> bfloat16 on CUDA, float32 elsewhere; strings 'fp32'|'bf16'|'fp16' or a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise DepthError(f"unknown DVD dtype {dtype!r} (use auto, fp32, bf16 or fp16)")
    return _DTYPES[dtype]


class Float64Timesteps(torch.nn.Module):
    """Wan's sinusoidal timestep embedding, computed in float64 like the official code.

    t [B] -> [B, freq_dim] float64: `[cos(t f_j), sin(t f_j)]`, `f_j = 10000^(-j / half)`, j < half.
    Replaces diffusers' float32 `Timesteps` (which differs by ~1e-5 at the DiT output).
    """

    def __init__(self, freq_dim: int):
        super().__init__()
        self.half_dim = freq_dim // 2  # not `half`: that would shadow Module.half()

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        t = timesteps.to(torch.float64).reshape(-1)
        j = torch.arange(self.half_dim, dtype=torch.float64, device=t.device)
        arg = torch.outer(t, torch.pow(10000.0, -j / self.half_dim))
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


def _build_empty(cls: type, **kwargs: Any) -> torch.nn.Module:
    """Instantiate a diffusers model with parameters on the meta device (no allocation, no random init)."""
    with torch.device("meta"):
        return cls(**kwargs)


def _load_assign(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source: Any) -> None:
    """Strict load by assignment (tensors are used as they are: dtype and device already final)."""
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise DepthError(
            f"{what} weights from {source} do not match the architecture: "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}); check --dvd-config"
        )


def build_transformer(
    config: DVDModelConfig,
    state: dict[str, torch.Tensor] | None,
    device: torch.device,
    dtype: torch.dtype,
    source: Any = "",
) -> torch.nn.Module:
    """WanTransformer3DModel from `config`, loaded from a diffusers-named `state` (None: random weights,
    for benchmarks)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    kwargs = config.transformer_kwargs()
    model = _build_empty(WanTransformer3DModel, **kwargs)
    if state is None:
        _random_fill(model, device, dtype)
    else:
        _load_assign(model, state, "DiT", source)
    # RoPE tables are non-persistent buffers: rebuild them for real (float64 math, kept in float32).
    model.rope = WanRotaryPosEmbed(kwargs["attention_head_dim"], kwargs["patch_size"], kwargs["rope_max_seq_len"]).to(
        device
    )
    # a diffusers attribute, which torch's Module.__getattr__ types as Tensor | Module
    model.condition_embedder.timesteps_proj = Float64Timesteps(kwargs["freq_dim"])  # type: ignore[union-attr]
    _assert_materialised(model, "DiT")
    return model.eval().requires_grad_(False)


def _random_fill(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Materialise a meta-built model with cheap random weights (N(0, 0.02) matrices, zero biases, unit norms).

    Only for benchmarks: much faster than the default initialisers at 1.3B parameters on a CPU.
    """
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.data = p.data.to(dtype)
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim <= 1 or name.endswith("gamma"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)


def build_vae(
    config: DVDModelConfig, source: str | Path | None, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """AutoencoderKLWan from the original `Wan2.1_VAE.pth`, a safetensors file, or a diffusers-format folder.

    `source=None` gives random weights (benchmarks only).
    """
    from diffusers import AutoencoderKLWan

    if source is None:
        vae = _build_empty(AutoencoderKLWan, **config.vae_kwargs())
        _random_fill(vae, device, dtype)
        _assert_materialised(vae, "Wan VAE")
        return vae.eval().requires_grad_(False)
    source = Path(source)
    if source.is_dir():
        target = source / "vae" if (source / "vae" / "config.json").is_file() else source
        if not (target / "config.json").is_file():
            raise DepthError(f"{source} is a folder but not a diffusers-format VAE (no config.json)")
        try:
            vae = AutoencoderKLWan.from_pretrained(str(target), torch_dtype=dtype)
        except Exception as e:
            raise DepthError(f"could not load the diffusers-format Wan VAE from {target}: {e}") from None
        return vae.to(device).eval().requires_grad_(False)
    state = read_wan_vae(source)
    check_vae_matches_config(state, config, source)
    if not is_diffusers_vae_state(state):
        state = wan_vae_to_diffusers(state, config)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    vae = _build_empty(AutoencoderKLWan, **config.vae_kwargs())
    _load_assign(vae, state, "Wan VAE", source)
    _assert_materialised(vae, "Wan VAE")
    return vae.eval().requires_grad_(False)


def _assert_materialised(model: torch.nn.Module, what: str) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{what}: tensors left on the meta device after loading: {left[:5]}")


class DVDRegressor:
    """DVD single-pass video depth regressor (relative disparity), on diffusers' Wan modules.

    Build with `from_checkpoints`; `predict_window` runs one 4n+1-frame window, `predict` a whole clip.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        config: DVDModelConfig,
        device: torch.device,
        dtype: torch.dtype,
        lora_info: LoraMergeInfo | None = None,
    ):
        self.transformer = transformer
        self.vae = vae
        self.config = config
        self.device = device
        self.dtype = dtype
        self.lora_info = lora_info
        z = config.vae["z_dim"]
        # The official code multiplies by 1/std (and divides by it when decoding): keep that exact form.
        self._mean = torch.tensor(config.latent_mean, dtype=torch.float32).view(1, z, 1, 1, 1).to(device)
        self._inv_std = (1.0 / torch.tensor(config.latent_std, dtype=torch.float32)).view(1, z, 1, 1, 1).to(device)
        self._context: torch.Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoints(
        cls,
        dit: str | Path,
        vae: str | Path,
        config: str | Path | DVDModelConfig | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        lora_alpha: float | None = None,
        vae_tiling: bool = False,
    ) -> DVDRegressor:
        """Load a DVD DiT checkpoint (LoRA merged at load) and a Wan 2.1 VAE.

        dit: DVD safetensors (`pipe.dit.*` keys). vae: `Wan2.1_VAE.pth`, safetensors or a diffusers folder.
        config: fixture-style config.json or DVDModelConfig; None = shipped Wan2.1-T2V-1.3B config.
        dtype: None/'auto' = bf16 on CUDA, fp32 on CPU. lora_alpha: overrides the config's alpha.
        """
        cfg = config if isinstance(config, DVDModelConfig) else DVDModelConfig.from_json(config)
        dev = _device(device)
        dt = resolve_dtype(dtype, dev)
        t0 = time.perf_counter()
        wan_state, info = read_dvd_checkpoint(dit, cfg, lora_alpha=lora_alpha, dtype=dt, device=dev)
        transformer = build_transformer(cfg, dit_to_diffusers(wan_state), dev, dt, source=dit)
        del wan_state
        vae_model = build_vae(cfg, vae, dev, dt)
        if vae_tiling:
            # a diffusers attribute, which torch's Module.__getattr__ types as Tensor | Module
            vae_model.enable_tiling()  # type: ignore[operator]
        log.debug(
            f"DVD loaded in {time.perf_counter() - t0:.1f}s: {len(info.merged_layers)} LoRA layers merged "
            f"(rank {info.rank}, alpha {info.alpha:g}), {dev}, {dt}"
        )
        return cls(transformer, vae_model, cfg, dev, dt, info)

    @classmethod
    def random(
        cls,
        config: str | Path | DVDModelConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: Any = None,
        seed: int = 0,
    ) -> DVDRegressor:
        """Randomly initialised model of the configured architecture (benchmarks; outputs are meaningless)."""
        cfg = config if isinstance(config, DVDModelConfig) else DVDModelConfig.from_json(config)
        dev = _device(device)
        dt = resolve_dtype(dtype, dev)
        torch.manual_seed(seed)
        return cls(build_transformer(cfg, None, dev, dt), build_vae(cfg, None, dev, dt), cfg, dev, dt)

    # ------------------------------------------------------------------ one window
    def _text_context(self, batch: int) -> torch.Tensor:
        if self._context is None or self._context.shape[0] != batch:
            self._context = torch.zeros(
                batch, self.config.text_len, self.config.text_dim, device=self.device, dtype=self.dtype
            )
        return self._context

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised latent [B, 16, T_lat, H/8, W/8] of video [B, 3, T, H, W] in [-1, 1]."""
        # a diffusers attribute, which torch's Module.__getattr__ types as Tensor | Module
        mu = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mode()  # type: ignore[operator]
        return (mu.float() - self._mean) * self._inv_std

    @torch.inference_mode()
    def denoise(self, latent: torch.Tensor) -> torch.Tensor:
        """The single DiT pass: normalised RGB latent -> normalised depth latent (both [B, 16, T_lat, h, w])."""
        b = latent.shape[0]
        t = torch.full((b,), self.config.timestep, device=self.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=latent.to(self.dtype),
            timestep=t,
            encoder_hidden_states=self._text_context(b),
            return_dict=False,
        )[0]
        return out.float()

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Disparity [B, T, H, W] in [0, 1] (channel mean) from a normalised depth latent."""
        z = latent.float() / self._inv_std + self._mean
        # a diffusers attribute, which torch's Module.__getattr__ types as Tensor | Module
        y = self.vae.decode(z.to(self.dtype)).sample.float()  # type: ignore[operator]
        y = ((y.clamp(-1, 1) + 1) / 2).clamp(0, 1)
        return y.mean(dim=1)

    @torch.inference_mode()
    def predict_window(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Relative disparity float32 [T, H, W] for frames float32 [T, H, W, 3] in [0, 1].

        T must be 4n + 1 and H, W multiples of 16 (`predict` pads and resizes for you).
        """
        x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise DepthError(f"predict_window expects frames [T, H, W, 3], got shape {tuple(x.shape)}")
        t, h, w = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
        if t % 4 != 1 or h % 16 or w % 16:
            raise DepthError(f"a DVD window needs T = 4n+1 frames and H, W multiples of 16; got T={t}, {h}x{w}")
        video = (x.float() * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, T, H, W]
        disparity = self.decode(self.denoise(self.encode(video)))[0]
        return disparity.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------ whole clip
    def predict(
        self,
        frames: np.ndarray | Sequence[np.ndarray],
        height: int = 480,
        width: int = 640,
        window: int = 81,
        overlap: int = 21,
        stitch: str = "chain",
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Relative disparity float32 [T, H0, W0] for uint8 frames [T, H0, W0, 3] (see `predict_with_report`)."""
        return self.predict_with_report(frames, height, width, window, overlap, stitch, progress)[0]

    def predict_with_report(
        self,
        frames: np.ndarray | Sequence[np.ndarray],
        height: int = 480,
        width: int = 640,
        window: int = 81,
        overlap: int = 21,
        stitch: str = "chain",
        progress: Callable[[int, int], None] | None = None,
        runner: WindowRunner | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Whole-clip inference: resize -> windows -> 4n+1 pad -> per-window pass -> stitch -> resize back.

        frames: uint8 [T, H0, W0, 3], or any sequence whose slices `frames[a:b]` give such arrays (read
        lazily, one window at a time). Returns (disparity float32 [T, H0, W0], report) where report holds
        `processing_size`, `windows` (list of WindowInfo dicts: start/end/padding/scale_raw/scale/shift/
        residual_before/residual_after/seconds/worker) and timing. Only one window is on the device at a time.
        `runner` computes the windows (depth.dvd.clip.WindowRunner; default: here, in order, `run_sequential`),
        e.g. spread over several devices by the application; the stitching is the same either way.
        """
        return clip.predict_clip(self, frames, height, width, window, overlap, stitch, progress, runner)

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
