//! `Dropout` as a layer: active in training mode, the identity in eval mode.

use super::Module;
use crate::{Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Zeroes each element with probability `p` and scales the rest by 1/(1−p) while training. The mask comes
/// from the default generator, so `manual_seed` makes runs repeatable. Starts in training mode, as
/// PyTorch modules do; the flag is atomic because modules are shared across threads (`Module: Sync`).
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    training: AtomicBool,
}

impl Dropout {
    /// A dropout layer; `p` outside [0, 1] is an error here rather than at the first forward pass.
    pub fn new(p: f64) -> Result<Dropout> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("Dropout", format!("probability {p} is outside [0, 1]")));
        }
        Ok(Dropout { p, training: AtomicBool::new(true) })
    }
    pub fn p(&self) -> f64 {
        self.p
    }
    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.dropout(self.p, self.is_training())
    }
    fn visit_parameters(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Tensor)) {}
    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}
