"""`recon batch` throughput and Ray's overhead, on a local loopback cluster (recon.batch, recon.cluster).

  .venv/bin/python benchmarks/batch.py                 # 4 small scenes with 1 and 2 workers + overhead
  .venv/bin/python benchmarks/batch.py --scenes 6      # more scenes (the two smallest real clips, repeated)
  .venv/bin/python benchmarks/batch.py --iterations 300  # CPU-bound scenes (training dominates)
  .venv/bin/python benchmarks/batch.py --iterations 300 --rounds 3 --plain  # + the machine's own 2-process ceiling
  .venv/bin/python benchmarks/batch.py --dvd           # DVD windows per second: plain path vs Ray actors
                                                       # (tiny reference model; --device cuda on a GPU)

Scenes: shared/data/real_videos cotracker_cat / cotracker_apple with the cpu preset cut to a small scene
(8 frames at 160 px, stereo depth, 20 training iterations). Workers: the local cluster's CPUs
(`--num-cpus 1` / `2`), one CPU and one torch thread per scene task (`--cpus-per-scene 1`).
Every Ray process runs inside a loopback-only network namespace when root (recon.cluster.LoopbackNamespace),
on 127.0.0.2.

Figures:
- scenes/hour: scenes / (time from the cluster being up, DIR/batch.json first written just before the
  tasks are submitted, to the last scene's `finished` time in batch.json).
- overhead per scene task (1 worker): (that time - sum of the scenes' own seconds, measured inside the
  tasks) / scenes: scheduling, worker start-up, imports, result passing; and as % of a scene's seconds.
- empty task round trip: `ray.get(f.remote())` of a no-op task on a warm worker (median of 50).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.cluster import LoopbackNamespace, token_env  # noqa: E402

VIDEOS = ROOT.parent / "shared" / "data" / "real_videos"
CLIPS = [VIDEOS / "cotracker_cat.mp4", VIDEOS / "cotracker_apple.mp4"]


def scene_options(iterations: int) -> list[str]:
    """recon batch options of one small scene: 8 frames at 160 px, stereo depth, training at 96 px."""
    opts = ["--preset", "cpu", "--max-frames", "8", "--max-size", "160", "--iterations", str(iterations)]
    opts += ["--backend", "stereo", "--set", "train.video_frames=0", "depth.preview=false", "train.max_size=96"]
    return [*opts, "-q"]


LOAD = [0.0]
RAY_TEMPS: list[str] = []


def _ray_temp() -> str:
    """A short folder for a cluster's session files (Ray's socket paths must stay < 108 chars)."""
    RAY_TEMPS.append(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    return RAY_TEMPS[-1]


NOOP = r"""
import statistics, sys, time
import ray
from recon import cluster
with cluster.connect(node_ip="127.0.0.2", num_cpus=1, temp_dir=sys.argv[1]):
    f = ray.remote(num_cpus=1)(lambda: None)
    t0 = time.perf_counter(); ray.get(f.remote()); cold = time.perf_counter() - t0
    times = []
    for _ in range(50):
        t0 = time.perf_counter(); ray.get(f.remote()); times.append(time.perf_counter() - t0)
    print(f"{cold} {statistics.median(times)}")
