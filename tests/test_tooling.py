"""ruff (lint + format) and mypy pass on the project: the README's test command fails when they fail."""

from __future__ import annotations

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
