//! Launchers for kernels/softmax.cu: one block per row, block width from the row length.

use super::device::{launch, launch_shared};
use super::elementwise::cast;
use super::ring::{ring_plan, Direct, RingKernel};
use super::storage::{kname, need_float, same_device, same_dtype, CudaStorage};
use crate::backend::Causal;
use crate::shape::Layout;
use crate::Result;

/// Threads per block for rows of length n: about 4+ elements per thread, a whole number of warps.
pub(crate) fn row_threads(n: usize) -> u32 {
    (n.div_ceil(4).div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Values each thread of a register-cached row kernel holds (ROW_VALS in kernels/common.cuh).
const ROW_VALS: usize = 32;

/// Most threads per block for those kernels: they use up to ~160 registers per thread, and 256 threads
/// of 255 registers still fit an SM's 64K registers, so every one of them can launch.
const ROW_THREADS_MAX: usize = 256;

/// Threads per block for the register-cached row kernels, when they apply: rows of whole 16-byte packs,
/// 16-byte-aligned pointers, and at most ROW_VALS values per thread (rows up to 8192 elements).
pub(crate) fn cached_row_threads(n: usize, dtype: crate::DType, ptrs: &[u64]) -> Option<u32> {
    let pack = 16 / dtype.size_in_bytes();
    let fits =
        n > 0 && n.is_multiple_of(pack) && n <= ROW_VALS * ROW_THREADS_MAX && ptrs.iter().all(|p| p.is_multiple_of(16));
    fits.then(|| (n.div_ceil(ROW_VALS).div_ceil(32) * 32).clamp(32, 1024) as u32)
}

/// Block width from which the softmax forward loads rows directly, a block per row, rather than through a
/// row ring. Measured on an H200 (scripts/gpu-suite.sh, MUNJA_RING_STAGES rows): 4096-wide rows (128
/// threads) ran at 93% (f32) and 86% (bf16) of copy bandwidth direct against 84% and 75% through the ring,
/// while attention's 256-wide rows (one warp a block, at most 32 blocks an SM) ran at 27% direct against 45%
/// through the ring.
const DIRECT_MIN_THREADS: u32 = 128;

/// With `causal`, row r reads and normalises only its first `causal.visible(r, n)` columns; the rest are
/// written as 0 (−inf for log-softmax).
pub(crate) fn softmax(x: &CudaStorage, l: &Layout, log: bool, causal: Option<Causal>) -> Result<CudaStorage> {
    if !x.dtype().is_float() {
        return Err(need_float("softmax", x.dtype()));
    }
    let n = *l.shape().last().unwrap_or(&1);
    let numel = l.numel();
    let owned;
    let src = if l.is_contiguous() {
        x.ptr_at(l.offset())
    } else {
        owned = cast(x, l, x.dtype())?;
        owned.ptr()
    };
    let out = CudaStorage::alloc(x.dev(), x.dtype(), numel)?;
    if n == 0 || numel == 0 {
        return Ok(out);
    }
    let rows = numel / n;
    // The kernels take the mask as (query rows per matrix, offset); 0 rows: no mask.
    let (mask_rows, offset) = causal.map_or((0i64, 0i64), |c| (c.rows as i64, c.offset as i64));
    if let Some(t) = cached_row_threads(n, x.dtype(), &[src, out.ptr()]) {
        // Resident blocks walking the rows, each with a ring of rows in flight; or, for rows of 4+ warps, a
        // block per row loading straight into registers (DIRECT_MIN_THREADS).
        let (dev, name) = (x.dev(), kname("softmax_rows", x.dtype()));
        let kernel = RingKernel::rows(name, t, 1, Direct::preferred_if(t >= DIRECT_MIN_THREADS));
        if let Some(plan) = ring_plan(dev, kernel, n, x.dtype())? {
            let blocks = plan.blocks(rows);
            launch_shared!(dev, name, (blocks as u32, 1, 1), (t, 1, 1), plan.shared as u32;
                src, out.ptr(), rows as i64, n as i64, log as i32, mask_rows, offset, plan.stages)?;
            return Ok(out);
        }
    }
    launch!(x.dev(), kname("softmax", x.dtype()), (rows as u32, 1, 1), (row_threads(n), 1, 1);
        src, out.ptr(), n as i64, log as i32, mask_rows, offset)?;
    Ok(out)
}

pub(crate) fn softmax_backward(y: &CudaStorage, g: &CudaStorage, n: usize, log: bool) -> Result<CudaStorage> {
    same_device("softmax_backward", y, g)?;
    same_dtype("softmax_backward", y, g)?;
    if !y.dtype().is_float() {
        return Err(need_float("softmax_backward", y.dtype()));
    }
    let out = CudaStorage::alloc(y.dev(), y.dtype(), y.len())?;
    if n == 0 || y.is_empty() {
        return Ok(out);
    }
    let rows = y.len() / n;
    if let Some(t) = cached_row_threads(n, y.dtype(), &[y.ptr(), g.ptr(), out.ptr()]) {
        // As the forward: resident blocks walking the rows, y and g through a ring.
        let (dev, name) = (y.dev(), kname("softmax_backward_rows", y.dtype()));
        if let Some(plan) = ring_plan(dev, RingKernel::rows(name, t, 2, Direct::Allowed), n, y.dtype())? {
            let blocks = plan.blocks(rows);
            launch_shared!(dev, name, (blocks as u32, 1, 1), (t, 1, 1), plan.shared as u32;
                y.ptr(), g.ptr(), out.ptr(), rows as i64, n as i64, log as i32, plan.stages)?;
            return Ok(out);
        }
    }
    launch!(y.dev(), kname("softmax_backward", y.dtype()), (rows as u32, 1, 1), (row_threads(n), 1, 1);
        y.ptr(), g.ptr(), out.ptr(), n as i64, log as i32)?;
    Ok(out)
}
