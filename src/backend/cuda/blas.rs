//! Matmul through cuBLASLt. Row-major C = A·B is computed as the column-major product Cᵀ = Bᵀ·Aᵀ, so
//! each operand is passed as its transpose; an operand whose rows or columns are unit-stride (a plain or a
//! transposed view) is used in place with the matching transpose flag, batched with one stride per operand
//! (0 for a broadcast batch). Other views are first copied to contiguous.
//!
//! f32 is strict fp32 by default (matching the CPU to 1e-5); TF32 tensor cores are opt-in with
//! `set_tf32(true)` or MUNJA_TF32=1. bf16/f16 accumulate in f32; f64 in f64.

use super::device::CudaDevice;
use super::elementwise::cast;
use super::storage::{need_float, same_device, same_dtype, CudaStorage};
use crate::shape::{coalesce, Layout};
use crate::{DType, Error, Result};
use cudarc::cublaslt::{result as lt, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// 0: not decided yet (read MUNJA_TF32), 1: off, 2: on.
static TF32: AtomicU8 = AtomicU8::new(0);

/// Lets f32 matmuls use TF32 tensor cores (about 8x faster, ~1e-3 relative error). Off by default.
pub fn set_tf32(on: bool) {
    TF32.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether f32 matmuls use TF32 (MUNJA_TF32=1 turns it on unless `set_tf32` said otherwise).
pub fn tf32_enabled() -> bool {
    match TF32.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("MUNJA_TF32").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
            set_tf32(on);
            on
        }
        v => v == 2,
    }
}

const WORKSPACE: usize = 32 << 20;

/// A cuBLASLt handle, its workspace and the algorithms chosen per problem.
pub(crate) struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaStorage,
    algos: HashMap<Key, sys::cublasLtMatmulAlgo_t>,
}
// SAFETY: the handle is used under the device's mutex only.
unsafe impl Send for Lt {}

type Key = (u8, bool, [i64; 12]);

/// One operand as cuBLASLt sees it: rows × cols column-major with leading dim `ld`, maybe transposed.
#[derive(Clone, Copy)]
struct Mat {
    rows: u64,
    cols: u64,
    ld: i64,
    trans: bool,
    batch_stride: i64,
    ptr: u64,
}

/// The transpose of the row-major R×C view with strides (rs, cs) as a column-major operand, if possible.
fn as_lt(r: usize, c: usize, rs: usize, cs: usize) -> Option<(u64, u64, i64, bool)> {
    let rs = if r == 1 { c.max(1) } else { rs };
    let cs = if c == 1 { 1 } else { cs };
    if cs == 1 && rs >= c.max(1) {
        // Xᵀ is C×R column-major with ld = rs: no transpose.
        Some((c as u64, r as u64, rs as i64, false))
    } else if rs == 1 && cs >= r.max(1) {
        // X itself is R×C column-major with ld = cs: pass it transposed.
        Some((r as u64, c as u64, cs as i64, true))
    } else {
        None
    }
}

fn dtypes(d: DType) -> (sys::cudaDataType, sys::cublasComputeType_t, sys::cudaDataType) {
    use sys::cublasComputeType_t as C;
    use sys::cudaDataType as T;
    match d {
        DType::F64 => (T::CUDA_R_64F, C::CUBLAS_COMPUTE_64F, T::CUDA_R_64F),
        DType::BF16 => (T::CUDA_R_16BF, C::CUBLAS_COMPUTE_32F, T::CUDA_R_32F),
        DType::F16 => (T::CUDA_R_16F, C::CUBLAS_COMPUTE_32F, T::CUDA_R_32F),
        _ if tf32_enabled() => (T::CUDA_R_32F, C::CUBLAS_COMPUTE_32F_FAST_TF32, T::CUDA_R_32F),
        _ => (T::CUDA_R_32F, C::CUBLAS_COMPUTE_32F, T::CUDA_R_32F),
    }
}

fn lt_err(dev: &CudaDevice, e: impl std::fmt::Debug) -> Error {
    dev.err("matmul", e)
}

/// Batched matmul of [.., m, k] by [.., k, n] (batch dims already broadcast); contiguous [.., m, n] out.
pub(crate) fn matmul(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<CudaStorage> {
    same_device("matmul", a, b)?;
    same_dtype("matmul", a, b)?;
    let dt = a.dtype();
    if !dt.is_float() {
        return Err(need_float("matmul", dt));
    }
    let dev = a.dev().clone();
    let r = la.rank();
    let (m, k, n) = (la.shape()[r - 2], la.shape()[r - 1], lb.shape()[r - 1]);
    let batch_shape = &la.shape()[..r - 2];
    let batch: usize = batch_shape.iter().product();
    let out = CudaStorage::alloc(&dev, dt, batch * m * n)?;
    if batch * m * n == 0 {
        return Ok(out);
    }
    if k == 0 {
        let z = super::elementwise::full(&dev, dt, batch * m * n, 0.0)?;
        return Ok(z);
    }
    // One batch stride per operand, or a contiguous copy.
    let (bshape, bstr) = coalesce(batch_shape, &[&la.strides()[..r - 2], &lb.strides()[..r - 2]]);
    let batch_ok = bshape.len() == 1;
    let operand =
        |x: &CudaStorage, l: &Layout, rows: usize, cols: usize, bs: usize| -> Result<(Option<CudaStorage>, Mat)> {
            let s = l.strides();
            if batch_ok {
                if let Some((lr, lc, ld, trans)) = as_lt(rows, cols, s[r - 2], s[r - 1]) {
                    let bstride = if batch == 1 { 0 } else { bs as i64 };
                    return Ok((
                        None,
                        Mat { rows: lr, cols: lc, ld, trans, batch_stride: bstride, ptr: x.ptr_at(l.offset()) },
                    ));
                }
            }
            let c = cast(x, l, dt)?;
            let (lr, lc, ld, trans) = as_lt(rows, cols, cols, 1).expect("contiguous operands always fit");
            let ptr = c.ptr();
            Ok((Some(c), Mat { rows: lr, cols: lc, ld, trans, batch_stride: (rows * cols) as i64, ptr }))
        };
    let (_ka, ma) = operand(a, la, m, k, if batch_ok { bstr[0][0] } else { 0 })?;
    let (_kb, mb) = operand(b, lb, k, n, if batch_ok { bstr[1][0] } else { 0 })?;

    let mut guard = dev.blas.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        // SAFETY: only probes for libcublasLt.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::DeviceUnavailable {
                op: "matmul",
                device: dev.device(),
                detail: "libcublasLt was not found".into(),
            });
        }
        dev.bind()?;
        let handle = lt::create_handle().map_err(|e| lt_err(&dev, e))?;
        let workspace = CudaStorage::alloc(&dev, DType::U8, WORKSPACE)?;
        *guard = Some(Lt { handle, workspace, algos: HashMap::new() });
    }
    let ltc = guard.as_mut().expect("just set");
    dev.bind()?;
    run(&dev, ltc, dt, mb, ma, out.ptr(), n, m, k, batch)?;
    Ok(out)
}

