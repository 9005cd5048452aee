"""No code from data: every file a user could be handed is read without running code from it.

A "hostile" file is a pickle whose object, when unpickled, creates a marker file (`open(marker, "w")`):
if the marker exists after the command, code from the file ran. Each probe plants such a file where a
command reads it (a copy of a small real run: 5 ICL-NUIM frames at 160x120, known poses, sensor depth,
4 training iterations, made once per module by the real CLI) and runs the real command in-process
(recon.cli.main); the command must exit non-zero with ONE `error:` line and no traceback, and the marker
must not exist. Checkpoints whose content does not fit (optimizer state of other shapes, another run's)
are one line too.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.cli_run import shared_icl_run

from recon.artifacts import RunPaths

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ICL = DATA / "icl_nuim_livingroom_5frames"
DVD_TINY = ROOT.parent / "shared" / "fixtures" / "dvd-tiny"


class Evil:
    """Unpickling this opens (creates) `marker` for writing: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_object_array(marker: Path) -> np.ndarray:
    arr = np.empty(1, dtype=object)
    arr[0] = Evil(marker)
    return arr


def recon(capsys, *args: str) -> tuple[int, str]:
    """Run `recon ARGS` in-process; (exit status, stderr)."""
    from recon.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, marker: Path | None = None, expect: str = "") -> str:
    """Non-zero exit, exactly one `error:` line and no traceback; the marker file was not created."""
    if marker is not None:
        assert not marker.exists(), f"code from a received file ran: {marker} was created"
    assert rc != 0, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert expect in errors[0], errors[0]
    print(errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def icl_run(tmp_path_factory) -> RunPaths:
    """A finished (through train) run made by the CLI: READ-ONLY, copy it with `run_copy`."""
    return shared_icl_run(tmp_path_factory)


@pytest.fixture
def run_copy(icl_run, tmp_path) -> RunPaths:
    dst = tmp_path / "run"
    shutil.copytree(icl_run.root, dst)
    # the manifest remembers absolute paths of the original run nowhere but its input: keep it
    return RunPaths(dst)


# --------------------------------------------------------------------------------------------------
# checkpoints


def _evil_checkpoint(path: Path, marker: Path, legacy: bool = False) -> None:
    state = {"step": 1, "params": {"means": Evil(marker)}, "optimizers": {}, "strategy_state": {}, "extent": 1.0}
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(state, f)
    else:
        torch.save(state, path)


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "plain-pickle"])
@pytest.mark.parametrize("mode", [["--resume"], ["--set", "train.eval_only=true"]], ids=["resume", "eval-only"])
def test_pickled_checkpoint_runs_no_code(run_copy, tmp_path, capsys, legacy, mode):
    marker = tmp_path / "pwned"
    _evil_checkpoint(run_copy.checkpoint, marker, legacy)
    rc, err = recon(capsys, "train", "--out", run_copy.root, "-q", *mode)
    assert_one_line_error(rc, err, marker, "checkpoint.pt")


def _mutated_checkpoint(run: RunPaths, mutate) -> None:
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    mutate(state)
    torch.save(state, run.checkpoint)


def _drop_rows(state: dict) -> None:
    """Adam moments of `means` one row short of the parameter."""
    st = state["optimizers"]["means"]["state"][0]
    st["exp_avg"] = st["exp_avg"][:-1]
    st["exp_avg_sq"] = st["exp_avg_sq"][:-1]


def _fewer_params(state: dict) -> None:
    """Parameters cut to 10 Gaussians, optimizer and strategy state left at the full count."""
    state["params"] = {k: v[:10] for k, v in state["params"].items()}


def _strategy_rows(state: dict) -> None:
    state["strategy_state"]["grad2d"] = torch.zeros(3)
    state["strategy_state"]["count"] = torch.zeros(3)


def _wrong_dtype(state: dict) -> None:
    state["params"]["means"] = state["params"]["means"].to(torch.int64)


def _missing_param(state: dict) -> None:
    del state["params"]["quats"]


def _nan_param(state: dict) -> None:
    state["params"]["scales"][0, 0] = float("nan")


def _bad_rng(state: dict) -> None:
    state["rng_numpy"] = {"bit_generator": "NoSuchGenerator", "state": 3}


