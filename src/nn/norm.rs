//! Normalisation layers over the last dim: `LayerNorm` and `RmsNorm`.

use super::{init, join, parameter, Module};
use crate::{DType, Device, Result, Tensor};

/// Layer norm over the last dim of size `dim`, with a learned scale (ones) and optional shift (zeros).
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, dtype: DType, device: Device) -> Result<LayerNorm> {
        let mut ln = LayerNorm::no_bias(dim, eps, dtype, device)?;
        let b = parameter(&[dim], dtype, device)?;
        init::zeros_(&b)?;
        ln.bias = Some(b);
        Ok(ln)
    }
    /// Without the additive bias (`nn.LayerNorm(bias=False)`), as some GPT variants use.
    pub fn no_bias(dim: usize, eps: f64, dtype: DType, device: Device) -> Result<LayerNorm> {
        let weight = parameter(&[dim], dtype, device)?;
        init::ones_(&weight)?;
        Ok(LayerNorm { weight, bias: None, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(self.weight.dims(), Some(&self.weight), self.bias.as_ref(), self.eps)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
}

/// RMS norm over the last dim of size `dim`: x / sqrt(mean(x²) + eps) · weight (ones at init).
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, dtype: DType, device: Device) -> Result<RmsNorm> {
        let weight = parameter(&[dim], dtype, device)?;
        init::ones_(&weight)?;
        Ok(RmsNorm { weight, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.rms_norm(self.weight.dims(), Some(&self.weight), self.eps)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&join(prefix, "weight"), &self.weight);
    }
}
