//! Softmax and log-softmax over the last dim, one row per task, and their fused backward rules.

use super::{contiguous_slice, fill_vec, float_map, float_map2, simd, CpuStorage, PAR_THRESHOLD};
use crate::backend::Causal;
use crate::dtype::Real;
use crate::shape::Layout;
use crate::Result;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Independent accumulators per row reduction: a single running sum or max is a serial dependency chain
/// the compiler cannot vectorise (floating-point addition is not associative), L lanes make one vector.
pub(crate) const L: usize = 16;

/// Sum over positions j of `f([xs[0][j], xs[1][j], ...])` in L independent lanes, then the lanes added
/// together. The slices have one length; they are walked L elements at a time as fixed-size arrays so no
/// per-element bounds check stops the vectoriser.
#[inline(always)]
// The tail index reads one element from each of the K slices, which no single iterator expresses.
#[allow(clippy::needless_range_loop)]
pub(crate) fn lane_sum<T: Real, const K: usize>(xs: [&[T]; K], f: impl Fn([T; K]) -> T) -> T {
    let n = xs[0].len();
    let xs: [&[T]; K] = xs.map(|x| &x[..n]);
    let mut acc = [T::ZERO; L];
    let full = n - n % L;
    for c in (0..full).step_by(L) {
        let chunk: [&[T; L]; K] = std::array::from_fn(|k| xs[k][c..c + L].try_into().unwrap());
        for (i, a) in acc.iter_mut().enumerate() {
            *a += f(std::array::from_fn(|k| chunk[k][i]));
        }
    }
    let mut tail = T::ZERO;
    for j in full..n {
        tail += f(std::array::from_fn(|k| xs[k][j]));
    }
    acc.iter().fold(tail, |s, &a| s + a)
}

/// Largest element of a row (NaN is skipped, as `max` does), in L lanes.
#[inline(always)]
pub(crate) fn row_max<T: Real>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let m = chunks.remainder().iter().fold(T::NEG_INFINITY, |m, &v| m.max(v));
    acc.iter().fold(m, |m, &a| m.max(a))
}

/// e^d, exactly 0 for d = −inf (a masked logit): the fast exp's clamp would give the smallest subnormal.
#[inline(always)]
pub(crate) fn exp_masked<T: Real>(d: T) -> T {
    let e = d.exp_fast();
    if d == T::NEG_INFINITY {
        T::ZERO
    } else {
        e
    }
}

/// Runs `f(row_index, in_row, out_row)` over rows of length `n`, in parallel when the tensor is large;
/// `f` writes every element of its output row.
pub fn rows_map<T: Real>(x: &[T], n: usize, f: impl Fn(usize, &[T], &mut [MaybeUninit<T>]) + Sync) -> Vec<T> {
    if n == 0 {
        return vec![T::ZERO; x.len()];
    }
    let f = |(r, (o, i)): (usize, (&mut [MaybeUninit<T>], &[T]))| {
        simd(
            #[inline(always)]
            || f(r, i, o),
        )
    };
    fill_vec(x.len(), |out| {
        if x.len() >= PAR_THRESHOLD {
            // Blocks of rows per task: one task per short row costs more in scheduling than the row.
            let rows = (4096 / n).max(1);
            out.par_chunks_mut(rows * n).zip(x.par_chunks(rows * n)).enumerate().for_each(|(b, (o, i))| {
                o.chunks_mut(n).zip(i.chunks(n)).enumerate().for_each(|(r, p)| f((b * rows + r, p)));
            });
        } else {
            out.chunks_mut(n).zip(x.chunks(n)).enumerate().for_each(f);
        }
    })
}

