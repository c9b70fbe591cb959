//! Elementwise kernels: unary maps, broadcasting binary maps, comparisons and `where`.

use super::{any_map2, fill_vec, float_map, float_map2, simd, CpuStorage, RowPlan, PAR_THRESHOLD};
use crate::backend::{BinaryOp, CmpOp, UnaryOp};
use crate::dtype::{Element, Real};
use crate::shape::Layout;
use crate::{Error, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp_fast())
}

#[inline(always)]
fn gelu_tanh_grad<T: Real>(x: T) -> T {
    let c = |v: f64| T::from_f64(v);
    let (k0, k1, k3, half) = (c(SQRT_2_OVER_PI), c(GELU_C), c(3.0 * GELU_C), c(0.5));
    let t = (k0 * (x + k1 * x * x * x)).tanh_fast();
    let dinner = k0 * (T::ONE + k3 * x * x);
    half * (T::ONE + t) + half * x * (T::ONE - t * t) * dinner
}

#[inline(always)]
fn gelu_erf_grad<T: Real>(x: T) -> T {
    let c = |v: f64| T::from_f64(v);
    let (half, inv_sqrt2, inv_sqrt2pi) = (c(0.5), c(INV_SQRT_2), c(INV_SQRT_2PI));
    half * (T::ONE + (x * inv_sqrt2).erf()) + x * inv_sqrt2pi * (-half * x * x).exp()
}

#[inline(always)]
fn silu_grad<T: Real>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::ONE + x * (T::ONE - s))
}

/// Runs a unary op over a view. The op is matched once, outside the loop, so each arm's loop is a
/// separate monomorphised kernel with no per-element branch and can vectorise.
fn unary_typed<T: Real>(v: &[T], l: &Layout, op: UnaryOp) -> Vec<T> {
    let c = |x: f64| T::from_f64(x);
    let (k0, k1) = (c(SQRT_2_OVER_PI), c(GELU_C));
    let (half, inv_sqrt2) = (c(0.5), c(INV_SQRT_2));
    match op {
        UnaryOp::Neg => map1(v, l, |x: T| -x),
        UnaryOp::Exp => map1(v, l, |x: T| x.exp_fast()),
        UnaryOp::Log => map1(v, l, |x: T| x.ln()),
        UnaryOp::Sqrt => map1(v, l, |x: T| x.sqrt()),
        UnaryOp::Rsqrt => map1(v, l, |x: T| T::ONE / x.sqrt()),
        UnaryOp::Recip => map1(v, l, |x: T| T::ONE / x),
        UnaryOp::Abs => map1(v, l, |x: T| x.abs()),
        UnaryOp::Sign => map1(v, l, |x: T| {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                -T::ONE
            } else {
                T::ZERO
            }
        }),
        UnaryOp::Tanh => map1(v, l, |x: T| x.tanh_fast()),
        UnaryOp::Sigmoid => map1(v, l, sigmoid),
        UnaryOp::Relu => map1(v, l, |x: T| if x > T::ZERO { x } else { T::ZERO }),
        UnaryOp::GeluTanh => map1(v, l, move |x: T| {
            let inner = k0 * (x + k1 * x * x * x);
            half * x * (T::ONE + inner.tanh_fast())
        }),
        UnaryOp::GeluErf => map1(v, l, move |x: T| half * x * (T::ONE + (x * inv_sqrt2).erf())),
        UnaryOp::Silu => map1(v, l, |x: T| x * sigmoid(x)),
        UnaryOp::GeluTanhGrad => map1(v, l, gelu_tanh_grad),
        UnaryOp::GeluErfGrad => map1(v, l, gelu_erf_grad),
        UnaryOp::SiluGrad => map1(v, l, silu_grad),
        UnaryOp::Powf(p) => {
            let p = c(p);
            map1(v, l, move |x: T| x.powf(p))
        }
        UnaryOp::Clamp(lo, hi) => {
            let (lo, hi) = (c(lo), c(hi));
            map1(v, l, move |x: T| x.max(lo).min(hi))
        }
        UnaryOp::InRange(lo, hi) => {
            let (lo, hi) = (c(lo), c(hi));
            map1(v, l, move |x: T| if x >= lo && x <= hi { T::ONE } else { T::ZERO })
        }
        UnaryOp::Affine { mul, add } => {
            let (m, a) = (c(mul), c(add));
            map1(v, l, move |x: T| x * m + a)
        }
    }
}

