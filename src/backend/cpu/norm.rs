//! Row-wise fused kernels: layer norm and RMS norm (forward and backward) and cross-entropy from logits.
//! Statistics are kept in the compute type (f32, or f64 for f64 tensors) so bf16 models keep precise
//! normalisation and the backward pass reuses them instead of recomputing.

use super::softmax::{exp_masked, lane_sum, row_max};
use super::{fill_vec, simd, CpuStorage, PAR_THRESHOLD};
use crate::dtype::Real;
use crate::{DType, Error, Result};
use rayon::prelude::*;
use std::borrow::Cow;
use std::mem::MaybeUninit;

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
    let mut mean = vec![T::ZERO; rows];
    let mut rstd = vec![T::ZERO; rows];
    if n == 0 {
        return (vec![], mean, rstd);
    }
    // Two passes over the row (mean, then squared deviations: no cancellation), each in independent lanes
    // so they vectorise; the row stays in L1 between passes.
    let inv_n = T::from_f64(1.0 / n as f64);
    let eps = T::from_f64(eps);
    let f = |((yr, xr), (m, r)): ((&mut [MaybeUninit<T>], &[T]), (&mut T, &mut T))| {
        simd(
            #[inline(always)]
            || {
                let mu = if rms { T::ZERO } else { lane_sum([xr], |[v]| v) * inv_n };
                let var = lane_sum([xr], |[v]| (v - mu) * (v - mu)) * inv_n;
                let rs = T::ONE / (var + eps).sqrt();
                *m = mu;
                *r = rs;
                match (w, b) {
                    (Some(w), Some(b)) => {
                        for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                            o.write((v - mu) * rs * wv + bv);
                        }
                    }
                    (Some(w), None) => {
                        for ((o, &v), &wv) in yr.iter_mut().zip(xr).zip(w) {
                            o.write((v - mu) * rs * wv);
                        }
                    }
                    (None, Some(b)) => {
                        for ((o, &v), &bv) in yr.iter_mut().zip(xr).zip(b) {
                            o.write((v - mu) * rs + bv);
                        }
                    }
                    (None, None) => {
                        for (o, &v) in yr.iter_mut().zip(xr) {
                            o.write((v - mu) * rs);
                        }
                    }
                }
            },
        )
    };
    let y = fill_vec(x.len(), |y| {
        if x.len() >= PAR_THRESHOLD {
            // Blocks of rows per task: rows of a few hundred elements are too short to schedule one by one.
            let rb = (4096 / n).max(1);
            y.par_chunks_mut(rb * n)
                .zip(x.par_chunks(rb * n))
                .zip(mean.par_chunks_mut(rb).zip(rstd.par_chunks_mut(rb)))
                .for_each(|((yb, xb), (mb, rsb))| {
                    yb.chunks_mut(n).zip(xb.chunks(n)).zip(mb.iter_mut().zip(rsb.iter_mut())).for_each(f)
                });
        } else {
            y.chunks_mut(n).zip(x.chunks(n)).zip(mean.iter_mut().zip(rstd.iter_mut())).for_each(f);
        }
    });
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
    if n == 0 {
        return (vec![T::ZERO; x.len()], vec![], vec![]);
    }
    let inv_n = T::from_f64(1.0 / n as f64);
    // Weight and bias gradients are column sums over rows. They accumulate in the compute type for up to
    // FLUSH rows (short vectorised runs), then into f64, so long batches keep full precision.
    const FLUSH: usize = 16;
    // Each task handles a block of rows and returns its partial sums for the weight and bias gradients.
    let block = |(bi, gxb): (usize, &mut [MaybeUninit<T>])| -> (Vec<f64>, Vec<f64>) {
        simd(
            #[inline(always)]
            || {
                let rows = gxb.len() / n;
                let (mut gw, mut gb) = (vec![0f64; n], vec![0f64; n]);
                let (mut pw, mut pb) = (vec![T::ZERO; n], vec![T::ZERO; n]);
                for r in 0..rows {
                    let row = bi + r;
                    let (xr, gr) = (&x[row * n..(row + 1) * n], &g[row * n..(row + 1) * n]);
                    let (mu, rs) = (mean[row], rstd[row]);
                    let out = &mut gxb[r * n..(r + 1) * n];
                    // d = g·w (or g): the gradient reaching the normalised value h.
                    let (sum_d, sum_dh) = match w {
                        Some(w) => (
                            if rms { T::ZERO } else { lane_sum([gr, w], |[g, w]| g * w) },
                            lane_sum([gr, w, xr], |[g, w, x]| g * w * ((x - mu) * rs)),
                        ),
                        None => (
                            if rms { T::ZERO } else { lane_sum([gr], |[g]| g) },
                            lane_sum([gr, xr], |[g, x]| g * ((x - mu) * rs)),
                        ),
                    };
                    for (((pw, pb), &xv), &gv) in pw.iter_mut().zip(pb.iter_mut()).zip(xr).zip(gr) {
                        *pw += gv * ((xv - mu) * rs);
                        *pb += gv;
                    }
                    let mean_d = sum_d * inv_n;
                    let mean_dh = sum_dh * inv_n;
                    match w {
                        Some(w) => {
                            for (((o, &xv), &gv), &wv) in out.iter_mut().zip(xr).zip(gr).zip(w) {
                                o.write(rs * (gv * wv - mean_d - (xv - mu) * rs * mean_dh));
                            }
                        }
                        None => {
                            for ((o, &xv), &gv) in out.iter_mut().zip(xr).zip(gr) {
                                o.write(rs * (gv - mean_d - (xv - mu) * rs * mean_dh));
                            }
                        }
                    }
                    if (r + 1) % FLUSH == 0 || r + 1 == rows {
                        for (((a, b), p), q) in gw.iter_mut().zip(gb.iter_mut()).zip(pw.iter_mut()).zip(pb.iter_mut()) {
                            *a += p.to_f64();
                            *b += q.to_f64();
                            *p = T::ZERO;
                            *q = T::ZERO;
                        }
                    }
                }
                (gw, gb)
            },
        )
    };
    let add = |(mut a, mut b): (Vec<f64>, Vec<f64>), (c, d): (Vec<f64>, Vec<f64>)| {
        a.iter_mut().zip(c).for_each(|(x, y)| *x += y);
        b.iter_mut().zip(d).for_each(|(x, y)| *x += y);
        (a, b)
    };
    let rows_per_block = (PAR_THRESHOLD / 4 / n).max(1);
    let mut sums = (vec![], vec![]);
    let gx = fill_vec(x.len(), |gx| {
        sums = if x.len() >= PAR_THRESHOLD {
            gx.par_chunks_mut(rows_per_block * n)
                .enumerate()
                .map(|(i, c)| block((i * rows_per_block, c)))
                .reduce(|| (vec![0f64; n], vec![0f64; n]), add)
        } else {
            block((0, gx))
        };
    });
    (gx, sums.0, sums.1)
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

