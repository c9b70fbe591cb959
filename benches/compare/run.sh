#!/usr/bin/env bash
# Runs the five CPU workloads in munja (benches/cpu.rs, table mode) and in PyTorch (torch_cpu.py) on this
# machine and prints one table. Both sides use 2 threads, the same warm-up and repeat counts, and report the
# median milliseconds of one iteration. The two alternate workload by workload, so a change in machine load
# during the run hits both rather than one.
#
# Usage: benches/compare/run.sh            (PyTorch from /work/torchenv, or PYTHON=/path/to/python)
#        THREADS=4 benches/compare/run.sh  (another thread count for both sides)
#        ONLY=sgemm_1024 benches/compare/run.sh  (some workloads only)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

threads="${THREADS:-2}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x /work/torchenv/bin/python ]]; then
        python=/work/torchenv/bin/python
    else
        python="$(command -v python3 || true)"
    fi
fi
if [[ -z "$python" ]] || ! "$python" -c "import torch" 2>/dev/null; then
    echo "run.sh: no Python with PyTorch found (tried ${python:-python3})." >&2
    echo "        Install torch (pip install torch) or point PYTHON at a Python that has it." >&2
    exit 1
fi

# munja's kernels run on rayon's pool: give it the same number of threads as PyTorch.
export RAYON_NUM_THREADS="$threads"

# Build once and run the binary itself, so each workload runs the same build even if sources change.
echo "building the munja bench binary ..." >&2
if ! build_log="$(cargo bench --bench cpu --no-run --message-format=json 2>/dev/null)"; then
    cargo bench --bench cpu --no-run >&2 || true
    echo "run.sh: building benches/cpu.rs failed" >&2
    exit 1
fi
bench_bin="$(printf '%s\n' "$build_log" | "$python" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cpu" and m.get("executable"):
        print(m["executable"])
' | tail -n 1)"
if [[ ! -x "$bench_bin" ]]; then
    echo "run.sh: cannot find the bench executable in cargo's output" >&2
    exit 1
fi

workloads=(
    sgemm_1024
    softmax_fwd_bwd_8192x768
    layer_norm_fwd_bwd_8192x768
    mlp_train_step_b128
    char_gpt_train_step
)
# ONLY="sgemm_1024 ..." compares just those (a workload alone is less exposed to drift across the table).
if [[ -n "${ONLY:-}" ]]; then
    read -r -a workloads <<< "$ONLY"
fi

torch_version="$("$python" -c 'import torch; print(torch.__version__)')"
printf '%s, PyTorch %s, %s threads, %s\n' "$(rustc --version)" "$torch_version" "$threads" \
    "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || uname -m)"
# Other work on the machine skews both columns; the load average says whether the run was quiet.
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
printf '%-30s %12s %12s %8s\n' workload "munja ms" "PyTorch ms" ratio
for w in "${workloads[@]}"; do
    m="$("$bench_bin" --table --only "$w" | awk -F'\t' -v w="$w" '$1 == w { print $2 }')"
    t="$("$python" benches/compare/torch_cpu.py --tsv --threads "$threads" --only "$w" |
        awk -F'\t' -v w="$w" '$1 == w { print $2 }')"
    if [[ -z "$m" || -z "$t" ]]; then
        echo "run.sh: workload $w gave no figure (munja: '${m}', PyTorch: '${t}')" >&2
        exit 1
    fi
    # ratio = PyTorch time / munja time: above 1 means munja is faster.
    awk -v w="$w" -v m="$m" -v t="$t" 'BEGIN { printf "%-30s %12.3f %12.3f %8.2f\n", w, m, t, t / m }'
done
