//! Compiles every `kernels/*.cu` into one fatbin embedded in the crate: SASS for each architecture in
//! MUNJA_CUDA_ARCHS (default "80,90": DGX A100 and H200) plus compute_80 PTX so newer chips JIT it.
//!
//! All .cu files are compiled as one translation unit (a generated file that #includes them), once per
//! architecture in parallel, into cubins; `fatbinary` joins the cubins and the PTX. The ptxas -v report
//! (registers, spills per kernel) is kept in OUT_DIR and copied to <target>/munja-kernels/.
//! Without nvcc the build still succeeds (CPU-only) with one warning; asking for a CUDA device is then an Err.
//! No --use_fast_math: the kernels must match the CPU backend's f32 results to 1e-5.

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
    for v in ["CUDA_HOME", "CUDA_PATH", "MUNJA_CUDA_ARCHS", "MUNJA_CUDA_LINEINFO", "PATH"] {
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
        return;
    };
    let bin = nvcc.parent().unwrap().to_path_buf();

    // One translation unit that includes every family, so the fatbin holds them all in one module.
    let all = out.join("munja_all.cu");
    let mut text = String::new();
    for s in &sources {
        text.push_str(&format!("#include \"{}\"\n", std::fs::canonicalize(s).unwrap().display()));
    }
    std::fs::write(&all, text).unwrap();

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
    let common = |c: &mut Command| {
        c.arg("-std=c++17").arg("-O3").arg("-I").arg(std::fs::canonicalize("kernels").unwrap());
        // Line info doubles the cubins; opt in for profiling with ncu.
        if std::env::var_os("MUNJA_CUDA_LINEINFO").is_some() {
            c.arg("-lineinfo");
        }
    };

    // Every arch's cubin and the PTX compile in parallel threads (nvcc itself is single-threaded here).
    let reports: Vec<(String, String)> = std::thread::scope(|sc| {
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
        handles.into_iter().map(|h| h.join().unwrap()).collect()
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
    // <target>/<profile>/build/munja-<hash>/out -> <target>/munja-kernels/
    if let Some(target) = out.ancestors().nth(4) {
        let dir = target.join("munja-kernels");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("ptxas_report.txt"), &text);
    }
    println!("cargo:rustc-env=MUNJA_CUDA_ARCHS_BUILT={}", archs.join(","));
}