fn softmax_rows<T: Real>(x: &[T], n: usize, log: bool, causal: Option<Causal>) -> Vec<T> {
    rows_map(
        x,
        n,
        #[inline(always)]
        |r, row, out| {
            // Causal: the masked columns are left out of the row and written as the −inf they stand for
            // would come out (0, or −inf for log-softmax; NaN when nothing visible is finite).
            let seen = causal.map_or(n, |c| c.visible(r, n));
            let (row, out, hidden) = {
                let (out, hidden) = out.split_at_mut(seen);
                (&row[..seen], out, hidden)
            };
            let max = row_max(row);
            let masked = if max == T::NEG_INFINITY {
                T::NAN
            } else if log {
                T::NEG_INFINITY
            } else {
                T::ZERO
            };
            for o in hidden.iter_mut() {
                o.write(masked);
            }
            // A fully masked row (all -inf) gives NaN, as PyTorch does: exp(-inf - -inf) is NaN.
            if log {
                let sum = lane_sum([row], |[v]| exp_masked(v - max));
                let lse = max + sum.ln();
                for (o, &v) in out.iter_mut().zip(row) {
                    o.write(v - lse);
                }
            } else {
                // exp is written out in the same pass that sums it, then scaled in place.
                let mut acc = [T::ZERO; L];
                let (oc, ot) = out.as_chunks_mut::<L>();
                let (xc, xt) = row.as_chunks::<L>();
                for (o, x) in oc.iter_mut().zip(xc) {
                    for i in 0..L {
                        let e = exp_masked(x[i] - max);
                        o[i].write(e);
                        acc[i] += e;
                    }
                }
                let mut sum = T::ZERO;
                for (o, &x) in ot.iter_mut().zip(xt) {
                    let e = exp_masked(x - max);
                    o.write(e);
                    sum += e;
                }
                let sum = acc.iter().fold(sum, |s, &a| s + a);
                let inv = T::ONE / sum;
                for o in out.iter_mut() {
                    // SAFETY: every element of the row was written by the loops above.
                    let e = unsafe { o.assume_init() };
                    o.write(e * inv);
                }
            }
        },
    )
}

/// Softmax (or log-softmax) over rows of length `n` of a view whose last dim is the softmax dim.
/// With `causal`, row r sees only its first `causal.visible(r, n)` columns (the rest as if −inf).
pub fn softmax(s: &CpuStorage, l: &Layout, log: bool, causal: Option<Causal>) -> Result<CpuStorage> {
    let n = *l.shape().last().unwrap_or(&1);
    Ok(float_map!("softmax", s, |v| softmax_rows(&contiguous_slice(v, l), n, log, causal)))
}

/// Gradient of softmax given its output `y` and the incoming gradient `g` (both contiguous, same shape):
/// softmax: y·(g − Σ g·y); log-softmax: g − exp(y)·Σ g.
pub fn softmax_backward(y: &CpuStorage, g: &CpuStorage, n: usize, log: bool) -> Result<CpuStorage> {
    #[allow(clippy::type_complexity)]
    fn go<T: Real>(y: &[T], g: &[T], n: usize, log: bool) -> Vec<T> {
        if n == 0 {
            return vec![T::ZERO; y.len()];
        }
        let f = |(o, (yr, gr)): (&mut [MaybeUninit<T>], (&[T], &[T]))| {
            simd(
                #[inline(always)]
                || {
                    if log {
                        let s = lane_sum([gr], |[g]| g);
                        for ((o, &yv), &gv) in o.iter_mut().zip(yr).zip(gr) {
                            o.write(gv - yv.exp_fast() * s);
                        }
                    } else {
                        let dot = lane_sum([yr, gr], |[y, g]| y * g);
                        for ((o, &yv), &gv) in o.iter_mut().zip(yr).zip(gr) {
                            o.write(yv * (gv - dot));
                        }
                    }
                },
            )
        };
        fill_vec(y.len(), |out| {
            if y.len() >= PAR_THRESHOLD {
                let rows = (4096 / n).max(1) * n;
                out.par_chunks_mut(rows)
                    .zip(y.par_chunks(rows).zip(g.par_chunks(rows)))
                    .for_each(|(o, (a, b))| o.chunks_mut(n).zip(a.chunks(n).zip(b.chunks(n))).for_each(f));
            } else {
                out.chunks_mut(n).zip(y.chunks(n).zip(g.chunks(n))).for_each(f);
            }
        })
    }
    Ok(float_map2!("softmax_backward", y, g, |a, b| go(a, b, n, log)))
}
