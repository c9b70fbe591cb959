//! Launchers for kernels/index.cu. Indices stay on the device: an out-of-range index is not an Err here
//! (that would need a host sync); the kernels read 0 for it and skip it when adding.

use super::device::{grid_for, launch};
use super::elementwise::{cast, full};
use super::storage::{kname, same_device, same_dtype, CudaStorage, Strided};
use crate::shape::Layout;
use crate::{DType, Error, Result};

const THREADS: u32 = 256;

fn idx_check(op: &'static str, x: &CudaStorage, idx: &CudaStorage) -> Result<()> {
    same_device(op, x, idx)?;
    if idx.dtype() != DType::I64 {
        return Err(Error::DType { op, expected: DType::I64, got: idx.dtype() });
    }
    Ok(())
}

fn split(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
}

pub(crate) fn index_select(x: &CudaStorage, shape: &[usize], dim: usize, idx: &CudaStorage) -> Result<CudaStorage> {
    idx_check("index_select", x, idx)?;
    let (outer, size, inner) = split(shape, dim);
    let n = outer * idx.len() * inner;
    let out = CudaStorage::alloc(x.dev(), x.dtype(), n)?;
    launch!(x.dev(), kname("index_select", x.dtype()), grid_for(n, THREADS), (THREADS, 1, 1);
        x.ptr(), idx.ptr(), out.ptr(), outer as i64, size as i64, inner as i64, idx.len() as i64)?;
    Ok(out)
}

/// The accumulating ops add bf16/f16 in f32 and round once: their storages go through this cast.
fn cast_flat(s: &CudaStorage, dtype: DType) -> Result<CudaStorage> {
    cast(s, &Layout::contiguous(&[s.len()]), dtype)
}

fn is_half(d: DType) -> bool {
    matches!(d, DType::BF16 | DType::F16)
}

pub(crate) fn index_add(
    x: &CudaStorage,
    shape: &[usize],
    dim: usize,
    idx: &CudaStorage,
    src: &CudaStorage,
) -> Result<CudaStorage> {
    idx_check("index_add", x, idx)?;
    same_device("index_add", x, src)?;
    same_dtype("index_add", x, src)?;
    let dims = split(shape, dim);
    if sorts(dims, idx.len()) {
        return index_add_sorted(Dest::Onto(x.try_clone()?), dims, idx, src);
    }
    index_add_walking(|dt| if dt == x.dtype() { x.try_clone() } else { cast_flat(x, dt) }, dims, idx, src)
}

/// index_add into zeros of `shape` (index_select's and embedding's backward). On the sorted path every
/// element of the table is written once: the rows the indices name get their sums stored, the others
/// zeros; zeros then index_add would write the table, then read and write again every named row.
pub(crate) fn index_add_to_zeros(
    shape: &[usize],
    dim: usize,
    idx: &CudaStorage,
    src: &CudaStorage,
) -> Result<CudaStorage> {
    idx_check("index_add", src, idx)?;
    let (dims, numel) = (split(shape, dim), shape.iter().product());
    if sorts(dims, idx.len()) {
        return index_add_sorted(Dest::Fresh(CudaStorage::alloc(src.dev(), src.dtype(), numel)?), dims, idx, src);
    }
    index_add_walking(|dt| full(src.dev(), dt, numel, 0.0), dims, idx, src)
}

/// From this many indices on, index_add sorts them (kernels/index.cu): one thread per column walking every
/// index is a chain of dependent global read-modify-writes as long as the index list (an embedding's
/// backward walks every token of the batch).
const SORTED_MIN_INDICES: usize = 256;

/// Whether index_add with `n` indices over (outer, size, inner) takes the sorted path: long index lists
/// whose keys and positions fit the sort's 32-bit integers and whose outer dims fit a grid's y.
fn sorts((outer, size, _): (usize, usize, usize), n: usize) -> bool {
    n >= SORTED_MIN_INDICES && size < i32::MAX as usize && n < i32::MAX as usize && outer <= 65_535
}

