#!/usr/bin/env bash
# Builds, on a CPU machine, everything the GPU machine runs: the test-suite binary and the GPU benchmark
# (release, kernels embedded), plus gpu-suite.sh, into the git-ignored folder gpu-bundle/ (≤ 60 MiB).
# Copy that folder to the GPU machine and run `bash gpu-bundle/gpu-suite.sh` there (no Rust needed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
    home="$(ls -d .cuda/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -n1 || true)"
    if [ -z "$home" ]; then
        eval "$(bash scripts/setup-nvcc.sh)"
    else
        export CUDA_HOME="$root/$home"
    fi
fi
echo "nvcc: ${CUDA_HOME:-$(dirname "$(command -v nvcc)")}" >&2

# The test binary: ask cargo for its path rather than guessing the hash.
suite="$(cargo test --release --no-run --test suite --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "suite" and m.get("executable"):
        print(m["executable"])')"
if [ -z "$suite" ]; then
    cargo test --release --no-run --test suite >&2   # show the error
    exit 1
fi
cargo build --release --example gpu_bench >&2

out="$root/gpu-bundle"
rm -rf "$out"
mkdir -p "$out"
cp "$suite" "$out/munja-suite"
cp target/release/examples/gpu_bench "$out/gpu_bench"
# Debug line tables quadruple the binaries; test messages carry file:line without them.
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$out/munja-suite" "$out/gpu_bench"
fi
cp scripts/gpu-suite.sh "$out/gpu-suite.sh"
git rev-parse HEAD > "$out/COMMIT" 2>/dev/null || true
size=$(du -sm "$out" | cut -f1)
echo "gpu-bundle/: ${size} MiB ($(ls "$out" | tr '\n' ' '))"
if [ "$size" -gt 60 ]; then
    echo "gpu-bundle/ is over 60 MiB" >&2
    exit 1
fi
