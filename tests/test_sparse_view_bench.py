"""benchmarks/sparse_view.py --reuse-prepared: a run prepared on one machine trains on another (the CUDA checks
prepare on the CPU, where pycolmap is, and carry the folder to the GPU machine); other settings prepare again."""

from __future__ import annotations

import json
import shutil

import pytest

import benchmarks.sparse_view as sv
from recon.artifacts import CameraSet


def _prepare(out, frame_size, reuse):
    return sv.prepare("lego", 6, out, frame_size, 40, "stereo", 1, reuse=reuse)


@pytest.mark.slow
def test_reuse_prepared_moves_with_its_folder_and_keys_on_settings(tmp_path, monkeypatch):
    paths, gt, seconds, why = _prepare(tmp_path / "a", 200, reuse=False)
    assert gt is None and seconds > 0 and "no valid depth" in why  # 6 spread lego views: no stereo overlap
    record = json.loads((paths.root.parent / "prepared.json").read_text())
    assert record["key"]["frame_size"] == 200 and record["key"]["sparse"] is True
    cams = CameraSet.load(paths.cameras_json)

    shutil.copytree(tmp_path / "a", tmp_path / "b")  # carried elsewhere
    calls = []
    monkeypatch.setattr("recon.api.run", lambda *a, **k: calls.append(a))
    moved, gt2, seconds2, why2 = _prepare(tmp_path / "b", 200, reuse=True)
    assert calls == [] and moved.root == tmp_path / "b" / "lego_n6" / "base"
    assert (seconds2, why2, gt2) == (seconds, why, None)
    assert CameraSet.load(moved.cameras_json).width == cams.width == 200

    _prepare(tmp_path / "b", 160, reuse=True)  # other settings: prepared again (frames..split, then ..fuse)
    assert len(calls) == 2
    assert json.loads((moved.root.parent / "prepared.json").read_text())["key"]["frame_size"] == 160