def _no_optimizer(state: dict) -> None:
    del state["optimizers"]["opacities"]


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (_drop_rows, "exp_avg"),
        (_fewer_params, "optimizer"),
        (_strategy_rows, "grad2d"),
        (_wrong_dtype, "means"),
        (_missing_param, "quats"),
        (_nan_param, "scales"),
        (_bad_rng, "rng_numpy"),
        (_no_optimizer, "opacities"),
    ],
)
@pytest.mark.parametrize("mode", [["--resume"], ["--set", "train.eval_only=true"]], ids=["resume", "eval-only"])
def test_inconsistent_checkpoint_is_one_line(run_copy, capsys, mutate, expect, mode):
    _mutated_checkpoint(run_copy, mutate)
    rc, err = recon(capsys, "train", "--out", run_copy.root, "-q", *mode)
    line = assert_one_line_error(rc, err, None, "checkpoint.pt")
    assert expect in line, line


def test_resume_of_a_good_checkpoint_still_works(run_copy, capsys):
    """The validation refuses nothing a real training wrote: resume and eval-only of the run's own checkpoint."""
    rc, err = recon(capsys, "train", "--out", run_copy.root, "-q", "--resume", "--iterations", "6")
    assert rc == 0, err
    rc, err = recon(capsys, "train", "--out", run_copy.root, "-q", "--set", "train.eval_only=true")
    assert rc == 0, err


def test_another_runs_checkpoint_is_refused(icl_run, run_copy, tmp_path, capsys):
    """A checkpoint trained on other cameras (here: the same frames with other poses) is refused in one line."""
    from recon.artifacts import CameraSet

    other = RunPaths(tmp_path / "other")
    shutil.copytree(icl_run.root, other.root)
    cams = CameraSet.load(other.cameras_json)
    cams.c2w[:, :3, 3] += 0.5  # another run: the same images, other camera positions
    cams.save(other.cameras_json)
    # the checkpoint of run_copy copied into `other`
    shutil.copy2(run_copy.checkpoint, other.checkpoint)
    for mode in (["--resume"], ["--set", "train.eval_only=true"]):
        rc, err = recon(capsys, "train", "--out", other.root, "-q", *mode)
        assert_one_line_error(rc, err, None, "another run")


def test_checkpoint_without_run_id_is_refused(run_copy, capsys):
    _mutated_checkpoint(run_copy, lambda s: s.pop("run_id"))
    rc, err = recon(capsys, "train", "--out", run_copy.root, "-q", "--resume")
    assert_one_line_error(rc, err, None, "run id")


# --------------------------------------------------------------------------------------------------
# depth files of the run


