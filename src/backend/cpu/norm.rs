//! Row-wise fused kernels: layer norm and RMS norm (forward and backward) and cross-entropy from logits.
//! Statistics are kept in the compute type (f32, or f64 for f64 tensors) so bf16 models keep precise
//! normalisation and the backward pass reuses them instead of recomputing.

use super::{CpuStorage, PAR_THRESHOLD};
use crate::dtype::Real;
use crate::{DType, Error, Result};
use rayon::prelude::*;
use std::borrow::Cow;

/// A float storage viewed in its compute type.
pub enum Wide<'a> {
    F32(Cow<'a, [f32]>),
    F64(&'a [f64]),
}

/// Widens bf16/f16 to f32 (borrowing f32 and f64 as they are).
pub fn wide<'a>(op: &'static str, s: &'a CpuStorage) -> Result<Wide<'a>> {
    Ok(match s {
        CpuStorage::F32(v) => Wide::F32(Cow::Borrowed(v)),
        CpuStorage::F64(v) => Wide::F64(v),
        CpuStorage::BF16(v) => Wide::F32(Cow::Owned(super::widen_bf16(v))),
        CpuStorage::F16(v) => Wide::F32(Cow::Owned(super::widen_f16(v))),
        other => return Err(super::need_float(op, other.dtype())),
    })
}

fn wide_f32<'a>(op: &'static str, s: Option<&'a CpuStorage>) -> Result<Option<Cow<'a, [f32]>>> {
    match s.map(|s| wide(op, s)).transpose()? {
        None => Ok(None),
        Some(Wide::F32(v)) => Ok(Some(v)),
        Some(Wide::F64(_)) => Err(Error::DType { op, expected: DType::F32, got: DType::F64 }),
    }
}

fn wide_f64<'a>(op: &'static str, s: Option<&'a CpuStorage>) -> Result<Option<&'a [f64]>> {
    match s {
        None => Ok(None),
        Some(CpuStorage::F64(v)) => Ok(Some(v)),
        Some(o) => Err(Error::DType { op, expected: DType::F64, got: o.dtype() }),
    }
}

/// Output of a normalisation forward pass.
pub struct NormOut {
    pub y: CpuStorage,
    /// Per-row mean (zeros for RMS norm), compute dtype.
    pub mean: CpuStorage,
    /// Per-row 1/sqrt(var + eps) (or 1/rms), compute dtype.
    pub rstd: CpuStorage,
}

/// Gradients of a normalisation.
pub struct NormGrads {
    pub x: CpuStorage,
    pub weight: Option<CpuStorage>,
    pub bias: Option<CpuStorage>,
}

#[allow(clippy::type_complexity)]
fn norm_fwd<T: Real>(
    x: &[T],
    w: Option<&[T]>,
    b: Option<&[T]>,
    n: usize,
    eps: f64,
    rms: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len().checked_div(n).unwrap_or(0);
    let mut y = vec![T::ZERO; x.len()];
    let mut mean = vec![T::ZERO; rows];
    let mut rstd = vec![T::ZERO; rows];
    let f = |((yr, xr), (m, r)): ((&mut [T], &[T]), (&mut T, &mut T))| {
        let mu = if rms { 0.0 } else { xr.iter().map(|v| v.to_f64()).sum::<f64>() / n as f64 };
        let var = xr.iter().map(|v| (v.to_f64() - mu).powi(2)).sum::<f64>() / n as f64;
        let rs = 1.0 / (var + eps).sqrt();
        *m = T::from_f64(mu);
        *r = T::from_f64(rs);
        let (mu, rs) = (T::from_f64(mu), T::from_f64(rs));
        for (j, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let mut h = (v - mu) * rs;
            if let Some(w) = w {
                h = h * w[j];
            }
            if let Some(b) = b {
                h += b[j];
            }
            *o = h;
        }
    };
    if n == 0 {
        return (y, mean, rstd);
    }
    if x.len() >= PAR_THRESHOLD {
        y.par_chunks_mut(n).zip(x.par_chunks(n)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).for_each(f);
    } else {
        y.chunks_mut(n).zip(x.chunks(n)).zip(mean.iter_mut().zip(rstd.iter_mut())).for_each(f);
    }
    (y, mean, rstd)
}

/// Layer norm (or RMS norm when `rms`) over contiguous rows of length `n`.
pub fn norm_forward(
    x: &CpuStorage,
    w: Option<&CpuStorage>,
    b: Option<&CpuStorage>,
    n: usize,
    eps: f64,
    rms: bool,
) -> Result<NormOut> {
    const OP: &str = "layer_norm";
    let dt = x.dtype();
    Ok(match wide(OP, x)? {
        Wide::F32(xv) => {
            let (wv, bv) = (wide_f32(OP, w)?, wide_f32(OP, b)?);
            let (y, m, r) = norm_fwd(&xv, wv.as_deref(), bv.as_deref(), n, eps, rms);
            NormOut { y: CpuStorage::from_f32s(dt, y), mean: CpuStorage::F32(m), rstd: CpuStorage::F32(r) }
        }
        Wide::F64(xv) => {
            let (wv, bv) = (wide_f64(OP, w)?, wide_f64(OP, b)?);
            let (y, m, r) = norm_fwd(xv, wv, bv, n, eps, rms);
            NormOut { y: CpuStorage::F64(y), mean: CpuStorage::F64(m), rstd: CpuStorage::F64(r) }
        }
    })
}

#[allow(clippy::type_complexity)]
fn norm_bwd<T: Real>(
    x: &[T],
    w: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    g: &[T],
    n: usize,
    rms: bool,
) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let mut gx = vec![T::ZERO; x.len()];
    if n == 0 {
        return (gx, vec![], vec![]);
    }
    // Each task handles a block of rows and returns its partial sums for the weight and bias gradients.
    let block = |(bi, gxb): (usize, &mut [T])| -> (Vec<f64>, Vec<f64>) {
        let rows = gxb.len() / n;
        let (mut gw, mut gb) = (vec![0f64; n], vec![0f64; n]);
        for r in 0..rows {
            let row = bi + r;
            let (xr, gr) = (&x[row * n..(row + 1) * n], &g[row * n..(row + 1) * n]);
            let (mu, rs) = (mean[row], rstd[row]);
            let (mut sum_d, mut sum_dh) = (0f64, 0f64);
            for j in 0..n {
                let h = (xr[j] - mu) * rs;
                let d = match w {
                    Some(w) => gr[j] * w[j],
                    None => gr[j],
                };
                sum_d += d.to_f64();
                sum_dh += (d * h).to_f64();
                gw[j] += (gr[j] * h).to_f64();
                gb[j] += gr[j].to_f64();
            }
            let mean_d = if rms { T::ZERO } else { T::from_f64(sum_d / n as f64) };
            let mean_dh = T::from_f64(sum_dh / n as f64);
            let out = &mut gxb[r * n..(r + 1) * n];
            for j in 0..n {
                let h = (xr[j] - mu) * rs;
                let d = match w {
                    Some(w) => gr[j] * w[j],
                    None => gr[j],
                };
                out[j] = rs * (d - mean_d - h * mean_dh);
            }
        }
        (gw, gb)
    };
    let add = |(mut a, mut b): (Vec<f64>, Vec<f64>), (c, d): (Vec<f64>, Vec<f64>)| {
        a.iter_mut().zip(c).for_each(|(x, y)| *x += y);
        b.iter_mut().zip(d).for_each(|(x, y)| *x += y);
        (a, b)
    };
    let rows_per_block = (PAR_THRESHOLD / n).max(1);
    let (gw, gb) = if x.len() >= PAR_THRESHOLD {
        gx.par_chunks_mut(rows_per_block * n)
            .enumerate()
            .map(|(i, c)| block((i * rows_per_block, c)))
            .reduce(|| (vec![0f64; n], vec![0f64; n]), add)
    } else {
        block((0, &mut gx))
    };
    (gx, gw, gb)
}

