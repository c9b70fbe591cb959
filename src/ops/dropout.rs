//! Dropout: zero each element with probability p and scale the rest by 1/(1−p), from the seeded generator.

use crate::autograd::record;
use crate::{Error, Result, Tensor};

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
        let u = Tensor::rand_with(g, self.dims(), self.dtype(), self.device())?;
        let mask = u.ge_scalar(p)?.to_dtype(self.dtype())?.mul_scalar(1.0 / (1.0 - p))?;
        let out = {
            let _ng = crate::autograd::NoGradGuard::new();
            self.mul(&mask)?
        };
        Ok(record(out, "dropout", &[self], move |g| Ok(vec![Some(g.mul(&mask)?)])))
    }
}
