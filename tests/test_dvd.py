"""DVD regressor: parity with the official code on the dvd-tiny fixture, LoRA merge, checkpoint
validation, VAE key conversion, weight resolution (never touching the hub) and the DVD backend."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from depth.errors import DepthError

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "dvd-tiny"
DIT, VAE, CONFIG = FIX / "dit.safetensors", FIX / "vae.pth", FIX / "config.json"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The CI machine has 2 shared cores; one intra-op thread is several times faster there for these
    tiny models (no spin-waiting between threads). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reg():
    from depth.dvd import DVDRegressor

    return DVDRegressor.from_checkpoints(dit=DIT, vae=VAE, config=CONFIG, device="cpu", dtype=torch.float32)


# ----------------------------------------------------------------------------------- parity


def test_predict_window_parity_and_latents(reg):
    frames = np.load(FIX / "window_in.npy")
    video = torch.from_numpy(frames * 2 - 1).permute(3, 0, 1, 2)[None]
    latent = reg.encode(video)
    assert np.abs(latent[0].numpy() - np.load(FIX / "window_latent_in.npy")).max() <= 1e-4
    depth_latent = reg.denoise(latent)
    assert np.abs(depth_latent[0].numpy() - np.load(FIX / "window_latent_out.npy")).max() <= 1e-4
    out = reg.predict_window(frames)
    assert out.dtype == np.float32 and out.shape == (9, 64, 96)
    assert np.abs(out - np.load(FIX / "window_out.npy")).max() <= 1e-4


@pytest.mark.parametrize("name", ["video", "video_short"])
def test_predict_parity_and_window_report(reg, name):
    frames = np.load(FIX / f"{name}_in.npy")
    expected = np.load(FIX / f"{name}_out.npy")
    out, report = reg.predict_with_report(frames, height=64, width=96, window=9, overlap=4, stitch="chain")
    assert out.shape == expected.shape and out.dtype == np.float32
    assert np.abs(out - expected).max() <= 1e-3
    ref = json.loads((FIX / "video_windows.json").read_text())[name]
    assert report["processing_size"] == ref["processing_size"]
    assert len(report["windows"]) == len(ref["windows"])
    for got, want in zip(report["windows"], ref["windows"]):
        for key in ("start", "end", "frames_in", "frames_after_pad", "overlap_with_previous"):
            assert got[key] == want[key], key
        if want["scale_raw"] is None:
            assert got["scale_raw"] is None
            continue
        assert got["scale_raw"] == pytest.approx(want["scale_raw"], abs=1e-4)
        assert got["scale"] == pytest.approx(want["scale_clipped"], abs=1e-4)
        assert got["shift"] == pytest.approx(want["shift"], abs=1e-4)
        assert got["residual_after"] < got["residual_before"]


def test_predict_window_rejects_bad_shapes(reg):
    with pytest.raises(DepthError, match="4n\\+1"):
        reg.predict_window(np.zeros((8, 64, 96, 3), np.float32))
    with pytest.raises(DepthError, match="multiples of 16"):
        reg.predict_window(np.zeros((9, 60, 96, 3), np.float32))
    with pytest.raises(DepthError, match="uint8"):
        reg.predict(np.zeros((3, 64, 96, 3), np.float32), height=64, width=96, window=9, overlap=4)


# ----------------------------------------------------------------------------------- LoRA


def test_lora_merge_matches_formula():
    from safetensors.torch import load_file

    from depth.dvd.config import DVDModelConfig
    from depth.dvd.convert import read_dvd_checkpoint

    cfg = DVDModelConfig.from_json(CONFIG)
    raw = load_file(str(DIT))
    merged, info = read_dvd_checkpoint(DIT, cfg)
    assert (info.rank, info.alpha, info.factor, len(info.merged_layers)) == (4, 4.0, 1.0, 20)
    stem = "pipe.dit.blocks.1.ffn.2"
    W, A, B = (raw[f"{stem}.{s}"] for s in ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight"))
    assert torch.allclose(merged["blocks.1.ffn.2.weight"], W + B @ A * (4 / 4), atol=1e-6)
    assert torch.equal(merged["blocks.1.ffn.2.bias"], raw[f"{stem}.base_layer.bias"])
    assert not torch.allclose(merged["blocks.1.ffn.2.weight"], W, atol=1e-3)  # B is non-zero: merge matters
    assert not any("lora" in k or "base_layer" in k for k in merged)
    # alpha override: factor alpha / rank = 2 doubles the update
    merged2, info2 = read_dvd_checkpoint(DIT, cfg, lora_alpha=8.0)
    assert info2.factor == 2.0
    assert torch.allclose(merged2["blocks.1.ffn.2.weight"], W + 2 * (B @ A), atol=1e-6)
    # the unprefixed plain Wan names are exactly what diffusers' converter expects
    from depth.dvd.convert import dit_to_diffusers

    assert "condition_embedder.time_proj.weight" in dit_to_diffusers(merged)


def test_ignoring_lora_breaks_parity():
    from depth.dvd import DVDRegressor

    base = DVDRegressor.from_checkpoints(
        dit=DIT, vae=VAE, config=CONFIG, device="cpu", dtype=torch.float32, lora_alpha=0.0
    )
    err = np.abs(base.predict_window(np.load(FIX / "window_in.npy")) - np.load(FIX / "window_out.npy")).max()
    assert err > 0.1  # README sensitivity table: LoRA ignored moves window_out by 0.43


def test_vae_from_diffusers_folder(reg, tmp_path):
    """The VAE may also come as a diffusers-format folder (AutoencoderKLWan.from_pretrained on a local dir)."""
    from depth.dvd import DVDRegressor

    reg.vae.save_pretrained(tmp_path / "vae")
    other = DVDRegressor.from_checkpoints(
        dit=DIT, vae=tmp_path / "vae", config=CONFIG, device="cpu", dtype=torch.float32
    )
    out = other.predict_window(np.load(FIX / "window_in.npy"))
    assert np.abs(out - np.load(FIX / "window_out.npy")).max() <= 1e-4


def test_reduced_precision_runs_close_to_fp32():
    """bf16 (the CUDA default) loads and runs; the DiT pass stays at precision-level distance from fp32."""
    from depth.dvd import DVDRegressor

    reg16 = DVDRegressor.from_checkpoints(dit=DIT, vae=VAE, config=CONFIG, device="cpu", dtype="bf16")
    assert next(reg16.transformer.parameters()).dtype == torch.bfloat16
    assert next(reg16.vae.parameters()).dtype == torch.bfloat16
    out = reg16.denoise(torch.from_numpy(np.load(FIX / "window_latent_in.npy"))[None])[0].numpy()
    err = np.abs(out - np.load(FIX / "window_latent_out.npy"))
    assert out.dtype == np.float32 and err.max() < 0.1 and err.mean() < 0.02  # measured 0.030 / 0.0055


# ----------------------------------------------------------------------------------- validation


def _write_variant(tmp_path: Path, kind: str) -> Path:
    from safetensors.torch import load_file, save_file

    raw = load_file(str(DIT))
    path = tmp_path / f"{kind}.safetensors"
    if kind == "base_prefixed":  # a Wan DiT in DVD layout but without the adapters
        save_file({k.replace(".base_layer", ""): v for k, v in raw.items() if "lora_" not in k}, str(path))
    elif kind == "base_wan":  # the base Wan2.1 DiT as released (no prefix, no LoRA)
        save_file(
            {k.replace(".base_layer", "").removeprefix("pipe.dit."): v for k, v in raw.items() if "lora_" not in k},
            str(path),
        )
    elif kind == "unrelated":
        save_file({"model.embed.weight": torch.zeros(4, 4), "model.head.bias": torch.zeros(4)}, str(path))
    elif kind == "truncated":
        data = DIT.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("base_prefixed", "without the DVD LoRA adapters"),
        ("base_wan", "base Wan2.1 DiT, not the DVD checkpoint"),
        ("unrelated", "not a DVD checkpoint: none of its 2 tensors"),
        ("truncated", "not a readable safetensors file \\(truncated"),
    ],
)
def test_checkpoint_validation_errors(tmp_path, kind, message):
    from depth.dvd.config import DVDModelConfig
    from depth.dvd.convert import read_dvd_checkpoint

    with pytest.raises(DepthError, match=message):
        read_dvd_checkpoint(_write_variant(tmp_path, kind), DVDModelConfig.from_json(CONFIG))


def test_checkpoint_config_mismatch_and_bad_vae(tmp_path):
    from depth.dvd import DVDRegressor
    from depth.dvd.config import DVDModelConfig
    from depth.dvd.convert import read_dvd_checkpoint, read_wan_vae

    with pytest.raises(DepthError, match="does not match the model config"):
        read_dvd_checkpoint(DIT, DVDModelConfig.from_json(None))  # tiny checkpoint, real 1.3B config
    trunc = tmp_path / "vae.pth"
    trunc.write_bytes(VAE.read_bytes()[:50_000])
    with pytest.raises(DepthError, match="could not be read"):
        read_wan_vae(trunc)
    with pytest.raises(DepthError, match="not a Wan 2.1 VAE"):
        read_wan_vae(_write_variant(tmp_path, "unrelated"))
    with pytest.raises(DepthError, match="not found"):
        DVDRegressor.from_checkpoints(dit=tmp_path / "missing.safetensors", vae=VAE, config=CONFIG)


# ----------------------------------------------------------------------------------- VAE conversion


def _original_vae_keys(cfg) -> list[str]:
    """Tensor names of the original Wan 2.1 VAE module for a config (layout as in the fixture README)."""
    dim, mult, nrb = cfg.vae["dim"], cfg.vae["dim_mult"], cfg.vae["num_res_blocks"]
    tdown = cfg.vae["temperal_downsample"]

    def res(prefix, cin, cout):
        keys = [f"{prefix}.residual.0.gamma", f"{prefix}.residual.3.gamma"]
        keys += [f"{prefix}.residual.{i}.{p}" for i in (2, 6) for p in ("weight", "bias")]
        return keys + ([f"{prefix}.shortcut.weight", f"{prefix}.shortcut.bias"] if cin != cout else [])

    def resample(prefix, temporal):
        keys = [f"{prefix}.resample.1.weight", f"{prefix}.resample.1.bias"]
        return keys + ([f"{prefix}.time_conv.weight", f"{prefix}.time_conv.bias"] if temporal else [])

    def middle(part, d):
        attn = [f"{part}.middle.1.norm.gamma"] + [
            f"{part}.middle.1.{n}.{p}" for n in ("to_qkv", "proj") for p in ("weight", "bias")
        ]
        return res(f"{part}.middle.0", d, d) + attn + res(f"{part}.middle.2", d, d)

    keys = [
        f"{n}.{p}"
        for n in ("conv1", "conv2", "encoder.conv1", "encoder.head.2", "decoder.conv1", "decoder.head.2")
        for p in ("weight", "bias")
    ]
    keys += ["encoder.head.0.gamma", "decoder.head.0.gamma"]
    dims = [dim * m for m in [1] + list(mult)]
    idx = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(nrb):
            keys += res(f"encoder.downsamples.{idx}", cin, cout)
            cin, idx = cout, idx + 1
        if i != len(mult) - 1:
            keys += resample(f"encoder.downsamples.{idx}", tdown[i])
            idx += 1
    keys += middle("encoder", dims[-1]) + middle("decoder", dim * mult[-1])
    ddims = [dim * m for m in [mult[-1]] + list(mult)[::-1]]
    idx = 0
    for i, (cin, cout) in enumerate(zip(ddims[:-1], ddims[1:])):
        cin = cin // 2 if i > 0 else cin
        for _ in range(nrb + 1):
            keys += res(f"decoder.upsamples.{idx}", cin, cout)
            cin, idx = cout, idx + 1
        if i != len(mult) - 1:
            keys += resample(f"decoder.upsamples.{idx}", tdown[::-1][i])
            idx += 1
    return keys


@pytest.mark.parametrize("config", [CONFIG, None], ids=["tiny", "wan2.1-real"])
def test_vae_converter_matches_diffusers(config):
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from depth.dvd.config import DVDModelConfig
    from depth.dvd.convert import wan_vae_to_diffusers

    cfg = DVDModelConfig.from_json(config)
    keys = _original_vae_keys(cfg)
    if config is not None:  # the key generator agrees with the real fixture checkpoint
        assert sorted(keys) == sorted(torch.load(VAE, map_location="cpu", weights_only=True))
    fake = {k: torch.tensor([float(i)]) for i, k in enumerate(keys)}  # values identify the source key
    ours = wan_vae_to_diffusers(fake, cfg)
    with torch.device("meta"):
        model_keys = set(AutoencoderKLWan(**cfg.vae_kwargs()).state_dict())
    assert set(ours) == model_keys
    if cfg.vae["num_res_blocks"] == 2:  # diffusers' own converter (hard-coded for 2) must agree
        theirs = convert_wan_vae_to_diffusers(fake)
        assert {k: v.item() for k, v in theirs.items()} == {k: v.item() for k, v in ours.items()}


def test_shipped_real_config():
    from depth.dvd.config import DEFAULT_CONFIG, DVDModelConfig

    cfg = DVDModelConfig.from_json(DEFAULT_CONFIG)
    kw = cfg.transformer_kwargs()
    assert (kw["num_layers"], kw["num_attention_heads"], kw["attention_head_dim"], kw["ffn_dim"]) == (30, 12, 128, 8960)
    assert cfg.timestep == 500.0 and cfg.lora_rank == 512 and cfg.vae["num_res_blocks"] == 2
    tiny = json.loads(CONFIG.read_text())
    assert list(cfg.latent_mean) == tiny["vae_latent_mean"] and list(cfg.latent_std) == tiny["vae_latent_std"]


# ----------------------------------------------------------------------------------- weights


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to download fails as it would offline; records the attempts."""
    from depth.dvd import weights

    calls = []

    def fake_download(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")

    monkeypatch.setattr(weights, "_hub_download", fake_download)
    monkeypatch.setattr(weights, "_hub_offline", lambda: False)
    monkeypatch.delenv("DVD_SPLAT_CACHE", raising=False)
    return calls


def test_weights_offline_gives_one_clear_message(tmp_path, no_hub):
    from depth.dvd.backend import DVDConfig
    from depth.dvd.weights import dvd_weights_available, resolve_weights

    cache = tmp_path / "cache"
    with pytest.raises(DepthError) as e:
        resolve_weights(cache_dir=cache)
    msg = str(e.value)
    assert "\n" not in msg
    for needle in (
        "model.safetensors",
        "Wan2.1_VAE.pth",
        "CC-BY-NC-4.0",
        str(cache),
        "FayeHongfeiZhang/DVD",
        "download failed",
    ):
        assert needle in msg, needle
    assert re.search(r"~[\d.]+(-\d+)? GB", msg)
    assert no_hub == [("FayeHongfeiZhang/DVD", "model.safetensors")]
    with pytest.raises(DepthError, match="downloads are disabled"):
        resolve_weights(cache_dir=cache, allow_download=False)
    from depth.dvd import weights

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weights, "_hub_offline", lambda: True)
        with pytest.raises(DepthError, match="HF_HUB_OFFLINE is set.*CC-BY-NC-4.0"):
            resolve_weights(cache_dir=cache)
    ok, reason = dvd_weights_available(DVDConfig(cache_dir=cache))
    assert not ok and "not found" in reason
    assert len(no_hub) == 1  # the availability check never downloads


