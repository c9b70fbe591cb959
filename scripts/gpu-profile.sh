#!/usr/bin/env bash
# Runs on the GPU machine, from a bundle made by scripts/gpu-bundle.sh: Nsight Compute (ncu) on chosen
# kernels of the GPU benchmark, to see what limits them (the speed-of-light, occupancy, launch and warp-stall
# sections). Clocks are left alone (--clock-control none), as the machine's notes ask.
#
#   bash gpu-bundle/gpu-profile.sh [kernel-name regex] [invocation]
#
# Profiles the given invocation (default 10, past the benchmark's warm-up) of every kernel whose name
# matches (default: the row-ring kernels in bf16 and f32). Without a GPU or without ncu it says so and
# exits 0.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="$here"
[ -f "$bundle/gpu_bench.gz" ] || bundle="$here/../gpu-bundle"
regex="${1:-^(softmax_rows|softmax_backward_rows|norm_forward_rows|norm_backward_fused_rows)_(bf16|f32)\$}"
invocation="${2:-10}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "no GPU: nvidia-smi finds no NVIDIA GPU here; nothing to profile"
    exit 0
fi
ncu="$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n1)"
if [ -z "$ncu" ]; then
    echo "no ncu on this machine; nothing to profile"
    exit 0
fi
if [ ! -f "$bundle/gpu_bench.gz" ]; then
    echo "gpu-profile: no bundle next to this script; run scripts/gpu-bundle.sh on the build machine first" >&2
    exit 2
fi
for d in /usr/local/cuda-13.0/lib64 /usr/local/cuda/lib64; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
bin="$(mktemp -d)"
gunzip -c "$bundle/gpu_bench.gz" > "$bin/gpu_bench" && chmod +x "$bin/gpu_bench"
echo "ncu: $ncu; kernels matching $regex, invocation $invocation"
"$ncu" --clock-control none --kernel-id "::regex:$regex:$invocation" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis "$bin/gpu_bench" 2>&1 | grep -v '^RESULT|'
