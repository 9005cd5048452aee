"""OS errors are one line `error: <what> <path>: <cause>`: a full disk while a stage writes, an --out that is a file,
lies under a file, under /proc, or on a read-only file system.

A full disk is real where the test may mount a small tmpfs (root in the sandbox); where mounting is refused those
tests skip, and a fault-injected ENOSPC (in numpy's array writer) covers the same path without a mount. After a
full disk: exit != 0, one `error:` line naming the file, the stage 'failed' in the manifest, no finished-looking
output and no temporary file left.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli_run import ICL, one_error, recon, shared_icl_run
from test_writers import KITCHEN_VIDEO, snapshot

from recon.artifacts import RunPaths

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = os.strerror(errno.ENOSPC)


def _mount_tmpfs(where: Path, size: str, readonly: bool = False) -> None:
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): no real full disk to test")


@pytest.fixture
def small_disk(tmp_path) -> Iterator:
    """mount(size, readonly=False) -> a fresh tmpfs folder; all unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: str, readonly: bool = False) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        _mount_tmpfs(where, size, readonly)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def icl_run(tmp_path_factory) -> RunPaths:
    return shared_icl_run(tmp_path_factory)


def _fill(disk: Path, leave_kib: int) -> None:
    """Take all but `leave_kib` KiB of the file system of `disk`."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize - leave_kib * 1024
    with open(disk / "filler", "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        while free > 0:
            free -= f.write(chunk[: min(len(chunk), free)])


def _stage(run: RunPaths, name: str) -> dict:
    return json.loads(run.manifest.read_text())["stages"][name]


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name != ".lock"]


def test_disk_full_while_frames_are_written(small_disk, capsys):
    run = RunPaths(small_disk("1m") / "run")
    args = ["frames", KITCHEN_VIDEO, "--out", run.root, "--max-frames", "60", "--max-size", "320", "--no-dedup"]
    line = one_error(*recon(capsys, *args))
    assert line == f"error: cannot write {run.frames_dir}: {ENOSPC}"
    st = _stage(run, "frames")
    assert st["status"] == "failed" and ENOSPC in st["error"]
    assert not run.frames_dir.exists() and not run.frames_json.exists()
    assert _temporaries(run.root) == []


@pytest.mark.parametrize(
    "stage, target",
    [("align", "depth/"), ("train", "splat/")],
    ids=["npz", "torch-checkpoint"],
)
def test_disk_full_in_a_later_stage(icl_run, small_disk, capsys, stage, target):
    disk = small_disk("24m")
    run = RunPaths(disk / "run")
    shutil.copytree(icl_run.root, run.root)
    before = snapshot(run.root)
    _fill(disk, leave_kib=24)
    line = one_error(*recon(capsys, stage, "--out", run.root, "--force", stage, "-q"))
    assert line.startswith(f"error: cannot write {run.root}/{target}") and line.endswith(f": {ENOSPC}"), line
    st = _stage(run, stage)
    assert st["status"] == "failed" and ENOSPC in st["error"]
    after = snapshot(run.root)
    changed = {k for k in before if after.get(k) != before[k]} - {"manifest.json", ".lock"}
    assert not {k for k in changed if not k.startswith("splat/train_log")}, changed  # old outputs intact
    assert _temporaries(run.root) == []


def test_disk_full_injected_without_a_mount(icl_run, tmp_path, capsys, monkeypatch):
    import numpy as np

    run = RunPaths(tmp_path / "run")
    shutil.copytree(icl_run.root, run.root)
    old = run.aligned_npz.read_bytes()
    real = np.lib.format.write_array
    calls = []

    def full(fp, array, *a, **k):
        calls.append(1)
        if len(calls) > 1:  # the second array of the archive does not fit
            raise OSError(errno.ENOSPC, ENOSPC)
        return real(fp, array, *a, **k)

    monkeypatch.setattr(np.lib.format, "write_array", full)
    line = one_error(*recon(capsys, "align", "--out", run.root, "--force", "align", "-q"))
    assert line == f"error: cannot write {run.aligned_npz}: {ENOSPC}"
    assert _stage(run, "align")["status"] == "failed"
    assert run.aligned_npz.read_bytes() == old
    assert _temporaries(run.root) == []


@pytest.mark.parametrize("where", ["file", "under-file", "proc", "sys"])
def test_out_that_cannot_be_a_run_directory(tmp_path, capsys, where):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out, expect = {
        "file": (afile, rf"cannot use run directory {afile}: Not a directory"),
        "under-file": (afile / "run", rf"cannot create run directory {afile}/run: Not a directory"),
        "proc": (Path("/proc/dvd-splat-run"), r"cannot create run directory /proc/dvd-splat-run: \S.*"),
        "sys": (Path("/sys/dvd-splat-run"), r"cannot create run directory /sys/dvd-splat-run: \S.*"),
    }[where]
    line = one_error(*recon(capsys, "run", ICL / "color", "--out", out))
    assert re.fullmatch(f"error: {expect}", line), line
    assert afile.read_text() == "x" and (out == afile or not out.exists())


def test_out_on_a_read_only_file_system(small_disk, capsys):
    ro = small_disk("1m", readonly=True)
    line = one_error(*recon(capsys, "frames", KITCHEN_VIDEO, "--out", ro / "run", "--max-frames", "4"))
    assert line == f"error: cannot create run directory {ro}/run: {os.strerror(errno.EROFS)}"


def test_read_only_run_can_be_read_not_written(icl_run, small_disk, capsys):
    from recon import api

    disk = small_disk("24m")
    run = disk / "run"
    shutil.copytree(icl_run.root, run)
    r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    line = one_error(*recon(capsys, "report", run))
    assert line == f"error: cannot open lock file {run}/.lock: {os.strerror(errno.EROFS)}"
    assert len(api.load_run(run).cameras) == 5  # readers take no lock


def test_cli_process_one_line_for_proc(tmp_path):
    """The real `recon` process (not in-process): `recon run x.mp4 --out /proc/foo` is one line, exit 2."""
    r = subprocess.run(
        [sys.executable, "-m", "recon.cli", "run", "x.mp4", "--out", "/proc/foo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr == "error: cannot create run directory /proc/foo: No such file or directory\n"