/// D (cm × cn column-major, ld cm) = op(A) (cm × k) · op(B) (k × cn), batched.
#[allow(clippy::too_many_arguments)]
fn run(
    dev: &Arc<CudaDevice>,
    ltc: &mut Lt,
    dt: DType,
    a: Mat,
    b: Mat,
    d: u64,
    cm: usize,
    cn: usize,
    k: usize,
    batch: usize,
) -> Result<()> {
    let (data, compute, scale) = dtypes(dt);
    let e = |x| lt_err(dev, x);
    // SAFETY: descriptors are created, used and destroyed here; pointers address buffers that hold the
    // matrices the layouts describe (validated layouts, contiguous output of batch·cm·cn elements).
    unsafe {
        let desc = lt::create_matmul_desc(compute, scale).map_err(e)?;
        // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (a 32-bit enum).
        let op = |t: bool| t as i32;
        let (ta, tb) = (op(a.trans), op(b.trans));
        let set = |attr, v: &i32| lt::set_matmul_desc_attribute(desc, attr, v as *const _ as *const c_void, 4);
        set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &ta).map_err(e)?;
        set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &tb).map_err(e)?;
        let layout = |rows: u64, cols: u64, ld: i64, stride: i64| -> Result<sys::cublasLtMatrixLayout_t> {
            let l = lt::create_matrix_layout(data, rows, cols, ld).map_err(e)?;
            if batch > 1 {
                let count = batch as i32;
                lt::set_matrix_layout_attribute(
                    l,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &count as *const _ as *const c_void,
                    4,
                )
                .map_err(e)?;
                lt::set_matrix_layout_attribute(
                    l,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    &stride as *const _ as *const c_void,
                    8,
                )
                .map_err(e)?;
            }
            Ok(l)
        };
        let la = layout(a.rows, a.cols, a.ld, a.batch_stride)?;
        let lb = layout(b.rows, b.cols, b.ld, b.batch_stride)?;
        let ld = layout(cm as u64, cn as u64, cm as i64, (cm * cn) as i64)?;
        let tf = dt == DType::F32 && tf32_enabled();
        let key: Key = (
            dt as u8,
            tf,
            [
                cm as i64,
                cn as i64,
                k as i64,
                a.ld,
                b.ld,
                a.trans as i64,
                b.trans as i64,
                batch as i64,
                a.batch_stride,
                b.batch_stride,
                (a.ptr % 16) as i64,
                (b.ptr % 16) as i64,
            ],
        );
        let algo = match ltc.algos.get(&key) {
            Some(a) => *a,
            None => {
                let pref = lt::create_matmul_pref().map_err(e)?;
                let ws = WORKSPACE as u64;
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const _ as *const c_void,
                    8,
                )
                .map_err(e)?;
                let h = lt::get_matmul_algo_heuristic(ltc.handle, desc, la, lb, ld, ld, pref);
                let _ = lt::destroy_matmul_pref(pref);
                let h = h.map_err(e)?;
                ltc.algos.insert(key, h.algo);
                h.algo
            }
        };
        let (one32, zero32, one64, zero64) = (1f32, 0f32, 1f64, 0f64);
        let (alpha, beta): (*const c_void, *const c_void) = if dt == DType::F64 {
            (&one64 as *const _ as _, &zero64 as *const _ as _)
        } else {
            (&one32 as *const _ as _, &zero32 as *const _ as _)
        };
        let r = super::profile::timed(dev, profile_name(dt), || {
            lt::matmul(
                ltc.handle,
                desc,
                alpha,
                beta,
                a.ptr as *const c_void,
                la,
                b.ptr as *const c_void,
                lb,
                d as *const c_void,
                ld,
                d as *mut c_void,
                ld,
                &algo,
                ltc.workspace.ptr() as *mut c_void,
                WORKSPACE,
                dev.cu_stream() as sys::cudaStream_t,
            )
            .map_err(e)
        });
        let _ = lt::destroy_matrix_layout(la);
        let _ = lt::destroy_matrix_layout(lb);
        let _ = lt::destroy_matrix_layout(ld);
        let _ = lt::destroy_matmul_desc(desc);
        r
    }
}

/// The profiler's name for a matmul of `dt`.
fn profile_name(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "cublasLt matmul bf16",
        DType::F16 => "cublasLt matmul f16",
        DType::F64 => "cublasLt matmul f64",
        _ => "cublasLt matmul f32",
    }
}
