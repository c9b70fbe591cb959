//! The CUDA 12 build of the kernels: the same `kernels/*.cu`, compiled by NVRTC 12.x (loaded at build time
//! from a CUDA 12 toolkit or from PyPI's nvidia-cuda-nvrtc-cu12) into one cubin per architecture.
//!
//! Why: a CUDA 13 nvcc's cubins and PTX need a CUDA 13 driver (580 or newer), and the clusters munja runs
//! on still have CUDA 12 drivers (525 to 575). Cubins from any CUDA 12.x toolkit load on every driver
//! from 525 up, CUDA 13 drivers included (CUDA's minor-version and backward compatibility). PyPI has no
//! CUDA 12 nvcc, only its NVRTC, so that is what builds them.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

/// A CUDA 12 NVRTC library and the CUDA 12 headers (cuda_bf16.h, cuda_fp16.h) it compiles against.
pub struct Nvrtc12 {
    pub lib: PathBuf,
    pub include: PathBuf,
}

/// Finds NVRTC 12 under `home`: a CUDA 12 toolkit (lib64/, include/) or PyPI's nvidia/ folder
/// (cuda_nvrtc/lib/, cuda_runtime/include/).
fn find_in(home: &Path) -> Option<Nvrtc12> {
    let lib =
        ["cuda_nvrtc/lib", "lib64", "lib"].iter().map(|d| home.join(d).join("libnvrtc.so.12")).find(|p| p.is_file())?;
    let include =
        ["cuda_runtime/include", "include"].iter().map(|d| home.join(d)).find(|p| p.join("cuda_bf16.h").is_file())?;
    Some(Nvrtc12 { lib, include })
}

/// NVRTC 12 from `MUNJA_CUDA12_HOME`, else where scripts/setup-nvcc.sh installs it (.cuda/ at the root).
pub fn find(root: &Path) -> Option<Nvrtc12> {
    if let Some(home) = std::env::var_os("MUNJA_CUDA12_HOME") {
        let found = find_in(Path::new(&home));
        if found.is_none() {
            panic!(
                "MUNJA_CUDA12_HOME={} holds no libnvrtc.so.12 (lib64/, lib/ or cuda_nvrtc/lib/) with cuda_bf16.h \
                 (include/ or cuda_runtime/include/)",
                Path::new(&home).display()
            );
        }
        return found;
    }
    let venv_lib = std::fs::read_dir(root.join(".cuda/lib")).ok()?;
    venv_lib.filter_map(|e| e.ok()).find_map(|e| find_in(&e.path().join("site-packages/nvidia")))
}

type Program = *mut std::ffi::c_void;
type Status = c_int;

/// The NVRTC entry points the build uses (nvrtc.h).
struct Api {
    _lib: libloading::Library,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Program) -> Status,
}

impl Api {
    fn load(path: &Path) -> Api {
        // SAFETY: loading NVRTC runs only its initialisers; every symbol is looked up with its nvrtc.h type.
        unsafe {
            let lib = libloading::Library::new(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                };
            }
            Api {
                version: sym!(b"nvrtcVersion"),
                error_string: sym!(b"nvrtcGetErrorString"),
                create: sym!(b"nvrtcCreateProgram"),
                compile: sym!(b"nvrtcCompileProgram"),
                log_size: sym!(b"nvrtcGetProgramLogSize"),
                log: sym!(b"nvrtcGetProgramLog"),
                cubin_size: sym!(b"nvrtcGetCUBINSize"),
                cubin: sym!(b"nvrtcGetCUBIN"),
                destroy: sym!(b"nvrtcDestroyProgram"),
                _lib: lib,
            }
        }
    }

    fn check(&self, what: &str, status: Status) {
        if status != 0 {
            // SAFETY: NVRTC returns a static string for every status.
            let msg = unsafe { CStr::from_ptr((self.error_string)(status)) }.to_string_lossy();
            panic!("NVRTC {what}: {msg}");
        }
    }

    /// Reads a program output of `size` bytes through `get`.
    fn read(
        &self,
        what: &str,
        prog: Program,
        size: Status,
        len: usize,
        get: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    ) -> Vec<u8> {
        self.check(what, size);
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` holds the `len` bytes NVRTC said the output takes.
        self.check(what, unsafe { get(prog, buf.as_mut_ptr() as *mut c_char) });
        buf
    }
}

/// The NVRTC version, (major, minor).
pub fn version(nv: &Nvrtc12) -> (u32, u32) {
    let api = Api::load(&nv.lib);
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters.
    api.check("version", unsafe { (api.version)(&mut major, &mut minor) });
    (major as u32, minor as u32)
}

/// Compiles `source` (which #includes kernels/*.cu) for `sm_{arch}`: the cubin and NVRTC's log, which
/// carries the ptxas -v report. A kernel that does not compile panics with the log (fails the build).
pub fn compile(nv: &Nvrtc12, source: &str, kernels: &Path, arch: &str, lineinfo: bool) -> (Vec<u8>, String) {
    let api = Api::load(&nv.lib);
    let src = CString::new(source).unwrap();
    let name = CString::new("munja_all.cu").unwrap();
    let mut opts = vec![
        format!("--gpu-architecture=sm_{arch}"),
        "-std=c++17".into(),
        format!("-I{}", kernels.display()),
        format!("-I{}", nv.include.display()),
        "--ptxas-options=-v".into(),
    ];
    if lineinfo {
        opts.push("-lineinfo".into());
    }
    let opts: Vec<CString> = opts.into_iter().map(|o| CString::new(o).unwrap()).collect();
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: Program = std::ptr::null_mut();
    // SAFETY: every pointer is a NUL-terminated string that outlives the calls; `prog` is destroyed last.
    unsafe {
        api.check(
            "create",
            (api.create)(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()),
        );
        let status = (api.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr());
        let mut n = 0usize;
        let log = api.read("log", prog, (api.log_size)(prog, &mut n), n, api.log);
        let log = String::from_utf8_lossy(&log).trim_end_matches('\0').to_string();
        if status != 0 {
            panic!("NVRTC 12 (sm_{arch}) could not compile the kernels:\n{log}");
        }
        let mut n = 0usize;
        let cubin = api.read("cubin", prog, (api.cubin_size)(prog, &mut n), n, api.cubin);
        api.check("destroy", (api.destroy)(&mut prog));
        (cubin, log)
    }
}