/// Backward of `norm_forward` given the saved statistics and the output gradient `g`.
#[allow(clippy::too_many_arguments)]
pub fn norm_backward(
    x: &CpuStorage,
    w: Option<&CpuStorage>,
    has_bias: bool,
    mean: &CpuStorage,
    rstd: &CpuStorage,
    g: &CpuStorage,
    n: usize,
    rms: bool,
) -> Result<NormGrads> {
    const OP: &str = "layer_norm_backward";
    let dt = x.dtype();
    let wdt = w.map(|w| w.dtype()).unwrap_or(dt);
    let (gx, gw, gb): (CpuStorage, Vec<f64>, Vec<f64>) = match (wide(OP, x)?, wide(OP, g)?) {
        (Wide::F32(xv), Wide::F32(gv)) => {
            let wv = wide_f32(OP, w)?;
            let (CpuStorage::F32(m), CpuStorage::F32(r)) = (mean, rstd) else {
                return Err(Error::invalid(OP, "statistics must be f32 for this dtype"));
            };
            let (gx, gw, gb) = norm_bwd(&xv, wv.as_deref(), m, r, &gv, n, rms);
            (CpuStorage::from_f32s(dt, gx), gw, gb)
        }
        (Wide::F64(xv), Wide::F64(gv)) => {
            let wv = wide_f64(OP, w)?;
            let (CpuStorage::F64(m), CpuStorage::F64(r)) = (mean, rstd) else {
                return Err(Error::invalid(OP, "statistics must be f64 for this dtype"));
            };
            let (gx, gw, gb) = norm_bwd(xv, wv, m, r, gv, n, rms);
            (CpuStorage::F64(gx), gw, gb)
        }
        _ => return Err(Error::DType { op: OP, expected: dt, got: g.dtype() }),
    };
    Ok(NormGrads {
        x: gx,
        weight: w.map(|_| CpuStorage::from_f64s(wdt, &gw)),
        bias: has_bias.then(|| CpuStorage::from_f64s(wdt, &gb)),
    })
}

