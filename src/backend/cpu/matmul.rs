//! Matrix multiply through the `gemm` crate, which takes arbitrary row and column strides: transposed
//! operands (a weight used as Wᵀ, attention's Kᵀ) multiply in place without a copy.

use super::{gather_strided, CpuStorage};
use crate::dtype::Real;
use crate::shape::Layout;
use crate::{Error, Result};
use rayon::prelude::*;

/// Work (m·n·k) under which one GEMM is run single-threaded: threading a tiny product costs more than it
/// saves, and a batch of them is better parallelised across the batch instead.
const SMALL_GEMM: usize = 1 << 18;

fn matmul_generic<T: Real>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    let r = la.rank();
    let (m, k, n) = (la.shape()[r - 2], la.shape()[r - 1], lb.shape()[r - 1]);
    let batch_shape = &la.shape()[..r - 2];
    let batch: usize = batch_shape.iter().product();
    if m * n * k == 0 {
        return vec![T::ZERO; batch * m * n];
    }
    // The output is written whole by the GEMM (it never reads dst here), so it is not zero-filled first:
    // the memset was a tenth of a small GPT step.
    let mut out: Vec<std::mem::MaybeUninit<T>> = Vec::with_capacity(batch * m * n);
    // SAFETY: MaybeUninit elements need no initialisation.
    unsafe { out.set_len(batch * m * n) };
    // Operands whose matrix part is broadcast (stride 0) are made dense first; gemm wants real strides.
    let dense = |v: &[T], l: &Layout| -> Option<(Vec<T>, Layout)> {
        let s = l.strides();
        if s[r - 2] == 0 || s[r - 1] == 0 {
            Some((gather_strided(v, l), Layout::contiguous(l.shape())))
        } else {
            None
        }
    };
    let da = dense(a, la);
    let db = dense(b, lb);
    let (a, la) = da.as_ref().map(|(v, l)| (v.as_slice(), l)).unwrap_or((a, la));
    let (b, lb) = db.as_ref().map(|(v, l)| (v.as_slice(), l)).unwrap_or((b, lb));
    let (ars, acs) = (la.strides()[r - 2] as isize, la.strides()[r - 1] as isize);
    let (brs, bcs) = (lb.strides()[r - 2] as isize, lb.strides()[r - 1] as isize);
    let batch_offsets = |i: usize| {
        let (mut oa, mut ob, mut rem) = (la.offset(), lb.offset(), i);
        for d in (0..r - 2).rev() {
            let idx = rem % batch_shape[d];
            rem /= batch_shape[d];
            oa += idx * la.strides()[d];
            ob += idx * lb.strides()[d];
        }
        (oa, ob)
    };
    let run = |i: usize, dst: &mut [std::mem::MaybeUninit<T>], par: gemm::Parallelism| {
        let (oa, ob) = batch_offsets(i);
        // SAFETY: offsets and strides come from layouts validated against their storages, dst is a
        // distinct m×n buffer, and the gemm reads at most the elements the layouts address.
        unsafe {
            T::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr() as *mut T,
                1,
                n as isize,
                a.as_ptr().add(oa),
                acs,
                ars,
                b.as_ptr().add(ob),
                bcs,
                brs,
                par,
            )
        }
    };
    let threads = rayon::current_num_threads();
    if batch > 1 && m * n * k < SMALL_GEMM * 4 {
        out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| run(i, dst, gemm::Parallelism::None));
    } else {
        let par = if m * n * k < SMALL_GEMM { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
        out.chunks_mut(m * n).enumerate().for_each(|(i, dst)| run(i, dst, par));
    }
    // SAFETY: with k > 0 and read_dst = false, gemm wrote every element of every m×n block.
    let mut out = std::mem::ManuallyDrop::new(out);
    unsafe { Vec::from_raw_parts(out.as_mut_ptr() as *mut T, out.len(), out.capacity()) }
}

/// Batched matmul of [.., m, k] by [.., k, n]; the batch dims of both layouts are already broadcast.
pub fn matmul(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType { op: "matmul", expected: a.dtype(), got: b.dtype() });
    }
    Ok(super::float_map2!("matmul", a, b, |x, y| matmul_generic(x, la, y, lb)))
}
