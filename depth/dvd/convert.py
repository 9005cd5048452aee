"""Checkpoint reading, validation, LoRA merging and key conversion to diffusers' Wan modules.

DVD DiT checkpoint (`model.safetensors` v1.0, `dvd_1.1.safetensors`): every tensor is prefixed
`pipe.dit.`; each adapted linear carries PEFT names `X.base_layer.weight`, `X.base_layer.bias`,
`X.lora_A.default.weight` (A [r, in]) and `X.lora_B.default.weight` (B [out, r]); everything else keeps
the original Wan names. We merge `W' = W + (alpha / r) * B @ A` (bias unchanged) while streaming the
file, which gives a plain Wan state dict that diffusers' own Wan converter understands.

Wan 2.1 VAE (`Wan2.1_VAE.pth`): a `torch.save`d state dict with the original names. diffusers'
converter hard-codes `num_res_blocks = 2`; `wan_vae_to_diffusers` derives every block index from the
config instead, so it serves the released VAE and the tiny test VAE alike.

Assumption for the real release (documented in configs/wan2.1_t2v_1.3b.json): the checkpoint does not
store alpha; the official training module (DiffSynth `add_lora_to_model`) sets `lora_alpha = lora_rank`
(512), so the merge factor is 1. The rank is always read from the lora_A shape; alpha comes from the
caller, else the config's `lora.alpha`, else equals the rank.
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from depth.dvd.config import DVDModelConfig
from depth.errors import DepthError

log = logging.getLogger(__name__)

DIT_PREFIX = "pipe.dit."
LORA_A = ".lora_A.default.weight"
LORA_B = ".lora_B.default.weight"
BASE_W = ".base_layer.weight"
BASE_B = ".base_layer.bias"

# Names that identify a base Wan DiT in the original, ComfyUI or diffusers layout (no DVD prefix).
_WAN_DIT_MARKERS = ("blocks.0.self_attn.q.weight", "blocks.0.attn1.to_q.weight", "patch_embedding.weight")


@dataclass
class LoraMergeInfo:
    """What the merge did: for the run report and for tests."""

    rank: int = 0
    alpha: float = 0.0
    factor: float = 0.0
    merged_layers: list[str] = field(default_factory=list)
    num_tensors: int = 0
    file_dtype: str = ""


def merge_lora_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Merged linear weight `W + (alpha / r) * B @ A`, computed in float32.

    weight: [out, in]; lora_a: A [r, in]; lora_b: B [out, r]; r = A.shape[0]. Returns float32 [out, in].
    """
    rank = lora_a.shape[0]
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_b.shape[1] != rank:
        raise DepthError(f"LoRA shapes do not fit: A {tuple(lora_a.shape)}, B {tuple(lora_b.shape)}")
    if lora_b.shape[0] != weight.shape[0] or lora_a.shape[1] != weight.shape[1]:
        raise DepthError(
            f"LoRA shapes A {tuple(lora_a.shape)}, B {tuple(lora_b.shape)} do not fit weight {tuple(weight.shape)}"
        )
    w = weight.to(torch.float32)
    return w + (float(alpha) / rank) * (lora_b.to(torch.float32) @ lora_a.to(torch.float32))


