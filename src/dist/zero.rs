//! ZeRO stage 1: optimizer state sharded across ranks. The parameters of one group are viewed as one
//! flat vector padded to a multiple of the world size; rank r owns slice r. A step reduce-scatters the
//! flat gradient (each rank receives the average of its slice only), runs the wrapped optimizer on its
//! slice alone, then all-gathers the updated slices into every replica's parameters. Optimizer state
//! (Adam's two moments: 8 bytes per f32 parameter) shrinks to 1/world per rank; the arithmetic is the
//! same element by element, so results match plain data-parallel training.
//!
//! Use it with `Ddp` built with `sync_gradients: false`, since this optimizer reduces the gradients.
//! `state_tensors` and `load_state_tensors` are collective (every rank must call them) and use the
//! unsharded names of the wrapped optimizer (`<param>.exp_avg`), so a ZeRO-1 checkpoint loads into a
//! plain optimizer and back.

use super::group::{ProcessGroup, ReduceOp};
use crate::optim::clip::{check_max_norm, clip_coefficient, squared_sum};
use crate::optim::Optimizer;
use crate::{Error, Result, Tensor};
use std::collections::BTreeSet;

const SHARD: &str = "zero1_shard";

pub struct Zero1<O: Optimizer> {
    pg: ProcessGroup,
    params: Vec<(String, Tensor)>,
    numel: usize,
    padded: usize,
    /// This rank's slice of the flat parameters: the only tensor the wrapped optimizer sees.
    shard: Tensor,
    inner: O,
}

/// Optimizer-state bytes on this rank, and what one rank would hold without sharding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardedMemory {
    pub per_rank: usize,
    pub unsharded: usize,
}

impl<O: Optimizer> Zero1<O> {
    /// Shards `params` (one dtype and device) over `pg`; `make` builds the wrapped optimizer over the
    /// one shard parameter it is given (e.g. `|p| AdamW::new(p, config)`).
    pub fn new(
        pg: &ProcessGroup,
        params: Vec<(String, Tensor)>,
        make: impl FnOnce(Vec<(String, Tensor)>) -> Result<O>,
    ) -> Result<Zero1<O>> {
        let first = params.first().map(|(_, p)| p.clone()).ok_or_else(|| Error::invalid("Zero1", "no parameters"))?;
        for (name, p) in &params {
            if p.dtype() != first.dtype() || p.device() != first.device() {
                return Err(Error::invalid(
                    "Zero1",
                    format!(
                        "{name} is {} on {}, the group is {} on {}",
                        p.dtype(),
                        p.device(),
                        first.dtype(),
                        first.device()
                    ),
                ));
            }
        }
        let world = pg.world_size();
        let numel: usize = params.iter().map(|(_, p)| p.numel()).sum();
        let padded = numel.div_ceil(world) * world;
        let shard_len = padded / world;
        let shard = Tensor::zeros(&[shard_len], first.dtype(), first.device())?.set_requires_grad(true);
        let inner = make(vec![(SHARD.to_string(), shard.clone())])?;
        let z = Zero1 { pg: pg.clone(), params, numel, padded, shard, inner };
        z.load_shard_from_params()?;
        Ok(z)
    }

    pub fn inner(&self) -> &O {
        &self.inner
    }

    fn shard_len(&self) -> usize {
        self.padded / self.pg.world_size()
    }

    /// The parameters (or their gradients, zeros where missing) as one flat, padded vector.
    fn flatten(&self, grads: bool) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(self.params.len() + 1);
        for (_, p) in &self.params {
            let t = if grads {
                match p.grad() {
                    Some(g) => g,
                    None => p.detach().zeros_like()?,
                }
            } else {
                p.detach()
            };
            parts.push(t.reshape(&[p.numel()][..])?);
        }
        if self.padded > self.numel {
            parts.push(Tensor::zeros(&[self.padded - self.numel], self.shard.dtype(), self.shard.device())?);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        Ok(Tensor::cat(&refs, 0)?.detach())
    }

    /// Copies this rank's slice of the current parameters into the shard (after a checkpoint load too).
    fn load_shard_from_params(&self) -> Result<()> {
        let flat = self.flatten(false)?;
        let n = self.shard_len();
        self.shard.assign(&flat.narrow(0, self.pg.rank() * n, n)?)
    }

    /// Optimizer-state bytes here and what one rank would hold unsharded.
    pub fn memory(&self) -> Result<ShardedMemory> {
        let (mut per_rank, mut unsharded) = (0, 0);
        for (name, t) in self.inner.state_tensors()? {
            let bytes = t.numel() * t.dtype().size_in_bytes();
            per_rank += bytes;
            unsharded += if name.starts_with(SHARD) { self.numel * t.dtype().size_in_bytes() } else { bytes };
        }
        Ok(ShardedMemory { per_rank, unsharded })
    }
}

impl<O: Optimizer> Zero1<O> {
    /// The first half of `step`: each rank receives the average over ranks of its slice of the gradient
    /// (collective). Between this and `apply` the slice can be clipped (`clip_sharded_grad_norm`).
    pub fn reduce_gradients(&mut self) -> Result<()> {
        let grads = self.flatten(true)?;
        let mine = self.pg.reduce_scatter(&grads, ReduceOp::Avg)?;
        self.load_shard_from_params()?;
        self.shard.set_grad(Some(mine))
    }

