//! Gradient clipping by global norm.

use crate::autograd::NoGradGuard;
use crate::backend::Storage;
use crate::{DType, Error, Result, Tensor};
use std::collections::HashSet;

/// Scales every gradient by max_norm/(norm + 1e-6) where that factor is below 1, norm being the L2 norm
/// over all of them together, and returns that norm (before clipping), as
/// `torch.nn.utils.clip_grad_norm_`. The norm is computed on the gradients' device (see `squared_total`),
/// squares in f32 or f64 and sums in f64. Parameters without a gradient are skipped, and one listed twice
/// counts once. Returning the norm waits for the device; `clip_grad_norm_deferred` does not.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64> {
    match clip_grad_norm_deferred(params, max_norm)? {
        Some(norm) => norm.item(),
        None => Ok(0.0),
    }
}

/// `clip_grad_norm` without waiting for the device: the norm stays where the gradients are, as a
/// one-element f64 tensor (None when no parameter has a gradient), and on a GPU the scaling factor is
/// derived there too, so the host goes on enqueueing the optimizer step while the GPU still runs the
/// backward. Reading the norm (`item`) waits; a training loop that logs it now and then keeps the GPU fed.
/// Each gradient is replaced by a new tensor (scaled, or a copy), never scaled in place: a gradient may
/// share its buffer with a tensor the caller holds.
pub fn clip_grad_norm_deferred(params: &[Tensor], max_norm: f64) -> Result<Option<Tensor>> {
    check_max_norm("clip_grad_norm", max_norm)?;
    let _ng = NoGradGuard::new();
    let mut seen = HashSet::new();
    let grads: Vec<(&Tensor, Tensor)> =
        params.iter().filter(|p| seen.insert(p.id())).filter_map(|p| p.grad().map(|g| (p, g))).collect();
    let owned: Vec<Tensor> = grads.iter().map(|(_, g)| g.clone()).collect();
    let Some(total) = squared_total(&owned)? else { return Ok(None) };
    if owned.iter().all(|g| g.device() == total.device()) {
        let runs = owned.iter().map(|g| g.contiguous()).collect::<Result<Vec<_>>>()?;
        let guards: Vec<_> = runs.iter().map(|g| g.storage()).collect();
        let parts: Vec<_> = runs.iter().zip(&guards).map(|(g, s)| (&**s, g.layout().offset(), g.numel())).collect();
        let scaled = Storage::clip_scale(&parts, &total.storage(), max_norm)?;
        for ((p, g), s) in grads.iter().zip(scaled) {
            p.set_grad(Some(Tensor::from_storage(s, g.dims())))?;
        }
    } else {
        // Gradients spread over devices: the host derives the factor from the norm.
        if let Some(coef) = clip_coefficient(total.sqrt()?.item()?, max_norm) {
            for (p, g) in &grads {
                p.set_grad(Some(g.mul_scalar(coef)?))?;
            }
        }
    }
    Ok(Some(total.sqrt()?))
}

/// Σ g² over all of `grads` as a one-element f64 tensor (None when there are none). Gradients on one
/// device are summed by one fused reduction (on a GPU, a launch per 32 gradients instead of five per
/// gradient); gradients spread over devices are summed one by one on the first one's device, so only the
/// final scalar is read back either way.
pub(crate) fn squared_total(grads: &[Tensor]) -> Result<Option<Tensor>> {
    let Some(first) = grads.first() else { return Ok(None) };
    if grads.iter().all(|g| g.device() == first.device()) {
        let runs = grads.iter().map(|g| g.contiguous()).collect::<Result<Vec<_>>>()?;
        let guards: Vec<_> = runs.iter().map(|g| g.storage()).collect();
        let parts: Vec<_> = runs.iter().zip(&guards).map(|(g, s)| (&**s, g.layout().offset(), g.numel())).collect();
        return Ok(Some(Tensor::from_storage(Storage::sum_squares(&parts)?, &[])));
    }
    let mut total: Option<Tensor> = None;
    for g in grads {
        let sq = squared_sum(g)?;
        total = Some(match total {
            Some(t) => t.add(&sq.to_device(t.device())?)?,
            None => sq,
        });
    }
    Ok(total)
}

pub(crate) fn check_max_norm(op: &'static str, max_norm: f64) -> Result<()> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::invalid(op, format!("max_norm must be >= 0, got {max_norm}")));
    }
    Ok(())
}

/// Σ g² as a one-element f64 tensor on g's device: squares in f32 (f64 for f64), the sum in f64.
pub(crate) fn squared_sum(g: &Tensor) -> Result<Tensor> {
    let wide = if g.dtype() == DType::F64 { g.clone() } else { g.to_dtype(DType::F32)? };
    wide.mul(&wide)?.sum_all()?.to_dtype(DType::F64)
}

/// The factor to scale gradients of global norm `norm` by, max_norm / (norm + 1e-6), or None where that
/// is not below 1 (or is NaN): PyTorch's clamped coefficient, the same test the clipping kernel makes.
pub(crate) fn clip_coefficient(norm: f64, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}
