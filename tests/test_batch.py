"""`recon batch` on real Ray clusters (recon.batch, recon.cluster), every Ray process on loopback only.

Scenes are the two smallest real clips (shared/data/real_videos: cotracker_cat, cotracker_apple) with the cpu
preset cut down to seconds (8 frames at 160 px, stereo depth, 2 training iterations). Clusters and the
`recon batch` driver run as child processes inside a loopback-only network namespace
(recon.cluster.LoopbackNamespace; nodes 127.0.0.2 head / 127.0.0.3 worker); every wait is bounded and every
process is killed in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from recon.artifacts import RunPaths
from recon.batch import Scene, StartRecords, expand_inputs, lock_waiting
from recon.cluster import LoopbackNamespace, token_env
from recon.errors import ReconError
from recon.lock import _TMP_DIR, _TMP_FILE
from recon.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "real_videos"
CAT, APPLE = VIDEOS / "cotracker_cat.mp4", VIDEOS / "cotracker_apple.mp4"
RECON = [sys.executable, "-m", "recon.cli", "batch"]
SMALL = ["--preset", "cpu", "--max-frames", "8", "--max-size", "160", "--iterations", "2", "--backend", "stereo"]
SMALL += ["--set", "train.video_frames=0", "depth.preview=false", "train.max_size=64", "train.max_init_points=500"]
STAGES = ["frames", "poses", "split", "depth", "align", "fuse", "train", "export", "report"]


@pytest.fixture
def short_tmp():
    """A short folder for Ray's session files (its socket paths must stay < 108 chars), removed afterwards."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _batch_json(out: Path) -> dict:
    try:
        return json.loads((out / "batch.json").read_text())["scenes"]
    except (OSError, ValueError, KeyError):
        return {}


