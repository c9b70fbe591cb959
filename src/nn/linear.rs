//! `Linear`: y = x·Wᵀ + b over the last dim, with PyTorch's layout and default init.

use super::{init, join, parameter, Module};
use crate::{DType, Device, Error, Generator, Result, Tensor};

/// A fully connected layer. `weight` is [out_features, in_features] as in PyTorch, so checkpoints port
/// without transposes; the forward pass multiplies by a transposed view, which copies nothing.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A layer with PyTorch's default init: weight and bias both U(-1/sqrt(in), 1/sqrt(in)).
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        dtype: DType,
        device: Device,
        gen: &mut Generator,
    ) -> Result<Linear> {
        let bound = if in_features > 0 { 1.0 / (in_features as f64).sqrt() } else { 0.0 };
        let weight = parameter(&[out_features, in_features], dtype, device)?;
        init::uniform_(&weight, -bound, bound, gen)?;
        let bias = if bias {
            let b = parameter(&[out_features], dtype, device)?;
            init::uniform_(&b, -bound, bound, gen)?;
            Some(b)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    /// x [.., in] → [.., out].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (inf, outf) = (self.in_features(), self.out_features());
        if x.rank() == 0 || x.dims()[x.rank() - 1] != inf {
            return Err(Error::shape("Linear", format!("input {:?} does not end in in_features = {inf}", x.dims())));
        }
        let y = x.reshape([-1, inf as isize])?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.add(b)?,
            None => y,
        };
        let mut shape = x.dims().to_vec();
        *shape.last_mut().expect("rank checked") = outf;
        y.reshape(shape)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
}
