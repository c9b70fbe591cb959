//! Elementwise ops: unary functions, scalar forms, broadcasting binary ops, comparisons, where.

use super::{broadcast_pair, check_same};
use crate::autograd::record;
use crate::backend::{BinaryOp, CmpOp, UnaryOp};
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    fn unary_raw(&self, op: UnaryOp) -> Result<Tensor> {
        let s = self.storage().unary(self.layout(), op)?;
        Ok(Tensor::from_storage(s, self.dims()))
    }

    /// A unary op whose gradient is `g * deriv(x, y)`.
    fn unary_with(
        &self,
        name: &'static str,
        op: UnaryOp,
        deriv: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Tensor> {
        let out = self.unary_raw(op)?;
        let (x, y) = (self.clone(), out.detach());
        Ok(record(out, name, &[self], move |g| Ok(vec![Some(g.mul(&deriv(&x, &y)?)?)])))
    }

    /// A unary op whose gradient `g * deriv(x)` is one fused kernel, `grad_op` being the derivative.
    fn unary_fused_grad(&self, name: &'static str, op: UnaryOp, grad_op: UnaryOp) -> Result<Tensor> {
        let out = self.unary_raw(op)?;
        let x = self.clone();
        Ok(record(out, name, &[self], move |g| {
            // Backward runs without recording, so no graph through the derivative is lost by fusing.
            let s = x.storage().unary_grad_mul(x.layout(), &g.storage(), g.layout(), grad_op)?;
            Ok(vec![Some(Tensor::from_storage(s, x.dims()))])
        }))
    }

    pub fn neg(&self) -> Result<Tensor> {
        let out = self.unary_raw(UnaryOp::Neg)?;
        Ok(record(out, "neg", &[self], |g| Ok(vec![Some(g.neg()?)])))
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_with("exp", UnaryOp::Exp, |_, y| Ok(y.clone()))
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary_with("log", UnaryOp::Log, |x, _| x.recip())
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_with("sqrt", UnaryOp::Sqrt, |_, y| y.recip()?.mul_scalar(0.5))
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        // d/dx x^-1/2 = -1/2 · y³
        self.unary_with("rsqrt", UnaryOp::Rsqrt, |_, y| y.mul(y)?.mul(y)?.mul_scalar(-0.5))
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_with("recip", UnaryOp::Recip, |_, y| y.mul(y)?.neg())
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_with("abs", UnaryOp::Abs, |x, _| x.unary_raw(UnaryOp::Sign))
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_with("tanh", UnaryOp::Tanh, |_, y| y.mul(y)?.neg()?.add_scalar(1.0))
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_with("sigmoid", UnaryOp::Sigmoid, |_, y| y.mul(&y.neg()?.add_scalar(1.0)?))
    }
    pub fn relu(&self) -> Result<Tensor> {
        // The derivative at 0 is taken as 0, as in PyTorch.
        self.unary_with("relu", UnaryOp::Relu, |x, _| x.gt_scalar(0.0)?.to_dtype(x.dtype()))
    }
    /// GELU with the tanh approximation (GPT-2's `gelu_new`, PyTorch's `approximate="tanh"`).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary_fused_grad("gelu", UnaryOp::GeluTanh, UnaryOp::GeluTanhGrad)
    }
    /// Exact GELU, x·Φ(x).
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary_fused_grad("gelu_erf", UnaryOp::GeluErf, UnaryOp::GeluErfGrad)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary_fused_grad("silu", UnaryOp::Silu, UnaryOp::SiluGrad)
    }
    /// x^p for a scalar exponent.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary_with("powf", UnaryOp::Powf(p), move |x, _| x.unary_raw(UnaryOp::Powf(p - 1.0))?.mul_scalar(p))
    }
    /// Limits every element to [lo, hi]; the gradient passes where lo <= x <= hi.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        if lo > hi {
            return Err(Error::invalid("clamp", format!("lower bound {lo} is above upper bound {hi}")));
        }
        self.unary_with("clamp", UnaryOp::Clamp(lo, hi), move |x, _| x.unary_raw(UnaryOp::InRange(lo, hi)))
    }
    /// x·mul + add in one pass.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        let out = self.unary_raw(UnaryOp::Affine { mul, add })?;
        Ok(record(out, "affine", &[self], move |g| Ok(vec![Some(g.mul_scalar(mul)?)])))
    }
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }
    pub fn sub_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, -v)
    }
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }
    pub fn div_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0 / v, 0.0)
    }

    fn binary_raw(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        check_same(name, self, rhs)?;
        let (shape, la, lb) = broadcast_pair(name, self, rhs)?;
        let s = self.storage().binary(&la, &rhs.storage(), &lb, op)?;
        Ok(Tensor::from_storage(s, &shape))
    }

    /// Elementwise sum, broadcasting like NumPy.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.binary_raw(rhs, BinaryOp::Add, "add")?;
        let (sa, sb) = (self.dims().to_vec(), rhs.dims().to_vec());
        Ok(record(out, "add", &[self, rhs], move |g| Ok(vec![Some(g.sum_to(&sa)?), Some(g.sum_to(&sb)?)])))
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.binary_raw(rhs, BinaryOp::Sub, "sub")?;
        let (sa, sb) = (self.dims().to_vec(), rhs.dims().to_vec());
        Ok(record(out, "sub", &[self, rhs], move |g| Ok(vec![Some(g.sum_to(&sa)?), Some(g.neg()?.sum_to(&sb)?)])))
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.binary_raw(rhs, BinaryOp::Mul, "mul")?;
        let (a, b) = (self.clone(), rhs.clone());
        Ok(record(out, "mul", &[self, rhs], move |g| {
            let ga = if a.requires_grad() { Some(g.mul(&b)?.sum_to(a.dims())?) } else { None };
            let gb = if b.requires_grad() { Some(g.mul(&a)?.sum_to(b.dims())?) } else { None };
            Ok(vec![ga, gb])
        }))
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.binary_raw(rhs, BinaryOp::Div, "div")?;
        let (a, b, y) = (self.clone(), rhs.clone(), out.detach());
        Ok(record(out, "div", &[self, rhs], move |g| {
            let ga = if a.requires_grad() { Some(g.div(&b)?.sum_to(a.dims())?) } else { None };
            let gb = if b.requires_grad() { Some(g.mul(&y)?.div(&b)?.neg()?.sum_to(b.dims())?) } else { None };
            Ok(vec![ga, gb])
        }))
    }
    /// Elementwise maximum; on ties the gradient is split evenly, as in PyTorch.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.extremum(rhs, BinaryOp::Maximum, "maximum", CmpOp::Gt)
    }
    /// Elementwise minimum; on ties the gradient is split evenly.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.extremum(rhs, BinaryOp::Minimum, "minimum", CmpOp::Lt)
    }
    fn extremum(&self, rhs: &Tensor, op: BinaryOp, name: &'static str, wins: CmpOp) -> Result<Tensor> {
        let out = self.binary_raw(rhs, op, name)?;
        let (a, b) = (self.clone(), rhs.clone());
        Ok(record(out, name, &[self, rhs], move |g| {
            let dt = g.dtype();
            let a_wins = a.compare(&b, wins)?.to_dtype(dt)?;
            let tie = a.compare(&b, CmpOp::Eq)?.to_dtype(dt)?.mul_scalar(0.5)?;
            let wa = a_wins.add(&tie)?;
            let wb = wa.neg()?.add_scalar(1.0)?;
            Ok(vec![Some(g.mul(&wa)?.sum_to(a.dims())?), Some(g.mul(&wb)?.sum_to(b.dims())?)])
        }))
    }

    /// A comparison giving a U8 mask (1 where true), broadcasting like NumPy. Not differentiable.
    pub fn compare(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        check_same("compare", self, rhs)?;
        let (shape, la, lb) = broadcast_pair("compare", self, rhs)?;
        let s = self.storage().compare(&la, &rhs.storage(), &lb, op)?;
        Ok(Tensor::from_storage(s, &shape))
    }
    fn compare_scalar(&self, v: f64, op: CmpOp) -> Result<Tensor> {
        self.compare(&Tensor::scalar(v, self.dtype(), self.device())?, op)
    }
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Eq)
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Ne)
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Lt)
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Le)
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Gt)
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Ge)
    }
    pub fn eq_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, CmpOp::Eq)
    }
    pub fn ne_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, CmpOp::Ne)
    }
    pub fn lt_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, CmpOp::Lt)
    }
    pub fn le_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, CmpOp::Le)
    }
    pub fn gt_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, CmpOp::Gt)
    }
    pub fn ge_scalar(&self, v: f64) -> Result<Tensor> {
        self.compare_scalar(v, CmpOp::Ge)
    }

    /// `mask ? on_true : on_false` elementwise, all three broadcast together. `mask` is a U8 tensor.
    pub fn where_cond(mask: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        const OP: &str = "where";
        check_same(OP, on_true, on_false)?;
        if mask.dtype() != DType::U8 {
            return Err(Error::DType { op: OP, expected: DType::U8, got: mask.dtype() });
        }
        if mask.device() != on_true.device() {
            return Err(Error::Device { op: OP, a: mask.device(), b: on_true.device() });
        }
        let shape = crate::shape::broadcast_shapes(OP, mask.dims(), on_true.dims())?;
        let shape = crate::shape::broadcast_shapes(OP, &shape, on_false.dims())?;
        let (lm, la, lb) = (
            mask.layout().broadcast_to(&shape),
            on_true.layout().broadcast_to(&shape),
            on_false.layout().broadcast_to(&shape),
        );
        let s = mask.storage().where_cond(&lm, &on_true.storage(), &la, &on_false.storage(), &lb)?;
        let out = Tensor::from_storage(s, &shape);
        let (m, sa, sb) = (mask.clone(), on_true.dims().to_vec(), on_false.dims().to_vec());
        Ok(record(out, OP, &[on_true, on_false], move |g| {
            let z = g.zeros_like()?;
            Ok(vec![
                Some(Tensor::where_cond(&m, g, &z)?.sum_to(&sa)?),
                Some(Tensor::where_cond(&m, &z, g)?.sum_to(&sb)?),
            ])
        }))
    }
    /// Replaces elements where `mask` is 1 with `value` (attention masking: value = -inf).
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let fill = Tensor::scalar(value, self.dtype(), self.device())?;
        let out = Tensor::where_cond(mask, &fill, self)?;
        if out.dims() != self.dims() {
            return Err(Error::shape(
                "masked_fill",
                format!("mask {:?} does not broadcast to {:?}", mask.dims(), self.dims()),
            ));
        }
        Ok(out)
    }

    /// Converts to another dtype; the gradient is converted back.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let s = self.storage().cast(self.layout(), dtype)?;
        let out = Tensor::from_storage(s, self.dims());
        if !dtype.is_float() || !self.dtype().is_float() {
            return Ok(out);
        }
        let src = self.dtype();
        Ok(record(out, "to_dtype", &[self], move |g| Ok(vec![Some(g.to_dtype(src)?)])))
    }
}
