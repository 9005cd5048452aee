"""Depth stage (recon.stages.depth): backend choice, disparity.npz / windows.json / depth.mp4, preview video."""

from __future__ import annotations

import json

import numpy as np
import pytest

import depth.backend as backend
from depth.errors import DepthError
from depth.file import FileDepthConfig
from depth.preview import colorize
from depth.result import DepthResult
from depth.stereo import StereoBackend, StereoConfig
from recon.artifacts import CameraSet, RunPaths, Split
from recon.errors import ReconError
from recon.stages import StageContext
from recon.stages.depth import Config as DepthConfig
from recon.stages.depth import run, write_depth_video


def run_depth(paths: RunPaths, cfg: DepthConfig) -> dict:
    return run(StageContext(paths), cfg)


def select_backend(cfg: DepthConfig) -> tuple[str, str]:
    return backend.select_backend(cfg.backend, cfg.dvd)


def _video_frames(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _small_prior(paths, n: int, start: int = 10) -> list[int]:
    """Keep n consecutive training views as the prior (keeps the stereo run short)."""
    split = Split.load(paths.split_json)
    prior = split.train[start : start + n]
    Split(train=prior, test=split.test, prior=prior, protocol=split.protocol).save(paths.split_json)
    return prior


def test_auto_backend_choice(monkeypatch):
    calls = []
    monkeypatch.setattr(
        backend, "dvd_weights_available", lambda cfg: (calls.append("local") or local[0], "no checkpoint")
    )
    monkeypatch.setattr(backend, "dvd_downloadable", lambda cfg: (calls.append("hub") or hub[0], "hub down"))
    local, hub = [True], [True]

    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    name, why = select_backend(DepthConfig())
    assert name == "stereo" and "CUDA" in why and "--backend dvd" in why
    assert calls == []  # no weight lookup or network access without CUDA

    monkeypatch.setattr(backend, "cuda_available", lambda: True)
    assert select_backend(DepthConfig())[0] == "dvd"
    local[0] = False
    assert select_backend(DepthConfig())[0] == "dvd"  # downloadable
    hub[0] = False
    name, why = select_backend(DepthConfig())
    assert name == "stereo" and "--dvd-weights" in why and "no checkpoint" in why
    # An explicit CPU device for DVD means auto will not pick it.
    cfg = DepthConfig()
    cfg.dvd.device = "cpu"
    assert select_backend(cfg)[0] == "stereo"
    # Explicit backends are taken as they are.
    assert select_backend(DepthConfig(backend="file"))[0] == "file"
    with pytest.raises(DepthError, match="unknown depth backend"):
        select_backend(DepthConfig(backend="midas"))


def test_dvd_download_check_respects_offline(monkeypatch):
    cfg = DepthConfig().dvd
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok, why = backend.dvd_downloadable(cfg)
    assert not ok and "HF_HUB_OFFLINE" in why
    cfg.allow_download = False
    ok, why = backend.dvd_downloadable(cfg)
    assert not ok and "disabled" in why


def test_dvd_download_check_gives_up_quickly(monkeypatch):
    """An unreachable (or hanging) hub makes auto fall back within seconds, never minutes."""
    import time

    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: time.sleep(60))
    monkeypatch.setattr(backend, "HUB_TIMEOUT_S", 0.5)
    t0 = time.perf_counter()
    ok, why = backend.dvd_downloadable(DepthConfig().dvd)
    assert not ok and "did not answer" in why and time.perf_counter() - t0 < 2


def test_auto_on_cpu_runs_stereo_on_prior_frames(redkitchen_run_copy, monkeypatch, capsys):
    paths = redkitchen_run_copy
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    prior = _small_prior(paths, 4)
    summary = run_depth(paths, DepthConfig(stereo=StereoConfig(num_planes=16, scale=0.25)))
    err = capsys.readouterr().err
    assert "backend stereo" in err and "CUDA" in err  # the one-line notice

    cams = CameraSet.load(paths.cameras_json)
    T, H, W = len(cams), cams.height, cams.width
    with np.load(paths.disparity_npz) as z:
        assert set(z.files) >= {"disparity", "computed", "confidence", "kind", "backend"}
        disp, computed, conf = z["disparity"], z["computed"], z["confidence"]
        assert str(z["kind"]) == "metric_disparity" and str(z["backend"]) == "stereo"
    assert disp.shape == conf.shape == (T, H, W) and disp.dtype == np.float32 and conf.dtype == np.float32
    assert np.nonzero(computed)[0].tolist() == prior
    others = [i for i in range(T) if i not in prior]
    assert not disp[others].any()  # test views and non-prior frames are never computed
    assert (conf >= 0).all() and (conf <= 1).all() and (conf[others] == 1).all()
    coverage = (disp[prior] > 0).mean()
    assert coverage > 0.2 and summary["backend"] == "stereo"
    print(f"\nstereo on {len(prior)} prior frames: coverage {coverage:.0%}, {summary['seconds_per_frame']:.2f} s/frame")

    frames = _video_frames(paths.depth_preview_mp4)
    assert len(frames) == len(prior) and frames[0].shape == (H, W, 3)
    win = json.loads(paths.windows_json.read_text())
    assert win["backend"] == "stereo" and win["frames"] == prior and win["windows"] == []


