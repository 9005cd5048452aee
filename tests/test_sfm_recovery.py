"""The pose stage against a damaged SfM work state, a full disk, native crashes and COLMAP's log (issue 12)."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from recon.artifacts import CameraSet, RunPaths
from recon.errors import ReconError
from recon.stages import StageContext
from recon.stages import poses as poses_stage
from recon.stages.poses import Config as PosesConfig

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / "shared" / "data" / "7scenes_redkitchen_rgbd" / "video_30fps.mp4"
RECON = [sys.executable, "-m", "recon.cli"]
SMALL = ("--stride", "4", "--max-frames", "14", "--max-size", "320")  # 14 frames 320x240: ~10 s of SfM
GLOG = re.compile(r"^[IWEF]\d{4,8} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)


def _recon(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*RECON, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> RunPaths:
    """frames + poses (CLI, defaults but a small clip and COLMAP on one thread) of 14 redkitchen frames; READ-ONLY.
    One thread: COLMAP's threaded matching is not deterministic under load (which thread verifies which pair, with
    its own random stream), and a clean-clone CI run once found 26 verified pairs where this run had found 25."""
    run = RunPaths(tmp_path_factory.mktemp("sfm_small") / "run")
    r = _recon("poses", str(VIDEO), "--out", str(run.root), *SMALL, "--set", "poses.num_threads=1")
    assert r.returncode == 0, r.stderr
    assert not GLOG.search(r.stderr), "COLMAP's log leaked without -v:\n" + r.stderr
    return run


def _copy(src: RunPaths, dst: Path, *names: str) -> RunPaths:
    dst.mkdir()
    for name in names:
        (shutil.copytree if (src.root / name).is_dir() else shutil.copy2)(src.root / name, dst / name)
    return RunPaths(dst)


def _manifest_status(run: RunPaths, stage: str) -> str:
    return json.loads(run.manifest.read_text())["stages"][stage]["status"]


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_state_that_the_database_does_not_back_up_is_redone(small_run, tmp_path, damage):
    run = _copy(small_run, tmp_path / "run", "frames", "frames.json", "sfm_work")
    state = json.loads((run.sfm_work_dir / "state.json").read_text())
    assert state["extract"]["images"] == 14 and state["match"]["pairs"] > 0
    db = run.sfm_work_dir / "database.db"
    db.unlink()
    if damage == "empty":  # a database another writer re-created: the right tables, no rows
        sqlite3.connect(db).executescript(
            "CREATE TABLE images(image_id INTEGER); CREATE TABLE keypoints(image_id INTEGER, rows INTEGER);"
            "CREATE TABLE two_view_geometries(pair_id INTEGER, rows INTEGER);"
        )
    poses_stage.run(StageContext(run), PosesConfig(num_threads=1))
    after = json.loads((run.sfm_work_dir / "state.json").read_text())
    assert after["extract"]["images"] == 14 and after["extract"]["keypoints"] > 1000
    assert after["match"]["pairs"] == state["match"]["pairs"]  # same frames, same settings: same matches
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 14
    cs = CameraSet.load(run.cameras_json)
    assert cs.registered.sum() >= 5 and cs.sfm["attempt"] in [a["attempt"] for a in cs.sfm["attempts"]]


def test_force_poses_clears_sfm_work(small_run, tmp_path):
    run = _copy(small_run, tmp_path / "run", "frames", "frames.json", "sfm_work", "images", "sfm", "cameras.json")
    shutil.copy2(small_run.manifest, run.manifest)
    stale = run.sfm_work_dir / "stale.marker"
    stale.write_text("left by an earlier run")
    r = _recon("poses", "--out", str(run.root))  # finished and unchanged: skipped, sfm_work untouched
    assert r.returncode == 0, r.stderr
    assert stale.exists()
    r = _recon("poses", "--out", str(run.root), "--force", "poses")
    assert r.returncode == 0, r.stderr
    assert not stale.exists()
    assert json.loads((run.sfm_work_dir / "state.json").read_text())["extract"]["images"] == 14
    assert _manifest_status(run, "poses") == "done"


@pytest.mark.parametrize("step,what", [("extract", "feature extraction"), ("map", "mapping")])
def test_native_abort_is_one_line_and_the_stage_failed(small_run, tmp_path, step, what):
    run = _copy(small_run, tmp_path / "run", "frames", "frames.json")
    shutil.copy2(small_run.manifest, run.manifest)
    r = _recon("poses", "--out", str(run.root), "--force", "poses", env={"RECON_SFM_FAULT": step})
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith(f"error: COLMAP ({what}) crashed with signal 6 (SIGABRT)"), errors[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert _manifest_status(run, "poses") == "failed"
    assert not run.cameras_json.exists()
    assert not list(run.root.rglob("core*"))
    # the steps finished before the crash are kept and reused by the next run
    state = json.loads((run.sfm_work_dir / "state.json").read_text())
    assert ("extract" in state) == (step == "map")
    r = _recon("poses", "--out", str(run.root))
    assert r.returncode == 0, r.stderr
    assert _manifest_status(run, "poses") == "done"


def test_not_enough_disk_space_is_refused_before_writing(small_run, tmp_path, monkeypatch):
    run = _copy(small_run, tmp_path / "run", "frames", "frames.json")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("recon.poses.shutil.disk_usage", lambda p: usage(10 << 30, (10 << 30) - (3 << 20), 3 << 20))
    with pytest.raises(ReconError) as e:
        poses_stage.run(StageContext(run), PosesConfig())
    msg = str(e.value)
    assert re.fullmatch(
        rf"not enough free space in {re.escape(str(run.root))} for the SfM database: "
        r"need ~\d+ MB, 3 MB free",
        msg,
    ), msg
    assert not (run.sfm_work_dir / "database.db").exists()


def test_colmap_log_only_with_verbose(small_run, tmp_path):
    """glog writes to fd 2 of the process that runs COLMAP: checked on the real command's stderr."""
    run = _copy(small_run, tmp_path / "run", "frames", "frames.json")
    shutil.copy2(small_run.manifest, run.manifest)
    quiet = _recon("poses", "--out", str(run.root), "--force", "poses")
    assert quiet.returncode == 0, quiet.stderr
    assert not GLOG.search(quiet.stderr + quiet.stdout), quiet.stderr
    assert GLOG.search((run.sfm_work_dir / "colmap.log").read_text())  # it went to the log instead
    verbose = _recon("poses", "--out", str(run.root), "--force", "poses", "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert len(GLOG.findall(verbose.stderr)) > 10
    assert not GLOG.search(verbose.stdout)  # stdout stays the result table


MAIN_SCRIPT = """
import sys
from pathlib import Path
with open(sys.argv[1], "a") as f:  # runs again in any child that re-executes this script
    f.write("main script ran\\n")
if __name__ == "__main__":
    from recon.poses import run_isolated
    from support.isolated import write_file
    run_isolated(write_file, (sys.argv[2],), lambda status: None, Path(sys.argv[3]), {"write": "writing"})
"""


def test_the_colmap_child_does_not_run_the_parents_main_script(tmp_path):
    """A Ray worker's main script is Ray's default_worker.py (`import ray`: ~2.9 s per scene): a spawned
    child would run it again before COLMAP starts. The child must start from recon.poses alone."""
    script, marker, result = tmp_path / "main.py", tmp_path / "marker.txt", tmp_path / "child.txt"
    script.write_text(MAIN_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    cmd = [sys.executable, str(script), str(marker), str(result), str(tmp_path / "colmap.log")]
    subprocess.run(cmd, env=env, check=True, timeout=120)
    assert result.read_text() == "child"  # the child ran its target
    assert marker.read_text().splitlines() == ["main script ran"]  # and the script only once, in the parent
