//! `Sequential`: modules applied one after another.

use super::{join, Module};
use crate::{Result, Tensor};

/// A chain of modules. Children are named by position ("0", "1", ...), as in PyTorch, so parameters read
/// `0.weight`, `2.bias` and a PyTorch `nn.Sequential` checkpoint loads by name.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    pub fn new() -> Sequential {
        Sequential::default()
    }
    /// Appends a module (builder style).
    pub fn push(mut self, module: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(module));
        self
    }
    /// Appends an already boxed module.
    pub fn push_boxed(mut self, module: Box<dyn Module>) -> Sequential {
        self.layers.push(module);
        self
    }
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
    /// The i-th child.
    pub fn get(&self, i: usize) -> Option<&dyn Module> {
        self.layers.get(i).map(|m| m.as_ref())
    }
}

impl Module for Sequential {
    /// Feeds `x` through every child in order; an empty chain is the identity.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        Ok(h)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_parameters(&join(prefix, &i.to_string()), f);
        }
    }
    fn set_training(&self, training: bool) {
        for layer in &self.layers {
            layer.set_training(training);
        }
    }
}
