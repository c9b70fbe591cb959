//! Softmax and log-softmax over any dim, numerically stable (the row max is subtracted first).

use crate::autograd::record;
use crate::shape::resolve_dim;
use crate::{Result, Tensor};

impl Tensor {
    /// exp(x) / Σ exp(x) along `dim`.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }
    /// x − log Σ exp(x) along `dim`.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }
    fn softmax_impl(&self, dim: isize, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        let d = resolve_dim(name, dim, self.rank())?;
        let last = self.rank() - 1;
        // The kernels work on rows of the last dim; another dim is moved there and back (views).
        if d != last {
            return self
                .transpose(d as isize, last as isize)?
                .softmax_impl(-1, log)?
                .transpose(d as isize, last as isize);
        }
        let n = self.dims()[last];
        let s = self.storage().softmax(self.layout(), log)?;
        let out = Tensor::from_storage(s, self.dims());
        let y = out.detach();
        Ok(record(out, name, &[self], move |g| {
            let g = g.contiguous()?;
            let s = y.storage().softmax_backward(&g.storage(), n, log)?;
            Ok(vec![Some(Tensor::from_storage(s, y.dims()))])
        }))
    }
}
