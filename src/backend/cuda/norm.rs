//! Launchers for kernels/norm.cu (layer/RMS norm) and kernels/loss.cu (cross-entropy from logits).

use super::device::{grid_for, launch};
use super::softmax::{cached_row_threads, row_threads};
use super::storage::{kname, need_float, same_device, same_dtype, CudaStorage};
use crate::{DType, Error, Result};

/// Blocks of the fused norm backward: enough to fill an H100/H200 (132 SMs) twice; each writes one partial
/// row of weight and bias gradients.
const FUSED_BLOCKS: usize = 264;

fn stats_dtype(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn check_param(op: &'static str, x: &CudaStorage, p: Option<&CudaStorage>) -> Result<u64> {
    match p {
        None => Ok(0),
        Some(p) => {
            same_device(op, x, p)?;
            same_dtype(op, x, p)?;
            Ok(p.ptr())
        }
    }
}

pub(crate) type Stats = (CudaStorage, CudaStorage, CudaStorage);

pub(crate) fn norm_forward(
    x: &CudaStorage,
    w: Option<&CudaStorage>,
    b: Option<&CudaStorage>,
    n: usize,
    eps: f64,
    rms: bool,
) -> Result<Stats> {
    const OP: &str = "layer_norm";
    if !x.dtype().is_float() {
        return Err(need_float(OP, x.dtype()));
    }
    let (wp, bp) = (check_param(OP, x, w)?, check_param(OP, x, b)?);
    let dev = x.dev();
    let rows = x.len().checked_div(n).unwrap_or(0);
    let y = CudaStorage::alloc(dev, x.dtype(), x.len())?;
    let mean = CudaStorage::alloc(dev, stats_dtype(x.dtype()), rows)?;
    let rstd = CudaStorage::alloc(dev, stats_dtype(x.dtype()), rows)?;
    if rows > 0 {
        let (name, t) = match cached_row_threads(n, x.dtype(), &[x.ptr(), y.ptr()]) {
            Some(t) => ("norm_forward_rows", t),
            None => ("norm_forward", row_threads(n)),
        };
        launch!(dev, kname(name, x.dtype()), (rows as u32, 1, 1), (t, 1, 1);
            x.ptr(), wp, bp, y.ptr(), mean.ptr(), rstd.ptr(), n as i64, eps, rms as i32)?;
    }
    Ok((y, mean, rstd))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_backward(
    x: &CudaStorage,
    w: Option<&CudaStorage>,
    has_bias: bool,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    g: &CudaStorage,
    n: usize,
    rms: bool,
) -> Result<(CudaStorage, Option<CudaStorage>, Option<CudaStorage>)> {
    const OP: &str = "layer_norm_backward";
    if !x.dtype().is_float() {
        return Err(need_float(OP, x.dtype()));
    }
    same_device(OP, x, g)?;
    same_dtype(OP, x, g)?;
    let wp = check_param(OP, x, w)?;
    for s in [mean, rstd] {
        same_device(OP, x, s)?;
        if s.dtype() != stats_dtype(x.dtype()) {
            return Err(Error::DType { op: OP, expected: stats_dtype(x.dtype()), got: s.dtype() });
        }
    }
    let dev = x.dev();
    let rows = x.len().checked_div(n).unwrap_or(0);
    let gx = CudaStorage::alloc(dev, x.dtype(), x.len())?;
    let cached = cached_row_threads(n, x.dtype(), &[x.ptr(), g.ptr(), gx.ptr()]);
    if let (Some(t), true, true) = (cached, x.dtype() != DType::F64, rows > 0 && (w.is_some() || has_bias)) {
        // Fused: input gradient and per-block weight/bias partials in one pass over x and g.
        let blocks = rows.min(FUSED_BLOCKS);
        let (pw, pb) =
            (CudaStorage::alloc(dev, DType::F64, blocks * n)?, CudaStorage::alloc(dev, DType::F64, blocks * n)?);
        launch!(dev, kname("norm_backward_fused_rows", x.dtype()), (blocks as u32, 1, 1), (t, 1, 1);
            x.ptr(), wp, mean.ptr(), rstd.ptr(), g.ptr(), gx.ptr(), rows as i64, n as i64, rms as i32, pw.ptr(), pb.ptr())?;
        let gw = w.map(|_| CudaStorage::alloc(dev, x.dtype(), n)).transpose()?;
        let gb = has_bias.then(|| CudaStorage::alloc(dev, x.dtype(), n)).transpose()?;
        let (gwp, gbp) = (gw.as_ref().map_or(0, |s| s.ptr()), gb.as_ref().map_or(0, |s| s.ptr()));
        launch!(dev, kname("norm_backward_wb_finish", x.dtype()), grid_for(n, 256), (256, 1, 1);
            pw.ptr(), pb.ptr(), blocks as i32, n as i64, gwp, gbp)?;
        return Ok((gx, gw, gb));
    }
    if rows > 0 {
        let (name, t) = match cached_row_threads(n, x.dtype(), &[x.ptr(), g.ptr(), gx.ptr()]) {
            Some(t) => ("norm_backward_x_rows", t),
            None => ("norm_backward_x", row_threads(n)),
        };
        launch!(dev, kname(name, x.dtype()), (rows as u32, 1, 1), (t, 1, 1);
            x.ptr(), wp, mean.ptr(), rstd.ptr(), g.ptr(), gx.ptr(), n as i64, rms as i32)?;
    }
    if w.is_none() && !has_bias {
        return Ok((gx, None, None));
    }
    let gw = CudaStorage::alloc(dev, x.dtype(), n)?;
    let gb = CudaStorage::alloc(dev, x.dtype(), n)?;
    // Row slices: enough blocks to fill the GPU, each slice at least 32 rows.
    let slices = rows.div_ceil(32).clamp(1, 256);
    let pw = CudaStorage::alloc(dev, DType::F64, slices * n)?;
    let pb = CudaStorage::alloc(dev, DType::F64, slices * n)?;
    if n > 0 {
        launch!(dev, kname("norm_backward_wb_partial", x.dtype()), (n.div_ceil(32) as u32, slices as u32, 1), (32, 8, 1);
            x.ptr(), mean.ptr(), rstd.ptr(), g.ptr(), rows as i64, n as i64, pw.ptr(), pb.ptr())?;
        let (gwp, gbp) = (if w.is_some() { gw.ptr() } else { 0u64 }, if has_bias { gb.ptr() } else { 0u64 });
        launch!(dev, kname("norm_backward_wb_finish", x.dtype()), grid_for(n, 256), (256, 1, 1);
            pw.ptr(), pb.ptr(), slices as i32, n as i64, gwp, gbp)?;
    }
    Ok((gx, w.map(|_| gw), has_bias.then_some(gb)))
}

fn check_targets(x: &CudaStorage, t: &CudaStorage) -> Result<()> {
    same_device("cross_entropy", x, t)?;
    if t.dtype() != DType::I64 {
        return Err(Error::DType { op: "cross_entropy", expected: DType::I64, got: t.dtype() });
    }
    if !x.dtype().is_float() {
        return Err(need_float("cross_entropy", x.dtype()));
    }
    Ok(())
}

pub(crate) fn cross_entropy_forward(x: &CudaStorage, t: &CudaStorage, c: usize, ignore: i64) -> Result<CudaStorage> {
    check_targets(x, t)?;
    let rows = t.len();
    let out = CudaStorage::alloc(x.dev(), x.dtype(), rows)?;
    if rows > 0 {
        launch!(x.dev(), kname("cross_entropy_forward", x.dtype()), (rows as u32, 1, 1), (row_threads(c), 1, 1);
            x.ptr(), t.ptr(), out.ptr(), c as i64, ignore)?;
    }
    Ok(out)
}

pub(crate) fn cross_entropy_backward(
    x: &CudaStorage,
    t: &CudaStorage,
    g: &CudaStorage,
    c: usize,
    ignore: i64,
) -> Result<CudaStorage> {
    check_targets(x, t)?;
    same_device("cross_entropy_backward", x, g)?;
    same_dtype("cross_entropy_backward", x, g)?;
    let rows = t.len();
    let out = CudaStorage::alloc(x.dev(), x.dtype(), x.len())?;
    if rows > 0 {
        launch!(x.dev(), kname("cross_entropy_backward", x.dtype()), (rows as u32, 1, 1), (row_threads(c), 1, 1);
            x.ptr(), t.ptr(), g.ptr(), out.ptr(), c as i64, ignore)?;
    }
    Ok(out)
}