/// index_add onto `base(dtype)`, a fresh buffer of `shape` in the dtype the sums run in, by a thread per
/// column walking the indices (short index lists). The kernel rounds each destination after every add;
/// in 8 bits small terms stop registering once a sum is a few hundred times larger, so half types add in
/// f32 and round once, as the CPU backend (f64) and PyTorch's embedding backward do.
fn index_add_walking(
    base: impl FnOnce(DType) -> Result<CudaStorage>,
    dims: (usize, usize, usize),
    idx: &CudaStorage,
    src: &CudaStorage,
) -> Result<CudaStorage> {
    if is_half(src.dtype()) {
        let wide = walk_indices(base(DType::F32)?, dims, idx, &cast_flat(src, DType::F32)?)?;
        return cast_flat(&wide, src.dtype());
    }
    walk_indices(base(src.dtype())?, dims, idx, src)
}

/// Adds `src` into `out` at rows `idx`: the `index_add` kernel, a thread per column walking the indices.
fn walk_indices(
    out: CudaStorage,
    (outer, size, inner): (usize, usize, usize),
    idx: &CudaStorage,
    src: &CudaStorage,
) -> Result<CudaStorage> {
    launch!(out.dev(), kname("index_add", out.dtype()), grid_for(outer * inner, THREADS), (THREADS, 1, 1);
        out.ptr(), idx.ptr(), src.ptr(), outer as i64, size as i64, inner as i64, idx.len() as i64)?;
    Ok(out)
}

/// Where the sorted index_add puts its sums: added onto a copy of the input (index_add), or stored into
/// uninitialised memory whose other rows it zeroes (into zeros), in the same launch.
enum Dest {
    Onto(CudaStorage),
    Fresh(CudaStorage),
}

/// Positions per chunk of the stable counting sort (its kernels' block size).
const SORT_CHUNK: usize = 1024;
/// Positions of a chunk one block of sort_rank compares against (SORT_SLICE in kernels/index.cu).
const SORT_SLICE: usize = 64;
/// Sorted positions a block of `index_add_segments` sums (INDEX_SEGMENT in kernels/index.cu).
const INDEX_SEGMENT: usize = 64;

