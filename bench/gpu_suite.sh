#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in one command on a lent H100/H200 (or any CUDA machine):
#   1. the CUDA-only tests (pytest -m gpu): Triton kernel parity, attention backends, LARA on GPU
#   2. python -m lavla.kernels.bench: fused codebook lookup vs the PyTorch reference, N=2^20, D=128, K=8/128/1024
#   3. python -m lavla.trainer.bench_mfu --full-size: MFU and peak memory of LARA and the Pixels-to-Tokens baseline,
#      and of the baseline on a Qwen3-VL-8B-sized backbone at TP=1 (--backbone qwen3-vl-8b; GPU only)
#   4. python -m lavla.launcher.learning_check --budget gpu: LAM probe, image-swap sensitivity and move success
# Results (JSON + logs) go to $RESULTS (default: $OUT when set, else bench/results/<date>_<device>/).
#
#   BENCH_COMMIT=$(git rev-parse HEAD) bash bench/gpu_suite.sh [tests|kernels|mfu|learning ...]
#
# A GPU image without this project's pure-Python dependencies (deepspeed, draccus, ...) installs
# them from wheels in .whl/ (`make gpu-wheels` downloads them on a machine with PyPI access).
# On a CPU-only machine it still runs, scaled down, to check the plumbing (GPU tests skip, the
# kernel benchmark runs the references on a small N, bench_mfu runs the tiny recipes).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import deepspeed, draccus" 2>/dev/null && compgen -G ".whl/*" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation \
        --upgrade --target /tmp/site .whl/* || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
# The project imports as lavla.*: an image without it installed gets a plain copy (no dependencies).
if ! "$PY" -c "import lavla.trainer.loop" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
        --target /tmp/lavla-site . || exit 1
    export PYTHONPATH="/tmp/lavla-site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0

DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')")
CUDA=$([ "$DEVICE" = cpu ] && echo 0 || echo 1)
SLUG=$(echo "$DEVICE" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
RESULTS=${RESULTS:-${OUT:-bench/results/$(date -u +%Y%m%d)_$SLUG}}
mkdir -p "$RESULTS"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests kernels mfu learning)
echo "device: $DEVICE; commit: ${BENCH_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}; results: $RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null | tee "$RESULTS/nvidia_smi.csv"

status=0
for step in "${STEPS[@]}"; do
    case $step in
    tests)
        "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/kernels tests/model 2>&1 | tee "$RESULTS/gpu_tests.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    kernels)
        if [ "$CUDA" = 1 ]; then args=(--n 1048576); else args=(--cpu-n 16384 --repeats 3); fi
        "$PY" -m lavla.kernels.bench "${args[@]}" --d 128 --k 8 128 1024 --dtype bf16 --out "$RESULTS/codebook_lookup.json" \
            2>&1 | tee "$RESULTS/codebook_lookup.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    mfu)
        for recipe in lara baseline; do
            if [ "$CUDA" = 1 ]; then args=(--full-size --micro-batch "${MICRO_BATCH:-8}" --steps 10 --warmup 3)
            else args=(--micro-batch 2 --steps 1 --warmup 1); fi
            "$PY" -m lavla.trainer.bench_mfu --recipe $recipe "${args[@]}" --out "$RESULTS/mfu_$recipe.json" \
                2>&1 | tee "$RESULTS/mfu_$recipe.log"
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        done
        # The 7B-class shape at TP=1 on one GPU (the baseline with a weight-less Qwen3-VL-8B, LoRA):
        # the reference a multi-GPU node's parallel.tensor_parallel_size=2 run is compared with.
        if [ "$CUDA" = 1 ]; then
            "$PY" -m lavla.trainer.bench_mfu --recipe baseline --full-size --backbone qwen3-vl-8b \
                --micro-batch "${MICRO_BATCH_8B:-4}" --steps 10 --warmup 3 --out "$RESULTS/mfu_baseline_8b_tp1.json" \
                2>&1 | tee "$RESULTS/mfu_baseline_8b_tp1.log"
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        else
            echo "mfu: the 8B TP=1 line needs a GPU (8.8 B parameters); skipped on CPU"
        fi ;;
    learning)
        if [ "$CUDA" = 1 ]; then budget=gpu; else budget=ci; fi
        "$PY" -m lavla.launcher.learning_check --budget $budget --out "$RESULTS/learning" 2>&1 | tee "$RESULTS/learning.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    *) echo "unknown step $step (tests, kernels, mfu, learning)"; exit 2 ;;
    esac
done
echo "suite finished with status $status; results in $RESULTS"
exit $status
