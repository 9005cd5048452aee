"""DVD windows on Ray actors (recon.cluster.RayWindowRunner) give the sequential `global` result.

The tiny reference model of shared/fixtures/dvd-tiny on its 22-frame clip (4 windows of 9, overlap 4): the
plain sequential backend, then the same backend with `depth.dvd.workers=2` on a local Ray cluster (head on
127.0.0.2, inside a loopback-only network namespace: recon.cluster.LoopbackNamespace), each window computed by one
of two actors with its own model. Both run in one child process (Ray stays out of the test process).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recon.cluster import LoopbackNamespace, token_env

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT.parent / "shared" / "fixtures" / "dvd-tiny"

CHILD = r"""
import json, os, sys
from pathlib import Path

import numpy as np
import torch

from depth.dvd.backend import DVDBackend, DVDConfig
from depth.result import DepthFrames
from recon import cluster

torch.set_num_threads(1)
fix, out, temp = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
frames = np.load(fix / "video_in.npy")
names = [f"{i:06d}.png" for i in range(len(frames))]
cfg = DVDConfig(
    dvd_weights=fix / "dit.safetensors", vae_weights=fix / "vae.pth", dvd_config=fix / "config.json",
    allow_download=False, window=9, overlap=4, height=64, width=96, stitch="global", device="cpu", dtype="fp32",
    workers=2,
)
import time
t0 = time.perf_counter()
sequential = DVDBackend(cfg).estimate(DepthFrames(frames, names))
t1 = time.perf_counter()
with cluster.connect(node_ip="127.0.0.2", num_cpus=2, temp_dir=temp):
    t2 = time.perf_counter()
    with cluster.dvd_windows(cfg) as runner:
        spread = DVDBackend(cfg, window_runner=runner).estimate(DepthFrames(frames, names))
    t3 = time.perf_counter()
print(f"sequential {t1 - t0:.1f} s, cluster start {t2 - t1:.1f} s, on actors {t3 - t2:.1f} s", file=sys.stderr)
json.dump(
    {
        "max_abs": float(np.abs(spread.disparity - sequential.disparity).max()),
        "shape": list(spread.disparity.shape),
        "workers": [w["worker"] for w in spread.windows],
        "sequential_workers": [w["worker"] for w in sequential.windows],
        "spans": [[w["start"], w["end"]] for w in spread.windows],
        "driver": f"127.0.0.2:{os.getpid()}",
    },
    open(out, "w"),
)
"""


def test_dvd_windows_on_actors_equal_sequential_global(tmp_path):
    temp = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    out = tmp_path / "result.json"
    try:
        _run_child(out, temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    res = json.loads(out.read_text())
    print(res)
    assert res["shape"] == [22, 72, 100]
    assert res["spans"] == [[0, 9], [5, 14], [10, 19], [13, 22]]
    assert res["max_abs"] <= 1e-5
    assert res["sequential_workers"] == [None] * 4
    workers = res["workers"]
    assert all(w and w.startswith("127.0.0.2:") and w != res["driver"] for w in workers)  # every window on an actor
    assert len(set(workers)) == 2  # both actors took windows


def _run_child(out: Path, temp: str) -> None:
    """The child (CHILD) inside a loopback-only network namespace; its local cluster must be gone after."""
    with LoopbackNamespace() as net:
        cmd = [*net.wrap, sys.executable, "-c", CHILD, str(FIX), str(out), temp]
        proc = subprocess.run(cmd, cwd=ROOT, env=token_env(), capture_output=True, text=True, timeout=540)
        assert proc.returncode == 0, proc.stderr[-3000:]
        print(proc.stderr.strip().splitlines()[-1])  # the child's timings
        deadline = time.monotonic() + 30
        while any(not _gone(p) for p in net.pids()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(p) for p in net.pids())  # the local cluster stopped with its driver


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
