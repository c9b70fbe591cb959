//! Walking strided views row by row. Dims are first coalesced, then the last dim is the inner loop and
//! every outer index maps to one offset per operand; kernels specialise the inner loop on its strides.

use super::{any_map, CpuStorage, PAR_THRESHOLD};
use crate::shape::{coalesce, Layout};
use crate::{DType, Error, Result};
use rayon::prelude::*;

/// How to visit `N` operands of one logical shape: outer rows, an inner run, and each operand's strides.
pub struct RowPlan<const N: usize> {
    pub inner: usize,
    pub rows: usize,
    outer_shape: Vec<usize>,
    outer_strides: [Vec<usize>; N],
    pub inner_strides: [usize; N],
    base: [usize; N],
}

impl<const N: usize> RowPlan<N> {
    /// All layouts must have the same shape (already broadcast).
    pub fn new(layouts: [&Layout; N]) -> Self {
        let shape = layouts[0].shape();
        let strides: Vec<&[usize]> = layouts.iter().map(|l| l.strides()).collect();
        let (cshape, cstrides) = coalesce(shape, &strides);
        let last = cshape.len() - 1;
        let inner = if shape.iter().product::<usize>() == 0 { 0 } else { cshape[last] };
        let outer_shape = cshape[..last].to_vec();
        let rows = if inner == 0 { 0 } else { outer_shape.iter().product() };
        RowPlan {
            inner,
            rows,
            outer_shape,
            outer_strides: std::array::from_fn(|i| cstrides[i][..last].to_vec()),
            inner_strides: std::array::from_fn(|i| cstrides[i][last]),
            base: std::array::from_fn(|i| layouts[i].offset()),
        }
    }

    /// Storage offsets of the first element of row `r` for every operand.
    #[inline]
    pub fn row_offsets(&self, mut r: usize) -> [usize; N] {
        let mut off = self.base;
        for d in (0..self.outer_shape.len()).rev() {
            let i = r % self.outer_shape[d];
            r /= self.outer_shape[d];
            for (k, o) in off.iter_mut().enumerate() {
                *o += i * self.outer_strides[k][d];
            }
        }
        off
    }

    /// Runs `f(row, offsets, out_row)` over every row, writing a contiguous output of rows × inner.
    pub fn for_each_out<R: Send>(&self, out: &mut [R], f: impl Fn([usize; N], &mut [R]) + Sync) {
        if self.inner == 0 {
            return;
        }
        if out.len() >= PAR_THRESHOLD && self.rows > 1 {
            let min_rows = (PAR_THRESHOLD / 4 / self.inner).max(1);
            out.par_chunks_mut(self.inner)
                .enumerate()
                .with_min_len(min_rows)
                .for_each(|(r, o)| f(self.row_offsets(r), o));
        } else {
            out.chunks_mut(self.inner).enumerate().for_each(|(r, o)| f(self.row_offsets(r), o));
        }
    }
}

/// Copies a strided view into a new contiguous Vec.
pub fn gather_strided<T: Copy + Send + Sync + Default>(src: &[T], layout: &Layout) -> Vec<T> {
    if let Some(r) = layout.contiguous_range() {
        return src[r].to_vec();
    }
    let plan = RowPlan::new([layout]);
    let s = plan.inner_strides[0];
    super::fill_vec(layout.numel(), |out| {
        plan.for_each_out(out, |[o], row| {
            let n = row.len();
            if s == 1 {
                for (x, &v) in row.iter_mut().zip(&src[o..o + n]) {
                    x.write(v);
                }
            } else {
                for (j, x) in row.iter_mut().enumerate() {
                    x.write(src[o + j * s]);
                }
            }
        })
    })
}

/// A contiguous copy of a strided view.
pub fn copy_strided(s: &CpuStorage, layout: &Layout) -> CpuStorage {
    any_map!(s, |v| gather_strided(v, layout))
}

