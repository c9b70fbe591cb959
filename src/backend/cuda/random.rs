//! Launchers for kernels/random.cu: the Philox stream of src/rng.rs, drawn on the device.

use super::device::{grid_for, launch, CudaDevice};
use super::storage::{kname, need_float, CudaStorage};
use crate::{DType, Error, Result};
use std::sync::Arc;

pub(crate) fn uniform(dev: &Arc<CudaDevice>, dtype: DType, n: usize, seed: u64, block: u64) -> Result<CudaStorage> {
    if !dtype.is_float() {
        return Err(need_float("uniform", dtype));
    }
    let out = CudaStorage::alloc(dev, dtype, n)?;
    launch!(dev, kname("uniform", dtype), grid_for(n.div_ceil(4), 256), (256, 1, 1); out.ptr(), n as i64, seed, block)?;
    Ok(out)
}

/// Dropout's scaled keep mask in one kernel (see Storage::dropout_mask).
pub(crate) fn dropout_mask(
    dev: &Arc<CudaDevice>,
    dtype: DType,
    n: usize,
    seed: u64,
    block: u64,
    p: f64,
    scale: f64,
) -> Result<CudaStorage> {
    if !dtype.is_float() {
        return Err(need_float("dropout", dtype));
    }
    let out = CudaStorage::alloc(dev, dtype, n)?;
    launch!(dev, kname("dropout_mask", dtype), grid_for(n.div_ceil(4), 256), (256, 1, 1);
        out.ptr(), n as i64, seed, block, p, scale)?;
    Ok(out)
}

/// Dropout applied to `n` contiguous elements of `x` from element `at`: each times the mask
/// `dropout_mask` would draw, with the binary mul's rounding, in one kernel and no mask in memory.
pub(crate) fn dropout_apply(
    x: &CudaStorage,
    at: usize,
    n: usize,
    seed: u64,
    block: u64,
    p: f64,
    scale: f64,
) -> Result<CudaStorage> {
    if !x.dtype().is_float() {
        return Err(need_float("dropout", x.dtype()));
    }
    if at + n > x.len() {
        return Err(Error::invalid("dropout", format!("elements {at}..{} of a storage of {}", at + n, x.len())));
    }
    let out = CudaStorage::alloc(x.dev(), x.dtype(), n)?;
    launch!(x.dev(), kname("dropout_apply", x.dtype()), grid_for(n.div_ceil(4), 256), (256, 1, 1);
        x.ptr_at(at), out.ptr(), n as i64, seed, block, p, scale)?;
    Ok(out)
}

pub(crate) fn normal(dev: &Arc<CudaDevice>, dtype: DType, n: usize, seed: u64, block: u64) -> Result<CudaStorage> {
    if !dtype.is_float() {
        return Err(need_float("normal", dtype));
    }
    let out = CudaStorage::alloc(dev, dtype, n)?;
    launch!(dev, kname("normal", dtype), grid_for(n.div_ceil(2), 256), (256, 1, 1); out.ptr(), n as i64, seed, block)?;
    Ok(out)
}
