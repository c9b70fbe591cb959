//! Compiles every `kernels/*.cu` into one fatbin embedded in the crate: SASS for each architecture in
//! MUNJA_CUDA_ARCHS (default "80,90": DGX A100 and H200) plus compute_80 PTX so newer chips JIT it.
//!
//! All .cu files are compiled as one translation unit (a generated file that #includes them), once per
//! architecture in parallel, into cubins; `fatbinary` joins the cubins and the PTX. The ptxas -v report
//! (registers, spills per kernel) is kept in OUT_DIR and copied to <target>/munja-kernels/.
//! Without nvcc the build still succeeds (CPU-only) with one warning; asking for a CUDA device is then an Err.
//! No --use_fast_math: the kernels must match the CPU backend's f32 results to 1e-5.
//!
//! When that nvcc is CUDA 13 or newer, its output needs a CUDA 13 driver, so the same sources are also
//! compiled by NVRTC 12 (build/nvrtc.rs) into one cubin per architecture for CUDA 12 drivers; the crate
//! picks one of the two at run time by the driver's version (src/backend/cuda/images.rs). The toolkit
//! versions and the CUDA 12 cubins reach the crate through a generated `kernel_images.rs`.

#[path = "build/nvrtc.rs"]
mod nvrtc;

use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc() -> Option<PathBuf> {
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.is_file())
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        panic!("{what} failed ({}):\n{}\n{stderr}", out.status, String::from_utf8_lossy(&out.stdout));
    }
    stderr
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    for v in ["CUDA_HOME", "CUDA_PATH", "MUNJA_CUDA_ARCHS", "MUNJA_CUDA_LINEINFO", "MUNJA_CUDA12_HOME", "PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let fatbin = out.join("munja_kernels.fatbin");
    let report = out.join("ptxas_report.txt");

    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "cu")).collect()
        })
        .unwrap_or_default();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    let Some(nvcc) = find_nvcc() else {
        println!(
            "cargo:warning=munja: nvcc not found (CUDA_HOME, CUDA_PATH, PATH); building without CUDA kernels. \
             Run scripts/setup-nvcc.sh and export the CUDA_HOME it prints to enable Device::Cuda."
        );
        std::fs::write(&fatbin, b"").unwrap();
        std::fs::write(&report, "").unwrap();
        write_images(&out, (0, 0), None, &[]);
        return;
    };
    let toolkit = nvcc_release(&nvcc);
    // CUDA 12 and older nvcc output loads on CUDA 12 and 13 drivers alike; CUDA 13's needs the CUDA 12 build.
    let cuda12 = if toolkit.0 >= 13 { nvrtc::find(Path::new(env!("CARGO_MANIFEST_DIR"))) } else { None };
    if toolkit.0 >= 13 && cuda12.is_none() {
        println!(
            "cargo:warning=munja: nvcc {}.{} kernels need a CUDA 13 driver (580+); for CUDA 12 drivers too, \
             run scripts/setup-nvcc.sh (it installs NVRTC 12) or set MUNJA_CUDA12_HOME to a CUDA 12 toolkit",
            toolkit.0, toolkit.1
        );
    }
    let cuda12_version = cuda12.as_ref().map(nvrtc::version);
    let bin = nvcc.parent().unwrap().to_path_buf();

    // One translation unit that includes every family (found through -I kernels), so the fatbin holds
    // them all in one module; NVRTC compiles the same text.
    let kernels = std::fs::canonicalize("kernels").unwrap();
    let source: String =
        sources.iter().map(|s| format!("#include \"{}\"\n", s.file_name().unwrap().to_string_lossy())).collect();
    let all = out.join("munja_all.cu");
    std::fs::write(&all, &source).unwrap();

    let archs: Vec<String> = std::env::var("MUNJA_CUDA_ARCHS")
        .unwrap_or_else(|_| "80,90".into())
        .split(',')
        .map(|s| s.trim().trim_start_matches("sm_").to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let ptx_arch = archs
        .iter()
        .min_by_key(|a| a.trim_end_matches(char::is_alphabetic).parse::<u32>().unwrap_or(0))
        .cloned()
        .unwrap_or("80".into());
    // Line info doubles the cubins; opt in for profiling with ncu.
    let lineinfo = std::env::var_os("MUNJA_CUDA_LINEINFO").is_some();
    let common = |c: &mut Command| {
        c.arg("-std=c++17").arg("-O3").arg("-I").arg(&kernels);
        if lineinfo {
            c.arg("-lineinfo");
        }
    };

    // Every arch's cubin, the PTX and the CUDA 12 cubins compile in parallel threads (nvcc itself is
    // single-threaded here).
    let (reports, cuda12_builds): (Vec<(String, String)>, Vec<Cuda12Cubin>) = std::thread::scope(|sc| {
        let cuda12_jobs: Vec<_> = match &cuda12 {
            Some(nv) => archs
                .iter()
                .map(|a| {
                    let (source, kernels) = (&source, &kernels);
                    sc.spawn(move || {
                        let (cubin, log) = nvrtc::compile(nv, source, kernels, a, lineinfo);
                        Cuda12Cubin { arch: a.clone(), cubin, log }
                    })
                })
                .collect(),
            None => vec![],
        };
        let mut handles = vec![];
        for a in &archs {
            let (nvcc, all, out) = (&nvcc, &all, &out);
            handles.push(sc.spawn(move || {
                let mut c = Command::new(nvcc);
                common(&mut c);
                c.arg("-cubin").arg(format!("-arch=sm_{a}")).arg("-Xptxas=-v").arg(all);
                c.arg("-o").arg(out.join(format!("munja_sm_{a}.cubin")));
                (a.clone(), run(&mut c, &format!("nvcc (sm_{a})")))
            }));
        }
        let (nvcc, all, out, pa) = (&nvcc, &all, &out, &ptx_arch);
        handles.push(sc.spawn(move || {
            let mut c = Command::new(nvcc);
            common(&mut c);
            c.arg("-ptx").arg(format!("-arch=compute_{pa}")).arg(all).arg("-o").arg(out.join("munja.ptx"));
            ("ptx".into(), run(&mut c, "nvcc (ptx)"))
        }));
        (
            handles.into_iter().map(|h| h.join().unwrap()).collect(),
            cuda12_jobs.into_iter().map(|h| h.join().unwrap()).collect(),
        )
    });

    let mut fb = Command::new(bin.join("fatbinary"));
    // ELF images stay uncompressed (the test scans them for entry points); the PTX is compressed.
    fb.arg("-64").arg(format!("--create={}", fatbin.display()));
    for a in &archs {
        let num = a.trim_end_matches(char::is_alphabetic);
        fb.arg(format!("--image3=kind=elf,sm={num},file={}", out.join(format!("munja_sm_{a}.cubin")).display()));
    }
    fb.arg(format!(
        "--image3=kind=ptx,sm={},file={}",
        ptx_arch.trim_end_matches(char::is_alphabetic),
        out.join("munja.ptx").display()
    ));
    run(&mut fb, "fatbinary");

    let text: String = reports.iter().filter(|(a, _)| a != "ptx").map(|(_, r)| r.as_str()).collect();
    std::fs::write(&report, &text).unwrap();
    let cuda12_text: String = cuda12_builds.iter().map(|b| b.log.as_str()).collect();
    std::fs::write(out.join("ptxas_report_cuda12.txt"), &cuda12_text).unwrap();
    // <target>/<profile>/build/munja-<hash>/out -> <target>/munja-kernels/
    if let Some(target) = out.ancestors().nth(4) {
        let dir = target.join("munja-kernels");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("ptxas_report.txt"), &text);
        let _ = std::fs::write(dir.join("ptxas_report_cuda12.txt"), &cuda12_text);
    }
    let cubins: Vec<(String, PathBuf)> = cuda12_builds
        .iter()
        .map(|b| {
            let path = out.join(format!("munja_cuda12_sm_{}.cubin", b.arch));
            std::fs::write(&path, &b.cubin).unwrap();
            (b.arch.clone(), path)
        })
        .collect();
    write_images(&out, toolkit, cuda12_version, &cubins);
    println!("cargo:rustc-env=MUNJA_CUDA_ARCHS_BUILT={}", archs.join(","));
}

