//! `Embedding`: a lookup table of vectors indexed by integer ids.

use super::{init, join, parameter, Module};
use crate::{DType, Device, Generator, Result, Tensor};

/// A [num_embeddings, embedding_dim] table; `forward` maps I64 ids of any shape to [..ids, dim].
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    /// A table initialised N(0, 1), PyTorch's default.
    pub fn new(
        num_embeddings: usize,
        embedding_dim: usize,
        dtype: DType,
        device: Device,
        gen: &mut Generator,
    ) -> Result<Embedding> {
        let weight = parameter(&[num_embeddings, embedding_dim], dtype, device)?;
        init::normal_(&weight, 0.0, 1.0, gen)?;
        Ok(Embedding { weight })
    }
    pub fn num_embeddings(&self) -> usize {
        self.weight.dims()[0]
    }
    pub fn embedding_dim(&self) -> usize {
        self.weight.dims()[1]
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.weight.embedding(ids)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&join(prefix, "weight"), &self.weight);
    }
}
