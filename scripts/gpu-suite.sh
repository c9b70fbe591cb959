#!/usr/bin/env bash
# Runs on the GPU machine (CUDA 13 driver, no Rust, no network): every CUDA test with MUNJA_REQUIRE_GPU=1,
# then the benchmark, then prints one summary table. On a machine without a GPU it says so and exits 0.
# Exit status: 0 when every test and every benchmark check passed (or there is no GPU), 1 otherwise.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="$here"
[ -x "$bundle/munja-suite" ] || bundle="$here/../gpu-bundle"
if [ ! -x "$bundle/munja-suite" ] || [ ! -x "$bundle/gpu_bench" ]; then
    echo "gpu-suite: no bundle next to this script; run scripts/gpu-bundle.sh on the build machine first" >&2
    exit 2
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "no GPU: nvidia-smi finds no NVIDIA GPU here; nothing to run"
    exit 0
fi
for d in /usr/local/cuda-13.0/lib64 /usr/local/cuda/lib64; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
gpu="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n1)"
log="${MUNJA_GPU_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$log"
echo "GPU: $gpu; bundle commit $(cat "$bundle/COMMIT" 2>/dev/null || echo '?'); logs in $log"

# Tests one at a time: they share the device, the TF32 switch and the allocation counter.
start=$(date +%s)
MUNJA_REQUIRE_GPU=1 timeout 900 "$bundle/munja-suite" cuda:: --test-threads=1 >"$log/tests.txt" 2>&1
test_rc=$?
test_s=$(( $(date +%s) - start ))
grep -E '^test .* (FAILED|ok)$' "$log/tests.txt" | grep FAILED || true
if [ $test_rc -ne 0 ]; then
    sed -n '/^failures:/,/^test result/p' "$log/tests.txt" | head -n 80
fi
tests_line="$(grep -E '^test result:' "$log/tests.txt" | tail -n1)"
[ -n "$tests_line" ] || tests_line="test binary exited with status $test_rc (see $log/tests.txt)"

start=$(date +%s)
timeout 900 "$bundle/gpu_bench" >"$log/bench.txt" 2>&1
bench_rc=$?
bench_s=$(( $(date +%s) - start ))
[ $bench_rc -eq 0 ] || tail -n 30 "$log/bench.txt"

echo
echo "CUDA tests (${test_s}s): $tests_line"
echo "benchmark (${bench_s}s, exit $bench_rc): median of 30 CUDA-event timings after warm-up; % of ceiling = vs d2d copy (GB/s) or cuBLAS on the same shape (TFLOP/s)"
{
    echo "op|shape|time (us)|throughput|unit|% of ceiling|check vs f64"
    grep '^RESULT|' "$log/bench.txt" | cut -d'|' -f2-
} | awk -F'|' '{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; if (NF > nf) nf = NF }
    END { for (r = 1; r <= n; r++) { line = ""; for (i = 1; i <= nf; i++) line = line sprintf("%-" w[i] "s  ", cell[r, i]); sub(/ +$/, "", line); print line } }'
grep -q 'FAIL(' "$log/bench.txt" && bench_rc=1
[ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ]