def _open_safetensors(path: Path):
    from safetensors import safe_open

    if not path.is_file():
        raise DepthError(f"DVD checkpoint not found: {path}")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        keys = list(handle.keys())
    except Exception as e:  # SafetensorError, OSError, ...: the library's message is the detail
        raise DepthError(
            f"DVD checkpoint {path} is not a readable safetensors file (truncated or corrupt download?): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    return handle, keys


def validate_dit_keys(keys: list[str], path: Path | str = "checkpoint") -> None:
    """Raise DepthError unless `keys` look like a DVD DiT checkpoint (prefixed, with LoRA tensors)."""
    dit_keys = [k for k in keys if k.startswith(DIT_PREFIX)]
    if not dit_keys:
        plain = {k.removeprefix("model.diffusion_model.") for k in keys}
        if any(m in plain for m in _WAN_DIT_MARKERS):
            raise DepthError(
                f"{path} is a base Wan2.1 DiT, not the DVD checkpoint: it has no 'pipe.dit.' tensors and no DVD LoRA "
                "adapters (download model.safetensors or dvd_1.1.safetensors from huggingface.co/FayeHongfeiZhang/DVD)"
            )
        raise DepthError(
            f"{path} is not a DVD checkpoint: none of its {len(keys)} tensors is named 'pipe.dit.*' "
            f"(first key: {keys[0] if keys else 'none'})"
        )
    n_lora_a = sum(k.endswith(LORA_A) for k in dit_keys)
    if n_lora_a == 0:
        raise DepthError(
            f"{path} holds a Wan DiT without the DVD LoRA adapters (no '*.lora_A.default.weight' tensors): "
            "use the released DVD checkpoint (model.safetensors or dvd_1.1.safetensors)"
        )
    names = set(dit_keys)
    for k in dit_keys:
        if k.endswith(LORA_A):
            stem = k[: -len(LORA_A)]
            for need in (stem + LORA_B, stem + BASE_W):
                if need not in names:
                    raise DepthError(f"{path} is incomplete: {k} has no matching {need.removeprefix(DIT_PREFIX)}")
        elif k.endswith(BASE_W):
            stem = k[: -len(BASE_W)]
            if stem + LORA_A not in names:
                raise DepthError(f"{path} is inconsistent: {k} has no lora_A tensor")
    if f"{DIT_PREFIX}patch_embedding.weight" not in names:
        raise DepthError(f"{path} is incomplete: it lacks pipe.dit.patch_embedding.weight")


def read_dvd_checkpoint(
    path: str | Path,
    config: DVDModelConfig,
    lora_alpha: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], LoraMergeInfo]:
    """Read, validate and LoRA-merge a DVD DiT checkpoint, streaming tensor by tensor.

    Returns the DiT state dict with plain Wan names (prefix stripped, LoRA merged; tensors cast to
    `dtype` on `device`) and a `LoraMergeInfo`. alpha: `lora_alpha`, else `config.lora_alpha`, else rank.
    """
    path = Path(path)
    handle, keys = _open_safetensors(path)
    validate_dit_keys(keys, path)
    info = LoraMergeInfo()
    out: dict[str, torch.Tensor] = {}
    try:
        for key in keys:
            if not key.startswith(DIT_PREFIX) or key.endswith((LORA_A, LORA_B)):
                continue
            name = key[len(DIT_PREFIX) :]
            tensor = handle.get_tensor(key)
            info.file_dtype = info.file_dtype or str(tensor.dtype).removeprefix("torch.")
            if key.endswith(BASE_W):
                stem = key[: -len(BASE_W)]
                lora_a, lora_b = handle.get_tensor(stem + LORA_A), handle.get_tensor(stem + LORA_B)
                rank = int(lora_a.shape[0])
                if not info.rank:
                    info.rank = rank
                    if config.lora_rank is not None and config.lora_rank != rank:
                        log.warning(
                            f"DVD config says LoRA rank {config.lora_rank}, checkpoint has rank {rank}; using {rank}"
                        )
                    alpha = lora_alpha if lora_alpha is not None else config.lora_alpha
                    info.alpha = float(alpha) if alpha is not None else float(rank)
                    info.factor = info.alpha / rank
                elif rank != info.rank:
                    raise DepthError(f"{path}: LoRA ranks differ between layers ({info.rank} and {rank} at {name})")
                tensor = merge_lora_weight(tensor, lora_a, lora_b, info.alpha)
                name = name[: -len(BASE_W)] + ".weight"
                info.merged_layers.append(name[: -len(".weight")])
            elif key.endswith(BASE_B):
                name = name[: -len(BASE_B)] + ".bias"
            if name in out:
                raise DepthError(f"{path}: tensor {name} appears twice (merged and plain)")
            out[name] = tensor.to(device=device, dtype=dtype)
            info.num_tensors += 1
    except DepthError:
        raise
    except Exception as e:  # a tensor whose bytes lie beyond the end of a truncated file
        raise DepthError(f"DVD checkpoint {path} could not be read (truncated or corrupt?): {e}") from None
    _check_dit_shapes(out, config, path)
    return out, info


def _check_dit_shapes(sd: dict[str, torch.Tensor], config: DVDModelConfig, path: Path) -> None:
    """Catch a checkpoint/config mismatch with a clear message before diffusers' strict load does."""
    d = config.dit
    expect = {
        "patch_embedding.weight": (d["dim"], d["in_dim"], *d["patch_size"]),
        "text_embedding.0.weight": (d["dim"], d["text_dim"]),
        "blocks.0.ffn.0.weight": (d["ffn_dim"], d["dim"]),
    }
    for name, shape in expect.items():
        got = tuple(sd[name].shape) if name in sd else None
        if got != tuple(shape):
            raise DepthError(
                f"DVD checkpoint {path} does not match the model config {config.source}: {name} has shape {got}, "
                f"config implies {tuple(shape)}"
            )
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if n_layers != d["num_layers"]:
        raise DepthError(
            f"DVD checkpoint {path} has {n_layers} DiT blocks, config {config.source} says {d['num_layers']}"
        )


