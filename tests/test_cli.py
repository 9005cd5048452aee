"""The `recon` command: config layering, one-line errors, resume after a kill, skipping finished stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recon.cli import StageCommand, build_config
from recon.errors import ReconError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
VIDEO = DATA / "7scenes_redkitchen_rgbd" / "video_30fps.mp4"
RECON = [sys.executable, "-m", "recon.cli"]


def _recon(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*RECON, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_config_layers_preset_yaml_flags_set(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("frames:\n  max_frames: 12\n  stride: 2\nsplit:\n  test_every: 4\n")
    cmd = StageCommand(config=yml, preset="cpu", max_size=200, set=("split.train_views=3", "frames.dedup=false"))
    cfg = build_config(cmd)
    assert (cfg.frames.max_frames, cfg.frames.stride, cfg.frames.max_size, cfg.frames.dedup) == (12, 2, 200, False)
    assert (cfg.split.test_every, cfg.split.train_views) == (4, 3)
    with pytest.raises(ReconError, match="unknown config key 'frames.max_framez'"):
        build_config(StageCommand(set=("frames.max_framez=3",)))
    with pytest.raises(ReconError, match="expected an integer"):
        build_config(StageCommand(set=("frames.max_frames=many",)))


def test_sparse_view_settings_sit_between_the_preset_and_the_users_settings(tmp_path):
    """--train-views 1..9 starts from the sparse-view settings (recon.stages.split.SPARSE_*); a YAML file, a flag or
    --set still overrides each of them; 10 views or all frames keep the preset's values; recon.api does the same."""
    from recon import api
    from recon.stages.split import SPARSE_FUSE, SPARSE_MIN_GAUSSIANS, SPARSE_TRAIN, SPARSE_TRAIN_BY_PROTOCOL

    dense = build_config(StageCommand(preset="cpu"))
    for cfg in (
        build_config(StageCommand(preset="cpu", train_views=3)),
        api.make_config("cpu", split={"train_views": 9}),
    ):
        assert {k: getattr(cfg.fuse, k) for k in SPARSE_FUSE} == SPARSE_FUSE
        assert {k: getattr(cfg.train, k) for k in SPARSE_TRAIN} == SPARSE_TRAIN
        assert cfg.train.max_gaussians == SPARSE_MIN_GAUSSIANS > dense.train.max_gaussians
        assert cfg.train.iterations == dense.train.iterations  # what the sparse settings do not name stays the preset's
    assert (dense.fuse.stride, dense.train.opacity_decay, dense.train.binocular_weight) == (2, 1.0, 0.0)
    yml = tmp_path / "c.yaml"
    yml.write_text("fuse:\n  stride: 3\n")
    cmd = StageCommand(preset="cpu", train_views=3, config=yml, set=("train.binocular_weight=0",))
    cfg = build_config(cmd)
    assert (cfg.fuse.stride, cfg.fuse.voxel_divisions, cfg.train.binocular_weight) == (3, 1024, 0.0)
    assert api.make_config("cpu", split={"train_views": 3}, train={"opacity_decay": 1.0}).train.opacity_decay == 1.0
    ten = build_config(StageCommand(preset="cpu", train_views=10))
    assert (ten.fuse.stride, ten.train.max_init_points, ten.train.opacity_decay) == (2, 20_000, 1.0)
    # the llff protocol's own sparse settings (SPARSE_TRAIN_BY_PROTOCOL) over SPARSE_TRAIN; --set still wins
    llff_decay = SPARSE_TRAIN_BY_PROTOCOL["llff"]["opacity_decay"]
    assert llff_decay != SPARSE_TRAIN["opacity_decay"]
    for cfg in (
        build_config(StageCommand(preset="cpu", train_views=3, split_protocol="llff")),
        api.make_config("cpu", split={"protocol": "llff", "train_views": 3}),
    ):
        assert cfg.train.opacity_decay == llff_decay and cfg.train.binocular_weight == SPARSE_TRAIN["binocular_weight"]
    cmd = StageCommand(preset="cpu", train_views=3, split_protocol="llff", set=("train.opacity_decay=0.995",))
    assert build_config(cmd).train.opacity_decay == 0.995


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: d / "missing.mp4", "does not exist"),
        (lambda d: (d / "t.mp4").write_text("not a video") and d / "t.mp4", "not a readable video"),
    ],
)
def test_bad_input_one_line_nonzero(tmp_path, make, expect):
    inp = make(tmp_path)
    r = _recon("run", str(inp), "--out", str(tmp_path / "run"))
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip() and not l.startswith("▶")]
    assert lines[-1].startswith("error:") and expect in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "frames.json").exists()


