"""Nonsense options: one `error: ...` line, a non-zero exit, nothing written; honest --help; real flags in messages.

Every probe goes through the real entry point `recon.cli.main([...])` (in-process: the checks run before any
stage, so no video is decoded) with a run directory that must not appear.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / "shared" / "data" / "7scenes_redkitchen_rgbd" / "video_30fps.mp4"
COMMANDS = ("run", "frames", "poses", "depth", "align", "fuse", "train", "export", "report", "eval", "batch", "view")


def _one_error_line(capsys, argv: list[str]) -> str:
    """Run `recon argv`; assert a non-zero exit and exactly one stderr line `error: ...`; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


PROBES = [
    (["--max-frames", "-1"], "--max-frames must be an integer >= 0 (0 = no limit), got -1"),
    (["--max-size", "-5"], "--max-size must be an integer >= 0 (0 = the source size), got -5"),
    (["--max-size", "5"], "--max-size must be 0 (the source size) or >= 16 pixels, got 5"),
    (["--iterations", "0"], "--iterations must be an integer in [1, 1000000000], got 0"),
    (["--iterations", "-5"], "--iterations must be an integer in [1, 1000000000], got -5"),
    (["--stride", "0"], "--stride must be an integer >= 1, got 0"),
    (["--stride", "-3"], "--stride must be an integer >= 1, got -3"),
    (["--target-fps", "-2"], "--target-fps must be a number in [0, 1000] (0 = the source rate), got -2.0"),
    (["--test-every", "1"], "--test-every must be 0 (no test views) or >= 2"),
    (["--train-views", "-1"], "--train-views must be an integer >= 0 (0 = all), got -1"),
    (["--device", "banana"], "--device: device 'banana' is not a device (auto, cpu, cuda or cuda:N)"),
    (["--stride", "abc"], "--stride: expected an integer, got 'abc'"),
    (["--target-fps", "fast"], "--target-fps: expected a number, got 'fast'"),
    (["--backend", "magic"], "invalid choice 'magic' for argument '--backend'"),
    (["--no-such-option"], "Unrecognized options: --no-such-option"),
    (["--backend", "file"], "depth backend 'file' needs the maps: pass --depth-files PATH"),
    (["--poses", "/no/such/poses"], "--poses /no/such/poses does not exist"),
    (["--split", "/no/such/split.json"], "split file /no/such/split.json not found"),
    (["--set", "train.lr_means=-0.001"], "train.lr_means must be a number in [0, 10], got -0.001"),
    (["--set", "train.cpu_threads=-2"], "train.cpu_threads must be an integer in [0, 1024]"),
    (["--set", "depth.stereo.cpu_threads=-1"], "depth.stereo.cpu_threads must be an integer in [0, 1024]"),
    (["--set", "poses.num_threads=-7"], "poses.num_threads must be an integer in [-1, 1024] (-1 = all), got -7"),
    (["--set", "fuse.min_confidence=1.5"], "fuse.min_confidence must be a number in [0, 1], got 1.5"),
    (["--set", "poses.min_registered_fraction=-0.1"], "poses.min_registered_fraction must be a number in [0, 1]"),
    (["--set", "train.ssim_lambda=2"], "train.ssim_lambda must be a number in [0, 1], got 2.0"),
    (["--set", "train.iterations=.nan"], "train.iterations: expected an integer, got nan"),
    (["--set", "frames.target_fps=.inf"], "frames.target_fps must be a number in [0, 1000]"),
    (["--set", "train.sh_degree=7"], "train.sh_degree must be an integer in [0, 4], got 7"),
    (["--set", "depth.stereo.window=4"], "depth.stereo.window must be odd, got 4"),
    (["--set", "depth.dvd.overlap=81"], "DVD window 81 / overlap 81: need 0 <= overlap < window"),
    (["--set", "depth.dvd=3"], "depth.dvd: expected a mapping of fields"),
    (["--set", "train.background=[1,2,3]"], "train.background must be a number in [0, 1] (RGB), got 2.0"),
    (["--set", "fuse.min_views=4", "--iterations", "9", "--set", "fuse.neighbors=1"], "needs fuse.neighbors >= 3"),
    (["--set", "fuse.neighbors=1", "fuse.min_views=4"], "fuse.min_views 4 needs fuse.neighbors >= 3"),
    (["--set", "depth.stereo.range_percentiles=[50,10]"], "range_percentiles must be low < high"),
    (["--set", "train.seed=99999999999"], "train.seed must be an integer in [0, 2147483647]"),
    (["--set", "train.device=tpu"], "train.device: device 'tpu' is not a device"),
]


@pytest.fixture
def no_pipeline(monkeypatch):
    """A probe that got past the checks fails at once instead of running the pipeline."""
    import recon.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the options were accepted: the pipeline started")

    monkeypatch.setattr(recon.pipeline, "run_pipeline", refuse)


