#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler and headers from PyPI into ~/.cache/cram/cuda-13.0 (once),
# enough to build `--features cuda` on a machine without a GPU, and prints the toolkit root
# (use it as CUDA_ROOT and put its bin/ on PATH). Pinned versions: nvcc, crt, nvvm 13.0.88;
# runtime headers 13.0.96; CCCL 13.0.85.
#
# Usage: root=$(bash scripts/cuda_toolkit.sh)
set -euo pipefail
CACHE=${CRAM_CACHE_DIR:-$HOME/.cache/cram}
DIR=$CACHE/cuda-13.0
ROOT=$DIR/nvidia/cu13
if [ ! -x "$ROOT/bin/nvcc" ] || [ ! -f "$ROOT/include/crt/host_config.h" ] || [ ! -d "$ROOT/nvvm" ]; then
    rm -rf "$DIR"
    # One pip call: --target skips folders that already exist, so the five packages
    # (which share nvidia/cu13/) must be installed together.
    python3 -m pip install -q --no-deps --disable-pip-version-check --target "$DIR" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
fi
# The linker looks for the unversioned name (candle's kernels link libcudart).
ln -sf libcudart.so.13 "$ROOT/lib/libcudart.so"
"$ROOT/bin/nvcc" --version >&2
echo "$ROOT"
