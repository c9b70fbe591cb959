//! The kernels build.rs compiled: the embedded fatbin, loaded once per device, and every entry point the
//! Rust side launches (`kernel_names`, which a CPU-only test checks against the fatbin's cubins).

use crate::{Device, Error, Result};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Mutex;

/// The nvcc build: a fatbin of SASS for each built architecture + compute_80 PTX; empty when built without
/// nvcc. Devices whose driver is older than that nvcc load the CUDA 12 build instead (images.rs).
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/munja_kernels.fatbin"));
/// ptxas -v output for every kernel and architecture (registers, spills); empty without nvcc.
pub static PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas_report.txt"));

pub(crate) const NO_NVCC: &str = "munja was built without nvcc; install it (see scripts/setup-nvcc.sh) and rebuild";

const FLOATS: [&str; 4] = ["f32", "f64", "bf16", "f16"];
const ALL: [&str; 6] = ["f32", "f64", "bf16", "f16", "i64", "u8"];

/// Every kernel entry point the backend may launch.
pub fn kernel_names() -> Vec<String> {
    let mut v: Vec<String> =
        ["copy_packs", "copy_into_packs", "sort_rank", "sort_base", "sort_place"].map(String::from).into();
    let per = |v: &mut Vec<String>, fams: &[&str], types: &[&str]| {
        for f in fams {
            for t in types {
                v.push(format!("{f}_{t}"));
            }
        }
    };
    per(&mut v, &["unary", "softmax", "softmax_backward", "norm_forward", "norm_backward_x"], &FLOATS);
    per(&mut v, &["softmax_rows", "softmax_backward_rows", "norm_forward_rows", "norm_backward_x_rows"], &FLOATS);
    per(&mut v, &["norm_backward_wb_partial", "norm_backward_wb_finish"], &FLOATS);
    per(
        &mut v,
        &[
            "cross_entropy_forward",
            "cross_entropy_backward",
            "uniform",
            "normal",
            "dropout_mask",
            "dropout_apply",
            "sum_squares",
            "clip_scale",
        ],
        &FLOATS,
    );
    per(&mut v, &["binary", "binary_rows"], &["f32", "f64", "bf16", "f16", "i64"]);
    per(&mut v, &["compare", "where", "copy_into", "fill", "reduce_rows", "reduce_finish", "reduce_small"], &ALL);
    per(
        &mut v,
        &[
            "argmax",
            "index_select",
            "index_add",
            "index_add_segments",
            "index_add_segments_finish",
            "gather",
            "scatter_add",
            "transpose_copy",
        ],
        &ALL,
    );
    per(&mut v, &["adam_update", "adam_update_list", "sgd_update", "sgd_update_list"], &["f32", "f64"]);
    per(&mut v, &["norm_backward_fused_rows", "norm_backward_fused_finish"], &["f32", "bf16", "f16"]);
    per(&mut v, &["norm_forward_pairs_rows", "norm_backward_fused_pairs_rows"], &["bf16", "f16"]);
    for s in ALL {
        for d in ALL {
            v.push(format!("cast_{s}_{d}"));
        }
    }
    for (s, d) in super::lists::LIST_CASTS {
        v.push(format!("cast_list_{}_{}", s.name(), d.name()));
    }
    v
}

/// The loaded module, what it was loaded from, and a cache of looked-up functions.
pub(crate) struct Module {
    module: sys::CUmodule,
    pub(crate) image: String,
    funcs: Mutex<HashMap<&'static str, Func>>,
}

#[derive(Clone, Copy)]
pub(crate) struct Func(pub sys::CUfunction);
// SAFETY: a CUfunction is an immutable handle valid in every thread that binds its context.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}
// SAFETY: likewise for the module handle; it is only unloaded never (it lives as long as the process).
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// Loads the embedded kernel build that suits the driver and a GPU of compute capability `cc`
    /// (images.rs) into the current context (bound by the caller).
    pub(crate) fn load(device: Device, cc: (u32, u32)) -> Result<Module> {
        if FATBIN.is_empty() {
            return Err(Error::DeviceUnavailable { op: "cuda", device, detail: NO_NVCC.into() });
        }
        let (bytes, image) = super::images::image_for(device, cc)?;
        // The driver wants the image at a stable, aligned address: copy it into an 8-aligned buffer.
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        // SAFETY: `words` holds a complete fatbin or cubin image and outlives the call (the driver copies it).
        let module = unsafe { result::module::load_data(words.as_ptr() as *const _) }.map_err(|e| {
            Error::DeviceUnavailable { op: "cuda", device, detail: format!("loading munja's kernels ({image}): {e:?}") }
        })?;
        Ok(Module { module, image, funcs: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn func(&self, name: &'static str, device: Device) -> Result<Func> {
        let mut f = self.funcs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&h) = f.get(name) {
            return Ok(h);
        }
        let c = CString::new(name).expect("kernel names have no NUL");
        // SAFETY: the module is loaded and stays loaded for the process lifetime.
        let h = unsafe { result::module::get_function(self.module, c) }.map_err(|e| Error::DeviceUnavailable {
            op: "cuda",
            device,
            detail: format!("kernel {name} missing from the fatbin: {e:?}"),
        })?;
        f.insert(name, Func(h));
        Ok(Func(h))
    }
}
