//! nanoGPT's two AdamW parameter groups as one `Optimizer`: weight decay on the matrices (every parameter
//! of two or more dims: the embeddings and the Linear weights), none on the biases and LayerNorm gains,
//! which decay would only pull towards zero without regularising anything. munja's AdamW has no groups,
//! so this holds two AdamW over disjoint parameter sets and prefixes their state names, which lets
//! `munja::io::save_checkpoint` store both in one file.

use munja::optim::{AdamConfig, AdamW, Optimizer};
use munja::{Error, Result, Tensor};
use std::collections::HashSet;

const DECAY: &str = "decay.";
const NO_DECAY: &str = "no_decay.";

pub struct DecayGroups {
    decay: AdamW,
    no_decay: AdamW,
}

impl DecayGroups {
    /// Splits `params` by rank; `config.weight_decay` applies to the matrices only. A tensor listed under
    /// two names (the tied embedding and head) goes into one group once.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Result<DecayGroups> {
        let mut seen = HashSet::new();
        let (mut matrices, mut vectors) = (Vec::new(), Vec::new());
        for (name, p) in params {
            if !seen.insert(p.id()) {
                continue;
            }
            if p.rank() >= 2 {
                matrices.push((name, p));
            } else {
                vectors.push((name, p));
            }
        }
        Ok(DecayGroups {
            decay: AdamW::new(matrices, config)?,
            no_decay: AdamW::new(vectors, AdamConfig { weight_decay: 0.0, ..config })?,
        })
    }

    /// Every parameter once, for gradient clipping.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.decay.params().iter().chain(self.no_decay.params()).map(|(_, p)| p.clone()).collect()
    }

    /// (parameters with decay, parameters without), counted in scalars.
    pub fn sizes(&self) -> (usize, usize) {
        let count = |o: &AdamW| o.params().iter().map(|(_, p)| p.numel()).sum();
        (count(&self.decay), count(&self.no_decay))
    }
}

impl Optimizer for DecayGroups {
    fn step(&mut self) -> Result<()> {
        self.decay.step()?;
        self.no_decay.step()
    }
    fn zero_grad(&self) {
        self.decay.zero_grad();
        self.no_decay.zero_grad();
    }
    fn lr(&self) -> f64 {
        self.decay.lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.decay.set_lr(lr);
        self.no_decay.set_lr(lr);
    }
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let prefixed = |prefix: &str, o: &AdamW| -> Result<Vec<(String, Tensor)>> {
            Ok(o.state_tensors()?.into_iter().map(|(n, t)| (format!("{prefix}{n}"), t)).collect())
        };
        let mut out = prefixed(DECAY, &self.decay)?;
        out.extend(prefixed(NO_DECAY, &self.no_decay)?);
        Ok(out)
    }
    /// Nothing changes unless both groups' entries check out (see below).
    fn load_state_tensors(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        let (mut decay, mut no_decay) = (Vec::new(), Vec::new());
        for (name, t) in saved {
            if let Some(n) = name.strip_prefix(DECAY) {
                decay.push((n.to_string(), t.clone()));
            } else if let Some(n) = name.strip_prefix(NO_DECAY) {
                no_decay.push((n.to_string(), t.clone()));
            } else {
                return Err(Error::Invalid {
                    op: "DecayGroups",
                    detail: format!("optimizer state entry '{name}' belongs to neither parameter group"),
                });
            }
        }
        // AdamW leaves itself unchanged when its own entries fail to check, so restoring the old state of
        // the first group is all it takes to keep the pair consistent when the second one fails.
        let before = self.decay.state_tensors()?;
        self.decay.load_state_tensors(&decay)?;
        if let Err(e) = self.no_decay.load_state_tensors(&no_decay) {
            self.decay.load_state_tensors(&before)?;
            return Err(e);
        }
        Ok(())
    }
}