@pytest.mark.parametrize("args, message", PROBES, ids=[" ".join(a) for a, _ in PROBES])
def test_nonsense_option_is_one_line_and_touches_nothing(capsys, tmp_path, no_pipeline, args, message):
    run = tmp_path / "run"
    line = _one_error_line(capsys, ["run", str(VIDEO), "--out", str(run), "--preset", "cpu", *args])
    assert message in line
    assert not run.exists()  # checked before anything is written


def test_cuda_device_without_a_gpu_is_refused_up_front(capsys, tmp_path, no_pipeline):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    line = _one_error_line(capsys, ["frames", str(VIDEO), "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert "device cuda requested but no CUDA GPU is available (use cpu)" in line
    assert not (tmp_path / "r").exists()


def test_flags_and_yaml_reach_the_same_checks(capsys, tmp_path, no_pipeline):
    yml = tmp_path / "c.yaml"
    yml.write_text("frames: {max_frames: -1}\n")
    line = _one_error_line(capsys, ["frames", str(VIDEO), "--out", str(tmp_path / "r"), "--config", str(yml)])
    assert line == "error: frames.max_frames must be an integer >= 0 (0 = no limit), got -1"


def test_zero_max_size_keeps_the_source_size():
    """0 is documented (frames.Config.max_size) as "keep the source size", so it stays valid."""
    from recon.cli import StageCommand, build_config

    assert build_config(StageCommand(preset="cpu", max_size=0)).frames.max_size == 0


# ------------------------------------------------------------------------------------------------- --help


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _preset_values():
    from recon.config import preset_config, resolve_preset

    return resolve_preset("auto"), preset_config("cpu"), preset_config("cuda")


@pytest.mark.parametrize("command", ["run", "train", "frames"])
def test_help_shows_real_defaults_and_no_double_negatives(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "250")
    text = _help(capsys, command)
    here, cpu, cuda = _preset_values()
    mine, other = (cpu, cuda) if here == "cpu" else (cuda, cpu)
    iters = re.search(r"--iterations N .*", text)
    assert iters is not None, text
    assert f"(default: {mine.train.iterations} from the {here} preset" in iters.group(0)
    assert f"preset: {other.train.iterations})" in iters.group(0)
    assert f"(default: {mine.split.test_every})" in re.search(r"--test-every N .*", text).group(0)  # type: ignore[union-attr]
    assert "--no-no-" not in text and "--no-verbose" not in text and "--no-resume" not in text
    assert "--no-dedup" in text and not re.search(r"--dedup\b", text)
    assert "(default: None)" not in text and "{None}" not in text
    assert re.search(rf"usage: recon {command} .*INPUT", text)


def test_no_dedup_is_the_only_dedup_flag():
    from recon.cli import StageCommand, build_config

    assert build_config(StageCommand(preset="cpu")).frames.dedup is True
    assert build_config(StageCommand(preset="cpu", dedup=False)).frames.dedup is False


def test_repeated_set_and_force_keep_every_value():
    from recon.cli import merge_repeated

    argv = ["run", "v.mp4", "--set", "a=1", "--max-frames", "-1", "--set=b=2", "c=3", "--force", "poses"]
    assert merge_repeated(argv, ("--set", "--force")) == [
        *("run", "v.mp4", "--max-frames", "-1"),
        *("--set", "a=1", "b=2", "c=3", "--force", "poses"),
    ]


# ------------------------------------------------------------------------------------------------- flags in messages


def _real_options(capsys) -> set[str]:
    """Every long option of every recon subcommand, read from the CLI's own --help."""
    import os

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "250"
    try:
        opts: set[str] = set()
        for command in COMMANDS:
            for line in _help(capsys, command).splitlines():
                m = re.match(r"^[│ ]{0,3}(?:-\w, )?(--[a-z0-9-]+)", line)
                if m:
                    opts.add(m.group(1))
        return opts
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


FOREIGN = re.compile(r"(ns-train|ray start|benchmarks/\w+\.py)[^\n`]*$")  # flags of other programs named in a text
FOREIGN_MODULES = {"recon/cluster.py"}  # builds `ray start` command lines: every flag in it is Ray's


def _mentioned_flags() -> dict[str, list[str]]:
    """--flags in the string literals (f-strings included) of recon/, depth/, splat/ -> where they are."""
    found: dict[str, list[str]] = {}
    for pkg in ("recon", "depth", "splat"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if str(path.relative_to(ROOT)) in FOREIGN_MODULES:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                    continue
                for m in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9-]*)", node.value):
                    if FOREIGN.search(node.value[max(0, m.start() - 60) : m.start()]):
                        continue
                    found.setdefault(m.group(1), []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_flag_named_in_a_message_exists(capsys):
    real = _real_options(capsys)
    assert {"--backend", "--max-frames", "--set", "--gt-depth", "--no-dedup"} <= real
    mentioned = _mentioned_flags()
    assert len(mentioned) >= 15  # the scan does see the project's messages
    missing = {flag: where for flag, where in mentioned.items() if flag not in real}
    assert missing == {}


# ------------------------------------------------------------------------------------------------- stale results


def test_report_refuses_a_directory_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    line = _one_error_line(capsys, ["report", str(tmp_path)])
    assert line == (
        f"error: {tmp_path} is not a run directory (no manifest.json or frames.json); "
        "make one with `recon run INPUT --out DIR`"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    _one_error_line(capsys, ["report", str(tmp_path / "missing")])
    assert not (tmp_path / "missing").exists()


def test_split_file_with_a_duplicate_view_is_refused(tmp_path):
    from recon.errors import ReconError
    from recon.stages.split import Config, make_split

    files = [f"frames/{i:06d}.png" for i in range(10)]
    for train, dup in (([1, 2, 2], "2"), ([1, "000003", 3], "3")):
        f = tmp_path / "split.json"
        f.write_text(json.dumps({"train": train, "test": [0]}))
        with pytest.raises(ReconError, match=rf"frame {dup}'? is listed twice in 'train'|frame {dup} is listed"):
            make_split(10, files, Config(split_file=f))
    f.write_text(json.dumps({"train": [1, 2], "test": [0, "000000.png"]}))
    with pytest.raises(ReconError, match=r"frame '000000.png' is listed twice in 'test' \(as 0 and '000000.png'\)"):
        make_split(10, files, Config(split_file=f))


def test_train_views_beyond_the_available_frames_is_refused_and_the_protocol_records_what_is_used():
    from recon.errors import ReconError
    from recon.stages.split import Config, make_split

    files = [f"{i:06d}.png" for i in range(20)]
    registered = np.ones(20, bool)
    registered[[3, 5]] = False  # 20 frames, 3 test views (0, 8, 16), 2 unregistered: 15 candidates
    with pytest.raises(ReconError, match=r"--train-views 1000: only 15 registered frames are left for training"):
        make_split(20, files, Config(train_views=1000), registered)
    split = make_split(20, files, Config(train_views=15), registered)
    assert len(split.train) == 15 and split.protocol == "test_every=8,train_views=15"
    split = make_split(20, files, Config(train_views=4), registered)
    assert len(split.train) == 4 and all(registered[split.train])  # chosen among registered frames


def test_depth_files_are_counted_one_per_frame(tmp_path):
    from depth.errors import DepthError
    from depth.file import FileDepthConfig, load_depth_files

    frames = [f"frames/{i:06d}.png" for i in range(4)]
    maps = np.ones((3, 6, 8), np.float32)
    np.save(tmp_path / "three.npy", maps)
    with pytest.raises(DepthError, match=r"expected 4 depth maps \(one per frame\), got 3"):
        load_depth_files(FileDepthConfig(tmp_path / "three.npy"), frames, (8, 6))
    np.savez(tmp_path / "named.npz", depth=np.ones((4, 6, 8), np.float32), files=np.array(["a", "b", "c"]))
    with pytest.raises(DepthError, match=r"expected 4 names in 'files' \(one per map\), got 3"):
        load_depth_files(FileDepthConfig(tmp_path / "named.npz"), frames, (8, 6))
    folder = tmp_path / "maps"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"{i:06d}.npy", maps[0])
    np.save(folder / "frame-000002.depth.npy", maps[0])  # a second file that claims frame 2
    (folder / "000002.npz").write_bytes((folder / "000002.npy").read_bytes())
    with pytest.raises(DepthError, match=r"two depth files for frame 000002.png \(000002.np[yz] and 000002.np[yz]\)"):
        load_depth_files(FileDepthConfig(folder), frames, (8, 6))
    with pytest.raises(DepthError, match=r"expected 4 depth files \(one per frame\), got 6"):
        load_depth_files(FileDepthConfig(folder, match="order"), frames, (8, 6))


def test_dvd_without_weights_or_network_is_one_line_within_seconds(monkeypatch, tmp_path):
    """No weights in the cache and no route to the hub: one DepthError naming --backend stereo, at once."""
    import socket
    import time

    from depth.dvd import weights
    from depth.errors import DepthError

    def no_network(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(weights, "_hub_offline", lambda: False)
    t0 = time.monotonic()
    with pytest.raises(DepthError) as e:
        weights.resolve_weights(cache_dir=tmp_path / "cache")
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "\n" not in msg and "is not reachable (no network?)" in msg and "--backend stereo" in msg


def test_dvd_backend_offline_fails_before_any_stage_runs(monkeypatch, capsys, tmp_path):
    """`recon depth --backend dvd` on a new run, no weights, no network: one line in seconds, no frames decoded."""
    import socket
    import time

    from depth.dvd import weights

    def no_network(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setenv("DVD_SPLAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(weights, "_hub_offline", lambda: False)
    run = tmp_path / "run"
    t0 = time.monotonic()
    line = _one_error_line(capsys, ["depth", str(VIDEO), "--out", str(run), "--backend", "dvd"])
    assert time.monotonic() - t0 < 20
    assert "DVD weights are not available" in line and "--backend stereo" in line
    assert not (run / "frames").exists() and not (run / "frames.json").exists()
