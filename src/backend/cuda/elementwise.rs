//! Launchers for kernels/elementwise.cu: unary, binary, compare, where, cast / strided copy, copy_into, fill.

use super::device::{grid_for, launch};
use super::storage::{intern, kname, need_float, same_device, same_dtype, views, CudaStorage};
use crate::backend::{BinaryOp, CmpOp, UnaryOp};
use crate::shape::Layout;
use crate::{DType, Error, Result};

const THREADS: u32 = 256;
/// Last-dim length from which broadcast binary ops walk rows (binary_rows) instead of flat indices.
const ROWS_MIN_INNER: usize = 128;

/// Grid for the elementwise kernels: on the contiguous vector path each thread moves UNROLL (4) packs
/// of 16 bytes per step, so fewer threads are launched.
fn grid_ew(n: usize, dt: DType, contig: bool) -> (u32, u32, u32) {
    if contig {
        grid_for(n.div_ceil(4 * (16 / dt.size_in_bytes())), THREADS)
    } else {
        grid_for(n, THREADS)
    }
}

fn unary_code(op: UnaryOp) -> (i32, f64, f64) {
    use UnaryOp::*;
    match op {
        Neg => (0, 0.0, 0.0),
        Exp => (1, 0.0, 0.0),
        Log => (2, 0.0, 0.0),
        Sqrt => (3, 0.0, 0.0),
        Rsqrt => (4, 0.0, 0.0),
        Recip => (5, 0.0, 0.0),
        Abs => (6, 0.0, 0.0),
        Sign => (7, 0.0, 0.0),
        Tanh => (8, 0.0, 0.0),
        Sigmoid => (9, 0.0, 0.0),
        Relu => (10, 0.0, 0.0),
        GeluTanh => (11, 0.0, 0.0),
        GeluErf => (12, 0.0, 0.0),
        Silu => (13, 0.0, 0.0),
        GeluTanhGrad => (14, 0.0, 0.0),
        GeluErfGrad => (15, 0.0, 0.0),
        SiluGrad => (16, 0.0, 0.0),
        Powf(p) => (17, p, 0.0),
        Clamp(lo, hi) => (18, lo, hi),
        InRange(lo, hi) => (19, lo, hi),
        Affine { mul, add } => (20, mul, add),
    }
}

pub(crate) fn unary(x: &CudaStorage, l: &Layout, op: UnaryOp) -> Result<CudaStorage> {
    if !x.dtype().is_float() {
        return Err(need_float("unary", x.dtype()));
    }
    let dev = x.dev();
    let n = l.numel();
    let out = CudaStorage::alloc(dev, x.dtype(), n)?;
    let ([sx], contig) = views([l])?;
    let (code, p, q) = unary_code(op);
    launch!(dev, kname("unary", x.dtype()), grid_ew(n, x.dtype(), contig), (THREADS, 1, 1);
        x.ptr(), sx, out.ptr(), n as i64, code, p, q, contig as i32)?;
    Ok(out)
}

pub(crate) fn binary(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout, op: BinaryOp) -> Result<CudaStorage> {
    same_device("binary", a, b)?;
    same_dtype("binary", a, b)?;
    let dt = a.dtype();
    let int_ok = dt == DType::I64 && matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul);
    if !dt.is_float() && !int_ok {
        return Err(need_float("binary", dt));
    }
    let dev = a.dev();
    let n = la.numel();
    let out = CudaStorage::alloc(dev, dt, n)?;
    let ([sa, sb], contig) = views([la, lb])?;
    let code = op as i32;
    let inner = sa.inner();
    if !contig && inner >= ROWS_MIN_INNER && n > 0 {
        let rows = n / inner;
        // x covers a row's packs (4 per thread for f32); y takes many rows per block.
        let per_block = THREADS as usize * (16 / dt.size_in_bytes());
        let grid = (inner.div_ceil(per_block).min(64) as u32, rows.min(2048) as u32, 1);
        launch!(dev, kname("binary_rows", dt), grid, (THREADS, 1, 1);
            a.ptr(), sa, b.ptr(), sb, out.ptr(), n as i64, code)?;
        return Ok(out);
    }
    launch!(dev, kname("binary", dt), grid_ew(n, dt, contig), (THREADS, 1, 1);
        a.ptr(), sa, b.ptr(), sb, out.ptr(), n as i64, code, contig as i32)?;
    Ok(out)
}

pub(crate) fn compare(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout, op: CmpOp) -> Result<CudaStorage> {
    same_device("compare", a, b)?;
    same_dtype("compare", a, b)?;
    let dev = a.dev();
    let n = la.numel();
    let out = CudaStorage::alloc(dev, DType::U8, n)?;
    let ([sa, sb], _) = views([la, lb])?;
    let code = op as i32;
    launch!(dev, kname("compare", a.dtype()), grid_for(n, THREADS), (THREADS, 1, 1);
        a.ptr(), sa, b.ptr(), sb, out.ptr(), n as i64, code)?;
    Ok(out)
}

