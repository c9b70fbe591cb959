//! Launchers for kernels/reduce.cu. Sums over the leading dims of a contiguous tensor (a bias gradient)
//! fold columns with threads along them (reduce_cols). Otherwise the view is permuted so kept dims come
//! first and reduced dims last; short rows use one thread per output, long rows one block per output, and
//! few very long rows are split over several blocks per row with a deterministic second pass.

use super::device::{grid_for, launch};
use super::elementwise::cast;
use super::storage::{kname, views, CudaStorage};
use crate::backend::ReduceOp;
use crate::shape::{coalesce, Layout};
use crate::{DType, Error, Result};

const THREADS: u32 = 256;
/// Target number of blocks in flight for a reduction (a few waves on 100+ SMs).
const TARGET_BLOCKS: usize = 1024;

fn permuted(l: &Layout, dims: &[usize]) -> (Layout, usize, usize, bool) {
    let kept: Vec<usize> = (0..l.rank()).filter(|d| !dims.contains(d)).collect();
    let perm: Vec<usize> = kept.iter().chain(dims.iter()).copied().collect();
    let lp = l.permute(&perm);
    let n_out: usize = kept.iter().map(|&d| l.shape()[d]).product();
    let rshape: Vec<usize> = dims.iter().map(|&d| l.shape()[d]).collect();
    let rstr: Vec<usize> = dims.iter().map(|&d| l.strides()[d]).collect();
    let n_red: usize = rshape.iter().product();
    let (cs, cst) = coalesce(&rshape, &[&rstr]);
    let contig = cs.len() == 1 && (cst[0][0] == 1 || n_red <= 1);
    (lp, n_out, n_red, contig)
}

/// Row slices for kernels/reduce.cu's reduce_cols when it applies: a contiguous view whose reduced dims
/// are exactly its leading dims (a sum over the batch), more than 32 rows to fold and at least one warp's
/// width of kept columns. Enough slices for TARGET_BLOCKS blocks, each at least 64 rows.
fn cols_slices(l: &Layout, dims: &[usize], cols: usize, rows: usize) -> Option<usize> {
    let leading = !dims.is_empty() && (0..dims.len()).all(|d| dims.contains(&d)) && dims.len() < l.rank();
    (leading && l.is_contiguous() && rows > 32 && cols >= 32)
        .then(|| TARGET_BLOCKS.div_ceil(cols.div_ceil(32)).min(rows.div_ceil(64)).clamp(1, 1024))
}

pub(crate) fn reduce(x: &CudaStorage, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<CudaStorage> {
    if x.dtype() == DType::U8 && op == ReduceOp::Sum {
        let w = cast(x, l, DType::I64)?;
        return reduce(&w, &Layout::contiguous(l.shape()), dims, op);
    }
    let dev = x.dev();
    let (lp, n_out, n_red, contig) = permuted(l, dims);
    let out = CudaStorage::alloc(dev, x.dtype(), n_out)?;
    if n_out == 0 {
        return Ok(out);
    }
    let code = op as i32;
    if let Some(slices) = cols_slices(l, dims, n_out, n_red) {
        // Leading dims reduced over a contiguous block: threads along the kept (column) dims.
        let cols = n_out;
        let grid = (cols.div_ceil(32) as u32, slices as u32, 1);
        let x0 = x.ptr_at(l.offset());
        if slices == 1 {
            launch!(dev, kname("reduce_cols", x.dtype()), grid, (32, 8, 1);
                x0, n_red as i64, cols as i64, code, out.ptr(), 0u64)?;
            return Ok(out);
        }
        let partial = CudaStorage::alloc(dev, DType::F64, cols * slices)?;
        launch!(dev, kname("reduce_cols", x.dtype()), grid, (32, 8, 1);
            x0, n_red as i64, cols as i64, code, out.ptr(), partial.ptr())?;
        launch!(dev, kname("reduce_finish", x.dtype()), grid_for(cols, THREADS), (THREADS, 1, 1);
            partial.ptr(), cols as i64, slices as i32, code, out.ptr())?;
        return Ok(out);
    }
    let ([s], _) = views([&lp])?;
    if n_red <= 32 {
        launch!(dev, kname("reduce_small", x.dtype()), grid_for(n_out, THREADS), (THREADS, 1, 1);
            x.ptr(), s, n_out as i64, n_red as i64, code, out.ptr())?;
        return Ok(out);
    }
    let slices = TARGET_BLOCKS.div_ceil(n_out).min(n_red.div_ceil(8 * THREADS as usize)).clamp(1, 1024);
    if slices == 1 {
        launch!(dev, kname("reduce_rows", x.dtype()), (n_out as u32, 1, 1), (THREADS, 1, 1);
            x.ptr(), s, n_red as i64, code, contig as i32, out.ptr(), 0u64)?;
        return Ok(out);
    }
    let partial = CudaStorage::alloc(dev, DType::F64, n_out * slices)?;
    launch!(dev, kname("reduce_rows", x.dtype()), (n_out as u32, slices as u32, 1), (THREADS, 1, 1);
        x.ptr(), s, n_red as i64, code, contig as i32, out.ptr(), partial.ptr())?;
    launch!(dev, kname("reduce_finish", x.dtype()), grid_for(n_out, THREADS), (THREADS, 1, 1);
        partial.ptr(), n_out as i64, slices as i32, code, out.ptr())?;
    Ok(out)
}

pub(crate) fn argmax(x: &CudaStorage, l: &Layout, dim: usize) -> Result<CudaStorage> {
    if l.shape()[dim] == 0 {
        return Err(Error::invalid("argmax", "cannot take argmax over an empty dimension"));
    }
    let dev = x.dev();
    let (lp, n_out, n_red, _) = permuted(l, &[dim]);
    let out = CudaStorage::alloc(dev, DType::I64, n_out)?;
    if n_out == 0 {
        return Ok(out);
    }
    let ([s], _) = views([&lp])?;
    let threads = (n_red.next_power_of_two() as u32).clamp(32, THREADS);
    launch!(dev, kname("argmax", x.dtype()), (n_out as u32, 1, 1), (threads, 1, 1);
        x.ptr(), s, n_red as i64, out.ptr())?;
    Ok(out)
}
