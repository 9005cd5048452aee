"""One writer per run directory, manifest read-modify-write, options saved only on success, temp-file cleanup.

Everything runs on a small real run made once per module by the real CLI (5 ICL-NUIM frames at 160x120, known
poses, sensor depth, 4 training iterations). Lock contention is between real processes: a holder process takes
recon.lock on RUN (the OS-level flock every writing command takes) and the refused commands run as a second
`recon` process and in-process (recon.cli.main), which is another process than the holder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.cli_run import ICL, one_error, recon, shared_icl_run

from recon.artifacts import RunPaths
from recon.errors import ReconError

ROOT = Path(__file__).resolve().parents[1]
KITCHEN_VIDEO = ROOT.parent / "shared" / "data" / "7scenes_redkitchen_rgbd" / "video_30fps.mp4"
HOLD = "import sys, time\nfrom recon.lock import run_lock\nwith run_lock(sys.argv[1]):\n    time.sleep(600)\n"
SINCE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


@pytest.fixture(scope="module")
def icl_run(tmp_path_factory) -> RunPaths:
    """A finished (through train) run made by the CLI: READ-ONLY, copy it with `run_copy`."""
    return shared_icl_run(tmp_path_factory)


@pytest.fixture
def run_copy(icl_run, tmp_path) -> RunPaths:
    dst = tmp_path / "run"
    shutil.copytree(icl_run.root, dst, symlinks=True)
    return RunPaths(dst)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (dotfiles included) -> sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@contextmanager
def lock_holder(run: Path) -> Iterator[subprocess.Popen]:
    """A separate process holding recon.lock on `run` until it is killed (SIGKILL at the latest on exit)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (run / ".lock").exists() or not (run / ".lock").read_text().startswith(f"{proc.pid} "):
            assert proc.poll() is None, "the lock holder exited"
            assert time.time() < deadline, "the lock holder never took the lock"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_second_writer_is_refused_until_the_holder_dies(run_copy, capsys):
    from recon import api

    run = run_copy.root
    with lock_holder(run) as holder:
        before = snapshot(run)
        since = (run / ".lock").read_text().split()[1]
        # a second `recon` process, RUN given as a relative path: the message names RUN as given
        r = subprocess.run(
            [sys.executable, "-m", "recon.cli", "frames", "--out", "run"],
            cwd=run.parent,
            capture_output=True,
            text=True,
            timeout=300,
        )
        line = one_error(r.returncode, r.stderr)
        assert re.fullmatch(rf"error: run is in use by process {holder.pid} since {SINCE}", line), line
        assert line.endswith(since)
        # every other writing command, in this process
        for args in (
            ["train", "--out", run, "--iterations", "8"],
            ["run", ICL / "color", "--out", run, "--force", "frames"],
            ["report", run],
            ["export", "nerfstudio", run],
            ["eval", run],
        ):
            assert one_error(*recon(capsys, *args)) == f"error: {run} is in use by process {holder.pid} since {since}"
        with pytest.raises(ReconError, match=f"is in use by process {holder.pid}"):
            api.run(None, run, until="frames")
        with pytest.raises(ReconError, match=f"is in use by process {holder.pid}"):
            api.load_run(run).report()
        assert len(api.load_run(run).cameras) == 5  # readers take no lock
        assert snapshot(run) == before  # the refused commands changed no byte
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    # the OS released the killed holder's lock: a new writer gets it
    rc, err = recon(capsys, "export", "nerfstudio", run)
    assert rc == 0, err
    assert (run / "transforms.json").exists()


def test_refused_config_creates_no_run_directory(tmp_path, capsys):
    out = tmp_path / "new"
    line = one_error(*recon(capsys, "frames", KITCHEN_VIDEO, "--out", out, "--set", "frames.max_framez=3"))
    assert "max_framez" in line
    assert not out.exists()  # the lock made it; nothing was written into it, so it is removed again


def test_manifest_updates_are_read_modify_write(tmp_path):
    from recon.manifest import Manifest

    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    first, second = Manifest(paths), Manifest(paths)  # both read the (empty) run before either writes
    first.start("frames", "fp-frames", {"max_frames": 5})
    first.finish("frames", "done", 1.0, {"frames": 5})
    second.start("poses", "fp-poses", {"mapper": "incremental"})  # its snapshot predates the frames update
    second.finish("poses", "failed", 2.0, error="no luck")
    first.finish("split", "done", 0.5, {"train": 4})
    stages = json.loads(paths.manifest.read_text())["stages"]
    assert stages["frames"]["status"] == "done" and stages["frames"]["config"] == {"max_frames": 5}
    assert stages["poses"]["status"] == "failed" and stages["poses"]["error"] == "no luck"
    assert "config" not in stages["poses"] and stages["poses"]["attempt"]["config"] == {"mapper": "incremental"}
    assert stages["split"]["status"] == "done"


