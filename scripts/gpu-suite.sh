#!/usr/bin/env bash
# Runs on the GPU machine (CUDA 13 driver, no Rust, no network): every CUDA test with MUNJA_REQUIRE_GPU=1,
# then the kernel benchmark and its summary table, the same tests and benchmark with the CUDA 12 kernel
# build, then the Ddp overhead bench, and with
# MUNJA_GPU_GPT_STEPS=N the GPT example (shakespeare-char, bf16) for N steps. On a machine without a GPU
# it says so and exits 0.
# Exit status: 0 when every test and every benchmark check passed (or there is no GPU), 1 otherwise.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="$here"
[ -f "$bundle/munja-suite.gz" ] || bundle="$here/../gpu-bundle"
if [ ! -f "$bundle/munja-suite.gz" ] || [ ! -f "$bundle/gpu_bench.gz" ]; then
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
# The binaries travel gzipped (gpu-bundle.sh); unpack them next to the logs.
bin="$log/bin"
mkdir -p "$bin"
for f in "$bundle"/*.gz; do
    name="$(basename "$f" .gz)"
    gunzip -c "$f" > "$bin/$name" && chmod +x "$bin/$name"
done
echo "GPU: $gpu; bundle commit $(cat "$bundle/COMMIT" 2>/dev/null || echo '?'); logs in $log"

# Tests one at a time: they share the device, the TF32 switch and the allocation counter.
start=$(date +%s)
MUNJA_REQUIRE_GPU=1 timeout 900 "$bin/munja-suite" cuda:: --test-threads=1 >"$log/tests.txt" 2>&1
test_rc=$?
test_s=$(( $(date +%s) - start ))
grep -E '^test .* (FAILED|ok)$' "$log/tests.txt" | grep FAILED || true
if [ $test_rc -ne 0 ]; then
    sed -n '/^failures:/,/^test result/p' "$log/tests.txt" | head -n 80
fi
tests_line="$(grep -E '^test result:' "$log/tests.txt" | tail -n1)"
[ -n "$tests_line" ] || tests_line="test binary exited with status $test_rc (see $log/tests.txt)"

start=$(date +%s)
timeout 900 "$bin/gpu_bench" >"$log/bench.txt" 2>&1
bench_rc=$?
bench_s=$(( $(date +%s) - start ))
[ $bench_rc -eq 0 ] || tail -n 30 "$log/bench.txt"

echo
echo "CUDA tests (${test_s}s): $tests_line"
grep '^kernels:' "$log/bench.txt"
echo "benchmark (${bench_s}s, exit $bench_rc): median of 30 CUDA-event timings after warm-up; % of ceiling = vs d2d copy (GB/s) or cuBLAS on the same shape (TFLOP/s)"
{
    echo "op|shape|time (us)|throughput|unit|% of ceiling|check vs f64"
    grep '^RESULT|' "$log/bench.txt" | cut -d'|' -f2-
} | awk -F'|' '{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; if (NF > nf) nf = NF }
    END { for (r = 1; r <= n; r++) { line = ""; for (i = 1; i <= nf; i++) line = line sprintf("%-" w[i] "s  ", cell[r, i]); sub(/ +$/, "", line); print line } }'
grep -q 'FAIL(' "$log/bench.txt" && bench_rc=1

# The row-ring kernels (layer_norm, softmax) with fewer rows fetched ahead (MUNJA_RING_STAGES=1, 2), and in
# direct mode (0: a block per row, no ring), beside the table above: how much the rows in flight are worth
# on this card.
echo
for stages in 0 1 2; do
    echo "row rings with $stages stage(s) (MUNJA_RING_STAGES=$stages), for comparison with the rows above:"
    MUNJA_RING_STAGES=$stages timeout 300 "$bin/gpu_bench" 2>&1 | grep '^RESULT|' | grep -E 'softmax|layer_norm' | cut -d'|' -f2-7 | tr '|' ' '
done

# The layer_norm ring kernels of 16-bit rows (forward, fused backward) with two rows per block reduction
# (MUNJA_NORM_PAIRS=1, off by default until measured): their CUDA test, then their benchmark rows beside
# the default's above.
echo
MUNJA_NORM_PAIRS=1 MUNJA_REQUIRE_GPU=1 timeout 300 "$bin/munja-suite" cuda::layer_norm --test-threads=1 \
    >"$log/tests-norm-pairs.txt" 2>&1
pairs_rc=$?
pairs_line="$(grep -E '^test result:' "$log/tests-norm-pairs.txt" | tail -n1)"
echo "layer_norm two rows per reduction (MUNJA_NORM_PAIRS=1): CUDA test: ${pairs_line:-exit status $pairs_rc}"
[ $pairs_rc -eq 0 ] || tail -n 20 "$log/tests-norm-pairs.txt"
MUNJA_NORM_PAIRS=1 timeout 300 "$bin/gpu_bench" 2>&1 | grep '^RESULT|' | grep -E 'layer_norm' | cut -d'|' -f2-7 | tr '|' ' '
[ $pairs_rc -eq 0 ] || test_rc=1

# The CUDA 12 kernel build (NVRTC 12 cubins: what drivers before CUDA 13 load, images.rs), forced on this
# driver, which loads it too: every CUDA test, then the benchmark table's rows with it.
echo
MUNJA_CUDA_KERNELS=cuda12 MUNJA_REQUIRE_GPU=1 timeout 300 "$bin/munja-suite" cuda:: --test-threads=1 \
    >"$log/tests-cuda12.txt" 2>&1
cuda12_rc=$?
cuda12_line="$(grep -E '^test result:' "$log/tests-cuda12.txt" | tail -n1)"
echo "CUDA 12 kernel build (MUNJA_CUDA_KERNELS=cuda12): CUDA tests: ${cuda12_line:-exit status $cuda12_rc}"
[ $cuda12_rc -eq 0 ] || sed -n '/^failures:/,/^test result/p' "$log/tests-cuda12.txt" | head -n 40
MUNJA_CUDA_KERNELS=cuda12 timeout 300 "$bin/gpu_bench" >"$log/bench-cuda12.txt" 2>&1
grep '^kernels:' "$log/bench-cuda12.txt"
grep '^RESULT|' "$log/bench-cuda12.txt" | cut -d'|' -f2-8 | tr '|' ' '
[ $cuda12_rc -eq 0 ] || test_rc=1
grep -q 'FAIL(' "$log/bench-cuda12.txt" && bench_rc=1

# MUNJA_GPU_SKIP_E2E=1: tests and kernel benchmarks only (no Ddp bench, no GPT runs).
if [ -n "${MUNJA_GPU_SKIP_E2E:-}" ]; then
    [ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ]
    exit $?
fi

# What Ddp adds to a training step at world size 1 (one-rank NCCL communicator when libnccl loads).
echo
timeout 300 "$bin/ddp_bench" 2>&1 | tee "$log/ddp_bench.txt"
ddp_rc=${PIPESTATUS[0]}

# End-to-end training throughput, munja beside PyTorch eager on this card (when the machine's python3 has
# torch): the shakespeare-char GPT, batch 64 × 256, bf16 and f32, 300 steps each, random-token batches for
# PyTorch, tiny Shakespeare for munja (the data does not change the work per step).
echo
echo "GPT throughput (shakespeare-char, batch 64x256, dropout 0.2, AdamW, clip 1.0; training steps only)"
echo "| dtype | munja ms/step | munja tokens/s | PyTorch eager ms/step | PyTorch tokens/s | munja / PyTorch speed |"
echo "|---|---|---|---|---|---|"
have_torch=0
python3 -c 'import torch' 2>/dev/null && have_torch=1
for dt in bf16 f32; do
    timeout 300 "$bin/gpt" --preset shakespeare-char --dtype "$dt" --batch-size 64 --steps 300 --eval-interval 300 \
        --eval-iters 5 --device cuda --data "$bundle/tinyshakespeare.txt" --out "$log/gpt-speed-$dt" \
        >"$log/gpt-speed-$dt.txt" 2>&1
    [ $have_torch -eq 1 ] && timeout 300 python3 "$bundle/torch_gpt_gpu.py" --dtype "$dt" --steps 200 >"$log/torch-$dt.txt" 2>&1
    # munja prints "  throughput     1.23M tokens/s ..."; torch_gpt_gpu.py "torch_gpt bf16 ms_per_step 11.70 tokens_per_s 1400000".
    munja_tok="$(awk '/^  throughput/ { v = $2; m = 1; if (v ~ /k$/) m = 1e3; if (v ~ /M$/) m = 1e6; sub(/[kM]$/, "", v); print v * m }' "$log/gpt-speed-$dt.txt")"
    torch_tok="$(awk '/^torch_gpt/ { print $6 }' "$log/torch-$dt.txt" 2>/dev/null)"
    awk -v dt="$dt" -v m="${munja_tok:-0}" -v t="${torch_tok:-0}" 'BEGIN {
        ms_m = m > 0 ? sprintf("%.2f", 16384e3 / m) : "-"; ms_t = t > 0 ? sprintf("%.2f", 16384e3 / t) : "-"
        tm = m > 0 ? sprintf("%.0f", m) : "-"; tt = t > 0 ? sprintf("%.0f", t) : "-"; r = (m > 0 && t > 0) ? sprintf("%.2f", m / t) : "-"
        printf "| %s | %s | %s | %s | %s | %s |\n", dt, ms_m, tm, ms_t, tt, r }'
    grep -E '^  launches' "$log/gpt-speed-$dt.txt" | sed "s/^ */  munja $dt: /"
