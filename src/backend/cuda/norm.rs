//! Launchers for kernels/norm.cu (layer/RMS norm) and kernels/loss.cu (cross-entropy from logits).

use super::device::{launch, launch_shared};
use super::ring::{ring_plan, Direct, RingKernel, Walk};
use super::softmax::{cached_row_threads, row_threads};
use super::storage::{kname, need_float, same_device, same_dtype, CudaStorage};
use crate::{DType, Error, Result};
use std::sync::OnceLock;

/// Values per thread and most threads per block of the fused norm backward (FUSED_VALS and FUSED_THREADS
/// in kernels/norm.cu).
const FUSED_VALS: usize = 16;
const FUSED_THREADS: usize = 512;
/// Fewest rows each block of the fused backward walks: every block writes a partial row of weight and
/// bias gradients, so fewer, longer-lived blocks keep that extra traffic small next to x and g.
const FUSED_MIN_ROWS_PER_BLOCK: usize = 16;

/// `MUNJA_NORM_PAIRS=1` (read once): the ring kernels of 16-bit rows, forward and fused backward, reduce
/// two rows at a time (`norm_*_pairs_rows`: one barrier for two rows). Off by default until a GPU has
/// measured them against a row at a time (scripts/gpu-suite.sh prints both); for the same grid both give
/// the same bits.
fn norm_pairs() -> bool {
    static PAIRS: OnceLock<bool> = OnceLock::new();
    *PAIRS.get_or_init(|| std::env::var("MUNJA_NORM_PAIRS").is_ok_and(|v| v.trim() == "1"))
}

/// The ring kernel `rows` (a row at a time) for `dtype`, or its pair walk `pairs` where `norm_pairs` asks
/// for it and the rows are 16-bit.
fn row_walk(rows: &'static str, pairs: &'static str, dtype: DType) -> (&'static str, Walk) {
    if dtype.size_in_bytes() == 2 && norm_pairs() {
        (kname(pairs, dtype), Walk::Pairs)
    } else {
        (kname(rows, dtype), Walk::Rows)
    }
}

/// Threads per block of the fused norm backward, when it applies: rows of whole 16-byte packs, every
/// pointer 16-byte aligned, at most FUSED_VALS values per thread (rows up to 8192).
fn fused_threads(n: usize, dtype: DType, ptrs: &[u64]) -> Option<u32> {
    let fits = dtype != DType::F64
        && n > 0
        && n.is_multiple_of(16 / dtype.size_in_bytes())
        && n <= FUSED_VALS * FUSED_THREADS
        && ptrs.iter().all(|p| p.is_multiple_of(16));
    fits.then(|| (n.div_ceil(FUSED_VALS).div_ceil(32) * 32).clamp(32, FUSED_THREADS) as u32)
}

/// Thread rows of the weight/bias finish kernels' blocks (FINISH_ROWS in kernels/norm.cu).
const FINISH_ROWS: u32 = 32;