fn check_targets(t: &[i64], c: usize, ignore: i64) -> Result<()> {
    if let Some(&bad) = t.iter().find(|&&v| v != ignore && (v < 0 || v as usize >= c)) {
        return Err(Error::Index { op: "cross_entropy", index: bad, size: c });
    }
    Ok(())
}

fn ce_fwd<T: Real>(x: &[T], t: &[i64], c: usize, ignore: i64) -> Vec<T> {
    let f = |(row, &tv): (&[T], &i64)| {
        if tv == ignore {
            return T::ZERO;
        }
        let max = row.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = row.iter().map(|&v| (v - max).exp().to_f64()).sum();
        T::from_f64(sum.ln() + max.to_f64() - row[tv as usize].to_f64())
    };
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks(c).zip(t.par_iter()).map(f).collect()
    } else {
        x.chunks(c).zip(t.iter()).map(f).collect()
    }
}

/// Per-row cross-entropy −log softmax(x)[t] of contiguous logits [N, C]; rows whose target is `ignore`
/// give 0. A target outside 0..C is an error naming it.
pub fn cross_entropy_forward(logits: &CpuStorage, targets: &[i64], c: usize, ignore: i64) -> Result<CpuStorage> {
    check_targets(targets, c, ignore)?;
    Ok(super::float_map!("cross_entropy", logits, |v| ce_fwd(v, targets, c, ignore)))
}

#[allow(clippy::type_complexity)]
fn ce_bwd<T: Real>(x: &[T], t: &[i64], gr: &[T], c: usize, ignore: i64) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
    let f = |((o, row), (&tv, &g)): ((&mut [T], &[T]), (&i64, &T))| {
        if tv == ignore {
            return;
        }
        let max = row.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = row.iter().map(|&v| (v - max).exp().to_f64()).sum();
        let inv = T::from_f64(1.0 / sum);
        for (oj, &v) in o.iter_mut().zip(row) {
            *oj = (v - max).exp() * inv * g;
        }
        o[tv as usize] = o[tv as usize] - g;
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(c).zip(x.par_chunks(c)).zip(t.par_iter().zip(gr.par_iter())).for_each(f);
    } else {
        out.chunks_mut(c).zip(x.chunks(c)).zip(t.iter().zip(gr.iter())).for_each(f);
    }
    out
}

/// Gradient of the per-row cross-entropy with respect to the logits: (softmax − onehot)·g_row.
pub fn cross_entropy_backward(
    logits: &CpuStorage,
    targets: &[i64],
    grad_rows: &CpuStorage,
    c: usize,
    ignore: i64,
) -> Result<CpuStorage> {
    Ok(super::float_map2!("cross_entropy_backward", logits, grad_rows, |x, g| ce_bwd(x, targets, g, c, ignore)))
}
