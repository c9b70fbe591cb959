//! Reductions over any set of dims. The view is split into kept dims (one output each) and reduced dims
//! (walked for every output); sums accumulate in f64 so long f32 rows keep full precision.

use super::{CpuStorage, RowPlan, PAR_THRESHOLD};
use crate::backend::ReduceOp;
use crate::dtype::Element;
use crate::shape::{coalesce, Layout};
use crate::{Error, Result};
use rayon::prelude::*;

/// Splits `layout` into the kept sub-layout (with the view's offset) and the reduced sub-layout (offset 0).
fn split(layout: &Layout, dims: &[usize]) -> (Layout, Layout) {
    let (mut ks, mut kst, mut rs, mut rst) = (vec![], vec![], vec![], vec![]);
    for d in 0..layout.rank() {
        if dims.contains(&d) {
            rs.push(layout.shape()[d]);
            rst.push(layout.strides()[d]);
        } else {
            ks.push(layout.shape()[d]);
            kst.push(layout.strides()[d]);
        }
    }
    (Layout::new(ks, kst, layout.offset()), Layout::new(rs, rst, 0))
}

fn combine<T: Element + PartialOrd>(op: ReduceOp, acc: f64, x: T) -> f64 {
    let v = x.to_f64();
    match op {
        ReduceOp::Sum => acc + v,
        // NaN wins, as in PyTorch.
        ReduceOp::Max => {
            if v.is_nan() || v > acc {
                v
            } else {
                acc
            }
        }
        ReduceOp::Min => {
            if v.is_nan() || v < acc {
                v
            } else {
                acc
            }
        }
    }
}

fn init(op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
        ReduceOp::Min => f64::INFINITY,
    }
}

