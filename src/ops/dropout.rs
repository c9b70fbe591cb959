//! Dropout: zero each element with probability p and scale the rest by 1/(1−p), from the seeded generator.

use crate::autograd::record;
use crate::backend::Storage;
use crate::shape::Layout;
use crate::{Error, Result, Tensor};
use std::sync::{Arc, RwLock};

impl Tensor {
    /// Dropout with the default generator. In eval mode (`train == false`) it is the identity.
    pub fn dropout(&self, p: f64, train: bool) -> Result<Tensor> {
        crate::rng::with_default(|g| self.dropout_with(g, p, train))
    }
    /// Dropout drawing its mask from an explicit generator.
    pub fn dropout_with(&self, g: &mut crate::Generator, p: f64, train: bool) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("dropout", format!("probability {p} is outside [0, 1]")));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        if p == 1.0 {
            return self.mul_scalar(0.0);
        }
        // The same draw as Tensor::rand_with (the generator advances alike), kept where ≥ p, scaled.
        let n = self.numel();
        let block = g.advance(n);
        let s = Storage::dropout_mask(self.device(), self.dtype(), n, g.seed, block, p, 1.0 / (1.0 - p))?;
        let mask = Tensor::from_parts(Arc::new(RwLock::new(s)), Layout::contiguous(self.dims()), true);
        let out = {
            let _ng = crate::autograd::NoGradGuard::new();
            self.mul(&mask)?
        };
        Ok(record(out, "dropout", &[self], move |g| Ok(vec![Some(g.mul(&mask)?)])))
    }
}
