"""ruff (lint + format) and mypy pass on the project: the README's test command fails when they fail."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [("check", "."), ("format", "--check", ".")], ids=["lint", "format"])
def test_ruff(command):
    out = _run(str(BIN / "ruff"), *command)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]


def test_mypy():
    out = _run(str(BIN / "mypy"), timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]


@pytest.mark.parametrize("script", ["scripts/setup.sh", ".ci/run", "benchmarks/cuda_checks.sh"])
def test_shell_scripts_parse(script):
    out = _run("bash", "-n", script)
    assert out.returncode == 0, out.stderr


def test_cuda_checks_script_runs_its_steps_in_budget_without_a_gpu(tmp_path):
    """benchmarks/cuda_checks.sh runs only on a lent GPU machine, one call at a time: here it must still get from
    its first line to its last (no unset variable, every step skipped or run, the log and the archive written), so
    an edit cannot spend a GPU call on a shell error. One step runs through its `run` helper: the parity tests, which
    skip their CUDA cases here (a training step would prepare a run first). The gsplat build it starts is cut after
    1 s, in tmp_path."""
    import os
    import tarfile

    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        PY=sys.executable,
        WHEELS=str(tmp_path / "no-wheels"),
        PREPARED=str(tmp_path / "no-runs"),
        BUDGET_S="150",
        CHECKS="parity",
        GSPLAT_BUILD_S="1",
        TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
    )
    out = subprocess.run(
        ["bash", "benchmarks/cuda_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    log = (tmp_path / "out" / "checks.log").read_text()
    # rc 124 where nvcc is there (the build cut), 0 where gsplat finds no toolkit and builds nothing
    assert re.search(r"gsplat build: .*rc=\d+ seconds=\d+", log) and log.rstrip().endswith("done"), log[-3000:]
    assert "START parity (limit " in log and re.search(r"END parity rc=0 in \d+s", log), log[-3000:]
    assert "s] SKIP " not in log and "START dvd" not in log and "START train" not in log  # only what CHECKS names
    with tarfile.open(tmp_path / "out" / "logs.tgz") as tar:
        assert tar.getnames()
