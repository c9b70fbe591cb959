//! Softmax and log-softmax over any dim, numerically stable (the row max is subtracted first).

use crate::autograd::record;
use crate::backend::Causal;
use crate::shape::resolve_dim;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// exp(x) / Σ exp(x) along `dim`.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }
    /// x − log Σ exp(x) along `dim`.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }
    /// Softmax over the last dim of attention scores [.., T, S] under a causal mask: query row i (of T)
    /// sees keys 0..=i + `offset` only, the rest count as −inf and come out 0. `offset` is the number of
    /// earlier positions before the T queries (0 for a square T × T matrix; the cache length when
    /// generating). The same as `masked_fill` with the mask of future keys, then `softmax(-1)`, in one pass
    /// that reads only the visible scores and needs no mask tensor; the gradient of a masked score is 0.
    ///
    /// ```
    /// # use munja::{Tensor, Device};
    /// let scores = Tensor::zeros(&[2, 2], munja::DType::F32, Device::Cpu)?;
    /// let p = scores.causal_softmax(0)?;
    /// assert_eq!(p.to_vec::<f32>()?, vec![1.0, 0.0, 0.5, 0.5]);
    /// # Ok::<(), munja::Error>(())
    /// ```
    pub fn causal_softmax(&self, offset: usize) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::shape(
                "causal_softmax",
                format!("needs scores [.., queries, keys], got shape {:?}", self.dims()),
            ));
        }
        let causal = Causal { rows: self.dims()[self.rank() - 2], offset };
        self.softmax_rows(false, Some(causal), "causal_softmax")
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
        self.softmax_rows(log, None, name)
    }

    /// (Log-)softmax over the last dim, optionally causally masked, with its gradient recorded.
    fn softmax_rows(&self, log: bool, causal: Option<Causal>, name: &'static str) -> Result<Tensor> {
        let n = self.dims()[self.rank() - 1];
        let s = self.storage().softmax(self.layout(), log, causal)?;
        let out = Tensor::from_storage(s, self.dims());
        let y = out.detach();
        Ok(record(out, name, &[self], move |g| {
            let g = g.contiguous()?;
            let s = y.storage().softmax_backward(&g.storage(), n, log)?;
            Ok(vec![Some(Tensor::from_storage(s, y.dims()))])
        }))
    }
}
