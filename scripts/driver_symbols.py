#!/usr/bin/env python3
"""Checks that every CUDA driver entry point munja's binaries may look up exists in a given libcuda (or,
with --bindings cublaslt/cublas/nccl, in a given libcublasLt, libcublas or libnccl).

cudarc (built with its cuda-13000 bindings) resolves each driver function by name the first time it is
called, and panics when the driver lacks it: cuEventElapsedTime_v2, which cudarc 0.19 calls for CUDA 13,
is missing from drivers before 12.8. The names a binary can look up are the string literals of cudarc's
`load::<_F>("cu...")` calls that the linker kept in its .rodata; this lists them and reports those the
library does not export.

    python3 scripts/driver_symbols.py LIBCUDA BINARY...
    python3 scripts/driver_symbols.py --bindings cublaslt libcublasLt.so.12 BINARY...

Exits 1 when any is missing.
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile


def cudarc_names(bindings: str) -> list:
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1"], capture_output=True, text=True,
                                     check=True).stdout)
    pkg = next(p for p in meta["packages"] if p["name"] == "cudarc")
    sys_rs = pathlib.Path(pkg["manifest_path"]).parent / f"src/{bindings}/sys/mod.rs"
    return sorted(set(re.findall(r'load::<_F>\("([A-Za-z0-9_]+)"\)', sys_rs.read_text())))


def rodata(binary: str) -> bytes:
    with tempfile.NamedTemporaryFile() as f:
        subprocess.run(["objcopy", "-O", "binary", "--only-section=.rodata", binary, f.name], check=True)
        return pathlib.Path(f.name).read_bytes()


def main() -> None:
    args = sys.argv[1:]
    bindings = "driver"
    if args[:1] == ["--bindings"]:
        bindings, args = args[1], args[2:]
    lib, binaries = args[0], args[1:]
    nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    # cuBLAS and NCCL version their symbols (cublasLtCreate@@libcublasLt.so.12); compare bare names.
    exported = {line.split()[-1].split("@")[0] for line in nm.splitlines() if line.strip()}
    names = cudarc_names(bindings)
    failed = False
    for binary in binaries:
        data = bytearray(rodata(binary))
        used = []
        # Longest first, blanking each found name, so that cuMemcpy is not counted for cuMemcpyDtoH_v2.
        for name in sorted(names, key=len, reverse=True):
            key = name.encode()
            if key in data:
                used.append(name)
                data[:] = data.replace(key, b"\0" * len(key))
        missing = sorted(n for n in used if n not in exported)
        print(f"{pathlib.Path(binary).name}: {len(used)} {bindings} entry points, "
              f"{'all in ' + pathlib.Path(lib).name if not missing else 'MISSING from it: ' + ', '.join(missing)}")
        failed |= bool(missing)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
