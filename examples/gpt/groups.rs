//! nanoGPT's two AdamW parameter groups as one `Optimizer`: weight decay on the matrices (every parameter
//! of two or more dims: the embeddings and the Linear weights), none on the biases and LayerNorm gains,
//! which decay would only pull towards zero without regularising anything. munja's AdamW has no groups,
//! so this holds two AdamW over disjoint parameter sets and prefixes their state names, which lets
//! `munja::io::save_checkpoint` store both in one file.
//!
//! With `--zero1` each group is a `Zero1<AdamW>` instead: its state is sharded over the ranks, and the
//! step reduce-scatters both groups' gradients, clips them by their global norm, then updates. Saved
//! state has the same names either way (Zero1 gathers it), so runs switch between the two on resume.

use munja::dist::{clip_sharded_grad_norm, ProcessGroup, ShardedMemory, Zero1};
use munja::optim::{AdamConfig, AdamW, Optimizer};
use munja::{Error, Result, Tensor};
use std::collections::HashSet;

/// Parameters with their names.
type Named = Vec<(String, Tensor)>;

const DECAY: &str = "decay.";
const NO_DECAY: &str = "no_decay.";

enum Group {
    Plain(AdamW),
    Sharded(Zero1<AdamW>),
}

impl Group {
    fn opt(&self) -> &dyn Optimizer {
        match self {
            Group::Plain(o) => o,
            Group::Sharded(z) => z,
        }
    }
    fn opt_mut(&mut self) -> &mut dyn Optimizer {
        match self {
            Group::Plain(o) => o,
            Group::Sharded(z) => z,
        }
    }
}

/// ZeRO-1's collectives need the group, and clipping must happen between reduce and update.
struct Sharding {
    pg: ProcessGroup,
    grad_clip: f64,
}

pub struct DecayGroups {
    decay: Group,
    no_decay: Group,
    decay_params: Vec<(String, Tensor)>,
    no_decay_params: Vec<(String, Tensor)>,
    sharding: Option<Sharding>,
}

/// Splits `params` by rank into (matrices, vectors), each tensor once: the tied embedding and head are
/// one tensor under two names.
fn split(params: Named) -> (Named, Named) {
    let mut seen = HashSet::new();
    params.into_iter().filter(|(_, p)| seen.insert(p.id())).partition(|(_, p)| p.rank() >= 2)
}

impl DecayGroups {
    /// Splits `params` by rank; `config.weight_decay` applies to the matrices only.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Result<DecayGroups> {
        let (matrices, vectors) = split(params);
        Ok(DecayGroups {
            decay: Group::Plain(AdamW::new(matrices.clone(), config)?),
            no_decay: Group::Plain(AdamW::new(vectors.clone(), AdamConfig { weight_decay: 0.0, ..config })?),
            decay_params: matrices,
            no_decay_params: vectors,
            sharding: None,
        })
    }

    /// As `new`, with both groups' state sharded over `pg` (ZeRO-1). The gradients must not be averaged
    /// beforehand (build `Ddp` with `sync_gradients: false`): the step reduce-scatters them, then clips by
    /// the global norm when `grad_clip` > 0. Callers must not clip themselves.
    pub fn sharded(
        params: Vec<(String, Tensor)>,
        config: AdamConfig,
        pg: &ProcessGroup,
        grad_clip: f64,
    ) -> Result<DecayGroups> {
        let (matrices, vectors) = split(params);
        let no_decay = AdamConfig { weight_decay: 0.0, ..config };
        Ok(DecayGroups {
            decay: Group::Sharded(Zero1::new(pg, matrices.clone(), |p| AdamW::new(p, config))?),
            no_decay: Group::Sharded(Zero1::new(pg, vectors.clone(), |p| AdamW::new(p, no_decay))?),
            decay_params: matrices,
            no_decay_params: vectors,
            sharding: Some(Sharding { pg: pg.clone(), grad_clip }),
        })
    }

    /// Whether the step reduces (and clips) the gradients itself.
    pub fn is_sharded(&self) -> bool {
        self.sharding.is_some()
    }

    /// Every parameter once, for gradient clipping.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.decay_params.iter().chain(&self.no_decay_params).map(|(_, p)| p.clone()).collect()
    }

    /// (parameters with decay, parameters without), counted in scalars.
    pub fn sizes(&self) -> (usize, usize) {
        let count = |v: &[(String, Tensor)]| v.iter().map(|(_, p)| p.numel()).sum();
        (count(&self.decay_params), count(&self.no_decay_params))
    }

    /// Optimizer-state bytes on this rank and without sharding, when sharded.
    pub fn sharded_memory(&self) -> Result<Option<ShardedMemory>> {
        let mut total = ShardedMemory { per_rank: 0, unsharded: 0 };
        for g in [&self.decay, &self.no_decay] {
            match g {
                Group::Sharded(z) => {
                    let m = z.memory()?;
                    total.per_rank += m.per_rank;
                    total.unsharded += m.unsharded;
                }
                Group::Plain(_) => return Ok(None),
            }
        }
        Ok(Some(total))
    }
}

impl Optimizer for DecayGroups {
    fn step(&mut self) -> Result<()> {
        match (&mut self.decay, &mut self.no_decay, &self.sharding) {
            (Group::Sharded(a), Group::Sharded(b), Some(s)) => {
                a.reduce_gradients()?;
                b.reduce_gradients()?;
                if s.grad_clip > 0.0 {
                    clip_sharded_grad_norm(&s.pg, &[&*a, &*b], s.grad_clip)?;
                }
                a.apply()?;
                b.apply()
            }
            _ => {
                self.decay.opt_mut().step()?;
                self.no_decay.opt_mut().step()
            }
        }
    }
    fn zero_grad(&self) {
        self.decay.opt().zero_grad();
        self.no_decay.opt().zero_grad();
    }
    fn lr(&self) -> f64 {
        self.decay.opt().lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.decay.opt_mut().set_lr(lr);
        self.no_decay.opt_mut().set_lr(lr);
    }
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let prefixed = |prefix: &str, o: &dyn Optimizer| -> Result<Vec<(String, Tensor)>> {
            Ok(o.state_tensors()?.into_iter().map(|(n, t)| (format!("{prefix}{n}"), t)).collect())
        };
        let mut out = prefixed(DECAY, self.decay.opt())?;
        out.extend(prefixed(NO_DECAY, self.no_decay.opt())?);
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
        // An optimizer leaves itself unchanged when its own entries fail to check, so restoring the old
        // state of the first group is all it takes to keep the pair consistent when the second one fails.
        let before = self.decay.opt().state_tensors()?;
        self.decay.opt_mut().load_state_tensors(&decay)?;
        if let Err(e) = self.no_decay.opt_mut().load_state_tensors(&no_decay) {
            self.decay.opt_mut().load_state_tensors(&before)?;
            return Err(e);
        }
        Ok(())
    }
}
