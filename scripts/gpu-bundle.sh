#!/usr/bin/env bash
# Builds, on a CPU machine, everything the GPU machine runs: the test-suite binary, the GPU benchmark, the
# data-parallel bench, the GPT example and munja-run (release, kernels embedded, gzipped), tiny Shakespeare
# and gpu-suite.sh, into the git-ignored folder gpu-bundle/ (≤ 60 MiB).
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

suite="$(bash scripts/suite-binary.sh)"
cargo build --release --example gpu_bench --example ddp_bench --example gpt --bin munja-run >&2

out="$root/gpu-bundle"
rm -rf "$out"
mkdir -p "$out"
# Debug line tables quadruple the binaries (test messages carry file:line without them), and gzip takes the
# rest to about a quarter (most of each binary is the embedded fatbin): the bundle stays far below 60 MiB.
# gpu-suite.sh unpacks them on the GPU machine.
pack() {
    local src="$1" name="$2"
    cp "$src" "$out/$name"
    if command -v strip >/dev/null 2>&1; then
        strip --strip-debug "$out/$name"
    fi
    gzip -6 "$out/$name"
}
pack "$suite" munja-suite
for ex in gpu_bench ddp_bench gpt; do
    pack "target/release/examples/$ex" "$ex"
done
pack target/release/munja-run munja-run
cp data/tinyshakespeare.txt "$out/tinyshakespeare.txt"
cp scripts/gpu-suite.sh scripts/gpu-profile.sh "$out/"
cp benches/compare/torch_gpt_gpu.py "$out/torch_gpt_gpu.py"
git rev-parse HEAD > "$out/COMMIT" 2>/dev/null || true
size=$(du -sm "$out" | cut -f1)
echo "gpu-bundle/: ${size} MiB ($(ls "$out" | tr '\n' ' '))"
if [ "$size" -gt 60 ]; then
    echo "gpu-bundle/ is over 60 MiB" >&2
    exit 1
fi
