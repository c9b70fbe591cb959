#!/usr/bin/env bash
# Runs munja's CUDA kernels on the CPU emulator (kernels/emu/): builds each kernels/emu/test_*.cpp with g++
# (it #includes its kernels/*.cu with kernels/emu/cuda_emu.h in front), runs it twice (the default
# lock-step schedule, then EMU_SEED=1: warps in random order, each as far as it can, to expose missing
# barriers), and checks every kernels/*.cu still compiles under the emulator. No GPU needed.
# Prints one line per test and a summary; exits non-zero if anything fails or does not compile.
# Env: CXX (default g++), EMU_OPT (default -O1), EMU_VERBOSE=1 (print every check), CUDA_HOME.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ -z "${CUDA_HOME:-}" ]; then
    eval "$(bash scripts/setup-nvcc.sh)" || { echo "kernel-emu: no CUDA_HOME and setup-nvcc.sh failed" >&2; exit 2; }
fi
CXX="${CXX:-g++}"
out="$root/target/kernel-emu"
mkdir -p "$out"
flags=(-std=c++20 "${EMU_OPT:--O1}" -fno-strict-aliasing -Wall -Wno-unknown-pragmas -Wno-sign-compare
    -I"$root/kernels/emu" -I"$CUDA_HOME/include")
start=$(date +%s)

# Build every test in parallel, plus a compile-only check of each kernel file no test includes.
tests=()
for src in kernels/emu/test_*.cpp; do
    t="$(basename "$src" .cpp)"
    tests+=("$t")
    ( "$CXX" "${flags[@]}" "$src" -o "$out/$t" >"$out/$t.build.log" 2>&1; echo $? >"$out/$t.build.rc" ) &
done
for cu in kernels/*.cu; do
    k="$(basename "$cu" .cu)"
    grep -q "#include \"../$k.cu\"" kernels/emu/test_*.cpp && { echo 0 >"$out/cu_$k.build.rc"; continue; }
    ( "$CXX" "${flags[@]}" -fsyntax-only -x c++ -include kernels/emu/cuda_emu.h "$cu" >"$out/cu_$k.build.log" 2>&1
      echo $? >"$out/cu_$k.build.rc" ) &
done
wait

fail=0 pass=0
for cu in kernels/*.cu; do
    k="$(basename "$cu" .cu)"
    if [ "$(cat "$out/cu_$k.build.rc")" != 0 ]; then
        echo "FAIL  compile $cu under the emulator:"; sed 's/^/      /' "$out/cu_$k.build.log" | head -30
        fail=$((fail + 1))
    fi
done
for t in "${tests[@]}"; do
    if [ "$(cat "$out/$t.build.rc")" != 0 ]; then
        echo "FAIL  $t: does not compile:"; sed 's/^/      /' "$out/$t.build.log" | head -30
        fail=$((fail + 1))
        continue
    fi
    for sched in lockstep random; do
        t0=${EPOCHREALTIME/./}
        if [ $sched = random ]; then log="$(EMU_SEED=1 "$out/$t" 2>&1)"; rc=$?; else log="$("$out/$t" 2>&1)"; rc=$?; fi
        ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 )); secs="$((ms / 1000)).$((ms % 1000 / 100))"
        summary="$(echo "$log" | tail -n1)"
        if [ $rc = 0 ]; then
            printf 'PASS  %-18s %-9s %5ss  %s\n' "$t" "$sched" "$secs" "$summary"
            [ -n "${EMU_VERBOSE:-}" ] && echo "$log" | sed '$d'
            pass=$((pass + 1))
        else
            printf 'FAIL  %-18s %-9s %5ss  (exit %s)\n' "$t" "$sched" "$secs" "$rc"
            echo "$log" | grep -v '^  ok ' | sed 's/^/      /' | head -40
            fail=$((fail + 1))
        fi
    done
done
echo "kernel-emu: $pass passed, $fail failed ($(( $(date +%s) - start ))s)"
[ $fail = 0 ]
