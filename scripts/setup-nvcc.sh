#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, ptxas, fatbinary, headers) from PyPI into .cuda/ at the
# repository root, so munja's build.rs can compile kernels/*.cu on a machine without a CUDA toolkit, and
# NVRTC 12.8 with the CUDA 12.8 headers, from which build.rs makes the kernels' CUDA 12 build (cubins that
# CUDA 12 drivers, 525 to 575, load: CUDA 13's need driver 580 or newer). Prints the exports to eval.
# Pins: PTX from nvcc 13.1+ is refused by driver 580 (CUDA 13.0), so stay on the 13.0 series; cccl is
# needed by cuda_bf16.h (<nv/target>). PyPI has no CUDA 12 nvcc, only NVRTC. See GPU.md and docs/cuda.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cuda"
if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-nvrtc-cu12==12.8.93 nvidia-cuda-runtime-cu12==12.8.90
nvidia="$(ls -d "$venv"/lib/python3*/site-packages/nvidia | head -n1)"
"$nvidia/cu13/bin/nvcc" --version | tail -n2 >&2
echo "export CUDA_HOME=$nvidia/cu13"
echo "export MUNJA_CUDA12_HOME=$nvidia"
