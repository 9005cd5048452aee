"""`recon depth --backend dvd` end to end on real frames with the tiny reference model (dvd-tiny fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch

from depth.dvd import DVDRegressor
from recon.artifacts import CameraSet, Split, read_rgb_stack

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIX = SHARED / "fixtures" / "dvd-tiny"
VIDEO = SHARED / "data" / "7scenes_redkitchen_rgbd" / "video_30fps.mp4"


def test_recon_depth_dvd_backend_on_tiny_model(tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "recon.cli",
        "depth",
        str(VIDEO),
        "--out",
        str(run),
        "--max-frames",
        "30",
        "--max-size",
        "240",
        "--backend",
        "dvd",
        "--dvd-weights",
        str(FIX / "dit.safetensors"),
        "--vae-weights",
        str(FIX / "vae.pth"),
        "--dvd-config",
        str(FIX / "config.json"),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--set",
        "depth.dvd.window=9",
        "depth.dvd.overlap=4",
        "depth.dvd.height=64",
        "depth.dvd.width=96",
        "depth.dvd.allow_download=false",
    ]
    r = subprocess.run(
        args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900
    )
    assert r.returncode == 0, r.stderr[-2000:]

    cams = CameraSet.load(run / "cameras.json")
    split = Split.load(run / "split.json")
    d = np.load(run / "depth" / "disparity.npz")
    assert str(d["backend"]) == "dvd" and str(d["kind"]) == "relative_disparity"
    prior = split.prior
    assert d["computed"].nonzero()[0].tolist() == prior  # test views are held out of the prior
    # The stage's output is exactly the regressor's prediction on the prior frames (global stitching).
    reg = DVDRegressor.from_checkpoints(
        dit=FIX / "dit.safetensors", vae=FIX / "vae.pth", config=FIX / "config.json", device="cpu", dtype=torch.float32
    )
    frames = read_rgb_stack(run, [cams.files[i] for i in prior])
    expect = reg.predict(frames, height=64, width=96, window=9, overlap=4, stitch="global")
    assert np.abs(d["disparity"][prior] - expect).max() < 1e-4
    windows = json.loads((run / "depth" / "windows.json").read_text())
    assert len(windows["windows"]) >= 2 and all("scale" in w for w in windows["windows"][1:])
    with av.open(str(run / "depth" / "depth.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == len(prior)