def dit_to_diffusers(wan_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a plain (merged) Wan DiT state dict to `WanTransformer3DModel` names (diffusers' converter)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(wan_state))  # it pops from the dict it is given


# ---------------------------------------------------------------------------------------------- VAE

_RESIDUAL_RENAMES = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_FIXED_RENAMES = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
}
_MIDDLE = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}


def _rename_residual(suffix: str) -> str:
    """Residual-block inner name (`residual.2.weight`) -> diffusers (`conv1.weight`); others unchanged."""
    return _RESIDUAL_RENAMES.get(suffix, suffix)


def wan_vae_to_diffusers(state: dict[str, torch.Tensor], config: DVDModelConfig) -> dict[str, torch.Tensor]:
    """Rename an original Wan 2.1 VAE state dict to `AutoencoderKLWan` names, block indices from the config.

    Encoder `downsamples` is a flat list in both layouts (same indices). Decoder `upsamples` is flat in
    the original (per level: num_res_blocks + 1 residual blocks, then a resample except after the last
    level) and nested in diffusers (`up_blocks.L.resnets.J`, `up_blocks.L.upsamplers.0`).
    """
    per_level = config.vae["num_res_blocks"] + 2  # residual blocks + 1, plus the resample
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _FIXED_RENAMES:
            new = f"{_FIXED_RENAMES[module]}.{param}"
        elif m := re.fullmatch(r"(encoder|decoder)\.middle\.(\d)\.(.+)", key):
            part, idx, rest = m.groups()
            if idx not in _MIDDLE:
                raise DepthError(f"unexpected Wan VAE tensor {key}")
            new = f"{part}.{_MIDDLE[idx]}.{_rename_residual(rest) if idx != '1' else rest}"
        elif m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", key):
            idx, rest = m.groups()
            new = f"encoder.down_blocks.{idx}.{_rename_residual(rest)}"
        elif m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", key):
            idx, rest = int(m.group(1)), m.group(2)
            level, j = divmod(idx, per_level)
            if j < per_level - 1:
                new = f"decoder.up_blocks.{level}.resnets.{j}.{_rename_residual(rest)}"
            else:
                new = f"decoder.up_blocks.{level}.upsamplers.0.{rest}"
        else:
            raise DepthError(f"unexpected tensor {key} in the Wan VAE checkpoint (is this a Wan 2.1 VAE?)")
        out[new] = value
    return out


def is_diffusers_vae_state(state: dict[str, torch.Tensor]) -> bool:
    return "encoder.conv_in.weight" in state and "decoder.conv_out.weight" in state


def read_wan_vae(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Wan 2.1 VAE state dict from `.pth`/`.pt`/`.ckpt` (torch.save) or `.safetensors`.

    Returns the tensors with original Wan names, or diffusers names if the file already uses them.
    """
    path = Path(path)
    if not path.is_file():
        raise DepthError(f"Wan VAE weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only=True refused a pickled object: nothing of it ran
        lines = [ln for ln in str(e).splitlines() if "WeightsUnpickler error:" in ln]
        what = lines[0].split("error:", 1)[1].split(" was not an allowed")[0].strip()[:100] if lines else ""
        raise DepthError(
            f"Wan VAE file {path} holds more than tensors ({what or 'pickled Python objects'}); refusing to load it "
            "(weights are never unpickled)"
        ) from None
    except Exception as e:
        msg = (str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__)[:160]
        raise DepthError(f"Wan VAE file {path} could not be read (truncated or not a checkpoint?): {msg}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DepthError(f"Wan VAE file {path} does not hold a plain state dict of tensors")
    if any(k.startswith("model.") for k in state) and "model.encoder.conv1.weight" in state:
        state = {k.removeprefix("model."): v for k, v in state.items()}
    if not (("encoder.conv1.weight" in state and "decoder.head.2.weight" in state) or is_diffusers_vae_state(state)):
        first = next(iter(state), "none")
        raise DepthError(
            f"{path} is not a Wan 2.1 VAE checkpoint (no encoder.conv1 / decoder.head tensors; first key {first})"
        )
    return state


def check_vae_matches_config(state: dict[str, torch.Tensor], config: DVDModelConfig, path: Path | str) -> None:
    """Compare the VAE's base width and latent size with the config (clear error instead of a load traceback)."""
    key = "encoder.conv1.weight" if "encoder.conv1.weight" in state else "encoder.conv_in.weight"
    width = int(state[key].shape[0])
    if width != config.vae["dim"]:
        raise DepthError(f"Wan VAE {path} has base width {width}, config {config.source} says {config.vae['dim']}")
    key = "conv2.weight" if "conv2.weight" in state else "post_quant_conv.weight"
    if key in state and int(state[key].shape[0]) != config.vae["z_dim"]:
        raise DepthError(f"Wan VAE {path} has {state[key].shape[0]} latent channels, config says {config.vae['z_dim']}")
