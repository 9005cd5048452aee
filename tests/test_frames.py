"""Frames stage on real videos and image folders, and its bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from recon.artifacts import RunPaths
from recon.errors import ReconError
from recon.stages import StageContext
from recon.stages import frames as frames_stage
from recon.stages.frames import Config as FramesConfig
from recon.video import select_indices, target_size

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KITCHEN = DATA / "7scenes_redkitchen_rgbd"
VIDEOS = DATA / "real_videos"


def _write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264", fps: int = 10) -> None:
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    for f in frames:
        for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def test_select_indices_and_size():
    assert select_indices(10, 30.0, stride=3) == [0, 3, 6, 9]
    assert select_indices(300, 30.0, target_fps=10) == list(range(0, 300, 3))
    idx = select_indices(450, 30.0, max_frames=60)
    assert len(idx) == 60 and idx[0] == 0 and idx[-1] == 449 and np.all(np.diff(idx) > 0)
    assert target_size(640, 480, 320) == (320, 240)
    assert target_size(368, 480, 320) == (245, 320)
    assert target_size(100, 50, 0) == (100, 50)


def test_kitchen_video_sampled_and_matches_source_jpegs(tmp_path):
    paths = RunPaths(tmp_path / "run")
    summary = frames_stage.run(
        StageContext(paths, KITCHEN / "video_30fps.mp4"), FramesConfig(max_frames=60, max_size=320)
    )
    meta = json.loads(paths.frames_json.read_text())
    assert summary["frames"] == 60 == len(meta["frames"])
    assert meta["fps"] == pytest.approx(30.0) and meta["original_size"] == [640, 480] and meta["size"] == [320, 240]
    src = [f["source_index"] for f in meta["frames"]]
    assert src[0] == 0 and src[-1] == 449
    # The video frame k is source JPEG k (PROVENANCE); our decoded, resized frame must match it.
    f = next(f for f in meta["frames"] if f["source_index"] % 3 == 0 and f["source_index"] > 100)
    ours = np.asarray(Image.open(paths.root / f["file"]), dtype=np.float32)
    jpg = Image.open(KITCHEN / "rgb" / f"frame-{f['source_index']:06d}.color.jpg").resize((320, 240), Image.LANCZOS)
    err = np.abs(ours - np.asarray(jpg, dtype=np.float32)).mean()
    assert err < 4.0, f"decoded frame differs from its source JPEG by {err:.2f} grey levels"
    assert f["timestamp"] == pytest.approx(f["source_index"] / 30.0, abs=1e-3)


def test_mpeg4_part2_and_portrait_video(tmp_path):
    p = RunPaths(tmp_path / "roller")
    assert (
        frames_stage.run(StageContext(p, VIDEOS / "davis_rollercoaster.mp4"), FramesConfig(max_size=320))["frames"]
        >= 60
    )
    q = RunPaths(tmp_path / "cat")
    frames_stage.run(StageContext(q, VIDEOS / "cotracker_cat.mp4"), FramesConfig(max_size=240, target_fps=10))
    meta = json.loads(q.frames_json.read_text())
    assert meta["size"][1] == 240 and meta["size"][0] < 240  # portrait stays portrait
    assert 40 <= len(meta["frames"]) <= 45  # 87 frames at 20 fps sampled at 10 fps


def test_image_folder_rgba_composited_on_white(tmp_path):
    folder = tmp_path / "lego"
    folder.mkdir()
    src = DATA / "nerf_synthetic_lego_train100_400px" / "train"
    for name in ["r_0.png", "r_1.png", "r_10.png", "r_2.png"]:
        shutil.copy(src / name, folder / name)
    p = RunPaths(tmp_path / "run")
    frames_stage.run(StageContext(p, folder), FramesConfig(max_size=100))
    meta = json.loads(p.frames_json.read_text())
    assert [f["source_name"] for f in meta["frames"]] == ["r_0.png", "r_1.png", "r_2.png", "r_10.png"]  # natural order
    img = np.asarray(Image.open(p.root / meta["frames"][0]["file"]))
    assert img.shape == (100, 100, 3) and (img[0, 0] == 255).all()  # transparent corner -> white
    assert meta["composited_on"] == [1.0, 1.0, 1.0]  # training renders on it (TrainConfig.background None)


def test_dedup_drops_repeated_frames(tmp_path):
    base = np.asarray(Image.open(KITCHEN / "rgb" / "frame-000000.color.jpg").resize((160, 120)))
    moved = np.asarray(Image.open(KITCHEN / "rgb" / "frame-000060.color.jpg").resize((160, 120)))
    video = tmp_path / "pause.mp4"
    _write_video(video, [base] * 5 + [moved] * 5)
    p = RunPaths(tmp_path / "run")
    s = frames_stage.run(StageContext(p, video), FramesConfig())
    assert s["frames"] == 2 and s["dropped near-duplicates"] == 8


@pytest.mark.parametrize("case", ["missing", "text_as_mp4", "truncated", "one_frame", "static", "bad_image"])
def test_bad_input_is_one_clear_error_and_no_frames(tmp_path, case):
    base = np.asarray(Image.open(KITCHEN / "rgb" / "frame-000000.color.jpg").resize((160, 120)))
    if case == "missing":
        inp, expect = tmp_path / "nope.mp4", "does not exist"
    elif case == "text_as_mp4":
        inp = tmp_path / "text.mp4"
        inp.write_text("this is not a video\n")
        expect = "not a readable video"
    elif case == "truncated":
        inp = tmp_path / "trunc.mp4"
        inp.write_bytes((KITCHEN / "video_30fps.mp4").read_bytes()[:300_000])
        expect = "truncated"
    elif case == "one_frame":
        inp = tmp_path / "one.mp4"
        _write_video(inp, [base])
        expect = "1 frame"
    elif case == "static":
        inp = tmp_path / "static.mp4"
        _write_video(inp, [base] * 20)
        expect = "camera does not move"
    else:
        inp = tmp_path / "imgs"
        inp.mkdir()
        for i in range(3):
            Image.fromarray(base).save(inp / f"{i}.jpg")
        (inp / "3.jpg").write_bytes(b"not an image")
        expect = "3.jpg cannot be read"
    p = RunPaths(tmp_path / "run")
    with pytest.raises(ReconError) as e:
        frames_stage.run(StageContext(p, inp), FramesConfig())
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
    assert not p.frames_json.exists() and not p.frames_dir.exists()
