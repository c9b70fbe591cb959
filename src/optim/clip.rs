//! Gradient clipping by global norm.

use super::state::with_runs;
use crate::autograd::NoGradGuard;
use crate::backend::Storage;
use crate::{DType, Device, Error, Result, Tensor};
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
/// Clipped gradients are replaced by new tensors, never scaled in place (a gradient may share its buffer
/// with a tensor the caller holds); on a GPU every gradient is (a copy where within the limit), since the
/// host does not know whether clipping happened.
pub fn clip_grad_norm_deferred(params: &[Tensor], max_norm: f64) -> Result<Option<Tensor>> {
    check_max_norm("clip_grad_norm", max_norm)?;
    let _ng = NoGradGuard::new();
    let mut seen = HashSet::new();
    let grads: Vec<(&Tensor, Tensor)> =
        params.iter().filter(|p| seen.insert(p.id())).filter_map(|p| p.grad().map(|g| (p, g))).collect();
    let owned: Vec<Tensor> = grads.iter().map(|(_, g)| g.clone()).collect();
    let Some(first) = owned.first() else { return Ok(None) };
    // On one GPU the kernel derives the factor, from the same contiguous runs the norm was summed over.
    if first.device() != Device::Cpu && owned.iter().all(|g| g.device() == first.device()) {
        let (total, scaled) = with_runs(&owned, |parts| {
            let total = Storage::sum_squares(parts)?;
            let scaled = Storage::clip_scale(parts, &total, max_norm)?;
            Ok((total, scaled))
        })?;
        for ((p, g), s) in grads.iter().zip(scaled) {
            p.set_grad(Some(Tensor::from_storage(s, g.dims())))?;
        }
        return Ok(Some(Tensor::from_storage(total, &[]).sqrt()?));
    }
    // The CPU (reading the norm costs no wait, and gradients within the limit are left as they are rather
    // than copied), or gradients spread over devices: the host derives the factor from the norm.
    let Some(total) = squared_total(&owned)? else { return Ok(None) };
    let norm = total.sqrt()?;
    if let Some(coef) = clip_coefficient(norm.item()?, max_norm) {
        for (p, g) in &grads {
            p.set_grad(Some(g.mul_scalar(coef)?))?;
        }
    }
    Ok(Some(norm))
}

/// Σ g² over all of `grads` as a one-element f64 tensor (None when there are none). Gradients on one
/// device are summed by one fused reduction (on a GPU, a launch per 32 gradients instead of five per
/// gradient); gradients spread over devices are summed one by one on the first one's device, so only the
/// final scalar is read back either way.
pub(crate) fn squared_total(grads: &[Tensor]) -> Result<Option<Tensor>> {
    let Some(first) = grads.first() else { return Ok(None) };
    if grads.iter().all(|g| g.device() == first.device()) {
        let total = with_runs(grads, Storage::sum_squares)?;
        return Ok(Some(Tensor::from_storage(total, &[])));
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

#[cfg(test)]
mod tests {
    use crate::backend::Storage;
    use crate::{DType, Device, Result, Tensor};

    /// `Storage::clip_scale` on the CPU (the library clips CPU gradients on the host): runs at offsets,
    /// scaled as `mul_scalar` scales where the factor is below 1, copied otherwise.
    #[test]
    fn clip_scale_on_the_cpu_scales_like_mul_scalar_or_copies() -> Result<()> {
        let g = Tensor::from_vec((0..10).map(|i| i as f32 - 4.5).collect(), &[10], Device::Cpu)?;
        for (total, max_norm) in [(400.0f64, 1.0), (0.25, 1.0), (f64::NAN, 1.0)] {
            let t = Tensor::scalar(total, DType::F64, Device::Cpu)?;
            let (gs, ts) = (g.storage(), t.storage());
            let out = Storage::clip_scale(&[(&*gs, 2, 5), (&*gs, 0, 10)], &ts, max_norm)?;
            let coef = max_norm / (total.sqrt() + 1e-6);
            let want = if coef < 1.0 { g.mul_scalar(coef)? } else { g.clone() };
            let got: Vec<_> = out.into_iter().zip([5, 10]).map(|(s, n)| Tensor::from_storage(s, &[n])).collect();
            assert_eq!(got[0].to_vec::<f32>()?, want.narrow(0, 2, 5)?.to_vec::<f32>()?, "total {total}");
            assert_eq!(got[1].to_vec::<f32>()?, want.to_vec::<f32>()?, "total {total}");
        }
        Ok(())
    }
}
