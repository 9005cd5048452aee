#!/usr/bin/env bash
# Set up everything DVD-Splat needs, idempotently: system packages, .venv/, the pinned Python stack,
# the project itself (editable). A re-run with nothing changed returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libusb-1.0-0 libgl1 libgomp1 procps chromium chromium-driver)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv

stamp=.venv/.dvd-splat-setup
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/recon ] && [ -d .venv/lib/python3*/site-packages/torch ]; then
  echo "setup: up to date"
  exit 0
fi
echo "setup: installing the Python stack into .venv (first time: several minutes)"
.venv/bin/python -m pip install -q --upgrade "pip>=24"
# torch first: the verified CUDA build (runs on CPU too), then everything else under the same pins.
.venv/bin/python -m pip install -q -c constraints.txt torch torchvision
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# numba compiles the CPU rasterizer once (cached beside splat/numba_raster.py); do it here rather than in the
# first run's first training step (about 25 s of CPU).
t0=$(date +%s)
.venv/bin/python -c "import torch; from splat.numba_raster import compile_kernels; compile_kernels(torch.float32)" \
  && echo "setup: compiled the CPU rasterizer in $(( $(date +%s) - t0 )) s" \
  || echo "setup: the CPU rasterizer did not compile; training will use the slower PyTorch one"
echo "$want" > "$stamp"
echo "setup: done"