/// Per-row loss and the row's (max, sum of exp(x − max)) pair, which the backward reuses instead of
/// reading the row a second time.
fn ce_fwd<T: Real>(x: &[T], t: &[i64], c: usize, ignore: i64) -> (Vec<T>, Vec<T>) {
    let f = |(row, &tv): (&[T], &i64)| {
        if tv == ignore {
            return (T::ZERO, [T::ZERO, T::ONE]);
        }
        simd(
            #[inline(always)]
            || {
                let max = row_max(row);
                let sum = lane_sum([row], |[v]| exp_masked(v - max));
                (sum.ln() + max - row[tv as usize], [max, sum])
            },
        )
    };
    let rows: Vec<(T, [T; 2])> = if x.len() >= PAR_THRESHOLD {
        x.par_chunks(c).zip(t.par_iter()).map(f).collect()
    } else {
        x.chunks(c).zip(t.iter()).map(f).collect()
    };
    (rows.iter().map(|r| r.0).collect(), rows.iter().flat_map(|r| r.1).collect())
}

/// Per-row cross-entropy −log softmax(x)[t] of contiguous logits [N, C]; rows whose target is `ignore`
/// give 0. A target outside 0..C is an error naming it. Also returns the statistics the backward needs:
/// [N, 2] (row max, sum of exp(x − max)) in f32 (f64 for f64 logits).
pub fn cross_entropy_forward(
    logits: &CpuStorage,
    targets: &[i64],
    c: usize,
    ignore: i64,
) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "cross_entropy";
    check_targets(targets, c, ignore)?;
    let dt = logits.dtype();
    Ok(match wide(OP, logits)? {
        Wide::F32(x) => {
            let (loss, stats) = ce_fwd(&x, targets, c, ignore);
            (CpuStorage::from_f32s(dt, loss), CpuStorage::F32(stats))
        }
        Wide::F64(x) => {
            let (loss, stats) = ce_fwd(x, targets, c, ignore);
            (CpuStorage::F64(loss), CpuStorage::F64(stats))
        }
    })
}

#[allow(clippy::type_complexity)]
fn ce_bwd<T: Real>(x: &[T], t: &[i64], stats: &[T], gr: &[T], c: usize, ignore: i64) -> Vec<T> {
    let f = |((o, row), ((&tv, &g), st)): ((&mut [MaybeUninit<T>], &[T]), ((&i64, &T), &[T]))| {
        if tv == ignore {
            o.iter_mut().for_each(|v| {
                v.write(T::ZERO);
            });
            return;
        }
        let (max, scale) = (st[0], g / st[1]);
        simd(
            #[inline(always)]
            || {
                for (oj, &v) in o.iter_mut().zip(row) {
                    oj.write(exp_masked(v - max) * scale);
                }
            },
        );
        // SAFETY: the loop above wrote the whole row.
        let at = unsafe { o[tv as usize].assume_init() };
        o[tv as usize].write(at - g);
    };
    fill_vec(x.len(), |out| {
        if x.len() >= PAR_THRESHOLD {
            out.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .zip(t.par_iter().zip(gr.par_iter()).zip(stats.par_chunks(2)))
                .for_each(f);
        } else {
            out.chunks_mut(c).zip(x.chunks(c)).zip(t.iter().zip(gr.iter()).zip(stats.chunks(2))).for_each(f);
        }
    })
}

/// Gradient of the per-row cross-entropy with respect to the logits: (softmax − onehot)·g_row, from the
/// forward's statistics (one pass over the logits).
pub fn cross_entropy_backward(
    logits: &CpuStorage,
    targets: &[i64],
    stats: &CpuStorage,
    grad_rows: &CpuStorage,
    c: usize,
    ignore: i64,
) -> Result<CpuStorage> {
    const OP: &str = "cross_entropy_backward";
    let dt = logits.dtype();
    crate::backend::check_ce_backward(targets.len(), c, logits.len(), grad_rows.len(), stats.len())?;
    Ok(match (wide(OP, logits)?, wide(OP, grad_rows)?, stats) {
        (Wide::F32(x), Wide::F32(g), CpuStorage::F32(st)) => {
            CpuStorage::from_f32s(dt, ce_bwd(&x, targets, st, &g, c, ignore))
        }
        (Wide::F64(x), Wide::F64(g), CpuStorage::F64(st)) => CpuStorage::F64(ce_bwd(x, targets, st, g, c, ignore)),
        _ => return Err(Error::DType { op: OP, expected: stats.dtype(), got: grad_rows.dtype() }),
    })
}