"""


def run_batch(net: LoopbackNamespace, workers: int, scenes: int, work: Path, iterations: int) -> dict:
    """One `recon batch` of `scenes` small scenes on a local cluster of `workers` CPUs."""
    out = work / f"out-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    inputs = [str(CLIPS[i % len(CLIPS)]) for i in range(scenes)]
    cmd = [*net.wrap, sys.executable, "-m", "recon.cli", "batch", *inputs, "--out", str(out)]
    cmd += ["--num-cpus", str(workers), "--cpus-per-scene", "1", "--node-ip-address", "127.0.0.2"]
    cmd += ["--temp-dir", _ray_temp(), *scene_options(iterations)]
    t0, t0_wall = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=token_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ready_wall = None
    while proc.poll() is None:
        if ready_wall is None and (out / "batch.json").exists():
            ready_wall = time.time()
        time.sleep(0.05)
    end = time.perf_counter()
    if proc.returncode != 0:
        raise SystemExit(f"recon batch failed: {proc.communicate()[1].decode()[-2000:]}")
    records = json.loads((out / "batch.json").read_text())["scenes"]
    seconds = [r["seconds"] for r in records.values()]
    last = max(datetime.fromisoformat(r["finished"]).timestamp() for r in records.values())
    begin = ready_wall or t0_wall
    timeline = [
        (name, datetime.fromisoformat(r["started"]).timestamp() - begin, r["seconds"]) for name, r in records.items()
    ]
    return {"workers": workers, "wall": end - t0, "phase": last - begin, "scene_seconds": seconds, "timeline": timeline}


def batch_table(results: list[dict]) -> None:
    print(f"\nload average before: {LOAD[0]:.1f}, after: {os.getloadavg()[0]:.1f} (other work on this machine)")
    base = results[0]["phase"]
    print("\n| workers | scenes | wall s (with cluster start) | scene phase s | scenes/hour | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in results:
        n = len(r["scene_seconds"])
        print(
            f"| {r['workers']} | {n} | {r['wall']:.1f} | {r['phase']:.1f} | {n / r['phase'] * 3600:.0f} "
            f"| {base / r['phase']:.2f}x |"
        )
    for r in results:
        print(f"\n{r['workers']} worker(s), scenes by start (s from the batch start: start + seconds inside the task):")
        print("  " + ", ".join(f"{n} {t:.1f}+{s:.1f}" for n, t, s in sorted(r["timeline"], key=lambda x: x[1])))
        print(f"  sum of the scenes' seconds {sum(r['scene_seconds']):.1f}")
    one = results[0]
    n, mean = len(one["scene_seconds"]), statistics.mean(one["scene_seconds"])
    overhead = (one["phase"] - sum(one["scene_seconds"])) / n
    print(f"\nmean scene time inside its task (1 worker): {mean:.2f} s")
    print(f"Ray overhead per scene task (1 worker): {overhead:.2f} s = {100 * overhead / mean:.1f} % of a scene")


def plain_pair(scenes: int, work: Path, iterations: int) -> float:
    """The machine's own ceiling for two scenes at once, without Ray: `scenes` plain `recon run` processes (one
    torch thread each, the batch's scene options) one after another, then two at a time; returns the speed-up."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(i: int) -> subprocess.Popen:
        out = work / f"plain-{i}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "recon.cli", "run", str(CLIPS[i % len(CLIPS)]), "--out", str(out)]
        return subprocess.Popen([*cmd, *scene_options(iterations)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)

    def finish(procs: list[subprocess.Popen]) -> None:
        codes = [proc.wait() for proc in procs]  # every run waited for; a failed one makes no ceiling
        failed = [proc for proc, code in zip(procs, codes) if code]
        if failed:
            raise SystemExit(f"plain recon run failed: {failed[0].args!s}")

    t0 = time.perf_counter()
    for i in range(scenes):
        finish([run(i)])
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, scenes, 2):
        finish([run(i), run(i + 1)] if i + 1 < scenes else [run(i)])
    return one / (time.perf_counter() - t0)


def rounds_table(rounds: list[tuple[dict, dict, float | None]]) -> None:
    """Speed-up of every round (1 and 2 workers run back to back, so they share the machine's mood)."""
    print("\n| round | 1 worker: scene phase s | 2 workers: scene phase s | speed-up | plain processes, 2 at a time |")
    print("|---|---|---|---|---|")
    for k, (one, two, plain) in enumerate(rounds, 1):
        ceiling = f"{plain:.2f}x" if plain is not None else "-"
        print(f"| {k} | {one['phase']:.1f} | {two['phase']:.1f} | {one['phase'] / two['phase']:.2f}x | {ceiling} |")
    ups = [one["phase"] / two["phase"] for one, two, _ in rounds]
    print(f"median speed-up with 2 workers: {statistics.median(ups):.2f}x over {len(ups)} round(s)")


