#!/usr/bin/env bash
# The CUDA checks (CUDA_CHECKS.md beside the project) in ONE call on a lent GPU machine, inside a time budget.
#
# That machine runs its own python3 and torch (not the project's pins) and reaches no package registry, so:
#   WHEELS    folder of wheels it lacks (gsplat 1.4.0, diffusers 0.42.1, importlib_metadata, plyfile), installed
#             with --target /tmp/site (default .devrun/whl)
#   PREPARED  folder where benchmarks/sparse_view.py prepared the runs on a CPU machine (default .devrun/svb):
#               sparse_view.py --datasets lego --views 6 --frame-size 400 --inits random --iterations 1 --out DIR
#               sparse_view.py --datasets 7scenes --views 3 --seven-span 0 149 --num-frames 30 \
#                   --prior-frames non-test --inits depth --no-oracle --iterations 1 --out DIR
#             (the training rows run with --reuse-prepared: pycolmap, which the SfM init and the pose stage need, is
#             a 38 MB wheel, beyond what one call carries beside the rest, so the SfM-init rows are not run there)
#   (both defaults live in .devrun/, which the device tool's `carry` names; keep it out of git with
#   `echo /.devrun/ >> .git/info/exclude`)
#   BUDGET_S  seconds for the whole script (default 530); every step gets what is left, minus the steps after it
#   CHECKS    which checks beside the build (default "dvd fallback parity train"; also "mcmc")
#   OUT       what comes back (the device tool's $OUT, at most 8 files): checks.log (each step's command, exit
#             status, seconds and the tail of its output), gsplat_build.log, train_*.json, logs.tgz (whole logs)
#
# Order: gsplat's first-use JIT build of its CUDA kernels runs in the background (CPU-bound) while the DVD speed
# rows (GPU-bound) run; then renderer parity with gsplat (tests/test_render.py), then the CUDA training rows.
#   bash benchmarks/cuda_checks.sh
set -u
OUT=${OUT:-/tmp/cuda_checks}
WHEELS=${WHEELS:-.devrun/whl}
PREPARED=${PREPARED:-.devrun/svb}
BUDGET_S=${BUDGET_S:-530}
CHECKS=${CHECKS:-dvd fallback parity train}
PY=${PY:-python3}
STEPS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
touch "$STEPS/.mark"
T0=$(date +%s)
LOG="$OUT/checks.log"
say() { echo "[+$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
# run NAME SECONDS_AT_MOST RESERVE CMD...: run CMD with a limit of min(SECONDS_AT_MOST, left - RESERVE), log its tail
run() {
    local name=$1 most=$2 reserve=$3
    shift 3
    local lim=$(($(left) - reserve))
    ((lim > most)) && lim=$most
    if ((lim < 10)); then
        say "SKIP $name: out of time"
        return 0
    fi
    say "START $name (limit ${lim}s): $*"
    local t=$(date +%s)
    timeout "$lim" "$@" >"$STEPS/$name.log" 2>&1
    local rc=$?
    say "END $name rc=$rc in $(($(date +%s) - t))s"
    tail -n 40 "$STEPS/$name.log" | sed "s/^/    $name| /" >>"$LOG"
    # the training logs this step wrote (variants of later steps reuse the same run directories)
    find "$PREPARED" -name train_log.jsonl -newer "$STEPS/.mark" 2>/dev/null | while read -r f; do
        cp "$f" "$STEPS/${name}_$(basename "$(dirname "$(dirname "$f")")").jsonl"
    done
    touch "$STEPS/.mark"
}

say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1); $(nproc) cores"
say "nvcc: $(nvcc --version 2>&1 | tail -n 2 | tr '\n' ' '); ninja $(ninja --version 2>&1)"
if [ -d "$WHEELS" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
        >>"$LOG" 2>&1 || say "wheel install failed"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
$PY - >>"$LOG" 2>&1 <<'EOF'
import numpy, torch
from torch.utils.cpp_extension import CUDA_HOME
print(f"python torch {torch.__version__} (cuda {torch.version.cuda}), numpy {numpy.__version__}, "
      f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}; torch's CUDA_HOME guess {CUDA_HOME}")
EOF

# 1. gsplat's JIT build, timed, in the background: MAX_JOBS = all cores but one, sm_90 only.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(($(nproc) - 1))}
say "gsplat build: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CUDA_HOME=${CUDA_HOME:-unset}"
(
    t=$(date +%s)
    timeout "${GSPLAT_BUILD_S:-400}" $PY -c "from gsplat.cuda._backend import _C; print('gsplat _C:', _C)" >"$OUT/gsplat_build.log" 2>&1
    echo "rc=$? seconds=$(($(date +%s) - t))" >>"$OUT/gsplat_build.log"
) &
BUILD=$!

want() { [[ " $CHECKS " == *" $1 "* ]]; }

# 4. DVD speed and memory at the real size (random weights), while gsplat compiles on the CPU.
if want dvd; then
    run dvd_bf16 170 300 $PY benchmarks/dvd.py --cuda --windows 2
    run dvd_fp16 100 260 $PY benchmarks/dvd.py --cuda --windows 2 --dtype fp16
    run dvd_bf16_tiling 100 230 $PY benchmarks/dvd.py --cuda --windows 2 --vae-tiling
fi
SV="$PY benchmarks/sparse_view.py --reuse-prepared --device cuda --out $PREPARED"
SEVEN="--datasets 7scenes --views 3 --seven-span 0 149 --num-frames 30 --prior-frames non-test --inits depth --no-oracle"
LEGO="--datasets lego --views 6 --frame-size 400 --size 400 --inits random --depth-losses none"
# 1b. the fallback when gsplat's kernels are missing: the PyTorch rasterizer on CUDA tensors (no gsplat import, so it
# runs beside the build): parity with the CPU, then the 7-Scenes row with it.
if want fallback; then
    run fallback_parity 60 200 $PY -m pytest -q -s -p no:cacheprovider tests/test_render.py -k torch_backend_on_cuda
    SPLAT_CUDA_BACKEND=torch run fallback_7scenes 150 170 $SV $SEVEN --iterations 1000 --seed 0 \
        --json "$OUT/fallback_7scenes.json"
fi

say "waiting for the gsplat build"
wait $BUILD
say "gsplat build: $(tail -n 2 "$OUT/gsplat_build.log" | tr '\n' ' ')"

# 2. renderer parity (values and gradients) with gsplat.
want parity && run parity 120 60 $PY -m pytest -q -s -p no:cacheprovider tests/test_render.py -k "gsplat"

# 3. CUDA training rows on the prepared runs (gsplat backend, since the tensors are on CUDA).
if want train; then
    run train_7scenes 150 40 $SV $SEVEN --iterations 1000 --seed 0 --json "$OUT/train_7scenes.json"
    run train_lego 120 20 $SV $LEGO --iterations 3000 --json "$OUT/train_lego.json"
    run train_lego_mcmc 120 0 $SV $LEGO --iterations 3000 --set 'strategy="mcmc"' --json "$OUT/train_lego_mcmc.json"
fi
# 3b. MCMC without the sparse-view regularisers (opacity decay, binocular loss).
if want mcmc; then
    want train || run train_lego_mcmc 120 70 $SV $LEGO --iterations 3000 --set 'strategy="mcmc"' \
        --json "$OUT/train_lego_mcmc.json"
    run train_lego_mcmc_plain 120 0 $SV $LEGO --iterations 3000 --set 'strategy="mcmc"' opacity_decay=1.0 binocular_weight=0 \
        --json "$OUT/train_lego_mcmc_plain.json"
fi
tar -C "$STEPS" -czf "$OUT/logs.tgz" .
say "done"
