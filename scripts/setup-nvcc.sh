#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, ptxas, fatbinary, headers) from PyPI into .cuda/ at the
# repository root, so munja's build.rs can compile kernels/*.cu on a machine without a CUDA toolkit.
# Pins: PTX from nvcc 13.1+ is refused by driver 580 (CUDA 13.0), so stay on the 13.0 series; cccl is
# needed by cuda_bf16.h (<nv/target>). See GPU.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cuda"
if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96
home="$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13 | head -n1)"
"$home/bin/nvcc" --version | tail -n2 >&2
echo "export CUDA_HOME=$home"