def noop_overhead(net: LoopbackNamespace, work: Path) -> None:
    cmd = [*net.wrap, sys.executable, "-c", NOOP, _ray_temp()]
    out = subprocess.run(cmd, cwd=ROOT, env=token_env(), capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    cold, warm = (float(v) for v in out.stdout.split()[-2:])
    print(f"empty Ray task round trip: first (worker start) {cold * 1000:.0f} ms, warm median {warm * 1000:.1f} ms")


DVD = r"""
import sys, time
from pathlib import Path
import numpy as np, torch
from depth.dvd.backend import DVDBackend, DVDConfig
from depth.result import DepthFrames
from recon import cluster
fix, device, temp = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
frames = np.concatenate([np.load(fix / "video_in.npy")] * 4)
names = [f"{i:06d}.png" for i in range(len(frames))]
cfg = DVDConfig(dvd_weights=fix / "dit.safetensors", vae_weights=fix / "vae.pth", dvd_config=fix / "config.json",
                allow_download=False, window=9, overlap=4, height=64, width=96, stitch="global", device=device,
                dtype="fp32", workers=1)
DVDBackend(cfg).estimate(DepthFrames(frames[:9], names[:9]))  # load + warm up
t0 = time.perf_counter()
plain = DVDBackend(cfg).estimate(DepthFrames(frames, names))
t_plain = time.perf_counter() - t0
with cluster.connect(node_ip="127.0.0.2", num_cpus=1, temp_dir=temp):
    runner = cluster.RayWindowRunner(cfg, workers=1, local=False)
    backend = DVDBackend(cfg, window_runner=runner)
    backend.estimate(DepthFrames(frames[:9], names[:9]))  # actor start + model load, as in a long clip's first window
    t0 = time.perf_counter(); spread = backend.estimate(DepthFrames(frames, names)); t_actor = time.perf_counter() - t0
n = len(plain.windows)
print(n, t_plain, t_actor, float(np.abs(plain.disparity - spread.disparity).max()))
"""


def dvd_table(net: LoopbackNamespace, work: Path, device: str) -> None:
    fix = ROOT.parent / "shared" / "fixtures" / "dvd-tiny"
    cmd = [*net.wrap, sys.executable, "-c", DVD, str(fix), device, _ray_temp()]
    out = subprocess.run(cmd, cwd=ROOT, env=token_env(), capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    fields = out.stdout.split()[-4:]
    n, (t_plain, t_actor, diff) = int(fields[0]), (float(v) for v in fields[1:])
    print(f"\nDVD windows (tiny reference model, {device}, {n} windows of 9 frames at 64x112, one worker):")
    print("| path | seconds | windows/s |\n|---|---|---|")
    print(f"| plain (in process) | {t_plain:.2f} | {n / t_plain:.2f} |")
    print(f"| Ray actor | {t_actor:.2f} | {n / t_actor:.2f} |")
    print(f"max |actor - plain| = {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=20, help="training steps per scene (more: more CPU-bound)")
    ap.add_argument("--dvd", action="store_true", help="DVD windows per second: plain path vs one Ray actor")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=1, help="repeat 1 and 2 workers back to back (the VM's speed drifts)")
    ap.add_argument("--plain", action="store_true", help="each round also: the scenes as plain processes, 2 at once")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recon-batch-bench-"))
    LOAD[0] = os.getloadavg()[0]
    try:
        with LoopbackNamespace() as net:
            if args.dvd:
                dvd_table(net, work, args.device)
            else:
                print(f"scenes: {' '.join(scene_options(args.iterations))}")
                rounds = []
                for _ in range(args.rounds):
                    one, two = (run_batch(net, w, args.scenes, work, args.iterations) for w in (1, 2))
                    plain = plain_pair(args.scenes, work, args.iterations) if args.plain else None
                    rounds.append((one, two, plain))
                batch_table([one, two])
                if args.rounds > 1 or args.plain:
                    rounds_table(rounds)
                noop_overhead(net, work)
    finally:
        for path in [str(work), *RAY_TEMPS]:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