def test_dvd_backend_outputs(redkitchen_run_copy, monkeypatch):
    """The stage's DVD plumbing with the backend's contract (the model itself is tested in test_dvd*)."""
    from depth.dvd.backend import DVDBackend

    paths = redkitchen_run_copy
    prior = _small_prior(paths, 7)
    cams = CameraSet.load(paths.cameras_json)
    seen = {}

    def fake_estimate(self, frames, progress=None):
        seen["names"], seen["images"] = frames.names, frames.images
        n = len(frames)
        disp = np.linspace(0.2, 0.9, n * cams.height * cams.width, dtype=np.float32).reshape(n, cams.height, cams.width)
        windows = [{"index": 0, "start": 0, "end": 5}, {"index": 1, "start": 2, "end": 7, "scale": 0.9, "shift": 0.1}]
        return DepthResult(disp, "relative_disparity", "dvd", windows=windows, report={"windows": windows})

    monkeypatch.setattr(DVDBackend, "estimate", fake_estimate)
    summary = run_depth(paths, DepthConfig(backend="dvd"))
    assert seen["names"] == [cams.files[i] for i in prior]  # only the prior frames are read
    assert seen["images"].shape == (len(prior), cams.height, cams.width, 3)
    with np.load(paths.disparity_npz) as z:
        assert str(z["kind"]) == "relative_disparity" and str(z["backend"]) == "dvd"
        assert (z["confidence"] == 1).all()
        assert z["disparity"][prior].min() > 0
    win = json.loads(paths.windows_json.read_text())
    assert win["frames"] == prior and [w["end"] for w in win["windows"]] == [5, 7]
    assert summary["windows"] == 2 and len(_video_frames(paths.depth_preview_mp4)) == len(prior)


def test_file_backend_kinds_and_errors(redkitchen_run_copy, redkitchen_gt, tmp_path, monkeypatch):
    paths = redkitchen_run_copy
    cams = CameraSet.load(paths.cameras_json)
    prior = _small_prior(paths, 4)
    folder = tmp_path / "depth"
    folder.mkdir()
    gt = {}
    for i in prior:
        # Any positive map will do for the plumbing; GT depth where the frame has it.
        src = cams.source_index[i]
        d = redkitchen_gt.read_depth(src - src % 3)[1::2, 1::2]
        gt[i] = d
        np.save(folder / f"{cams.files[i].split('/')[-1].split('.')[0]}.npy", d)
    run_depth(paths, DepthConfig(backend="file", file=FileDepthConfig(path=folder, kind="depth"), preview=False))
    with np.load(paths.disparity_npz) as z:
        assert str(z["kind"]) == "metric_disparity"
        d = z["disparity"][prior[0]]
    m = gt[prior[0]] > 0
    np.testing.assert_allclose(d[m], 1.0 / gt[prior[0]][m], rtol=1e-6)
    assert (d[~m] == 0).all()
    run_depth(paths, DepthConfig(backend="file", file=FileDepthConfig(path=folder, kind="disparity"), preview=False))
    with np.load(paths.disparity_npz) as z:
        assert str(z["kind"]) == "relative_disparity"

    with pytest.raises(DepthError, match="--depth-files"):
        run_depth(paths, DepthConfig(backend="file"))
    # "order" matching covers every frame of the run: a folder with only the prior frames is too short.
    with pytest.raises(DepthError, match=f"expected {len(cams)} depth files"):
        run_depth(paths, DepthConfig(backend="file", file=FileDepthConfig(path=folder, match="order")))
    # A backend returning maps of the wrong size is caught before anything is written.
    paths.disparity_npz.unlink()
    monkeypatch.setattr(
        StereoBackend,
        "estimate",
        lambda self, frames, progress=None: DepthResult(
            np.ones((len(frames), 10, 10), np.float32), "metric_disparity", "stereo"
        ),
    )
    with pytest.raises(DepthError, match="expected 4x240x320"):
        run_depth(paths, DepthConfig(backend="stereo"))
    assert not paths.disparity_npz.exists()
    # Frames of different sizes are an error before any backend runs.
    from PIL import Image

    Image.open(paths.root / cams.files[prior[1]]).crop((0, 0, 100, 100)).save(paths.root / cams.files[prior[1]])
    with pytest.raises(ReconError, match="100x100"):
        run_depth(paths, DepthConfig(backend="file", file=FileDepthConfig(path=folder, kind="depth")))


def test_missing_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ReconError, match="run the pose stage first"):
        run_depth(RunPaths(tmp_path), DepthConfig(backend="stereo"))


def test_preview_uses_one_normalisation_for_the_whole_video(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 1.0, (21, 33)).astype(np.float32)
    disp = np.stack([base, 2 * base, base])
    disp[2, :5, :5] = 0  # invalid
    rgb = colorize(disp)
    assert rgb.shape == (3, 21, 33, 3) and rgb.dtype == np.uint8
    # The same value gets the same colour in every frame, a doubled frame looks different (flicker
    # stays visible), invalid pixels are black.
    np.testing.assert_array_equal(rgb[0, 5:], rgb[2, 5:])
    assert np.abs(rgb[0].astype(int) - rgb[1].astype(int)).mean() > 20
    assert (rgb[2, :5, :5] == 0).all()
    lo, hi = write_depth_video(tmp_path / "d.mp4", disp, fps=5)
    assert lo < hi
    frames = _video_frames(tmp_path / "d.mp4")
    assert len(frames) == 3 and frames[0].shape == (22, 34, 3)  # padded to even size for yuv420p
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left behind
    with pytest.raises(DepthError, match="no valid depth"):
        colorize(np.zeros((2, 4, 4), np.float32))
