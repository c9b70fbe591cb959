//! Neural-network layers: the `Module` trait, the standard layers, containers and seeded initialisers.

mod activation;
mod dropout;
mod embedding;
pub mod init;
mod linear;
mod module;
mod norm;
mod sequential;

pub use activation::{Gelu, GeluErf, Relu, Sigmoid, Silu, Tanh};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::Linear;
pub use module::{join, Module};
pub use norm::{LayerNorm, RmsNorm};
pub use sequential::Sequential;

use crate::{DType, Device, Result, Tensor};

/// A fresh zero-filled leaf that requires grad, for a layer to initialise in place.
pub(crate) fn parameter(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
    Ok(Tensor::zeros(shape, dtype, device)?.set_requires_grad(true))
}
