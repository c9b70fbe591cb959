//! Seeded in-place initialisers, matching PyTorch's `torch.nn.init` formulas (fan_in/fan_out included), so
//! a model ported from PyTorch starts from the same distribution. Every draw comes from an explicit
//! `Generator`: the same seed gives the same weights on every machine.
//!
//! Numbers are drawn and scaled in f64 and rounded once to the tensor's dtype, so a bf16 weight gets the
//! nearest bf16 of the intended value rather than a twice-rounded one.

use crate::{DType, Error, Generator, Result, Tensor};

fn need_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType { op, dtype: t.dtype(), detail: "initialisers fill floating-point tensors" })
    }
}

/// Overwrites `t` with `draw` (f64, same shape) converted to `t`'s dtype, recording no history.
fn fill_from(t: &Tensor, draw: Tensor) -> Result<()> {
    t.assign(&draw.to_dtype(t.dtype())?.detach())
}

/// Fills `t` with N(mean, std²) samples.
pub fn normal_(t: &Tensor, mean: f64, std: f64, gen: &mut Generator) -> Result<()> {
    need_float("normal_", t)?;
    if !(std >= 0.0 && std.is_finite() && mean.is_finite()) {
        return Err(Error::invalid("normal_", format!("needs a finite mean and std >= 0, got mean {mean}, std {std}")));
    }
    let z = Tensor::randn_with(gen, t.dims(), DType::F64, t.device())?;
    fill_from(t, z.affine(std, mean)?)
}

/// Fills `t` with U[lo, hi) samples.
pub fn uniform_(t: &Tensor, lo: f64, hi: f64, gen: &mut Generator) -> Result<()> {
    need_float("uniform_", t)?;
    if !(lo <= hi && lo.is_finite() && hi.is_finite()) {
        return Err(Error::invalid("uniform_", format!("needs finite bounds with lo <= hi, got [{lo}, {hi})")));
    }
    let u = Tensor::rand_with(gen, t.dims(), DType::F64, t.device())?;
    fill_from(t, u.affine(hi - lo, lo)?)
}

/// Fills `t` with `value`.
pub fn constant_(t: &Tensor, value: f64) -> Result<()> {
    t.assign(&Tensor::full(t.dims(), value, t.dtype(), t.device())?)
}

/// Fills `t` with zeros.
pub fn zeros_(t: &Tensor) -> Result<()> {
    constant_(t, 0.0)
}

/// Fills `t` with ones.
pub fn ones_(t: &Tensor) -> Result<()> {
    constant_(t, 1.0)
}

/// (fan_in, fan_out) as PyTorch computes them: for a weight [out, in, k...], fan_in = in·Πk and
/// fan_out = out·Πk. Tensors of fewer than two dims have no fan.
pub fn fan_in_and_fan_out(dims: &[usize]) -> Result<(usize, usize)> {
    if dims.len() < 2 {
        return Err(Error::shape(
            "fan_in_and_fan_out",
            format!("fan in and fan out need a tensor of at least 2 dims, got shape {dims:?}"),
        ));
    }
    let receptive: usize = dims[2..].iter().product();
    Ok((dims[1] * receptive, dims[0] * receptive))
}

fn positive_fan(op: &'static str, fan: usize, dims: &[usize]) -> Result<f64> {
    if fan == 0 {
        return Err(Error::shape(op, format!("cannot initialise a tensor with a zero fan, shape {dims:?}")));
    }
    Ok(fan as f64)
}

/// He uniform init in `fan_in` mode for a leaky ReLU of negative slope `a` (PyTorch's default mode and
/// non-linearity): U(-b, b) with b = sqrt(3)·gain/sqrt(fan_in), gain = sqrt(2/(1+a²)). With a = sqrt(5)
/// this is `nn.Linear`'s default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub fn kaiming_uniform_(t: &Tensor, a: f64, gen: &mut Generator) -> Result<()> {
    let (fan_in, _) = fan_in_and_fan_out(t.dims())?;
    let fan_in = positive_fan("kaiming_uniform_", fan_in, t.dims())?;
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    let bound = 3f64.sqrt() * gain / fan_in.sqrt();
    uniform_(t, -bound, bound, gen)
}

/// He normal init in `fan_in` mode for ReLU: N(0, 2/fan_in) (PyTorch's defaults, a = 0).
pub fn kaiming_normal_(t: &Tensor, gen: &mut Generator) -> Result<()> {
    let (fan_in, _) = fan_in_and_fan_out(t.dims())?;
    let fan_in = positive_fan("kaiming_normal_", fan_in, t.dims())?;
    normal_(t, 0.0, (2.0 / fan_in).sqrt(), gen)
}

fn xavier_std(op: &'static str, t: &Tensor, gain: f64) -> Result<f64> {
    let (fan_in, fan_out) = fan_in_and_fan_out(t.dims())?;
    let fans = positive_fan(op, fan_in + fan_out, t.dims())?;
    Ok(gain * (2.0 / fans).sqrt())
}

/// Glorot uniform init: U(-b, b) with b = gain·sqrt(6/(fan_in + fan_out)).
pub fn xavier_uniform_(t: &Tensor, gain: f64, gen: &mut Generator) -> Result<()> {
    let bound = 3f64.sqrt() * xavier_std("xavier_uniform_", t, gain)?;
    uniform_(t, -bound, bound, gen)
}

/// Glorot normal init: N(0, gain²·2/(fan_in + fan_out)).
pub fn xavier_normal_(t: &Tensor, gain: f64, gen: &mut Generator) -> Result<()> {
    let std = xavier_std("xavier_normal_", t, gain)?;
    normal_(t, 0.0, std, gen)
}