/// Writes `src` (viewed through `src_layout`) into `dst` at the positions of `dst_layout`.
pub fn copy_into(dst: &mut CpuStorage, dst_layout: &Layout, src: &CpuStorage, src_layout: &Layout) -> Result<()> {
    fn go<T: Copy>(d: &mut [T], dl: &Layout, s: &[T], sl: &Layout) {
        let plan = RowPlan::new([dl, sl]);
        let [ds, ss] = plan.inner_strides;
        for r in 0..plan.rows {
            let [od, os] = plan.row_offsets(r);
            if ds == 1 && ss == 1 {
                d[od..od + plan.inner].copy_from_slice(&s[os..os + plan.inner]);
            } else {
                for j in 0..plan.inner {
                    d[od + j * ds] = s[os + j * ss];
                }
            }
        }
    }
    match (dst, src) {
        (CpuStorage::F32(d), CpuStorage::F32(s)) => go(d, dst_layout, s, src_layout),
        (CpuStorage::F64(d), CpuStorage::F64(s)) => go(d, dst_layout, s, src_layout),
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => go(d, dst_layout, s, src_layout),
        (CpuStorage::F16(d), CpuStorage::F16(s)) => go(d, dst_layout, s, src_layout),
        (CpuStorage::I64(d), CpuStorage::I64(s)) => go(d, dst_layout, s, src_layout),
        (CpuStorage::U8(d), CpuStorage::U8(s)) => go(d, dst_layout, s, src_layout),
        (d, s) => return Err(Error::DType { op: "copy_into", expected: d.dtype(), got: s.dtype() }),
    }
    Ok(())
}

/// A contiguous buffer of `shape`, zero except the slice `start..start + len` of dim `d`, which holds
/// `src` viewed through `l` (of the slice's shape). Each outer block is written once: zeros, the slice's
/// rows, zeros.
pub fn zeros_with_narrow(src: &CpuStorage, l: &Layout, shape: &[usize], d: usize, start: usize) -> CpuStorage {
    fn go<T: Copy + Send + Sync + Default>(v: &[T], l: &Layout, shape: &[usize], d: usize, start: usize) -> Vec<T> {
        let src = contiguous_slice(v, l);
        let (size, len) = (shape[d], l.shape()[d]);
        let inner: usize = shape[d + 1..].iter().product();
        let numel: usize = shape.iter().product();
        let (blk, a, b) = (size * inner, start * inner, (start + len) * inner);
        super::fill_vec(numel, |out| {
            if numel == 0 {
                return;
            }
            let f = |(o, row): (usize, &mut [std::mem::MaybeUninit<T>])| {
                let (head, rest) = row.split_at_mut(a);
                let (mid, tail) = rest.split_at_mut(b - a);
                head.iter_mut().chain(tail.iter_mut()).for_each(|x| {
                    x.write(T::default());
                });
                for (x, &s) in mid.iter_mut().zip(&src[o * (b - a)..(o + 1) * (b - a)]) {
                    x.write(s);
                }
            };
            if numel >= PAR_THRESHOLD {
                out.par_chunks_mut(blk).enumerate().for_each(f);
            } else {
                out.chunks_mut(blk).enumerate().for_each(f);
            }
        })
    }
    any_map!(src, |v| go(v, l, shape, d, start))
}

/// A contiguous copy of a strided view converted to another dtype.
pub fn cast(s: &CpuStorage, layout: &Layout, dtype: DType) -> CpuStorage {
    use half::{bf16, f16};
    if s.dtype() == dtype {
        return copy_strided(s, layout);
    }
    // Go through f32 where that is exact (bf16/f16 <-> f32) so no double rounding happens; otherwise f64.
    match (s, dtype) {
        (CpuStorage::BF16(v), DType::F32) => {
            CpuStorage::F32(gather_strided(v, layout).iter().map(|x| x.to_f32()).collect())
        }
        (CpuStorage::F16(v), DType::F32) => {
            CpuStorage::F32(gather_strided(v, layout).iter().map(|x| x.to_f32()).collect())
        }
        (CpuStorage::F32(v), DType::BF16) => {
            CpuStorage::BF16(gather_strided(v, layout).iter().map(|&x| bf16::from_f32(x)).collect())
        }
        (CpuStorage::F32(v), DType::F16) => {
            CpuStorage::F16(gather_strided(v, layout).iter().map(|&x| f16::from_f32(x)).collect())
        }
        _ => {
            let vals: Vec<f64> = super::any_with!(s, |v| gather_strided(v, layout)
                .into_iter()
                .map(crate::dtype::Element::to_f64)
                .collect());
            CpuStorage::from_f64s(dtype, &vals)
        }
    }
}

/// The view's elements as one contiguous slice: borrowed when already contiguous, else copied.
pub fn contiguous_slice<'a, T: Copy + Send + Sync + Default>(v: &'a [T], l: &Layout) -> std::borrow::Cow<'a, [T]> {
    match l.contiguous_range() {
        Some(r) => std::borrow::Cow::Borrowed(&v[r]),
        None => std::borrow::Cow::Owned(gather_strided(v, l)),
    }
}