def test_bad_config_file_is_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("frames: [1, 2\n")
    r = _recon("frames", str(VIDEO), "--out", str(tmp_path / "run"), "--config", str(bad))
    assert r.returncode != 0 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr


def test_killed_during_poses_resumes_without_redoing_frames(tmp_path):
    run = tmp_path / "run"
    args = ["poses", str(VIDEO), "--out", str(run), "--max-frames", "40", "--max-size", "240"]
    proc = subprocess.Popen(
        [*RECON, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    manifest = run / "manifest.json"
    t0 = time.time()
    while time.time() - t0 < 300:
        if manifest.exists():
            try:
                st = json.loads(manifest.read_text())["stages"]
            except ValueError:
                st = {}
            if st.get("poses", {}).get("status") == "running":
                break
        if proc.poll() is not None:
            pytest.fail(f"recon exited before the pose stage started: {proc.stderr.read()}")
        time.sleep(0.2)
    else:
        pytest.fail("pose stage never started")
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(manifest.read_text())["stages"]
    assert before["frames"]["status"] == "done" and before["poses"]["status"] == "running"
    assert not (run / "cameras.json").exists()  # nothing that looks finished

    r = _recon(*args)
    assert r.returncode == 0, r.stderr
    after = json.loads(manifest.read_text())["stages"]
    assert after["frames"]["finished"] == before["frames"]["finished"]  # frames were not redone
    assert after["poses"]["status"] == "done"
    cams = json.loads((run / "cameras.json").read_text())
    assert len(cams["frames"]) == 40

    # A third call with nothing changed skips everything; a changed pose config re-runs only poses.
    r2 = _recon(*args)
    assert r2.returncode == 0 and "done earlier" in r2.stdout
    assert json.loads(manifest.read_text())["stages"]["poses"]["finished"] == after["poses"]["finished"]


def test_ctrl_c_leaves_no_finished_looking_output_and_resumes(tmp_path):
    run = tmp_path / "run"
    # All 450 frames of the clip: the interrupt must land while frames are still being written, even on a busy
    # machine (with 120 frames the stage sometimes finished between the poll and the signal).
    args = ["frames", str(VIDEO), "--out", str(run), "--no-dedup", "--max-frames", "450"]
    # A shell that starts the test suite in the background (`cmd &`) hands its children SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen(
        [*RECON, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    manifest = run / "manifest.json"
    t0 = time.time()
    while time.time() - t0 < 120 and not list(run.glob(".frames.*.tmp/000010.png")):
        if proc.poll() is not None:
            pytest.fail(f"recon exited before writing frames: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in err
    assert json.loads(manifest.read_text())["stages"]["frames"]["status"] == "interrupted"
    assert not (run / "frames").exists() and not (run / "frames.json").exists() and not list(run.glob(".frames*"))

    r = _recon(*args)
    assert r.returncode == 0, r.stderr
    assert len(json.loads((run / "frames.json").read_text())["frames"]) == 450


@pytest.mark.parametrize("error", ["depth", "splat"])
def test_library_errors_are_one_line(monkeypatch, capsys, error):
    from depth.errors import DepthError
    from recon import cli
    from splat.errors import SplatError

    exc = DepthError("no valid depth on the training views") if error == "depth" else SplatError("empty cloud")

    def fail(argv):
        raise exc

    monkeypatch.setattr(cli, "_dispatch", fail)
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {exc}\n"


def test_library_logging_follows_verbosity(capsys):
    import logging

    from recon import console

    try:
        for level, shown in ((1, {"info", "warning"}), (2, {"debug", "info", "warning"}), (0, {"warning"})):
            console.configure_logging(level)
            log = logging.getLogger("depth.some_backend")
            log.debug("debug")
            log.info("info")
            logging.getLogger("splat.trainer").warning("warning")
            err = capsys.readouterr().err
            assert {w for w in ("debug", "info", "warning") if w in err.replace("warning:", "")} == shown, err
    finally:
        console.configure_logging(1)