/// The op's user-facing name, so a dtype error says `exp`, not the kernel family.
fn unary_name(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "neg",
        UnaryOp::Exp => "exp",
        UnaryOp::Log => "log",
        UnaryOp::Sqrt => "sqrt",
        UnaryOp::Rsqrt => "rsqrt",
        UnaryOp::Recip => "recip",
        UnaryOp::Abs => "abs",
        UnaryOp::Sign => "sign",
        UnaryOp::Tanh => "tanh",
        UnaryOp::Sigmoid => "sigmoid",
        UnaryOp::Relu => "relu",
        UnaryOp::GeluTanh | UnaryOp::GeluTanhGrad => "gelu",
        UnaryOp::GeluErf | UnaryOp::GeluErfGrad => "gelu_erf",
        UnaryOp::Silu | UnaryOp::SiluGrad => "silu",
        UnaryOp::Powf(_) => "powf",
        UnaryOp::Clamp(..) | UnaryOp::InRange(..) => "clamp",
        UnaryOp::Affine { .. } => "affine",
    }
}

fn binary_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Maximum => "maximum",
        BinaryOp::Minimum => "minimum",
    }
}

/// `dst[i] = f(src[i])`, compiled for AVX-512 where the CPU has it (the portable build assumes SSE2).
#[inline(always)]
fn apply1<T: Copy, F: Fn(T) -> T>(src: &[T], dst: &mut [MaybeUninit<T>], f: F) {
    for (d, &x) in dst.iter_mut().zip(src) {
        d.write(f(x));
    }
}

fn apply1_dispatch<T: Copy, F: Fn(T) -> T>(src: &[T], dst: &mut [MaybeUninit<T>], f: F) {
    simd(
        #[inline(always)]
        || apply1(src, dst, f),
    )
}

fn map1<T: Real>(v: &[T], layout: &Layout, f: impl Fn(T) -> T + Sync + Copy) -> Vec<T> {
    if let Some(r) = layout.contiguous_range() {
        let src = &v[r];
        return fill_vec(src.len(), |out| {
            if src.len() >= PAR_THRESHOLD {
                out.par_chunks_mut(8192).zip(src.par_chunks(8192)).for_each(|(d, s)| apply1_dispatch(s, d, f));
            } else {
                apply1_dispatch(src, out, f);
            }
        });
    }
    let plan = RowPlan::new([layout]);
    let s = plan.inner_strides[0];
    fill_vec(layout.numel(), |out| {
        plan.for_each_out(out, |[o], row| {
            if s == 1 {
                apply1_dispatch(&v[o..o + row.len()], row, f);
            } else {
                for (j, y) in row.iter_mut().enumerate() {
                    y.write(f(v[o + j * s]));
                }
            }
        })
    })
}

/// A unary op over a strided view, giving a contiguous result.
pub fn unary(s: &CpuStorage, layout: &Layout, op: UnaryOp) -> Result<CpuStorage> {
    Ok(float_map!(unary_name(op), s, |v| unary_typed(v, layout, op)))
}

