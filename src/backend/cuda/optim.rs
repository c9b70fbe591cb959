//! Launchers for kernels/optim.cu: fused Adam/AdamW and SGD, in place. Bias corrections are computed here
//! in f64 exactly as the CPU backend does.

use super::device::{grid_for, launch};
use super::elementwise::full;
use super::storage::{kname, need_float, same_device, CudaStorage};
use crate::backend::{AdamParams, ReduceOp, SgdParams};
use crate::shape::Layout;
use crate::{DType, Error, Result};

const THREADS: u32 = 256;

fn check(op: &'static str, p: &CudaStorage, others: &[&CudaStorage]) -> Result<()> {
    if !matches!(p.dtype(), DType::F32 | DType::F64) || others.iter().any(|o| o.dtype() != p.dtype()) {
        let bad = others.iter().map(|o| o.dtype()).find(|&d| d != p.dtype()).unwrap_or(p.dtype());
        return Err(Error::UnsupportedDType {
            op,
            dtype: bad,
            detail: "the CUDA optimizer updates f32 or f64 parameters with state of the same dtype",
        });
    }
    for o in others {
        same_device(op, p, o)?;
        if o.len() != p.len() {
            return Err(Error::shape(op, format!("state of {} elements for a parameter of {}", o.len(), p.len())));
        }
    }
    Ok(())
}

pub(crate) fn adam_update(
    p: &mut CudaStorage,
    g: &CudaStorage,
    m: &mut CudaStorage,
    v: &mut CudaStorage,
    h: AdamParams,
) -> Result<()> {
    check("adam", p, &[g, m, v])?;
    let t = h.step as i32;
    let bc1 = 1.0 - h.beta1.powi(t);
    let bc2 = 1.0 - h.beta2.powi(t);
    let (step_size, bc2_sqrt, decay) = (h.lr / bc1, bc2.sqrt(), 1.0 - h.lr * h.weight_decay);
    let n = p.len();
    launch!(p.dev(), kname("adam_update", p.dtype()), grid_for(n, THREADS), (THREADS, 1, 1);
        p.ptr(), g.ptr(), m.ptr(), v.ptr(), n as i64, h.beta1, h.beta2, h.eps, h.weight_decay, step_size, bc2_sqrt,
        decay, h.decoupled as i32)
}

pub(crate) fn sgd_update(
    p: &mut CudaStorage,
    g: &CudaStorage,
    buf: Option<&mut CudaStorage>,
    h: SgdParams,
) -> Result<()> {
    match &buf {
        Some(b) => check("sgd", p, &[g, b])?,
        None => check("sgd", p, &[g])?,
    }
    let bp = buf.map(|b| b.ptr()).unwrap_or(0);
    let n = p.len();
    launch!(p.dev(), kname("sgd_update", p.dtype()), grid_for(n, THREADS), (THREADS, 1, 1);
        p.ptr(), g.ptr(), bp, n as i64, h.lr, h.momentum, 1.0 - h.dampening, h.weight_decay, h.nesterov as i32,
        h.first_step as i32)
}

/// Tensors per launch and elements per block of sum_squares (TENSOR_LIST_MAX and TENSOR_LIST_CHUNK in
/// kernels/optim.cu).
const TENSOR_LIST_MAX: usize = 32;
const TENSOR_LIST_CHUNK: usize = 65536;

/// `struct TensorList` of kernels/optim.cu: the tensors of one launch, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct TensorList {
    ptr: [u64; TENSOR_LIST_MAX],
    len: [i64; TENSOR_LIST_MAX],
    first_chunk: [i64; TENSOR_LIST_MAX + 1],
    count: i32,
}

/// Σ x² over every element of `parts` (storage, first element, length; contiguous runs on one device), as
/// a one-element f64 storage on that device: squares in f32 (f64 for f64), sums in f64 in a fixed order.
/// One launch per 32 tensors of a dtype plus one sum, instead of several launches per tensor.
pub(crate) fn sum_squares(parts: &[(&CudaStorage, usize, usize)]) -> Result<CudaStorage> {
    const OP: &str = "sum_squares";
    let Some(&(first, _, _)) = parts.first() else {
        return Err(Error::invalid(OP, "no tensors"));
    };
    for &(s, at, len) in parts {
        same_device(OP, first, s)?;
        if !s.dtype().is_float() {
            return Err(need_float(OP, s.dtype()));
        }
        if at + len > s.len() {
            return Err(Error::invalid(OP, format!("elements {at}..{} of a storage of {}", at + len, s.len())));
        }
    }
    let dev = first.dev();
    let chunks: usize = parts.iter().map(|p| p.2.div_ceil(TENSOR_LIST_CHUNK)).sum();
    // One partial per chunk; a zero partial stands in when every tensor is empty.
    let partial =
        if chunks == 0 { full(dev, DType::F64, 1, 0.0)? } else { CudaStorage::alloc(dev, DType::F64, chunks)? };
    let mut base = 0usize;
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let of_type: Vec<_> = parts.iter().filter(|p| p.0.dtype() == dtype && p.2 > 0).collect();
        for group in of_type.chunks(TENSOR_LIST_MAX) {
            let mut tl = TensorList {
                ptr: [0; TENSOR_LIST_MAX],
                len: [0; TENSOR_LIST_MAX],
                first_chunk: [0; TENSOR_LIST_MAX + 1],
                count: group.len() as i32,
            };
            let mut blocks = 0usize;
            for (i, &&(s, at, len)) in group.iter().enumerate() {
                tl.ptr[i] = s.ptr_at(at);
                tl.len[i] = len as i64;
                tl.first_chunk[i] = blocks as i64;
                blocks += len.div_ceil(TENSOR_LIST_CHUNK);
            }
            tl.first_chunk[group.len()] = blocks as i64;
            launch!(dev, kname("sum_squares", dtype), (blocks as u32, 1, 1), (THREADS, 1, 1);
                tl, partial.ptr(), base as i64)?;
            base += blocks;
        }
    }
    super::reduce(&partial, &Layout::contiguous(&[chunks.max(1)]), &[0], ReduceOp::Sum)
}
