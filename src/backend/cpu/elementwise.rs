//! Elementwise kernels: unary maps, broadcasting binary maps, comparisons and `where`.

use super::{any_map2, float_map, float_map2, CpuStorage, RowPlan, PAR_THRESHOLD};
use crate::backend::{BinaryOp, CmpOp, UnaryOp};
use crate::dtype::{Element, Real};
use crate::shape::Layout;
use crate::{Error, Result};
use rayon::prelude::*;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[inline]
fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// The scalar function of a unary op, in the compute type T.
#[inline]
fn unary_fn<T: Real>(op: UnaryOp) -> impl Fn(T) -> T + Sync + Copy {
    let c = |v: f64| T::from_f64(v);
    move |x: T| match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => T::ONE / x.sqrt(),
        UnaryOp::Recip => T::ONE / x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                -T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Relu => {
            if x > T::ZERO {
                x
            } else {
                T::ZERO
            }
        }
        UnaryOp::GeluTanh => {
            let inner = c(SQRT_2_OVER_PI) * (x + c(GELU_C) * x * x * x);
            c(0.5) * x * (T::ONE + inner.tanh())
        }
        UnaryOp::GeluErf => c(0.5) * x * (T::ONE + (x * c(INV_SQRT_2)).erf()),
        UnaryOp::Silu => x * sigmoid(x),
        UnaryOp::GeluTanhGrad => {
            let inner = c(SQRT_2_OVER_PI) * (x + c(GELU_C) * x * x * x);
            let t = inner.tanh();
            let dinner = c(SQRT_2_OVER_PI) * (T::ONE + c(3.0 * GELU_C) * x * x);
            c(0.5) * (T::ONE + t) + c(0.5) * x * (T::ONE - t * t) * dinner
        }
        UnaryOp::GeluErfGrad => {
            c(0.5) * (T::ONE + (x * c(INV_SQRT_2)).erf()) + x * c(INV_SQRT_2PI) * (c(-0.5) * x * x).exp()
        }
        UnaryOp::SiluGrad => {
            let s = sigmoid(x);
            s * (T::ONE + x * (T::ONE - s))
        }
        UnaryOp::Powf(p) => x.powf(c(p)),
        UnaryOp::Clamp(lo, hi) => x.max(c(lo)).min(c(hi)),
        UnaryOp::InRange(lo, hi) => {
            if x >= c(lo) && x <= c(hi) {
                T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Affine { mul, add } => x * c(mul) + c(add),
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

fn map1<T: Real>(v: &[T], layout: &Layout, f: impl Fn(T) -> T + Sync + Copy) -> Vec<T> {
    if let Some(r) = layout.contiguous_range() {
        let src = &v[r];
        return if src.len() >= PAR_THRESHOLD {
            src.par_iter().with_min_len(4096).map(|&x| f(x)).collect()
        } else {
            src.iter().map(|&x| f(x)).collect()
        };
    }
    let plan = RowPlan::new([layout]);
    let mut out = vec![T::ZERO; layout.numel()];
    let s = plan.inner_strides[0];
    plan.for_each_out(&mut out, |[o], row| {
        for (j, y) in row.iter_mut().enumerate() {
            *y = f(v[o + j * s]);
        }
    });
    out
}

/// A unary op over a strided view, giving a contiguous result.
pub fn unary(s: &CpuStorage, layout: &Layout, op: UnaryOp) -> Result<CpuStorage> {
    Ok(float_map!(unary_name(op), s, |v| map1(v, layout, unary_fn(op))))
}

/// Applies `f` to two views of one shape, writing a contiguous result.
pub fn map2<A: Copy + Sync, R: Copy + Send + Default>(
    a: &[A],
    la: &Layout,
    b: &[A],
    lb: &Layout,
    f: impl Fn(A, A) -> R + Sync + Copy,
) -> Vec<R> {
    let plan = RowPlan::new([la, lb]);
    let mut out = vec![R::default(); la.numel()];
    let [sa, sb] = plan.inner_strides;
    plan.for_each_out(&mut out, |[oa, ob], row| {
        let n = row.len();
        // Specialised inner loops let the compiler vectorise the common contiguous and scalar cases.
        match (sa, sb) {
            (1, 1) => {
                for ((y, &x), &z) in row.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                    *y = f(x, z);
                }
            }
            (1, 0) => {
                let z = b[ob];
                for (y, &x) in row.iter_mut().zip(&a[oa..oa + n]) {
                    *y = f(x, z);
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (y, &z) in row.iter_mut().zip(&b[ob..ob + n]) {
                    *y = f(x, z);
                }
            }
            _ => {
                for (j, y) in row.iter_mut().enumerate() {
                    *y = f(a[oa + j * sa], b[ob + j * sb]);
                }
            }
        }
    });
    out
}

fn binary_fn<T: Real>(op: BinaryOp) -> impl Fn(T, T) -> T + Sync + Copy {
    move |x: T, y: T| match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        // NaN propagates, as in PyTorch.
        BinaryOp::Maximum => {
            if x.is_nan() || x > y {
                x
            } else {
                y
            }
        }
        BinaryOp::Minimum => {
            if x.is_nan() || x < y {
                x
            } else {
                y
            }
        }
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
    Ok(float_map2!(binary_name(op), a, b, |x, y| map2(x, la, y, lb, binary_fn(op))))
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
        let mut out = vec![T::default(); lm.numel()];
        let [sm, sa, sb] = plan.inner_strides;
        plan.for_each_out(&mut out, |[om, oa, ob], row| {
            for (j, y) in row.iter_mut().enumerate() {
                *y = if m[om + j * sm] != 0 { a[oa + j * sa] } else { b[ob + j * sb] };
            }
        });
        out
    }
    Ok(any_map2!("where", a, b, |x, y| go(m, lm, x, la, y, lb)))
}