/// index_add through a stable counting sort of the indices, then blocks of INDEX_SEGMENT sorted positions
/// summing each destination row's sources in index order, the rows that span segments finished from f64
/// partials in segment order (deterministic). A row's many sources (a frequent token's) are then spread
/// over many blocks, not walked by one. Each destination gets its f64 sum rounded once, so half types
/// need no f32 copy. The sort's buffers hold 32-bit integers in 4-byte storage.
fn index_add_sorted(
    dest: Dest,
    (outer, size, inner): (usize, usize, usize),
    idx: &CudaStorage,
    src: &CudaStorage,
) -> Result<CudaStorage> {
    let (out, fresh) = match dest {
        Dest::Onto(out) => (out, false),
        Dest::Fresh(out) => (out, true),
    };
    let dev = out.dev();
    let (n, keys) = (idx.len(), size + 1);
    let chunks = n.div_ceil(SORT_CHUNK);
    let int32s = |len: usize| CudaStorage::alloc(dev, DType::F32, len);
    // The chunks' key counts, the positions' ranks and the keys' totals, zeroed in one fill: sort_rank
    // adds into all three. (0.0f32 has all bits 0.)
    let counts = full(dev, DType::F32, chunks * keys + n + keys, 0.0)?;
    let (cnt, rank, total) = (counts.ptr(), counts.ptr_at(chunks * keys), counts.ptr_at(chunks * keys + n));
    let (base, sorted) = (int32s(keys)?, int32s(n)?);
    launch!(dev, "sort_rank", (chunks as u32, (SORT_CHUNK / SORT_SLICE) as u32, 1), (SORT_CHUNK as u32, 1, 1);
        idx.ptr(), n as i64, size as i64, rank, cnt, total)?;
    launch!(dev, "sort_base", (1, 1, 1), (1024, 1, 1); total, keys as i64, base.ptr())?;
    launch!(dev, "sort_place", grid_for(n, THREADS), (THREADS, 1, 1);
        idx.ptr(), n as i64, size as i64, SORT_CHUNK as i32, rank, cnt, base.ptr(), sorted.ptr())?;
    if size == 0 || inner == 0 {
        return Ok(out);
    }
    let segments = n.div_ceil(INDEX_SEGMENT);
    // A head and a tail partial per segment and column; only those of rows spanning segments are written,
    // and only those are read.
    let part = CudaStorage::alloc(dev, DType::F64, outer * segments * 2 * inner)?;
    // A thread per column, or per 16-byte pack of columns (8 one-byte ones) when rows are whole packs (the
    // kernel reads them so when the pointers are 16-byte aligned, as the allocator's are).
    let pack = (16 / out.dtype().size_in_bytes()).min(8);
    let cols = if inner.is_multiple_of(pack) { inner / pack } else { inner };
    // Whole warps, one thread per column (or pack), at most THREADS.
    let threads_for = |cols: usize| (cols.div_ceil(32) * 32).min(THREADS as usize) as u32;
    let threads = threads_for(cols);
    // Into zeros, blocks after the segments' zero the rows no index names, each warp about four rows
    // (GPT-2: 50257 rows of 768 f32 columns, 192 threads a block: 2095 blocks).
    let zero_blocks = if fresh { size.div_ceil(4 * threads as usize / 32).min(4096) } else { 0 };
    launch!(dev, kname("index_add_segments", out.dtype()), ((segments + zero_blocks) as u32, outer as u32, 1), (threads, 1, 1);
        out.ptr(), idx.ptr(), sorted.ptr(), base.ptr(), total, src.ptr(), part.ptr(), size as i64,
        inner as i64, n as i64, fresh as i32, zero_blocks as i32)?;
    launch!(dev, kname("index_add_segments_finish", out.dtype()), (segments as u32, outer as u32, 1), (threads_for(inner), 1, 1);
        out.ptr(), idx.ptr(), sorted.ptr(), base.ptr(), total, part.ptr(), size as i64, inner as i64,
        n as i64, fresh as i32)?;
    Ok(out)
}

pub(crate) fn gather(
    x: &CudaStorage,
    shape: &[usize],
    dim: usize,
    idx: &CudaStorage,
    idx_shape: &[usize],
) -> Result<CudaStorage> {
    idx_check("gather", x, idx)?;
    let (xs, is) = (Strided::contiguous(shape)?, Strided::contiguous(idx_shape)?);
    let n = idx.len();
    let out = CudaStorage::alloc(x.dev(), x.dtype(), n)?;
    launch!(x.dev(), kname("gather", x.dtype()), grid_for(n, THREADS), (THREADS, 1, 1);
        x.ptr(), xs, idx.ptr(), is, dim as i32, out.ptr(), n as i64)?;
    Ok(out)
}

pub(crate) fn scatter_add(
    x: &CudaStorage,
    shape: &[usize],
    dim: usize,
    idx: &CudaStorage,
    idx_shape: &[usize],
    src: &CudaStorage,
) -> Result<CudaStorage> {
    idx_check("scatter_add", x, idx)?;
    same_device("scatter_add", x, src)?;
    same_dtype("scatter_add", x, src)?;
    if is_half(x.dtype()) {
        // As index_add: many sources can land on one destination (gather's backward), so add in f32.
        let wide = scatter_add(&cast_flat(x, DType::F32)?, shape, dim, idx, idx_shape, &cast_flat(src, DType::F32)?)?;
        return cast_flat(&wide, x.dtype());
    }
    let (xs, is) = (Strided::contiguous(shape)?, Strided::contiguous(idx_shape)?);
    let lines = idx.len().checked_div(idx_shape[dim]).unwrap_or(0);
    let out = x.try_clone()?;
    launch!(x.dev(), kname("scatter_add", x.dtype()), grid_for(lines, THREADS), (THREADS, 1, 1);
        out.ptr(), xs, idx.ptr(), is, dim as i32, src.ptr(), lines as i64)?;
    Ok(out)
}