def test_weights_found_in_cache_and_explicit(tmp_path, no_hub, monkeypatch):
    from depth.dvd.backend import DVDConfig
    from depth.dvd.weights import dvd_weights_available, resolve_weights

    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(DIT, cache / "model.safetensors")
    shutil.copy(VAE, cache / "Wan2.1_VAE.pth")
    monkeypatch.setenv("DVD_SPLAT_CACHE", str(cache))
    paths = resolve_weights()
    assert (paths.dit, paths.vae) == (cache / "model.safetensors", cache / "Wan2.1_VAE.pth")
    assert dvd_weights_available(DVDConfig()) == (True, f"DVD weights found: {paths.dit}, {paths.vae}")
    assert resolve_weights(dvd_weights=DIT, vae_weights=VAE, cache_dir=tmp_path / "empty").dit == DIT
    folder = resolve_weights(
        dvd_weights=cache, vae_weights=cache, cache_dir=tmp_path / "empty"
    )  # official ckpt/ layout
    assert (folder.dit, folder.vae) == (cache / "model.safetensors", cache / "Wan2.1_VAE.pth")
    with pytest.raises(DepthError, match="--dvd-weights .* does not exist"):
        resolve_weights(dvd_weights=tmp_path / "nope.safetensors")
    assert no_hub == []


