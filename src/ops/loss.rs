//! Losses: cross-entropy straight from logits (fused, never materialising the softmax in the forward
//! pass) and mean squared error.

use crate::autograd::record;
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// Mean cross-entropy of logits [.., C] against I64 class targets [..], skipping targets equal to
    /// `ignore_index` (PyTorch's default is -100). The mean is over the targets that are not ignored.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
        self.cross_entropy_per_row(targets, ignore_index)?.mean_over_targets(targets, ignore_index)
    }

    /// The mean of per-target values (`cross_entropy_per_row`'s output) over the targets that are not
    /// `ignore_index`, in this tensor's dtype.
    pub(crate) fn mean_over_targets(&self, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
        let count = targets.ne(&Tensor::scalar(ignore_index as f64, DType::I64, targets.device())?)?;
        let count = count.count_nonzero()?.to_dtype(self.dtype())?.maximum(&Tensor::scalar(
            1.0,
            self.dtype(),
            self.device(),
        )?)?;
        self.sum_all()?.div(&count)
    }

    /// Per-target cross-entropy (0 where the target is ignored), shaped like `targets`.
    pub fn cross_entropy_per_row(&self, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        if targets.dtype() != DType::I64 {
            return Err(Error::DType { op: OP, expected: DType::I64, got: targets.dtype() });
        }
        if targets.device() != self.device() {
            return Err(Error::Device { op: OP, a: self.device(), b: targets.device() });
        }
        if self.rank() == 0 || &self.dims()[..self.rank() - 1] != targets.dims() {
            return Err(Error::shape(
                OP,
                format!(
                    "logits {:?} need targets of shape {:?}, got {:?}",
                    self.dims(),
                    self.dims().get(..self.rank().saturating_sub(1)).unwrap_or(&[]),
                    targets.dims()
                ),
            ));
        }
        let c = self.dims()[self.rank() - 1];
        if c == 0 {
            return Err(Error::shape(OP, format!("logits {:?} have no classes", self.dims())));
        }
        let x = self.contiguous()?;
        let t = targets.contiguous()?;
        let (s, stats) = x.storage().cross_entropy_forward(&t.storage(), c, ignore_index)?;
        let out = Tensor::from_storage(s, targets.dims());
        let (xs, ts) = (x.detach(), t.detach());
        Ok(record(out, OP, &[&x], move |g| {
            let g = g.contiguous()?;
            let s = xs.storage().cross_entropy_backward(&ts.storage(), &stats, &g.storage(), c, ignore_index)?;
            Ok(vec![Some(Tensor::from_storage(s, xs.dims()))])
        }))
    }

    /// Mean squared error against a target of the same shape.
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        super::check_same("mse_loss", self, target)?;
        if self.dims() != target.dims() {
            return Err(Error::shape(
                "mse_loss",
                format!("prediction {:?} and target {:?} differ", self.dims(), target.dims()),
            ));
        }
        let d = self.sub(target)?;
        d.mul(&d)?.mean_all()
    }
}
