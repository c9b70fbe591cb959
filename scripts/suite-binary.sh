#!/usr/bin/env bash
# Builds the integration-test binary (release) and prints its path: cargo's JSON messages name it, so no
# guessing at the hash in its file name. Used by gpu-bundle.sh and check-cuda12-driver.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
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
echo "$suite"