# ----------------------------------------------------------------------------------- backend


def test_dvd_backend_on_frames(tmp_path, no_hub):
    from depth.dvd.backend import DVDBackend, DVDConfig
    from depth.result import DepthFrames

    frames = np.load(FIX / "video_short_in.npy")
    names = [f"{i:06d}.png" for i in range(len(frames))]
    cfg = DVDConfig(
        dvd_weights=DIT,
        vae_weights=VAE,
        dvd_config=CONFIG,
        cache_dir=tmp_path / "cache",
        allow_download=False,
        window=9,
        overlap=4,
        height=64,
        width=96,
        stitch="chain",
        device="cpu",
        dtype="fp32",
    )
    steps = []
    result = DVDBackend(cfg).estimate(DepthFrames(frames, names), progress=lambda d, t: steps.append((d, t)))
    disparity, report = result.disparity, result.report
    assert disparity.shape == frames.shape[:3] and disparity.dtype == np.float32
    assert np.abs(disparity - np.load(FIX / "video_short_out.npy")).max() <= 1e-3
    assert result.kind == "relative_disparity" and result.backend == "dvd" and result.windows == report["windows"]
    assert report["backend"] == "dvd" and report["processing_size"] == [64, 112]
    assert report["lora"]["rank"] == 4 and report["windows"][0]["frames_after_pad"] == 9
    assert steps[-1][0] == steps[-1][1] == len(report["windows"])
    json.dumps(report)  # the stage writes it to windows.json as is
    with pytest.raises(DepthError, match="stitch"):
        DVDBackend(DVDConfig(dvd_weights=DIT, vae_weights=VAE, stitch="median")).estimate(DepthFrames(frames, names))
    # Frames of different sizes cannot even be put together (the stage reads them: tests/test_depth_stage.py).
    with pytest.raises(DepthError, match="uint8"):
        DepthFrames(frames.astype(np.float32), names)