pub(crate) fn where_cond(
    m: &CudaStorage,
    lm: &Layout,
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
) -> Result<CudaStorage> {
    same_device("where", m, a)?;
    same_device("where", a, b)?;
    if m.dtype() != DType::U8 {
        return Err(Error::DType { op: "where", expected: DType::U8, got: m.dtype() });
    }
    same_dtype("where", a, b)?;
    let dev = a.dev();
    let n = lm.numel();
    let out = CudaStorage::alloc(dev, a.dtype(), n)?;
    let ([sm, sa, sb], _) = views([lm, la, lb])?;
    launch!(dev, kname("where", a.dtype()), grid_for(n, THREADS), (THREADS, 1, 1);
        m.ptr(), sm, a.ptr(), sa, b.ptr(), sb, out.ptr(), n as i64)?;
    Ok(out)
}

/// A contiguous copy of the view converted to `dtype` (the same dtype: a strided copy).
pub(crate) fn cast(x: &CudaStorage, l: &Layout, dtype: DType) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(x.dev(), dtype, l.numel())?;
    cast_to(x, l, dtype, out.ptr())?;
    Ok(out)
}

/// Casts the view (x, l) into `d` from element `at` on, as a contiguous run (the caller checks that the
/// run fits and matches the view's shape): the mixed-precision optimizer re-rounds each working weight
/// from its master with one kernel, not a cast into a new buffer and then a copy.
pub(crate) fn cast_into(d: &mut CudaStorage, at: usize, x: &CudaStorage, l: &Layout) -> Result<()> {
    same_device("cast_into", d, x)?;
    if at + l.numel() > d.len() {
        return Err(Error::invalid(
            "cast_into",
            format!("{} elements from {at} in a storage of {}", l.numel(), d.len()),
        ));
    }
    cast_to(x, l, d.dtype(), d.ptr_at(at))
}

/// Writes the view (x, l) as `dtype`, contiguous, at device address `out` (room for l.numel() elements).
fn cast_to(x: &CudaStorage, l: &Layout, dtype: DType, out: u64) -> Result<()> {
    let dev = x.dev();
    let n = l.numel();
    if n == 0 {
        return Ok(());
    }
    let ([sx], contig) = views([l])?;
    if contig && dtype == x.dtype() {
        let bytes = n * dtype.size_in_bytes();
        // SAFETY: source range [offset, offset+n) lies in x (the layout was validated), dest holds n elements.
        unsafe { cudarc::driver::result::memcpy_dtod_async(out, x.ptr_at(l.offset()), bytes, dev.cu_stream()) }
            .map_err(|e| dev.err("copy", e))?;
        return Ok(());
    }
    if dtype == x.dtype() {
        if let Some(grid) = sx.transpose_grid() {
            return launch!(dev, kname("transpose_copy", dtype), grid, (32, 8, 1); x.ptr(), sx, out, n as i64);
        }
        let k = 16 / dtype.size_in_bytes();
        if let (Some(px), true) = (sx.in_packs(k), x.ptr().is_multiple_of(16) && out.is_multiple_of(16)) {
            let packs = n / k;
            return launch!(dev, "copy_packs", grid_for(packs, THREADS), (THREADS, 1, 1); x.ptr(), px, out, packs as i64);
        }
    }
    let name = intern(format!("cast_{}_{}", x.dtype().name(), dtype.name()));
    launch!(dev, name, grid_for(n, THREADS), (THREADS, 1, 1); x.ptr(), sx, out, n as i64, contig as i32)
}

pub(crate) fn copy_into(d: &mut CudaStorage, dl: &Layout, s: &CudaStorage, sl: &Layout) -> Result<()> {
    same_device("copy_into", d, s)?;
    same_dtype("copy_into", d, s)?;
    let dev = d.dev().clone();
    let n = dl.numel();
    if n == 0 {
        return Ok(());
    }
    let ([sd, ss], contig) = views([dl, sl])?;
    if contig {
        let bytes = n * d.dtype().size_in_bytes();
        // SAFETY: both ranges lie inside their buffers; stream-ordered after earlier work.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                d.ptr_at(dl.offset()),
                s.ptr_at(sl.offset()),
                bytes,
                dev.cu_stream(),
            )
        }
        .map_err(|e| dev.err("copy_into", e))?;
        return Ok(());
    }
    let k = 16 / d.dtype().size_in_bytes();
    if let (Some(pd), Some(ps), true) =
        (sd.in_packs(k), ss.in_packs(k), d.ptr().is_multiple_of(16) && s.ptr().is_multiple_of(16))
    {
        let packs = n / k;
        return launch!(dev, "copy_into_packs", grid_for(packs, THREADS), (THREADS, 1, 1);
            d.ptr(), pd, s.ptr(), ps, packs as i64);
    }
    launch!(dev, kname("copy_into", d.dtype()), grid_for(n, THREADS), (THREADS, 1, 1);
        d.ptr(), sd, s.ptr(), ss, n as i64)
}

/// `n` copies of `value` as `dtype`.
pub(crate) fn full(dev: &std::sync::Arc<super::CudaDevice>, dtype: DType, n: usize, value: f64) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(dev, dtype, n)?;
    // One thread per 16-byte pack (the kernel's grid-stride loops cover any rest).
    let packs = n.div_ceil(16 / dtype.size_in_bytes());
    launch!(dev, kname("fill", dtype), grid_for(packs, THREADS), (THREADS, 1, 1); out.ptr(), n as i64, value)?;
    Ok(out)
}
