"""DVD regressor speed and memory at the REAL architecture size (Wan2.1-T2V-1.3B DiT + Wan 2.1 VAE).

Weights are random (the architecture comes from depth/dvd/configs/wan2.1_t2v_1.3b.json), so this
measures cost, not quality. Per window it reports the seconds spent in VAE encoding, the DiT pass and
VAE decoding, seconds per frame, and peak memory (CPU: peak process RSS above the loaded model, sampled
every 10 ms; CUDA: torch.cuda.max_memory_allocated during the window, and the weights' footprint).

  CPU (small):  .venv/bin/python benchmarks/dvd.py                    # 9 frames at 64x96, fp32
  CUDA (real):  .venv/bin/python benchmarks/dvd.py --cuda             # 81 frames at 480x640, bf16
  options:      --frames N --height H --width W --windows K --dtype fp32|bf16|fp16 --vae-tiling --threads N
  stitching:    .venv/bin/python benchmarks/dvd.py --stitch-only     # chain vs global on synthetic drift (no model)
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


class RssPeak:
    """Peak resident set size of this process while inside the `with` block (bytes), by polling."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> list[dict]:
    from depth.dvd import DEFAULT_CONFIG, DVDRegressor

    device = torch.device("cuda" if args.cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        args.dtype or ("bf16" if args.cuda else "fp32")
    ]
    t0 = time.perf_counter()
    reg = DVDRegressor.random(DEFAULT_CONFIG, device=device, dtype=dtype)
    if args.vae_tiling:
        reg.vae.enable_tiling()
    _sync(device)
    build_s = time.perf_counter() - t0
    n_dit = sum(p.numel() for p in reg.transformer.parameters())
    n_vae = sum(p.numel() for p in reg.vae.parameters())
    weights_bytes = sum(p.numel() * p.element_size() for m in (reg.transformer, reg.vae) for p in m.parameters())
    print(
        f"# DVD real-size architecture, random weights: DiT {n_dit / 1e9:.3f} B params, "
        f"VAE {n_vae / 1e6:.1f} M params, weights {weights_bytes / 2**30:.2f} GiB in "
        f"{str(dtype).removeprefix('torch.')} on {device}; built in {build_s:.1f}s; "
        f"torch threads {torch.get_num_threads()}"
    )
    rng = np.random.default_rng(0)
    frames = rng.random((args.frames, args.height, args.width, 3), dtype=np.float32)
    video = torch.from_numpy(frames * 2 - 1).permute(3, 0, 1, 2)[None]
    rows = []
    for k in range(args.windows):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with RssPeak() as rss:
            t = [time.perf_counter()]
            latent = reg.encode(video)
            _sync(device)
            t.append(time.perf_counter())
            depth_latent = reg.denoise(latent)
            _sync(device)
            t.append(time.perf_counter())
            out = reg.decode(depth_latent)
            _sync(device)
            t.append(time.perf_counter())
        assert out.shape == (1, args.frames, args.height, args.width) and torch.isfinite(out).all()
        total = t[3] - t[0]
        rows.append(
            dict(
                window=k,
                frames=args.frames,
                size=f"{args.height}x{args.width}",
                tokens=int(np.prod(latent.shape[2:])) // 4,
                encode_s=t[1] - t[0],
                dit_s=t[2] - t[1],
                decode_s=t[3] - t[2],
                total_s=total,
                s_per_frame=total / args.frames,
                peak_gib=(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak - rss.start)
                / 2**30,
            )
        )
        del latent, depth_latent, out
    return rows


def stitch_table() -> None:
    """Mean |stitched - truth| of chain vs global stitching on synthetic 60-frame clips (window 9, overlap 4).

    Window i outputs x_i = (D + noise - b_i) / s_i for a smooth true disparity D in [0.3, 0.9].
    """
    from depth.dvd.windows import plan_windows, stitch_chain, stitch_global

    T = 60
    spans = plan_windows(T, 9, 4)
    n = len(spans)
    drifts = {
        "none": (np.ones(n), np.zeros(n)),
        "scale x1.25/window": (0.8 ** -np.arange(n), -0.02 * np.arange(n)),
        "log-normal random walk": (
            np.exp(np.r_[0, np.random.default_rng(5).normal(0, 0.3, n - 1)].cumsum()),
            np.zeros(n),
        ),
    }
    print("| drift | noise | chain MAE | global MAE |")
    print("|---|---|---|---|")
    for name, (scales, shifts) in drifts.items():
        for noise in (0.0, 0.002, 0.01):
            rng = np.random.default_rng(0)
            t = np.linspace(0, 1, T)[:, None, None]
            D = (0.3 + 0.4 * rng.random((1, 48, 64)) + 0.2 * np.sin(6 * t)).astype(np.float32)
            wins = [
                ((D[a:b] + noise * rng.standard_normal(D[a:b].shape) - sh) / sc).astype(np.float32)
                for (a, b), sc, sh in zip(spans, scales, shifts)
            ]
            chain = np.abs(stitch_chain(wins, spans, T)[0] - D).mean()
            glob = np.abs(stitch_global(wins, spans, T)[0] - D).mean()
            print(f"| {name} | {noise} | {chain:.5f} | {glob:.5f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="real setting on a GPU: 81 frames at 480x640, bf16")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--windows", type=int, default=2, help="windows to time (the first includes warm-up)")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None)
    ap.add_argument("--vae-tiling", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0 = torch default)")
    ap.add_argument("--stitch-only", action="store_true", help="only the chain-vs-global stitching table")
    args = ap.parse_args()
    if args.stitch_only:
        stitch_table()
        return
    if args.cuda and not torch.cuda.is_available():
        sys.exit("--cuda: no CUDA device available")
    args.frames = args.frames or (81 if args.cuda else 9)
    args.height = args.height or (480 if args.cuda else 64)
    args.width = args.width or (640 if args.cuda else 96)
    if args.frames % 4 != 1 or args.height % 16 or args.width % 16:
        sys.exit("need frames = 4n+1 and height, width multiples of 16")
    rows = run(args)
    peak_label = "peak GiB (cuda alloc)" if args.cuda else "peak GiB (RSS above model)"
    header = [
        "window",
        "frames",
        "size",
        "DiT tokens",
        "encode s",
        "DiT s",
        "decode s",
        "total s",
        "s/frame",
        peak_label,
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(
            f"| {r['window']} | {r['frames']} | {r['size']} | {r['tokens']} | {r['encode_s']:.2f} | {r['dit_s']:.2f} | "
            f"{r['decode_s']:.2f} | {r['total_s']:.2f} | {r['s_per_frame']:.3f} | {r['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