/// `g · d(x)` where `d` is the derivative kernel `op` (GeluTanhGrad, GeluErfGrad, SiluGrad): one pass
/// and one output instead of a derivative tensor and then a product (the GELU backward of a GPT block).
/// Other ops take those two passes. Both layouts have the same shape; the result is contiguous.
pub fn unary_grad_mul(x: &CpuStorage, lx: &Layout, g: &CpuStorage, lg: &Layout, op: UnaryOp) -> Result<CpuStorage> {
    fn go<T: Real>(x: &[T], lx: &Layout, g: &[T], lg: &Layout, op: UnaryOp) -> Vec<T> {
        match op {
            UnaryOp::GeluTanhGrad => map2(x, lx, g, lg, |x: T, g: T| g * gelu_tanh_grad(x)),
            UnaryOp::GeluErfGrad => map2(x, lx, g, lg, |x: T, g: T| g * gelu_erf_grad(x)),
            UnaryOp::SiluGrad => map2(x, lx, g, lg, |x: T, g: T| g * silu_grad(x)),
            _ => {
                let d = unary_typed(x, lx, op);
                map2(g, lg, &d, &Layout::contiguous(lx.shape()), |g: T, d: T| g * d)
            }
        }
    }
    if matches!(x, CpuStorage::BF16(_) | CpuStorage::F16(_)) {
        // Half types keep the two roundings of the unfused path (derivative, then product): fusing them
        // moved the bf16 tiny-GPT run of tests/suite/mixed_precision.rs from a 0.014 loss gap to f32 to
        // 0.14 (Adam's first steps follow the gradient's sign, so near-zero gradients amplify rounding).
        let d = unary(x, lx, op)?;
        return binary(g, lg, &d, &Layout::contiguous(lx.shape()), BinaryOp::Mul);
    }
    Ok(float_map2!(unary_name(op), x, g, |a, b| go(a, lx, b, lg, op)))
}

/// Applies `f` to two views of one shape, writing a contiguous result.
pub fn map2<A: Copy + Sync, R: Copy + Send>(
    a: &[A],
    la: &Layout,
    b: &[A],
    lb: &Layout,
    f: impl Fn(A, A) -> R + Sync + Copy,
) -> Vec<R> {
    let plan = RowPlan::new([la, lb]);
    let [sa, sb] = plan.inner_strides;
    fill_vec(la.numel(), |out| {
        plan.for_each_out(out, |[oa, ob], row| {
            let n = row.len();
            // Specialised inner loops let the compiler vectorise the common contiguous and scalar cases.
            simd(
                #[inline(always)]
                || match (sa, sb) {
                    (1, 1) => {
                        for ((y, &x), &z) in row.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                            y.write(f(x, z));
                        }
                    }
                    (1, 0) => {
                        let z = b[ob];
                        for (y, &x) in row.iter_mut().zip(&a[oa..oa + n]) {
                            y.write(f(x, z));
                        }
                    }
                    (0, 1) => {
                        let x = a[oa];
                        for (y, &z) in row.iter_mut().zip(&b[ob..ob + n]) {
                            y.write(f(x, z));
                        }
                    }
                    _ => {
                        for (j, y) in row.iter_mut().enumerate() {
                            y.write(f(a[oa + j * sa], b[ob + j * sb]));
                        }
                    }
                },
            )
        })
    })
}

fn binary_typed<T: Real>(a: &[T], la: &Layout, b: &[T], lb: &Layout, op: BinaryOp) -> Vec<T> {
    // Matched once, outside the loops (see `unary_typed`).
    match op {
        BinaryOp::Add => map2(a, la, b, lb, |x: T, y: T| x + y),
        BinaryOp::Sub => map2(a, la, b, lb, |x: T, y: T| x - y),
        BinaryOp::Mul => map2(a, la, b, lb, |x: T, y: T| x * y),
        BinaryOp::Div => map2(a, la, b, lb, |x: T, y: T| x / y),
        // NaN propagates, as in PyTorch.
        BinaryOp::Maximum => map2(a, la, b, lb, |x: T, y: T| if x.is_nan() || x > y { x } else { y }),
        BinaryOp::Minimum => map2(a, la, b, lb, |x: T, y: T| if x.is_nan() || x < y { x } else { y }),
    }
}