/// Grid of the weight/bias finish kernels (block (32, FINISH_ROWS)): one block per 32 columns.
fn finish_grid(n: usize) -> (u32, u32, u32) {
    (n.div_ceil(32) as u32, 1, 1)
}

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
    if rows == 0 {
        return Ok((y, mean, rstd));
    }
    if let Some(t) = cached_row_threads(n, x.dtype(), &[x.ptr(), y.ptr(), wp, bp]) {
        // Resident blocks walking the rows, each with a ring of rows in flight.
        let (name, walk) = row_walk("norm_forward_rows", "norm_forward_pairs_rows", x.dtype());
        let kernel = RingKernel { name, threads: t, arrays: 1, direct: Direct::Allowed, walk };
        if let Some(plan) = ring_plan(dev, kernel, n, x.dtype())? {
            let blocks = plan.blocks(rows);
            return launch_shared!(dev, name, (blocks as u32, 1, 1), (t, 1, 1), plan.shared as u32;
                x.ptr(), wp, bp, y.ptr(), mean.ptr(), rstd.ptr(), rows as i64, n as i64, eps, rms as i32, plan.stages)
            .map(|_| (y, mean, rstd));
        }
    }
    launch!(dev, kname("norm_forward", x.dtype()), (rows as u32, 1, 1), (row_threads(n), 1, 1);
        x.ptr(), wp, bp, y.ptr(), mean.ptr(), rstd.ptr(), n as i64, eps, rms as i32)?;
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
    let fused = fused_threads(n, x.dtype(), &[x.ptr(), g.ptr(), gx.ptr(), wp]);
    let (name, walk) = row_walk("norm_backward_fused_rows", "norm_backward_fused_pairs_rows", x.dtype());
    let ring = match fused {
        Some(t) if rows > 0 && (w.is_some() || has_bias) => {
            let kernel = RingKernel { name, threads: t, arrays: 2, direct: Direct::Never, walk };
            ring_plan(dev, kernel, n, x.dtype())?.map(|r| (t, r))
        }
        _ => None,
    };
    if let Some((t, plan)) = ring {
        // Fused: input gradient and per-block weight/bias partials in one pass over x and g, with as many
        // blocks as the GPU holds at once, each with a ring of rows in flight.
        let blocks = plan.resident.min(rows.div_ceil(FUSED_MIN_ROWS_PER_BLOCK)).max(1);
        let (pw, pb) =
            (CudaStorage::alloc(dev, DType::F32, blocks * n)?, CudaStorage::alloc(dev, DType::F32, blocks * n)?);
        launch_shared!(dev, name, (blocks as u32, 1, 1), (t, 1, 1), plan.shared as u32;
            x.ptr(), wp, mean.ptr(), rstd.ptr(), g.ptr(), gx.ptr(), rows as i64, n as i64, rms as i32, pw.ptr(), pb.ptr(),
            plan.stages)?;
        let gw = w.map(|_| CudaStorage::alloc(dev, x.dtype(), n)).transpose()?;
        let gb = has_bias.then(|| CudaStorage::alloc(dev, x.dtype(), n)).transpose()?;
        let (gwp, gbp) = (gw.as_ref().map_or(0, |s| s.ptr()), gb.as_ref().map_or(0, |s| s.ptr()));
        launch!(dev, kname("norm_backward_fused_finish", x.dtype()), finish_grid(n), (32, FINISH_ROWS, 1);
            pw.ptr(), pb.ptr(), blocks as i32, n as i64, gwp, gbp)?;
        return Ok((gx, gw, gb));
    }
    if rows > 0 {
        let (name, t) = match cached_row_threads(n, x.dtype(), &[x.ptr(), g.ptr(), gx.ptr(), wp]) {
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
        launch!(dev, kname("norm_backward_wb_finish", x.dtype()), finish_grid(n), (32, FINISH_ROWS, 1);
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

/// Per-row losses and the [rows, 2] (max, sum of exp(x − max)) statistics the backward reads.
/// Most threads per block of the cross-entropy forward. Its rows are long (50257 for GPT-2) and each
/// block ends in a block reduction and a read of the target's logit with no loads in flight: with 1024
/// threads an SM held 2 rows and the bf16 forward reached 46% of copy bandwidth on an H200; 256-thread
/// blocks keep 4 or more rows in flight per SM.
const CE_FORWARD_THREADS: u32 = 256;

pub(crate) fn cross_entropy_forward(
    x: &CudaStorage,
    t: &CudaStorage,
    c: usize,
    ignore: i64,
) -> Result<(CudaStorage, CudaStorage)> {
    check_targets(x, t)?;
    let rows = t.len();
    let out = CudaStorage::alloc(x.dev(), x.dtype(), rows)?;
    let stats = CudaStorage::alloc(x.dev(), stats_dtype(x.dtype()), 2 * rows)?;
    if rows > 0 {
        let threads = row_threads(c).min(CE_FORWARD_THREADS);
        launch!(x.dev(), kname("cross_entropy_forward", x.dtype()), (rows as u32, 1, 1), (threads, 1, 1);
            x.ptr(), t.ptr(), out.ptr(), stats.ptr(), c as i64, ignore)?;
    }
    Ok((out, stats))
}

pub(crate) fn cross_entropy_backward(
    x: &CudaStorage,
    t: &CudaStorage,
    stats: &CudaStorage,
    g: &CudaStorage,
    c: usize,
    ignore: i64,
) -> Result<CudaStorage> {
    const OP: &str = "cross_entropy_backward";
    check_targets(x, t)?;
    same_device(OP, x, g)?;
    same_dtype(OP, x, g)?;
    same_device(OP, x, stats)?;
    let rows = t.len();
    if stats.dtype() != stats_dtype(x.dtype()) {
        return Err(Error::DType { op: OP, expected: stats_dtype(x.dtype()), got: stats.dtype() });
    }
    crate::backend::check_ce_backward(rows, c, x.len(), g.len(), stats.len())?;
    let out = CudaStorage::alloc(x.dev(), x.dtype(), x.len())?;
    if rows > 0 {
        launch!(x.dev(), kname("cross_entropy_backward", x.dtype()), (rows as u32, 1, 1), (row_threads(c), 1, 1);
            x.ptr(), t.ptr(), stats.ptr(), g.ptr(), out.ptr(), c as i64, ignore)?;
    }
    Ok(out)
}