/// One architecture of the CUDA 12 build: its cubin and NVRTC's log (with the ptxas report).
struct Cuda12Cubin {
    arch: String,
    cubin: Vec<u8>,
    log: String,
}

/// The CUDA release of `nvcc` ("release 13.0," in `nvcc --version`) as (major, minor).
fn nvcc_release(nvcc: &Path) -> (u32, u32) {
    let out = Command::new(nvcc).arg("--version").output().unwrap_or_else(|e| panic!("{}: {e}", nvcc.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text.split("release ").nth(1).and_then(|r| r.split(',').next()).unwrap_or("");
    let mut parts = release.trim().split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => panic!("cannot read the CUDA release from `{} --version`:\n{text}", nvcc.display()),
    }
}

/// Writes OUT_DIR/kernel_images.rs: the toolkit that built the fatbin, the NVRTC version of the CUDA 12
/// cubins and the cubins themselves (architecture, bytes), and that build's ptxas report.
fn write_images(out: &Path, toolkit: (u32, u32), cuda12: Option<(u32, u32)>, cubins: &[(String, PathBuf)]) {
    let cuda12 = cuda12.unwrap_or((0, 0));
    let mut rs = String::from("// Generated by build.rs.\n");
    rs += &format!("pub const FATBIN_TOOLKIT: (u32, u32) = ({}, {});\n", toolkit.0, toolkit.1);
    rs += &format!("pub const CUDA12_TOOLKIT: (u32, u32) = ({}, {});\n", cuda12.0, cuda12.1);
    rs += "pub static CUDA12_CUBINS: &[(&str, &[u8])] = &[\n";
    for (arch, path) in cubins {
        rs += &format!("    ({arch:?}, include_bytes!({:?})),\n", path.display().to_string());
    }
    rs += "];\n";
    rs += &format!(
        "pub static CUDA12_PTXAS_REPORT: &str = include_str!({:?});\n",
        out.join("ptxas_report_cuda12.txt").display().to_string()
    );
    if !out.join("ptxas_report_cuda12.txt").exists() {
        std::fs::write(out.join("ptxas_report_cuda12.txt"), "").unwrap();
    }
    std::fs::write(out.join("kernel_images.rs"), rs).unwrap();
}
