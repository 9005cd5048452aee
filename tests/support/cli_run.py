"""A small real run made by the real CLI, shared by the robustness tests (writers, OS errors, hostile files):
5 ICL-NUIM frames at 160x120, known poses, sensor depth, 4 training iterations. Plus the in-process CLI helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recon.artifacts import RunPaths

ROOT = Path(__file__).resolve().parents[2]
ICL = ROOT.parent / "shared" / "data" / "icl_nuim_livingroom_5frames"


def recon(capsys, *args: str | Path) -> tuple[int, str]:
    """Run `recon ARGS` in-process; (exit status, stderr)."""
    from recon.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def one_error(rc: int, err: str) -> str:
    """Non-zero exit, no traceback, exactly one `error:` line (returned)."""
    assert rc != 0, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    print(errors[0])
    return errors[0]


def icl_c2w() -> list[np.ndarray]:
    lines = [ln for ln in (ICL / "trajectory.log").read_text().splitlines() if ln.strip()]
    return [np.array([[float(v) for v in ln.split()] for ln in lines[k * 5 + 1 : k * 5 + 5]]) for k in range(5)]


def make_icl_run(tmp: Path) -> RunPaths:
    """`recon train` (in-process) on the 5 ICL-NUIM frames with known poses and sensor depth -> tmp/run."""
    from depth.geometry import opencv_to_opengl
    from recon.cli import main

    poses = tmp / "icl_transforms.json"
    frames = [
        {"file_path": f"color/{i:05d}.jpg", "transform_matrix": opencv_to_opengl(c).tolist()}
        for i, c in enumerate(icl_c2w())
    ]
    poses.write_text(
        json.dumps({"fl_x": 525.0, "fl_y": 525.0, "cx": 319.5, "cy": 239.5, "w": 640, "h": 480, "frames": frames})
    )
    out = tmp / "run"
    rc = main(
        ["train", str(ICL / "color"), "--out", str(out), "--preset", "cpu", "--max-size", "160", "--poses", str(poses)]
        + ["--backend", "file", "--depth-files", str(ICL / "depth"), "--iterations", "4", "-q", "--set"]
        + ["train.max_init_points=500", "train.max_size=96", "train.video_frames=0", "depth.preview=false"]
    )
    assert rc == 0
    return RunPaths(out)


_BUILT: dict[str, RunPaths] = {}


def shared_icl_run(tmp_path_factory) -> RunPaths:
    """make_icl_run once per test session (test_os_errors uses it too): READ-ONLY."""
    if "icl" not in _BUILT:
        _BUILT["icl"] = make_icl_run(tmp_path_factory.mktemp("writers"))
    return _BUILT["icl"]
