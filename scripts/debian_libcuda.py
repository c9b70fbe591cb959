#!/usr/bin/env python3
"""Fetches Debian 12's CUDA driver library (package libcuda1 from bookworm non-free: driver 535, CUDA 12.2)
into DIR and prints "LIBDIR CUDA_VERSION": the folder holding libcuda.so.1 and the newest CUDA release the
package says it provides (libcuda-12.2-1 -> 12.2).

scripts/check-cuda12-driver.sh tests munja against it: a real CUDA 12 driver library, without a GPU (its
cuInit fails with CUDA_ERROR_NO_DEVICE, but every entry point can be looked up and cuDriverGetVersion
answers). The package is found through the archive's index, whatever its current version, and checked
against the SHA256 the index gives.

    python3 scripts/debian_libcuda.py target/cuda12-driver
"""
import hashlib
import lzma
import pathlib
import re
import subprocess
import sys
import time
import urllib.request

MIRROR = "http://deb.debian.org/debian"
INDEX = f"{MIRROR}/dists/bookworm/non-free/binary-amd64/Packages.xz"


def fetch(url: str) -> bytes:
    """The body at `url`, with two retries: CI should not fail on one dropped connection."""
    for attempt in range(3):
        try:
            return urllib.request.urlopen(url, timeout=120).read()
        except OSError as e:
            if attempt == 2:
                sys.exit(f"{url}: {e}")
            time.sleep(5)


def stanza(index: str, package: str) -> dict:
    for block in index.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): (.*)$", block, re.M))
        if fields.get("Package") == package:
            return fields
    sys.exit(f"{package} is not in {INDEX}")


def main() -> None:
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/cuda12-driver").resolve()
    out.mkdir(parents=True, exist_ok=True)
    pkg = stanza(lzma.decompress(fetch(INDEX)).decode(), "libcuda1")
    deb = out / pathlib.Path(pkg["Filename"]).name
    if not deb.is_file() or hashlib.sha256(deb.read_bytes()).hexdigest() != pkg["SHA256"]:
        data = fetch(f"{MIRROR}/{pkg['Filename']}")
        if hashlib.sha256(data).hexdigest() != pkg["SHA256"]:
            sys.exit(f"{pkg['Filename']}: SHA256 differs from the index's")
        deb.write_bytes(data)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out / "root")], check=True)
    libs = sorted((out / "root").rglob("libcuda.so.1"))
    if not libs:
        sys.exit(f"{deb.name} holds no libcuda.so.1")
    cuda = max(
        (tuple(map(int, v)) for v in re.findall(r"libcuda-(\d+)\.(\d+)-1", pkg.get("Provides", ""))), default=None
    )
    if cuda is None:
        sys.exit("libcuda1 names no CUDA release it provides")
    print(libs[0].parent, f"{cuda[0]}.{cuda[1]}")


if __name__ == "__main__":
    main()
