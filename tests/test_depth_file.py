"""depth.file: the `file` depth backend on the 7-Scenes GT depth PNGs, other formats, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth.errors import DepthError
from depth.file import FileDepthConfig, load_depth_files

KITCHEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_rgbd"
SOURCE = [0, 3, 6, 9]


def _raw(k: int) -> np.ndarray:
    return np.asarray(Image.open(KITCHEN / "depth" / f"frame-{k:06d}.depth.png")).astype(np.uint16)


@pytest.fixture
def depth_dir(tmp_path) -> Path:
    d = tmp_path / "depth"
    d.mkdir()
    for k in SOURCE:
        shutil.copy(KITCHEN / "depth" / f"frame-{k:06d}.depth.png", d)
    return d


def test_gt_pngs_by_name_resized_nearest(depth_dir):
    frames = [f"images/{k:06d}.png" for k in SOURCE]  # matched by the number in the name
    out, kind = load_depth_files(FileDepthConfig(depth_dir), frames, (320, 240))
    assert kind == "depth" and out.shape == (4, 240, 320) and out.dtype == np.float32
    for t, k in enumerate(SOURCE):
        raw = _raw(k)
        expect = raw[1::2, 1::2].astype(np.float32) / 1000.0  # nearest: pixel centres 2i+1
        expect[(raw[1::2, 1::2] == 0) | (raw[1::2, 1::2] == 65535)] = 0
        np.testing.assert_allclose(out[t], expect, rtol=1e-6)
        valid = out[t][out[t] > 0]
        assert valid.min() > 0.4 and valid.max() < 5.0  # metres
    # 7-Scenes: about 89 % valid on average
    assert 0.7 < (out > 0).mean() < 0.98


def test_order_match_reverse_names(depth_dir):
    frames = [f"frames/{i:06d}.png" for i in range(4)]  # names do not identify the files
    out, _ = load_depth_files(FileDepthConfig(depth_dir, match="order", scale=1.0), frames, (640, 480))
    np.testing.assert_array_equal(out[2], np.where(_raw(6) == 65535, 0, _raw(6)).astype(np.float32))


def test_65535_is_invalid(tmp_path):
    raw = _raw(0).copy()
    raw[:10, :10] = 65535
    d = tmp_path / "d"
    d.mkdir()
    Image.fromarray(raw).save(d / "000000.png")
    out, _ = load_depth_files(FileDepthConfig(d), ["000000.png"], (640, 480))
    assert (out[0, :10, :10] == 0).all()
    valid = raw[10:, 10:] > 0
    np.testing.assert_allclose(out[0, 10:, 10:][valid], raw[10:, 10:][valid] / 1000.0, rtol=1e-6)


def test_single_npz_stack_and_per_frame_npy(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.uniform(0.5, 3.0, (3, 24, 32)).astype(np.float32)
    stack[0, 0, 0] = 0
    np.savez(tmp_path / "maps.npz", disparity=stack)
    out, kind = load_depth_files(
        FileDepthConfig(tmp_path / "maps.npz", kind="disparity"), ["a.png", "b.png", "c.png"], (32, 24)
    )
    assert kind == "disparity"
    np.testing.assert_array_equal(out, stack)  # float data: no scale applied
    # per-frame .npy, resized 2x down: validity-weighted bilinear for disparity
    d = tmp_path / "npy"
    d.mkdir()
    for i in range(3):
        np.save(d / f"{i:06d}.npy", stack[i])
    out, _ = load_depth_files(FileDepthConfig(d, kind="disparity"), [f"{i:06d}.png" for i in range(3)], (16, 12))
    assert out.shape == (3, 12, 16)
    np.testing.assert_allclose(out[1], stack[1].reshape(12, 2, 16, 2).mean((1, 3)), rtol=1e-5)
    assert out[0, 0, 0] == pytest.approx(stack[0, :2, :2].sum() / 3, rel=1e-5)  # the invalid 0 is not averaged in


def test_count_and_size_mismatch(depth_dir, tmp_path):
    frames = [f"{i:06d}.png" for i in range(5)]
    with pytest.raises(DepthError, match="expected 5 depth files.*got 4"):
        load_depth_files(FileDepthConfig(depth_dir, match="order"), frames, (320, 240))
    with pytest.raises(DepthError, match="no depth file for"):
        load_depth_files(FileDepthConfig(depth_dir), ["images/000001.png"], (320, 240))
    with pytest.raises(DepthError, match="640x480.*frames are 320x320"):
        load_depth_files(FileDepthConfig(depth_dir), ["000000.png"], (320, 320))
    np.save(tmp_path / "stack.npy", np.ones((2, 8, 8), np.float32))
    with pytest.raises(DepthError, match="expected 3 depth maps.*got 2"):
        load_depth_files(FileDepthConfig(tmp_path / "stack.npy"), ["a", "b", "c"], (8, 8))


def test_bad_files(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "000000.png").write_bytes(b"not a png at all")
    with pytest.raises(DepthError, match="cannot read depth file"):
        load_depth_files(FileDepthConfig(d), ["000000.png"], (8, 8))
    (d / "000000.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(d / "000000.png")
    with pytest.raises(DepthError, match="no valid pixel"):
        load_depth_files(FileDepthConfig(d), ["000000.png"], (8, 8))
    (d / "000000.png").unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "000000.png")
    with pytest.raises(DepthError, match="colour image"):
        load_depth_files(FileDepthConfig(d), ["000000.png"], (8, 8))
    (d / "000000.png").unlink()
    a = np.ones((8, 8), np.float32)
    a[3, 3] = np.nan
    np.save(d / "000000.npy", a)
    with pytest.raises(DepthError, match="NaN"):
        load_depth_files(FileDepthConfig(d), ["000000.png"], (8, 8))
    with pytest.raises(DepthError, match="not found"):
        load_depth_files(FileDepthConfig(tmp_path / "missing"), ["000000.png"], (8, 8))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DepthError, match="no depth files"):
        load_depth_files(FileDepthConfig(empty), ["000000.png"], (8, 8))


def test_order_match_rows_checks_only_the_frames_asked_for(tmp_path):
    """A [T,H,W] stack in frame order may leave frames outside the prior empty (all 0)."""
    stack = np.stack([_raw(k) for k in SOURCE])  # uint16 millimetres
    stack[1] = 0  # e.g. a held-out test view the user blanked
    np.savez(tmp_path / "all.npz", depth=stack)
    frames = [f"{i:06d}.png" for i in range(len(SOURCE))]
    cfg = FileDepthConfig(tmp_path / "all.npz", match="order")
    out, _ = load_depth_files(cfg, frames, (640, 480), rows=[0, 2, 3])
    assert out.shape == (3, 480, 640)
    np.testing.assert_array_equal(out[1], np.where(stack[2] == 65535, 0, stack[2]) / np.float32(1000.0))
    with pytest.raises(DepthError, match=r"all.npz\[1\] has no valid pixel"):
        load_depth_files(cfg, frames, (640, 480))
