//! Fused optimizer updates: one pass over parameter, gradient and state per tensor, in place.

use super::CpuStorage;
use crate::backend::{AdamParams, SgdParams};
use crate::dtype::Real;
use crate::{Error, Result};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy)]
struct AdamConsts<T> {
    b1: T,
    b2: T,
    omb1: T,
    omb2: T,
    eps: T,
    step_size: T,
    bc2_sqrt: T,
    decay: T,
    l2: T,
}

#[inline(always)]
fn adam_chunk<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: AdamConsts<T>) {
    // Zipped iterators rather than indexing: no bounds checks, so sqrt and division vectorise.
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let gi = g + k.l2 * *p;
        *m = k.b1 * *m + k.omb1 * gi;
        *v = k.b2 * *v + k.omb2 * gi * gi;
        // Same arithmetic order as PyTorch's Adam: p − step_size · (m / (sqrt(v)/sqrt(bc2) + eps)).
        *p = *p * k.decay - k.step_size * (*m / (v.sqrt() / k.bc2_sqrt + k.eps));
    }
}

/// The same loop compiled for AVX-512 (16 lanes) where the CPU has it; the portable build only assumes
/// SSE2. No FMA contraction happens (Rust never fuses), so both paths give identical bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn adam_chunk_avx512<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: AdamConsts<T>) {
    adam_chunk(p, g, m, v, k)
}

fn adam_chunk_dispatch<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: AdamConsts<T>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected at run time.
        return unsafe { adam_chunk_avx512(p, g, m, v, k) };
    }
    adam_chunk(p, g, m, v, k)
}

fn adam<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], h: AdamParams) {
    let t = h.step as i32;
    let bc1 = 1.0 - h.beta1.powi(t);
    let bc2 = 1.0 - h.beta2.powi(t);
    let c = |x: f64| T::from_f64(x);
    let (b1, b2, eps, wd) = (c(h.beta1), c(h.beta2), c(h.eps), c(h.weight_decay));
    // 1−β in f64 then rounded once, as PyTorch does: computing it in f32 after rounding β2 = 0.999 is
    // off by 1.3e-5 relative, and the error compounds over steps.
    let (omb1, omb2) = (c(1.0 - h.beta1), c(1.0 - h.beta2));
    let (step_size, bc2_sqrt) = (c(h.lr / bc1), c(bc2.sqrt()));
    // AdamW decays the parameter (decay < 1, l2 = 0); Adam adds wd·p to the gradient (decay = 1, l2 = wd).
    // One branch-free loop serves both: multiplying by 1 or adding 0·p is exact.
    let (decay, l2) = if h.decoupled { (c(1.0 - h.lr * h.weight_decay), T::ZERO) } else { (T::ONE, wd) };
    let k = AdamConsts { b1, b2, omb1, omb2, eps, step_size, bc2_sqrt, decay, l2 };
    #[allow(clippy::type_complexity)]
    let f = |(((p, g), m), v): (((&mut [T], &[T]), &mut [T]), &mut [T])| adam_chunk_dispatch(p, g, m, v, k);
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(f);
}

/// Adam or AdamW on one parameter, with state `m`, `v` of the parameter's dtype (f32 or f64).
pub fn adam_update(
    p: &mut CpuStorage,
    g: &CpuStorage,
    m: &mut CpuStorage,
    v: &mut CpuStorage,
    h: AdamParams,
) -> Result<()> {
    // The chunked zip in `adam` would silently stop at the shortest buffer and leave part of p untouched.
    if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
        let detail = format!("parameter {}, gradient {}, state {} and {} elements", p.len(), g.len(), m.len(), v.len());
        return Err(Error::shape("adam", detail));
    }
    match (p, g, m, v) {
        (CpuStorage::F32(p), CpuStorage::F32(g), CpuStorage::F32(m), CpuStorage::F32(v)) => adam(p, g, m, v, h),
        (CpuStorage::F64(p), CpuStorage::F64(g), CpuStorage::F64(m), CpuStorage::F64(v)) => adam(p, g, m, v, h),
        (p, g, ..) => {
            return Err(Error::UnsupportedDType {
                op: "adam",
                dtype: if p.dtype() == g.dtype() { p.dtype() } else { g.dtype() },
                detail: "the CPU optimizer updates f32 or f64 parameters with state of the same dtype",
            })
        }
    }
    Ok(())
}

