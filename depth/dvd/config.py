"""DVD architecture description: the fixture-style `config.json` (Wan naming) and its diffusers form.

One JSON file describes a DVD model completely: the Wan DiT (`dit`), the Wan 2.1 VAE (`vae`), the LoRA
that the DVD checkpoint carries unmerged (`lora`), the single-pass timestep (`denoise_step`, so
`timestep = 1000 * denoise_step`), the 16 latent normalisation constants and the (all-zero) text
context shape. The real Wan2.1-T2V-1.3B description ships in `configs/wan2.1_t2v_1.3b.json`, so offline
loading never needs the hub; tiny test models use the same format (see shared/fixtures/dvd-tiny).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depth.errors import DepthError

CONFIG_DIR = Path(__file__).with_name("configs")
DEFAULT_CONFIG = CONFIG_DIR / "wan2.1_t2v_1.3b.json"


@dataclass(frozen=True)
class DVDModelConfig:
    """Parsed DVD model description (all sizes in channels / tokens, Wan naming)."""

    dit: dict[str, Any]
    vae: dict[str, Any]
    lora_rank: int | None
    lora_alpha: float | None
    lora_targets: tuple[str, ...]
    denoise_step: float
    latent_mean: tuple[float, ...]
    latent_std: tuple[float, ...]
    text_len: int = 512
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def timestep(self) -> float:
        """Timestep of the single DiT pass: 1000 * denoise_step (500 for DVD)."""
        return 1000.0 * self.denoise_step

    @property
    def text_dim(self) -> int:
        return int(self.dit["text_dim"])

    @classmethod
    def from_json(cls, path: str | Path | None = None) -> DVDModelConfig:
        """Read a fixture-style config.json; `None` means the shipped Wan2.1-T2V-1.3B config."""
        path = Path(path) if path is not None else DEFAULT_CONFIG
        if not path.is_file():
            raise DepthError(f"DVD config not found: {path}")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DepthError(f"DVD config {path} is not valid JSON: {e}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> DVDModelConfig:
        try:
            dit, vae = dict(raw["dit"]), dict(raw["vae"])
            lora = dict(raw.get("lora") or {})
            mean = tuple(float(v) for v in raw["vae_latent_mean"])
            std = tuple(float(v) for v in raw["vae_latent_std"])
            denoise = float(raw.get("denoise_step", 0.5))
            text_shape = raw.get("text_context_shape", [512, dit["text_dim"]])
            for key in ("dim", "ffn_dim", "freq_dim", "text_dim", "in_dim", "out_dim", "num_heads", "num_layers"):
                dit[key] = int(dit[key])
            for key in ("dim", "z_dim", "num_res_blocks"):
                vae[key] = int(vae[key])
        except (KeyError, TypeError, ValueError) as e:
            raise DepthError(f"DVD config {source} is missing or has a bad field: {e}") from None
        if len(mean) != vae["z_dim"] or len(std) != vae["z_dim"] or min(std) <= 0:
            raise DepthError(f"DVD config {source}: need {vae['z_dim']} latent means and positive stds")
        if dit["dim"] % dit["num_heads"]:
            raise DepthError(f"DVD config {source}: dit.dim {dit['dim']} is not divisible by num_heads")
        if dit.get("has_image_input"):
            raise DepthError(f"DVD config {source}: image-conditioned (I2V) DiTs are not supported")
        if list(vae.get("attn_scales") or []):
            raise DepthError(f"DVD config {source}: vae.attn_scales must be empty (Wan 2.1 VAE)")
        if int(text_shape[1]) != dit["text_dim"]:
            raise DepthError(f"DVD config {source}: text_context_shape does not match dit.text_dim")
        return cls(
            dit=dit,
            vae=vae,
            lora_rank=int(lora["rank"]) if lora.get("rank") is not None else None,
            lora_alpha=float(lora["alpha"]) if lora.get("alpha") is not None else None,
            lora_targets=tuple(lora.get("targets", ("q", "k", "v", "o", "ffn.0", "ffn.2"))),
            denoise_step=denoise,
            latent_mean=mean,
            latent_std=std,
            text_len=int(text_shape[0]),
            source=source,
        )

    def transformer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for diffusers' `WanTransformer3DModel` (Wan 2.1 T2V: no image branch)."""
        d = self.dit
        return dict(
            patch_size=tuple(int(p) for p in d["patch_size"]),
            num_attention_heads=d["num_heads"],
            attention_head_dim=d["dim"] // d["num_heads"],
            in_channels=d["in_dim"],
            out_channels=d["out_dim"],
            text_dim=d["text_dim"],
            freq_dim=d["freq_dim"],
            ffn_dim=d["ffn_dim"],
            num_layers=d["num_layers"],
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=float(d.get("eps", 1e-6)),
            image_dim=None,
            added_kv_proj_dim=None,
            rope_max_seq_len=1024,
        )

    def vae_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for diffusers' `AutoencoderKLWan` (Wan 2.1 layout, is_residual=False)."""
        v = self.vae
        return dict(
            base_dim=v["dim"],
            z_dim=v["z_dim"],
            dim_mult=[int(m) for m in v["dim_mult"]],
            num_res_blocks=v["num_res_blocks"],
            attn_scales=[],
            temperal_downsample=[bool(t) for t in v["temperal_downsample"]],
            latents_mean=list(self.latent_mean),
            latents_std=list(self.latent_std),
        )
