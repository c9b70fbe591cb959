//! Mixed-precision training with f32 master weights (apex's O2, llm.c): the model holds low-precision
//! (bf16/f16) *working* weights and computes with them, forward and backward; the optimizer updates an f32
//! *master* copy of each, and the working weights are re-rounded from the masters after every step.
//!
//! Why masters: a bf16 weight has 8 significant bits, so an update smaller than 1/256 of the weight
//! rounds away entirely; late in training, with a decayed learning rate, most updates are that small. The
//! masters accumulate them exactly as an f32 run would, and the optimizer state (Adam's moments) stays f32.

use super::state::{with_runs, Batch};
use super::Optimizer;
use crate::autograd::NoGradGuard;
use crate::backend::{CastRun, Storage};
use crate::{DType, Error, Result, Tensor};
use std::collections::{HashMap, HashSet};

const OP: &str = "MixedPrecision";

/// One parameter: what the model computes with and what the optimizer updates. For a parameter already in
/// f32 or f64 the two are the same tensor and nothing is copied.
#[derive(Debug)]
struct Pair {
    working: Tensor,
    master: Tensor,
}

impl Pair {
    fn shadowed(&self) -> bool {
        self.working.id() != self.master.id()
    }
}

/// Wraps an optimizer built over f32 master copies of a model's low-precision parameters. Its
/// `Optimizer::step` moves the working gradients onto the masters (widened to f32), runs the inner
/// optimizer there, and rounds the updated masters back into the working weights, so after every step
/// each working weight is its master cast to the working dtype. Its state is the inner optimizer's
/// (f32), under the inner optimizer's names.
///
/// The masters are the weights worth saving: give a checkpoint the masters (for instance the f32 model
/// they came from, see `with_master`), and after loading them call `sync_working`.
#[derive(Debug)]
pub struct MixedPrecision<O> {
    pairs: Vec<Pair>,
    names: Vec<String>,
    inner: O,
}

/// Whether parameters of `dtype` get an f32 master (half types) or are their own (f32, f64).
fn needs_master(name: &str, dtype: DType) -> Result<bool> {
    match dtype {
        DType::BF16 | DType::F16 => Ok(true),
        DType::F32 | DType::F64 => Ok(false),
        other => {
            Err(Error::invalid(OP, format!("parameter '{name}' is {other}; only floating-point parameters train")))
        }
    }
}

/// Drops repeated handles to one tensor (tied weights listed under two names are one parameter).
fn unique(params: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut seen = HashSet::new();
    params.into_iter().filter(|(_, p)| seen.insert(p.id())).collect()
}

impl<O: Optimizer> MixedPrecision<O> {
    /// Masters made by widening the working parameters to f32 (f32 and f64 parameters are their own
    /// masters); `build` makes the inner optimizer over the masters, which carry the working names.
    pub fn new(
        working: Vec<(String, Tensor)>,
        build: impl FnOnce(Vec<(String, Tensor)>) -> Result<O>,
    ) -> Result<MixedPrecision<O>> {
        let _ng = NoGradGuard::new();
        let mut pairs = Vec::new();
        let mut names = Vec::new();
        for (name, w) in unique(working) {
            let master = if needs_master(&name, w.dtype())? {
                w.detach().to_dtype(DType::F32)?.contiguous()?.detach().set_requires_grad(true)
            } else {
                w.clone()
            };
            pairs.push(Pair { working: w, master });
            names.push(name);
        }
        Self::finish(pairs, names, build)
    }

    /// Uses the given f32 (or f64) tensors as the masters, matched to the working parameters by name, and
    /// sets every working weight to its master rounded: a model initialised or loaded in f32 keeps its
    /// exact values. Every working parameter needs a master of its shape; a master that is the working
    /// tensor itself is allowed (it is updated in place).
    pub fn with_master(
        working: Vec<(String, Tensor)>,
        master: Vec<(String, Tensor)>,
        build: impl FnOnce(Vec<(String, Tensor)>) -> Result<O>,
    ) -> Result<MixedPrecision<O>> {
        let working_names: HashSet<String> = working.iter().map(|(n, _)| n.clone()).collect();
        let mut by_name: HashMap<String, Tensor> = HashMap::with_capacity(master.len());
        for (name, m) in master {
            if !working_names.contains(&name) {
                return Err(Error::invalid(OP, format!("master '{name}' has no working parameter of that name")));
            }
            if !matches!(m.dtype(), DType::F32 | DType::F64) {
                return Err(Error::invalid(
                    OP,
                    format!("master '{name}' is {}; masters must be f32 or f64", m.dtype()),
                ));
            }
            by_name.insert(name, m);
        }
        let mut pairs = Vec::new();
        let mut names = Vec::new();
        for (name, w) in unique(working) {
            needs_master(&name, w.dtype())?;
            let m =
                by_name.get(&name).ok_or_else(|| Error::invalid(OP, format!("parameter '{name}' has no master")))?;
            if m.dims() != w.dims() || m.device() != w.device() {
                return Err(Error::shape(
                    OP,
                    format!(
                        "master '{name}' is {:?} on {}, the parameter {:?} on {}",
                        m.dims(),
                        m.device(),
                        w.dims(),
                        w.device()
                    ),
                ));
            }
            pairs.push(Pair { working: w, master: m.clone() });
            names.push(name);
        }
        let mp = Self::finish(pairs, names, build)?;
        mp.sync_working()?;
        Ok(mp)
    }

