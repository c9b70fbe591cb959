//! Launchers for kernels/optim.cu: fused Adam/AdamW and SGD, in place. Bias corrections are computed here
//! in f64 exactly as the CPU backend does.

use super::device::{grid_for, launch};
use super::storage::{kname, same_device, CudaStorage};
use crate::backend::{AdamParams, SgdParams};
use crate::{DType, Error, Result};

const THREADS: u32 = 256;

pub(crate) fn check(op: &'static str, p: &CudaStorage, others: &[&CudaStorage]) -> Result<()> {
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

/// The step's (step size, sqrt of the second bias correction, decoupled decay factor), in f64.
pub(crate) fn adam_constants(h: AdamParams) -> (f64, f64, f64) {
    let t = h.step as i32;
    let bc1 = 1.0 - h.beta1.powi(t);
    let bc2 = 1.0 - h.beta2.powi(t);
    (h.lr / bc1, bc2.sqrt(), 1.0 - h.lr * h.weight_decay)
}

pub(crate) fn adam_update(
    p: &mut CudaStorage,
    g: &CudaStorage,
    m: &mut CudaStorage,
    v: &mut CudaStorage,
    h: AdamParams,
) -> Result<()> {
    check("adam", p, &[g, m, v])?;
    let (step_size, bc2_sqrt, decay) = adam_constants(h);
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