fn reduce_generic<T: Element + PartialOrd>(v: &[T], kept: &Layout, red: &Layout, op: ReduceOp) -> Vec<T> {
    let n_out = kept.numel();
    let n_red = red.numel();
    if n_out == 0 {
        // Nothing to write (e.g. summing a [0, n] tensor over its last dim); the row walk below needs rows.
        return Vec::new();
    }
    let (rshape, rstrides) = coalesce(red.shape(), &[red.strides()]);
    let sticky_nan = |acc: f64| acc.is_nan();
    // Fast path: the reduced elements of each output are one contiguous run.
    if rshape.len() == 1 && (rstrides[0][0] == 1 || n_red == 1) {
        let plan_layout = Layout::new(kept.shape().to_vec(), kept.strides().to_vec(), kept.offset());
        let mut out = vec![T::default(); n_out];
        let plan = RowPlan::new([&plan_layout]);
        let s = plan.inner_strides[0];
        let f = |o: usize| {
            let mut acc = init(op);
            for &x in &v[o..o + n_red] {
                if sticky_nan(acc) {
                    break;
                }
                acc = combine(op, acc, x);
            }
            T::from_f64(acc)
        };
        let par = n_out * n_red >= PAR_THRESHOLD;
        if n_out == 1 {
            out[0] = if par && op == ReduceOp::Sum {
                T::from_f64(v[kept.offset()..kept.offset() + n_red].par_iter().map(|x| x.to_f64()).sum())
            } else {
                f(kept.offset())
            };
            return out;
        }
        let rows = |(r, row): (usize, &mut [T])| {
            let [o] = plan.row_offsets(r);
            for (j, y) in row.iter_mut().enumerate() {
                *y = f(o + j * s);
            }
        };
        if par {
            out.par_chunks_mut(plan.inner).enumerate().for_each(rows);
        } else {
            out.chunks_mut(plan.inner).enumerate().for_each(rows);
        }
        return out;
    }
    // Column path (summing a bias gradient over the batch): the kept elements are one contiguous run, so
    // whole rows are added into f64 accumulators in memory order instead of walking each column.
    let (kshape, kstrides) = coalesce(kept.shape(), &[kept.strides()]);
    if op == ReduceOp::Sum && kshape.len() == 1 && kstrides[0][0] == 1 && n_out >= 16 {
        let red_offsets: Vec<usize> = red.offsets().collect();
        let base = kept.offset();
        let column_block = |(ci, out): (usize, &mut [T])| {
            let start = base + ci * 1024;
            let mut acc = vec![0f64; out.len()];
            for &r in &red_offsets {
                for (a, x) in acc.iter_mut().zip(&v[start + r..start + r + out.len()]) {
                    *a += x.to_f64();
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o = T::from_f64(a);
            }
        };
        let mut out = vec![T::default(); n_out];
        if n_out * n_red >= PAR_THRESHOLD {
            out.par_chunks_mut(1024).enumerate().for_each(column_block);
        } else {
            out.chunks_mut(1024).enumerate().for_each(column_block);
        }
        return out;
    }
    // General path: precompute the reduced offsets once, then walk them for every output.
    let red_offsets: Vec<usize> = red.offsets().collect();
    let kept_offsets: Vec<usize> = kept.offsets().collect();
    let f = |base: usize| {
        let mut acc = init(op);
        for &r in &red_offsets {
            acc = combine(op, acc, v[base + r]);
            if sticky_nan(acc) {
                break;
            }
        }
        T::from_f64(acc)
    };
    if n_out * n_red >= PAR_THRESHOLD {
        kept_offsets.par_iter().map(|&b| f(b)).collect()
    } else {
        kept_offsets.iter().map(|&b| f(b)).collect()
    }
}

/// Reduces `dims` (sorted, resolved) of a view; the result has the kept dims' shape, contiguous.
/// Sums of U8 or I64 give I64.
pub fn reduce(s: &CpuStorage, layout: &Layout, dims: &[usize], op: ReduceOp) -> Result<CpuStorage> {
    let (kept, red) = split(layout, dims);
    Ok(match s {
        CpuStorage::F32(v) => CpuStorage::F32(reduce_generic(v, &kept, &red, op)),
        CpuStorage::F64(v) => CpuStorage::F64(reduce_generic(v, &kept, &red, op)),
        CpuStorage::BF16(v) => CpuStorage::BF16(reduce_generic(v, &kept, &red, op)),
        CpuStorage::F16(v) => CpuStorage::F16(reduce_generic(v, &kept, &red, op)),
        CpuStorage::I64(v) => CpuStorage::I64(reduce_generic(v, &kept, &red, op)),
        CpuStorage::U8(v) => match op {
            ReduceOp::Sum => {
                let w: Vec<i64> = v.iter().map(|&x| x as i64).collect();
                CpuStorage::I64(reduce_generic(&w, &kept, &red, op))
            }
            _ => CpuStorage::U8(reduce_generic(v, &kept, &red, op)),
        },
    })
}

/// Index of the largest element along `dim` (the first one on ties); the result has the kept dims' shape.
pub fn argmax(s: &CpuStorage, layout: &Layout, dim: usize) -> Result<CpuStorage> {
    fn go<T: Element>(v: &[T], kept: &Layout, red: &Layout) -> Vec<i64> {
        let n = red.numel();
        let stride = red.strides()[0];
        kept.offsets()
            .map(|b| {
                let (mut best, mut bi) = (f64::NEG_INFINITY, 0i64);
                for i in 0..n {
                    let x = v[b + i * stride].to_f64();
                    if x > best || x.is_nan() {
                        best = x;
                        bi = i as i64;
                        if x.is_nan() {
                            break;
                        }
                    }
                }
                bi
            })
            .collect()
    }
    if layout.shape()[dim] == 0 {
        return Err(Error::invalid("argmax", "cannot take argmax over an empty dimension"));
    }
    let (kept, red) = split(layout, &[dim]);
    Ok(CpuStorage::I64(super::any_with!(s, |v| go(v, &kept, &red))))
}