def _wait_for(what, timeout: float, proc: subprocess.Popen | None = None):
    """Poll `what()` every 0.5 s until it returns something truthy; fail after `timeout` s or if `proc` ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"recon batch ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s")


def _assert_complete_run(run: Path) -> None:
    """Every stage done, no temporary file of an interrupted writer left, readable outputs."""
    stages = read_manifest(RunPaths(run))["stages"]
    assert {s: stages[s]["status"] for s in STAGES} == dict.fromkeys(STAGES, "done")
    leftovers = [p for p in run.rglob(".*") if _TMP_FILE.match(p.name) or _TMP_DIR.match(p.name)]
    assert leftovers == []
    assert json.loads((run / "metrics.json").read_text())["num_gaussians"] > 0
    assert (run / "splat" / "gaussians.ply").stat().st_size > 0 and (run / "report.html").exists()


def _all_done(run: Path) -> bool:
    stages = read_manifest(RunPaths(run))["stages"]
    return all(stages.get(s, {}).get("status") == "done" for s in STAGES)


def test_expand_inputs_names_and_folders(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("b.mp4", "a.MOV", "notes.txt"):
        (videos / name).write_text("x")
    images = tmp_path / "shots"
    images.mkdir()
    (images / "0001.jpg").write_text("x")
    (images / "clip.mp4").write_text("x")  # a folder with images is one image scene, even with a video in it
    scenes = expand_inputs((videos, images, CAT, CAT, tmp_path / "missing.mp4"))
    assert scenes == [
        Scene("a", videos / "a.MOV"),
        Scene("b", videos / "b.mp4"),
        Scene("shots", images),
        Scene("cotracker_cat", CAT),
        Scene("cotracker_cat-2", CAT),
        Scene("missing", tmp_path / "missing.mp4"),
    ]
    own = tmp_path / "own"  # inputs named like DIR's own files get another name
    for name in ("batch.json", ".batch"):
        (own / name).mkdir(parents=True)
    assert [s.name for s in expand_inputs((own / "batch.json", own / ".batch"))] == ["batch.json-2", ".batch-2"]


def test_start_records_count_attempts_and_nodes(tmp_path):
    """Each attempt of a scene task leaves one record in the shared folder; a new batch starts with none."""
    starts = StartRecords.of(tmp_path)
    assert starts.load() == {}
    starts.add("cat", "127.0.0.3")
    starts.add("cat", "127.0.0.2")  # the retry after node 127.0.0.3 was lost
    starts.add("apple", "127.0.0.2")
    (starts.folder / "apple" / "123-broken.json").write_text("{")  # half a file is not an attempt
    assert starts.load() == {"apple": ["127.0.0.2"], "cat": ["127.0.0.3", "127.0.0.2"]}
    starts.clear()
    assert starts.load() == {}


def test_scene_waits_for_the_lock_of_a_lost_attempt(tmp_path):
    """Two tasks never write one run: a retried scene waits (bounded) for the lock its lost attempt held."""
    run = tmp_path / "run"
    code = "import sys, time\nfrom recon.lock import run_lock\nwith run_lock(sys.argv[1]):\n"
    code += "    print('held', flush=True)\n    time.sleep(3)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ReconError, match="is in use by process"):
            with lock_waiting(run, wait_s=0.5):
                pass
        t0 = time.monotonic()
        with lock_waiting(run, wait_s=60):
            waited = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait(10)
    assert 0.5 < waited < 30


def test_one_batch_per_folder(tmp_path, short_tmp):
    """Two `recon batch` commands on one DIR: the second fails at once with one line naming the first (its PID),
    before a cluster starts or batch.json is written; the scene runs inside DIR keep their own locks, and the
    batch lock leaves their temporary files alone."""
    out = tmp_path / "out"
    (out / "scene").mkdir(parents=True)
    pending = out / "scene" / ".cameras.abcd1234.tmp"  # a single run's writer at work inside DIR
    pending.write_text("partial")
    code = "import sys, time\nfrom recon.lock import batch_lock\nwith batch_lock(sys.argv[1]):\n"
    code += "    print('held', flush=True)\n    time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cmd = [*RECON, str(CAT), "--out", str(out), "--node-ip-address", "127.0.0.2", "--temp-dir", short_tmp, *SMALL]
        with LoopbackNamespace() as net:  # were the lock not taken first, Ray would start on loopback only
            second = subprocess.run([*net.wrap, *cmd], cwd=ROOT, env=token_env(), capture_output=True, text=True,
                                    timeout=300)  # fmt: skip
    finally:
        holder.kill()
        holder.wait(10)
    assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert second.stderr.strip().splitlines() == [f"error: {out} is in use by process {holder.pid} since " +
                                                   second.stderr.split(" since ")[1].strip()]  # fmt: skip
    assert not (out / "batch.json").exists() and pending.read_text() == "partial"


def test_local_batch_failing_input_and_resume_after_kill(tmp_path, short_tmp):
    """A local cluster, two clips and one unreadable input; the batch is killed mid-way and run again."""
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = tmp_path / "out"
    cmd = [*RECON, str(CAT), str(APPLE), str(bad), "--out", str(out), "--num-cpus", "1"]
    cmd += ["--node-ip-address", "127.0.0.2", "--temp-dir", short_tmp, *SMALL]
    env = {**token_env(), "COLUMNS": "200"}
    with LoopbackNamespace() as net:
        first = subprocess.Popen([*net.wrap, *cmd], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)  # fmt: skip
        try:
            # kill it once one scene is finished and another one is being computed
            _wait_for(lambda: _two_states(_batch_json(out), "done", "running"), 400, first)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
        # the local cluster dies with its driver, its workers too (in process groups of their own, they went on
        # computing and writing their runs for ~2 s before they noticed), so nothing is left behind
        t_kill = time.monotonic()
        _wait_for(lambda: not net.pids(), 60)
        assert time.monotonic() - t_kill < 1.5
        killed = _batch_json(out)
        complete = [n for n in killed if (out / n / "manifest.json").exists() and _all_done(out / n)]
        again = subprocess.run([*net.wrap, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    errors = [ln for ln in again.stderr.splitlines() if ln.startswith("error:")]
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert errors == [f"error: 1 of 3 scenes failed (bad): see {out}/batch.json"]
    scenes = _batch_json(out)
    assert scenes["bad"]["status"] == "failed" and "not a readable video" in scenes["bad"]["error"]
    assert "\n" not in scenes["bad"]["error"]
    finished_before = [n for n, r in killed.items() if r["status"] == "done"]
    assert finished_before and set(finished_before) <= set(complete)
    assert len(complete) < 2  # the kill caught a scene mid-way
    for name in ("cotracker_cat", "cotracker_apple"):
        rec = scenes[name]
        assert rec["node"] == "127.0.0.2" and rec["error"] is None and rec["metrics"]["num_gaussians"] > 0
        assert rec["status"] == ("skipped" if name in complete else "done")  # a finished run is not redone
        _assert_complete_run(out / name)
    assert "cotracker_apple" in again.stdout and "not a readable video" in again.stdout  # the summary table


def _two_states(scenes: dict, a: str, b: str) -> bool:
    states = [r["status"] for r in scenes.values()]
    return a in states and b in states


def test_two_node_cluster_loses_its_worker_mid_batch(tmp_path, monkeypatch, short_tmp):
    """Head 127.0.0.2 + worker 127.0.0.3; the worker is killed while it computes a scene: the batch finishes
    on the head, every scene complete, the lost one retried. First, an output folder the worker cannot see
    (its own tmpfs over it) is refused with one line naming the worker."""
    from recon.cluster import start_node

    temp, hidden, out = short_tmp, tmp_path / "hidden", tmp_path / "out"
    hidden.mkdir()
    for key, value in token_env().items():  # the nodes and the driver started below inherit the token
        monkeypatch.setenv(key, value)
    nodes = []
    try:
        with LoopbackNamespace() as net:
            head = start_node("127.0.0.2", temp, num_cpus=1, wrap=net.wrap)
            nodes.append(head)
            private = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
            private += [f'mount -t tmpfs tmpfs {hidden} && exec "$0" "$@"']
            worker = start_node("127.0.0.3", temp, address=head.address, num_cpus=1, wrap=[*net.wrap, *private])
            nodes.append(worker)
            _wait_for_nodes(net, head.address, 2)  # a loaded machine registers the worker after `ray start` ends
            join = ["--address", head.address, "--node-ip-address", "127.0.0.2", *SMALL]
            refused = subprocess.run([*net.wrap, *RECON, str(CAT), "--out", str(hidden), *join], cwd=ROOT,
                                     capture_output=True, text=True, timeout=300)  # fmt: skip
            assert refused.returncode == 2, refused.stderr[-2000:]
            last = refused.stderr.strip().splitlines()[-1]
            assert last.startswith(f"error: {hidden} is not visible from node 127.0.0.3 ("), last
            assert not (hidden / "cotracker_cat").exists()

            cmd = [*net.wrap, *RECON, str(CAT), str(APPLE), str(CAT), "--out", str(out), *join]
            proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                on_worker = _wait_for(lambda: _running_on(_batch_json(out), "127.0.0.3"), 400, proc)
                time.sleep(2)  # well inside the scene's stages
                worker.kill()  # SIGKILL to the whole node: raylet, its workers, the scene's process
                proc.wait(500)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
    finally:
        for node in reversed(nodes):
            node.stop()
    scenes = _batch_json(out)
    assert sorted(scenes) == ["cotracker_apple", "cotracker_cat", "cotracker_cat-2"]
    assert scenes[on_worker]["attempts"] >= 2 and scenes[on_worker]["node"] == "127.0.0.2"
    for name, rec in scenes.items():
        assert rec["status"] == "done" and rec["error"] is None, rec
        _assert_complete_run(out / name)
        assert rec["metrics"]["num_gaussians"] == json.loads((out / name / "metrics.json").read_text())["num_gaussians"]


WAIT_NODES = """
import sys, time
from recon.cluster import alive_nodes, connect
with connect(sys.argv[1], "127.0.0.2"):
    deadline = time.monotonic() + 120
    while len(alive_nodes()) < int(sys.argv[2]) and time.monotonic() < deadline:
        time.sleep(0.5)
    print(len(alive_nodes()))
"""


def _wait_for_nodes(net: LoopbackNamespace, address: str, count: int) -> None:
    """Wait (at most 2 min) until the cluster at `address` lists `count` alive nodes."""
    out = subprocess.run([*net.wrap, sys.executable, "-c", WAIT_NODES, address, str(count)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0 and out.stdout.split()[-1] == str(count), out.stderr[-2000:]


def _running_on(scenes: dict, node: str) -> str | None:
    return next((n for n, r in scenes.items() if r["status"] == "running" and r["node"] == node), None)