    fn finish(
        pairs: Vec<Pair>,
        names: Vec<String>,
        build: impl FnOnce(Vec<(String, Tensor)>) -> Result<O>,
    ) -> Result<MixedPrecision<O>> {
        let masters = names.iter().cloned().zip(pairs.iter().map(|p| p.master.clone())).collect();
        let inner = build(masters)?;
        Ok(MixedPrecision { pairs, names, inner })
    }

    /// The optimizer that updates the masters.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// The masters with their names, one per parameter (what to save, and to clip).
    pub fn named_master_parameters(&self) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(self.pairs.iter().map(|p| p.master.clone())).collect()
    }

    /// The masters, for `clip_grad_norm` after `gather_grads`: clipping then scales f32 gradients.
    pub fn master_parameters(&self) -> Vec<Tensor> {
        self.pairs.iter().map(|p| p.master.clone()).collect()
    }

    /// Moves each working gradient onto its master, widened to the master's dtype and added to what the
    /// master already holds, and clears the working gradient. Calling it after every micro-batch's
    /// backward therefore accumulates gradients in f32; calling it again without a new backward changes
    /// nothing. `step` calls it first.
    pub fn gather_grads(&self) -> Result<()> {
        let _ng = NoGradGuard::new();
        // A working gradient that starts its master's is widened with the others of its master dtype, a
        // launch per 32 on a GPU; one added to a gradient already there (accumulation) goes alone.
        let mut fresh: Vec<(&Pair, Tensor)> = Vec::new();
        for p in self.pairs.iter().filter(|p| p.shadowed()) {
            let Some(g) = p.working.grad() else { continue };
            match p.master.grad() {
                Some(prev) => p.master.set_grad(Some(prev.add(&g.to_dtype(p.master.dtype())?)?))?,
                None => fresh.push((p, g)),
            }
            p.working.zero_grad();
        }
        for dtype in [DType::F32, DType::F64] {
            let of_type: Vec<_> = fresh.iter().filter(|(p, _)| p.master.dtype() == dtype).collect();
            let grads: Vec<Tensor> = of_type.iter().map(|(_, g)| g.clone()).collect();
            let wide = with_runs(&grads, |parts| Storage::cast_each(parts, dtype))?;
            for ((p, g), w) in of_type.iter().zip(wide) {
                p.master.set_grad(Some(Tensor::from_storage(w, g.dims())))?;
            }
        }
        Ok(())
    }

    /// Sets every working weight to its master rounded to the working dtype (after loading masters from a
    /// checkpoint; `step` does it after each update).
    pub fn sync_working(&self) -> Result<()> {
        let _ng = NoGradGuard::new();
        // Together (a launch per 32 on a GPU) where the batch can hold them: dense working weights and
        // masters, no buffer shared (`Batch`); the rest one at a time.
        let mut batch = Batch::default();
        let mut together = Vec::new();
        for p in self.pairs.iter().filter(|p| p.shadowed()) {
            if batch.admit(&[&p.working], &[&p.master]) {
                together.push(p);
            } else {
                p.working.assign_cast(&p.master.detach())?;
            }
        }
        let masters: Vec<_> = together.iter().map(|p| p.master.storage()).collect();
        let mut workings: Vec<_> = together.iter().map(|p| p.working.storage_mut()).collect();
        let mut runs: Vec<CastRun> = together
            .iter()
            .zip(&masters)
            .zip(workings.iter_mut())
            .map(|((p, m), w)| (&**m, p.master.layout().offset(), &mut **w, 0, p.master.numel()))
            .collect();
        Storage::cast_many(&mut runs)
    }
}

impl<O: Optimizer> Optimizer for MixedPrecision<O> {
    fn step(&mut self) -> Result<()> {
        self.gather_grads()?;
        self.inner.step()?;
        self.sync_working()
    }
    fn zero_grad(&self) {
        self.inner.zero_grad();
        for p in &self.pairs {
            p.working.zero_grad();
        }
    }
    fn lr(&self) -> f64 {
        self.inner.lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.inner.set_lr(lr)
    }
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.inner.state_tensors()
    }
    fn load_state_tensors(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        self.inner.load_state_tensors(saved)
    }
}