done
[ $have_torch -eq 1 ] || echo "  (no PyTorch on this machine: munja's side only)"
# Where munja's bf16 step spends its GPU time: CUDA events around every kernel of steps 11-20.
echo
timeout 300 "$bin/gpt" --preset shakespeare-char --dtype bf16 --batch-size 64 --steps 30 --eval-interval 1000 \
    --eval-iters 1 --device cuda --data "$bundle/tinyshakespeare.txt" --out "$log/gpt-profile" --profile \
    >"$log/gpt-profile.txt" 2>&1
sed -n '/^GPU time per step by kernel/,/total GPU time/p' "$log/gpt-profile.txt"

# The GPT bar run (issue 4), only when asked: MUNJA_GPU_GPT_STEPS=5000 bash gpu-suite.sh
gpt_rc=0
if [ -n "${MUNJA_GPU_GPT_STEPS:-}" ]; then
    echo
    echo "GPT: shakespeare-char, bf16, batch 64, ${MUNJA_GPU_GPT_STEPS} steps"
    timeout "${MUNJA_GPU_GPT_TIMEOUT:-1800}" "$bin/gpt" --preset shakespeare-char --dtype bf16 --batch-size 64 \
        --steps "$MUNJA_GPU_GPT_STEPS" --device cuda --data "$bundle/tinyshakespeare.txt" --out "$log/gpt" \
        >"$log/gpt.txt" 2>&1
    gpt_rc=$?
    grep -E '^(step |final val loss|run summary|  )' "$log/gpt.txt" | tail -n 25
    [ $gpt_rc -eq 0 ] || tail -n 20 "$log/gpt.txt"
fi
[ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ] && [ $ddp_rc -eq 0 ] && [ $gpt_rc -eq 0 ]
