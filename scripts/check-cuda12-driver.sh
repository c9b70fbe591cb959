#!/usr/bin/env bash
# munja against a real CUDA 12 driver library, on a machine without a GPU (CI runs it): Debian 12's
# libcuda1 (driver 535, CUDA 12.2; scripts/debian_libcuda.py fetches it into target/cuda12-driver/).
#  1. Every driver entry point munja's binaries may look up is one that driver exports
#     (scripts/driver_symbols.py): cudarc panics on a missing one.
#  2. The CUDA tests run with that library loaded: munja reads the driver's version, would load the CUDA 12
#     kernel build on an A100 or an H100 (cuda::a_cuda12_driver_gets_the_cuda12_build), and, there being
#     no GPU, every device test says so and skips.
#  3. With --libraries (600 MB of wheels, so not in CI): the cuBLASLt, cuBLAS and NCCL entry points they may
#     look up are in the oldest CUDA 12 libraries munja claims (cuBLAS 12.2, NCCL 2.18).
# Needs the kernels built (CUDA_HOME and MUNJA_CUDA12_HOME from scripts/setup-nvcc.sh), python3, binutils,
# dpkg-deb and the Debian archive.
set -euo pipefail
cd "$(dirname "$0")/.."
libraries=false
[[ "${1:-}" == --libraries ]] && libraries=true

read -r libdir cuda < <(python3 scripts/debian_libcuda.py target/cuda12-driver)
echo "Debian's libcuda1: $(basename "$(readlink -f "$libdir/libcuda.so.1")") (CUDA $cuda)"

suite="$(bash scripts/suite-binary.sh)"
cargo build --release --examples --bins >&2
python3 scripts/driver_symbols.py "$libdir/libcuda.so.1" "$suite" target/release/munja-run \
    target/release/examples/{gpt,mnist,gpu_bench,ddp_bench}

LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" MUNJA_EXPECT_DRIVER="$cuda" \
    "$suite" cuda:: --test-threads 2

if $libraries; then
    wheels=target/cuda12-libs
    python3 -m pip download --quiet --no-deps --dest "$wheels" \
        nvidia-cublas-cu12==12.2.5.6 nvidia-nccl-cu12==2.18.1 >&2
    for wheel in "$wheels"/*.whl; do python3 -m zipfile -e "$wheel" "$wheels/unpacked"; done
    lib="$wheels/unpacked/nvidia"
    binaries=("$suite" target/release/munja-run target/release/examples/{gpt,mnist,gpu_bench,ddp_bench})
    python3 scripts/driver_symbols.py --bindings cublaslt "$lib/cublas/lib/libcublasLt.so.12" "${binaries[@]}"
    python3 scripts/driver_symbols.py --bindings cublas "$lib/cublas/lib/libcublas.so.12" "${binaries[@]}"
    python3 scripts/driver_symbols.py --bindings nccl "$lib/nccl/lib/libnccl.so.2" "${binaries[@]}"
fi