@pytest.mark.parametrize(
    "text, why",
    [
        ("[1, 2]", "a JSON list, not an object"),
        ('{"stages": []}', "stages is not an object"),
        ('{"stages": {"frames": 3}}', "stage 'frames' is not an object"),
        ('{"stages": {"frames": {"config": [1]}}}', "stages.frames.config is not an object"),
        ("not json", "not JSON"),
    ],
)
def test_damaged_manifest_is_one_line(tmp_path, capsys, text, why):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(text)
    line = one_error(*recon(capsys, "frames", KITCHEN_VIDEO, "--out", run, "--max-frames", "4"))
    assert line.startswith(f"error: {run}/manifest.json is not a valid run manifest ({why}")
    assert line.endswith("; remove it or use a new --out")
    assert (run / "manifest.json").read_text() == text and not (run / "frames").exists()


def test_failed_options_are_not_the_base_of_later_commands(run_copy, tmp_path, capsys):
    run = run_copy.root

    def train() -> dict:
        return json.loads(run_copy.manifest.read_text())["stages"]["train"]

    good = train()["config"]
    assert good["device"] == "cpu" and good["eval_only"] is False
    line = one_error(*recon(capsys, "train", "--out", run, "-q", "--device", "banana"))
    assert "banana" in line
    assert train()["config"] == good
    rc, err = recon(capsys, "train", "--out", run, "-q")  # the last successful config: nothing to redo
    assert rc == 0, err
    assert train()["status"] == "done" and train()["config"] == good

    # a failure inside the stage: eval-only without trained Gaussians
    for f in (run_copy.checkpoint, run_copy.gaussians_ply):
        f.rename(tmp_path / f.name)
    line = one_error(*recon(capsys, "train", "--out", run, "-q", "--set", "train.eval_only=true"))
    assert "eval_only" in line
    st = train()
    assert st["status"] == "failed" and st["attempt"]["requested"]["eval_only"] is True
    assert st["attempt"]["config"] == good  # one-off requests are not part of the config the run keeps
    assert st["config"] == good  # the refused attempt is kept for diagnosis only

    for f in (run_copy.checkpoint, run_copy.gaussians_ply):
        (tmp_path / f.name).rename(f)
    rc, err = recon(capsys, "train", "--out", run, "-q", "--resume")  # built on `good`, not on the attempt
    assert rc == 0, err
    st = train()
    assert st["status"] == "done" and "attempt" not in st
    assert st["config"] == good  # --resume ran the stage once; it is not the base of the next command
    rc, err = recon(capsys, "train", "--out", run, "-q")  # so a plain train is done already: nothing reruns
    assert rc == 0, err
    assert train()["finished"] == st["finished"]


def test_temporaries_of_a_killed_writer_are_removed(run_copy, tmp_path, capsys):
    run = run_copy.root
    left = [
        run / ".manifest.abcd1234.tmp.json",  # recon.atomic.atomic_path (write_json)
        run / "depth" / ".aligned.x1y2z3w4.tmp.npz",  # save_npz
        run / "splat" / ".checkpoint.q_w2e3r4.tmp.pt",
        run / ".transforms.k9j8h7g6.tmp",  # a file without suffix
    ]
    left_dirs = [run / ".frames.k3j4m5n6.tmp", run / ".ns_depth.old", run / "sfm_work" / ".sparse.a1b2c3d4.tmp"]
    user = [
        run / ".keep.tmp.txt.user",
        run / ".notes.tmp",
        run / "frames.old",
        run / ".x.abcdefgh.tmp.json.bak",
        run / ".data.old",  # a file, not an atomic_dir leftover
    ]
    for p in left + user:
        p.write_text("x")
    for d in left_dirs:
        d.mkdir()
        (d / "000001.png").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".cloud.abcdefgh.tmp.ply").write_text("not in RUN")
    (run / "linked").symlink_to(outside)

    rc, err = recon(capsys, "export", "nerfstudio", run)
    assert rc == 0, err
    assert not [p for p in left + left_dirs if p.exists()]
    assert all(p.exists() for p in user)
    assert (outside / ".cloud.abcdefgh.tmp.ply").exists()  # only inside RUN: symlinks are not followed