@pytest.mark.parametrize(
    "command",
    [
        ["align", "--out", "{run}", "-q", "--force", "align"],
        ["recon.api", "disparity"],
    ],
    ids=["align", "api"],
)
def test_pickled_disparity_npz_runs_no_code(run_copy, tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    np.savez(run_copy.disparity_npz, disparity=evil_object_array(marker))
    _run_reader(run_copy, capsys, command, marker, "disparity.npz")


@pytest.mark.parametrize(
    "command",
    [
        ["fuse", "--out", "{run}", "-q", "--force", "fuse"],
        ["train", "--out", "{run}", "-q", "--force", "train"],
        ["export", "nerfstudio", "{run}"],
        ["recon.api", "depth"],
    ],
    ids=["fuse", "train", "export", "api"],
)
def test_pickled_aligned_npz_runs_no_code(run_copy, tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    np.savez(run_copy.aligned_npz, depth=evil_object_array(marker), confidence=evil_object_array(marker))
    _run_reader(run_copy, capsys, command, marker, "aligned.npz")


def _run_reader(run: RunPaths, capsys, command: list[str], marker: Path, expect: str) -> None:
    from recon import api
    from recon.errors import ReconError

    if command[0] == "recon.api":
        with pytest.raises(ReconError) as e:
            getattr(api.load_run(run.root), command[1])
        assert not marker.exists() and "\n" not in str(e.value) and expect in str(e.value)
        return
    rc, err = recon(capsys, *[a.replace("{run}", str(run.root)) for a in command])
    assert_one_line_error(rc, err, marker, expect)


def test_report_with_pickled_depth_runs_no_code(run_copy, tmp_path, capsys):
    """The report shows a damaged file in its own section (by design it still writes the page): no code runs."""
    marker = tmp_path / "pwned"
    np.savez(run_copy.disparity_npz, disparity=evil_object_array(marker))
    np.savez(run_copy.aligned_npz, depth=evil_object_array(marker), confidence=evil_object_array(marker))
    rc, err = recon(capsys, "report", run_copy.root)
    assert not marker.exists()
    assert rc == 0 and "Traceback" not in err, err
    assert "disparity.npz" in run_copy.report_html.read_text()


# --------------------------------------------------------------------------------------------------
# files the user passes in


def _file_backend_inputs(tmp_path: Path, marker: Path) -> dict[str, Path]:
    folder = tmp_path / "npy_folder"
    folder.mkdir()
    for i in range(5):
        np.save(folder / f"{i:06d}.npy", evil_object_array(marker), allow_pickle=True)
    raw = tmp_path / "raw_folder"
    raw.mkdir()
    for i in range(5):
        with open(raw / f"{i:06d}.npy", "wb") as f:  # a plain pickle named .npy
            pickle.dump(Evil(marker), f)
    npz_folder = tmp_path / "npz_folder"
    npz_folder.mkdir()
    for i in range(5):
        np.savez(npz_folder / f"{i:06d}.npz", depth=evil_object_array(marker))
    stack = tmp_path / "stack.npz"
    np.savez(stack, depth=evil_object_array(marker), files=evil_object_array(marker))
    stack_npy = tmp_path / "stack.npy"
    np.save(stack_npy, evil_object_array(marker), allow_pickle=True)
    return {"npy_folder": folder, "raw_folder": raw, "npz_folder": npz_folder, "stack": stack, "stack_npy": stack_npy}


@pytest.mark.parametrize("which", ["npy_folder", "raw_folder", "npz_folder", "stack", "stack_npy"])
def test_pickled_file_depth_inputs_run_no_code(run_copy, tmp_path, capsys, which):
    marker = tmp_path / "pwned"
    src = _file_backend_inputs(tmp_path, marker)[which]
    rc, err = recon(
        capsys, "depth", "--out", run_copy.root, "-q", "--backend", "file", "--depth-files", src, "--force", "depth"
    )
    assert_one_line_error(rc, err, marker, src.name)


@pytest.mark.parametrize("field, key", [("gt_depth", "depth"), ("eval_mask", "mask")])
def test_pickled_evaluation_inputs_run_no_code(run_copy, tmp_path, capsys, field, key):
    marker = tmp_path / "pwned"
    path = tmp_path / f"{field}.npz"
    np.savez(path, **{key: evil_object_array(marker)})
    rc, err = recon(
        capsys, "train", "--out", run_copy.root, "-q", "--set", f"train.{field}={path}", "train.eval_only=true"
    )
    assert_one_line_error(rc, err, marker, path.name)


def _dvd_args(run: RunPaths, dit: Path, vae: Path) -> list:
    return ["depth", "--out", run.root, "-q", "--backend", "dvd", "--force", "depth", "--device", "cpu"] + [
        "--dvd-weights",
        dit,
        "--vae-weights",
        vae,
        "--dvd-config",
        DVD_TINY / "config.json",
        "--dtype",
        "float32",
    ]


@pytest.mark.parametrize("name", ["Wan2.1_VAE.pth", "vae.ckpt", "vae.pt"])
def test_pickled_vae_weights_run_no_code(run_copy, tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    vae = tmp_path / name
    torch.save({"encoder.conv1.weight": Evil(marker)}, vae)
    rc, err = recon(capsys, *_dvd_args(run_copy, DVD_TINY / "dit.safetensors", vae))
    assert_one_line_error(rc, err, marker, name)


def test_pickled_vae_in_a_diffusers_folder_runs_no_code(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = tmp_path / "vae_folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    torch.save({"encoder.conv_in.weight": Evil(marker)}, folder / "diffusion_pytorch_model.bin")
    rc, err = recon(capsys, *_dvd_args(run_copy, DVD_TINY / "dit.safetensors", folder))
    assert_one_line_error(rc, err, marker, "vae_folder")


@pytest.mark.parametrize("name", ["model.pth", "dvd.ckpt", "model.safetensors"])
def test_pickled_dvd_weights_run_no_code(run_copy, tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    dit = tmp_path / name
    torch.save({"pipe.dit.patch_embedding.weight": Evil(marker)}, dit)
    rc, err = recon(capsys, *_dvd_args(run_copy, dit, DVD_TINY / "vae.pth"))
    assert_one_line_error(rc, err, marker, name)


def test_yaml_config_with_python_tags_runs_no_code(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"train:\n  iterations: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    rc, err = recon(capsys, "train", "--out", run_copy.root, "-q", "--config", cfg)
    assert_one_line_error(rc, err, marker, "evil.yaml")


def test_marker_probe_detects_unpickling(tmp_path):
    """The probe itself works: loading the hostile file WITH pickling allowed does create the marker."""
    marker = tmp_path / "pwned"
    np.save(tmp_path / "a.npy", evil_object_array(marker), allow_pickle=True)
    np.load(tmp_path / "a.npy", allow_pickle=True)
    assert marker.exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