fn sgd<T: Real>(p: &mut [T], g: &[T], buf: Option<&mut [T]>, h: SgdParams) {
    let c = |x: f64| T::from_f64(x);
    let (lr, mom, damp, wd) = (c(h.lr), c(h.momentum), c(1.0 - h.dampening), c(h.weight_decay));
    match buf {
        None => p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
            for (p, &g) in p.iter_mut().zip(g) {
                *p = *p - lr * (g + wd * *p);
            }
        }),
        Some(b) => {
            p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(b.par_chunks_mut(CHUNK)).for_each(|((p, g), b)| {
                for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                    let gi = g + wd * *p;
                    *b = if h.first_step { gi } else { mom * *b + damp * gi };
                    let d = if h.nesterov { gi + mom * *b } else { *b };
                    *p = *p - lr * d;
                }
            })
        }
    }
}

/// SGD with optional momentum buffer, on one parameter.
pub fn sgd_update(p: &mut CpuStorage, g: &CpuStorage, buf: Option<&mut CpuStorage>, h: SgdParams) -> Result<()> {
    if g.len() != p.len() || buf.as_ref().is_some_and(|b| b.len() != p.len()) {
        return Err(Error::shape("sgd", format!("parameter {} and gradient {} elements differ", p.len(), g.len())));
    }
    match (p, g, buf) {
        (CpuStorage::F32(p), CpuStorage::F32(g), None) => sgd(p, g, None, h),
        (CpuStorage::F32(p), CpuStorage::F32(g), Some(CpuStorage::F32(b))) => sgd(p, g, Some(b), h),
        (CpuStorage::F64(p), CpuStorage::F64(g), None) => sgd(p, g, None, h),
        (CpuStorage::F64(p), CpuStorage::F64(g), Some(CpuStorage::F64(b))) => sgd(p, g, Some(b), h),
        (p, ..) => {
            return Err(Error::UnsupportedDType {
                op: "sgd",
                dtype: p.dtype(),
                detail: "the CPU optimizer updates f32 or f64 parameters with state of the same dtype",
            })
        }
    }
    Ok(())
}

/// Σ x² over every element of `parts` (storage, first element, length), as a one-element f64 storage:
/// squares in f32 (f64 for f64), sums in f64, tensor after tensor (the CUDA version's definition; only
/// the order of the f64 additions differs).
pub fn sum_squares(parts: &[(&CpuStorage, usize, usize)]) -> Result<CpuStorage> {
    fn go<T: Copy + Sync>(x: &[T], sq: impl Fn(T) -> f64 + Sync + Send) -> f64 {
        x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| sq(v)).sum::<f64>()).collect::<Vec<f64>>().iter().sum()
    }
    let mut total = 0.0f64;
    for &(s, at, len) in parts {
        if at + len > s.len() {
            return Err(Error::invalid(
                "sum_squares",
                format!("elements {at}..{} of a storage of {}", at + len, s.len()),
            ));
        }
        let r = at..at + len;
        total += match s {
            CpuStorage::F32(x) => go(&x[r], |v| (v * v) as f64),
            CpuStorage::F64(x) => go(&x[r], |v| v * v),
            CpuStorage::BF16(x) => go(&x[r], |v| (v.to_f32() * v.to_f32()) as f64),
            CpuStorage::F16(x) => go(&x[r], |v| (v.to_f32() * v.to_f32()) as f64),
            other => return Err(super::need_float("sum_squares", other.dtype())),
        };
    }
    Ok(CpuStorage::F64(vec![total]))
}
