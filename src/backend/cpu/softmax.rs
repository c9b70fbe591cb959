//! Softmax and log-softmax over the last dim, one row per task, and their fused backward rules.

use super::{contiguous_slice, float_map, float_map2, CpuStorage, PAR_THRESHOLD};
use crate::dtype::Real;
use crate::shape::Layout;
use crate::Result;
use rayon::prelude::*;

/// Runs `f(in_row, out_row)` over rows of length `n`, in parallel when the tensor is large.
pub fn rows_map<T: Real>(x: &[T], n: usize, f: impl Fn(&[T], &mut [T]) + Sync) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
    if n == 0 {
        return out;
    }
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(o, i)| f(i, o));
    } else {
        out.chunks_mut(n).zip(x.chunks(n)).for_each(|(o, i)| f(i, o));
    }
    out
}

fn softmax_rows<T: Real>(x: &[T], n: usize, log: bool) -> Vec<T> {
    rows_map(x, n, |row, out| {
        let max = row.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v));
        // A fully masked row (all -inf) gives NaN, as PyTorch does: exp(-inf - -inf) is NaN.
        let mut sum = 0f64;
        for (o, &v) in out.iter_mut().zip(row) {
            let e = (v - max).exp();
            *o = e;
            sum += e.to_f64();
        }
        if log {
            let lse = T::from_f64(sum.ln());
            for (o, &v) in out.iter_mut().zip(row) {
                *o = v - max - lse;
            }
        } else {
            let inv = T::from_f64(1.0 / sum);
            for o in out.iter_mut() {
                *o = *o * inv;
            }
        }
    })
}

/// Softmax (or log-softmax) over rows of length `n` of a view whose last dim is the softmax dim.
pub fn softmax(s: &CpuStorage, l: &Layout, log: bool) -> Result<CpuStorage> {
    let n = *l.shape().last().unwrap_or(&1);
    Ok(float_map!("softmax", s, |v| softmax_rows(&contiguous_slice(v, l), n, log)))
}

/// Gradient of softmax given its output `y` and the incoming gradient `g` (both contiguous, same shape):
/// softmax: y·(g − Σ g·y); log-softmax: g − exp(y)·Σ g.
pub fn softmax_backward(y: &CpuStorage, g: &CpuStorage, n: usize, log: bool) -> Result<CpuStorage> {
    fn go<T: Real>(y: &[T], g: &[T], n: usize, log: bool) -> Vec<T> {
        let mut out = vec![T::ZERO; y.len()];
        let f = |(o, (yr, gr)): (&mut [T], (&[T], &[T]))| {
            if log {
                let s: f64 = gr.iter().map(|v| v.to_f64()).sum();
                let s = T::from_f64(s);
                for ((o, &yv), &gv) in o.iter_mut().zip(yr).zip(gr) {
                    *o = gv - yv.exp() * s;
                }
            } else {
                let dot: f64 = yr.iter().zip(gr).map(|(a, b)| (*a * *b).to_f64()).sum();
                let dot = T::from_f64(dot);
                for ((o, &yv), &gv) in o.iter_mut().zip(yr).zip(gr) {
                    *o = yv * (gv - dot);
                }
            }
        };
        if n == 0 {
            return out;
        }
        if y.len() >= PAR_THRESHOLD {
            out.par_chunks_mut(n).zip(y.par_chunks(n).zip(g.par_chunks(n))).for_each(f);
        } else {
            out.chunks_mut(n).zip(y.chunks(n).zip(g.chunks(n))).for_each(f);
        }
        out
    }
    Ok(float_map2!("softmax_backward", y, g, |a, b| go(a, b, n, log)))
}