/// A binary op; both layouts are already broadcast to the output shape.
pub fn binary(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout, op: BinaryOp) -> Result<CpuStorage> {
    if let (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul, CpuStorage::I64(x), CpuStorage::I64(y)) = (op, a, b) {
        let f = move |p: i64, q: i64| match op {
            BinaryOp::Add => p.wrapping_add(q),
            BinaryOp::Sub => p.wrapping_sub(q),
            _ => p.wrapping_mul(q),
        };
        return Ok(CpuStorage::I64(map2(x, la, y, lb, f)));
    }
    Ok(float_map2!(binary_name(op), a, b, |x, y| binary_typed(x, la, y, lb, op)))
}

/// A comparison giving a U8 mask (1 where true).
pub fn compare(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout, op: CmpOp) -> Result<CpuStorage> {
    fn go<T: Element + PartialOrd>(x: &[T], la: &Layout, y: &[T], lb: &Layout, op: CmpOp) -> Vec<u8> {
        map2(x, la, y, lb, move |p: T, q: T| {
            let r = match op {
                CmpOp::Eq => p == q,
                CmpOp::Ne => p != q,
                CmpOp::Lt => p < q,
                CmpOp::Le => p <= q,
                CmpOp::Gt => p > q,
                CmpOp::Ge => p >= q,
            };
            r as u8
        })
    }
    let out = match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => go(x, la, y, lb, op),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => go(x, la, y, lb, op),
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => go(x, la, y, lb, op),
        (CpuStorage::F16(x), CpuStorage::F16(y)) => go(x, la, y, lb, op),
        (CpuStorage::I64(x), CpuStorage::I64(y)) => go(x, la, y, lb, op),
        (CpuStorage::U8(x), CpuStorage::U8(y)) => go(x, la, y, lb, op),
        (x, y) => return Err(Error::DType { op: "compare", expected: x.dtype(), got: y.dtype() }),
    };
    Ok(CpuStorage::U8(out))
}

/// `mask ? a : b` elementwise; all three layouts are broadcast to the output shape.
pub fn where_cond(
    mask: &CpuStorage,
    lm: &Layout,
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
) -> Result<CpuStorage> {
    let CpuStorage::U8(m) = mask else {
        return Err(Error::DType { op: "where", expected: crate::DType::U8, got: mask.dtype() });
    };
    fn go<T: Copy + Send + Sync + Default>(
        m: &[u8],
        lm: &Layout,
        a: &[T],
        la: &Layout,
        b: &[T],
        lb: &Layout,
    ) -> Vec<T> {
        let plan = RowPlan::new([lm, la, lb]);
        let [sm, sa, sb] = plan.inner_strides;
        fill_vec(lm.numel(), |out| {
            plan.for_each_out(out, |[om, oa, ob], row| {
                let n = row.len();
                // masked_fill is a contiguous mask with a scalar on one side; slices rather than strided
                // indexing let that case (and the all-contiguous one) vectorise as a select.
                simd(
                    #[inline(always)]
                    || match (sm, sa, sb) {
                        (1, 0, 1) => {
                            let x = a[oa];
                            for ((y, &mv), &z) in row.iter_mut().zip(&m[om..om + n]).zip(&b[ob..ob + n]) {
                                y.write(if mv != 0 { x } else { z });
                            }
                        }
                        (1, 1, 0) => {
                            let z = b[ob];
                            for ((y, &mv), &x) in row.iter_mut().zip(&m[om..om + n]).zip(&a[oa..oa + n]) {
                                y.write(if mv != 0 { x } else { z });
                            }
                        }
                        (1, 1, 1) => {
                            let it = row.iter_mut().zip(&m[om..om + n]).zip(&a[oa..oa + n]).zip(&b[ob..ob + n]);
                            for (((y, &mv), &x), &z) in it {
                                y.write(if mv != 0 { x } else { z });
                            }
                        }
                        _ => {
                            for (j, y) in row.iter_mut().enumerate() {
                                y.write(if m[om + j * sm] != 0 { a[oa + j * sa] } else { b[ob + j * sb] });
                            }
                        }
                    },
                )
            })
        })
    }
    Ok(any_map2!("where", a, b, |x, y| go(m, lm, x, la, y, lb)))
}