    /// The sum of squares of this rank's reduced gradient slice (after `reduce_gradients`).
    pub fn shard_grad_sq_sum(&self) -> Result<Tensor> {
        let g = self.shard.grad().ok_or_else(|| Error::invalid("Zero1", "call reduce_gradients first"))?;
        squared_sum(&g)
    }

    /// Multiplies this rank's reduced gradient slice by `factor`.
    pub fn scale_gradients(&self, factor: f64) -> Result<()> {
        if let Some(g) = self.shard.grad() {
            self.shard.set_grad(Some(g.mul_scalar(factor)?))?;
        }
        Ok(())
    }

    /// The second half of `step`: the wrapped optimizer updates this rank's slice, and the slices are
    /// gathered into every replica's parameters (collective).
    pub fn apply(&mut self) -> Result<()> {
        self.inner.step()?;
        self.shard.zero_grad();
        let gathered = self.pg.all_gather(&self.shard.detach())?.reshape(&[self.padded][..])?;
        let mut offset = 0;
        for (_, p) in &self.params {
            let n = p.numel();
            p.assign(&gathered.narrow(0, offset, n)?.reshape(p.dims())?)?;
            offset += n;
        }
        Ok(())
    }
}

/// Clips the gradient that `groups` hold, sharded over the ranks of `pg`, to `max_norm` by its global L2
/// norm, as `clip_grad_norm` does for whole gradients (collective; call between `reduce_gradients` and
/// `apply`). Returns the norm before clipping. The slices are disjoint and the padding is zero, so the
/// norm is exactly the unsharded gradient's.
pub fn clip_sharded_grad_norm<O: Optimizer>(pg: &ProcessGroup, groups: &[&Zero1<O>], max_norm: f64) -> Result<f64> {
    check_max_norm("clip_sharded_grad_norm", max_norm)?;
    let _ng = crate::NoGradGuard::new();
    let mut local = 0.0;
    for z in groups {
        local += z.shard_grad_sq_sum()?.item()?;
    }
    let total = Tensor::from_vec(vec![local], &[1], crate::Device::Cpu)?;
    pg.all_reduce(&total, ReduceOp::Sum)?;
    let norm = total.item()?.sqrt();
    if let Some(coef) = clip_coefficient(norm, max_norm) {
        for z in groups {
            z.scale_gradients(coef)?;
        }
    }
    Ok(norm)
}

impl<O: Optimizer> Optimizer for Zero1<O> {
    fn step(&mut self) -> Result<()> {
        self.reduce_gradients()?;
        self.apply()
    }
    fn zero_grad(&self) {
        for (_, p) in &self.params {
            p.zero_grad();
        }
    }
    fn lr(&self) -> f64 {
        self.inner.lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.inner.set_lr(lr)
    }
    /// Collective: gathers every rank's slice of each state buffer and returns them under the parameter
    /// names, exactly as the unsharded optimizer would.
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let prefix = format!("{SHARD}.");
        let mut out = Vec::new();
        for (name, t) in self.inner.state_tensors()? {
            let Some(buffer) = name.strip_prefix(&prefix) else {
                out.push((name, t));
                continue;
            };
            let full = self.pg.all_gather(&t)?.reshape(&[self.padded][..])?;
            let mut offset = 0;
            for (pname, p) in &self.params {
                let n = p.numel();
                out.push((format!("{pname}.{buffer}"), full.narrow(0, offset, n)?.reshape(p.dims())?.contiguous()?));
                offset += n;
            }
        }
        Ok(out)
    }
    /// Takes state in the unsharded layout (from `state_tensors` or a plain optimizer) and keeps this
    /// rank's slice of each buffer; the shard is reloaded from the current parameters.
    fn load_state_tensors(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        let names: BTreeSet<&str> = self.params.iter().map(|(n, _)| n.as_str()).collect();
        let mut buffers: BTreeSet<String> = BTreeSet::new();
        let mut passthrough = Vec::new();
        for (name, t) in saved {
            let owner = name.rsplit_once('.').filter(|(p, _)| names.contains(p));
            match owner {
                Some((_, buffer)) => {
                    buffers.insert(buffer.to_string());
                }
                None => passthrough.push((name.clone(), t.clone())),
            }
        }
        let n = self.shard_len();
        let mut converted = passthrough;
        for buffer in buffers {
            let mut parts = Vec::new();
            for (pname, p) in &self.params {
                let key = format!("{pname}.{buffer}");
                let t = saved.iter().find(|(k, _)| *k == key).map(|(_, t)| t.clone()).ok_or_else(|| {
                    Error::invalid("Zero1", format!("the saved optimizer state has no {key} (it has other .{buffer})"))
                })?;
                if t.dims() != p.dims() {
                    return Err(Error::shape(
                        "Zero1",
                        format!("{key} is {:?}, the parameter {:?}", t.dims(), p.dims()),
                    ));
                }
                parts.push(t.to_device(self.shard.device())?.reshape(&[p.numel()][..])?);
            }
            if self.padded > self.numel {
                let d = parts[0].dtype();
                parts.push(Tensor::zeros(&[self.padded - self.numel], d, self.shard.device())?);
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            let flat = Tensor::cat(&refs, 0)?;
            converted
                .push((format!("{SHARD}.{buffer}"), flat.narrow(0, self.pg.rank() * n, n)?.contiguous()?.detach()));
        }
        self.inner.load_state_tensors(&converted)?;
        self.load_shard_from_params()
    }
}
