//! Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay, using the
//! fused updates (one pass over parameter, gradient and buffer; on a GPU a launch per 32 parameters).

use super::state::{
    check_grad, check_hyper, check_params, push_on_device, snapshot, step_tensor, update_in_place, Batch, StateReader,
};
use super::Optimizer;
use crate::backend::{SgdParams, SgdStorages, Storage};
use crate::{Device, Error, Result, Tensor};

/// SGD hyper-parameters; `Default` gives PyTorch's defaults (lr 1e-3, everything else off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
}

/// SGD as `torch.optim.SGD`: g += wd·p; with momentum, buf = g on the first step, then
/// buf = momentum·buf + (1 − dampening)·g; the step is buf (or g + momentum·buf with Nesterov).
#[derive(Debug)]
pub struct Sgd {
    params: Vec<(String, Tensor)>,
    config: SgdConfig,
    /// Momentum buffers, created from the first gradient a parameter receives.
    bufs: Vec<Option<Tensor>>,
    step: u64,
}

impl Sgd {
    /// An optimizer over named parameters (`module.named_parameters()`); names key the saved state.
    pub fn new(params: Vec<(String, Tensor)>, config: SgdConfig) -> Result<Sgd> {
        const OP: &str = "Sgd";
        let c = config;
        check_hyper(OP, "lr", c.lr, c.lr >= 0.0)?;
        check_hyper(OP, "momentum", c.momentum, c.momentum >= 0.0)?;
        check_hyper(OP, "dampening", c.dampening, true)?;
        check_hyper(OP, "weight_decay", c.weight_decay, c.weight_decay >= 0.0)?;
        if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
            return Err(Error::invalid(OP, "Nesterov momentum requires a momentum > 0 and zero dampening"));
        }
        let params = check_params(OP, params)?;
        let bufs = vec![None; params.len()];
        Ok(Sgd { params, config, bufs, step: 0 })
    }
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }
    /// How many times `step` has run (restored by `load_state_tensors`).
    pub fn step_count(&self) -> u64 {
        self.step
    }
}

impl Sgd {
    /// Updates the parameters `list` names (index, gradient, buffer and whether it is new) in one
    /// `Storage::sgd_update_many` call.
    fn update_together(&self, list: &[Pending], h: SgdParams) -> Result<()> {
        let mut ps: Vec<_> = list.iter().map(|(i, ..)| self.params[*i].1.storage_mut()).collect();
        let gs: Vec<_> = list.iter().map(|(_, g, _)| g.storage()).collect();
        let mut bs: Vec<_> =
            list.iter().map(|(.., b)| b.as_ref().map(|(b, first)| (b.storage_mut(), *first))).collect();
        let mut items: Vec<SgdStorages> = ps
            .iter_mut()
            .zip(&gs)
            .zip(bs.iter_mut())
            .zip(list)
            .map(|(((p, g), b), (_, gt, _))| {
                (&mut **p, (&**g, gt.layout().offset()), b.as_mut().map(|(b, first)| (&mut **b, *first)))
            })
            .collect();
        Storage::sgd_update_many(&mut items, h)
    }
}

/// A parameter waiting for its batched update: its index, its gradient, and with momentum its buffer and
/// whether the buffer is new this step.
type Pending = (usize, Tensor, Option<(Tensor, bool)>);

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        const OP: &str = "Sgd";
        let c = self.config;
        let h = SgdParams {
            lr: c.lr,
            momentum: c.momentum,
            dampening: c.dampening,
            weight_decay: c.weight_decay,
            nesterov: c.nesterov,
            first_step: false,
        };
        // Parameters are updated together, one list per device (a launch per 32 on a GPU), except those
        // the batch cannot hold, which run one at a time. New buffers are kept only once every update
        // succeeded, so a failed step cannot leave a zero buffer the next step would take for a real one.
        let mut batch = Batch::default();
        let mut by_device: Vec<(Device, Vec<Pending>)> = Vec::new();
        let mut new_bufs: Vec<(usize, Tensor)> = Vec::new();
        for (i, ((name, p), slot)) in self.params.iter().zip(&self.bufs).enumerate() {
            let Some(g) = p.grad() else { continue };
            check_grad(OP, name, p, &g)?;
            let buf = match slot {
                _ if c.momentum == 0.0 => None,
                Some(b) => Some((b.clone(), false)),
                None => {
                    let b = p.detach().zeros_like()?;
                    new_bufs.push((i, b.clone()));
                    Some((b, true))
                }
            };
            let writes: Vec<&Tensor> = std::iter::once(p).chain(buf.as_ref().map(|b| &b.0)).collect();
            if batch.admit(&writes, &[&g]) {
                push_on_device(&mut by_device, p.device(), (i, g, buf));
                continue;
            }
            let h = SgdParams { first_step: buf.as_ref().is_some_and(|b| b.1), ..h };
            update_in_place(OP, name, p, &g, |ps, gs| {
                ps.sgd_update(gs, buf.as_ref().map(|b| b.0.storage_mut()).as_deref_mut(), h)
            })?;
        }
        for (_, list) in &by_device {
            self.update_together(list, h)?;
        }
        for (i, b) in new_bufs {
            self.bufs[i] = Some(b);
        }
        self.step += 1;
        Ok(())
    }
    fn zero_grad(&self) {
        for (_, p) in &self.params {
            p.zero_grad();
        }
    }
    fn lr(&self) -> f64 {
        self.config.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }
    /// `step` and `<param>.momentum_buffer` for every parameter that has a buffer yet (copies).
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("step".to_string(), step_tensor(self.step)?)];
        for ((name, _), buf) in self.params.iter().zip(&self.bufs) {
            if let Some(b) = buf {
                out.push((format!("{name}.momentum_buffer"), snapshot(b)?));
            }
        }
        Ok(out)
    }
    /// Restores what `state_tensors` saved. A parameter without a buffer entry starts its momentum afresh
    /// (it had received no gradient when the state was saved); every entry is checked before any is used.
    fn load_state_tensors(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        let mut r = StateReader::new("Sgd", saved)?;
        let step = r.step()?;
        let bufs = self
            .params
            .iter()
            .map(|(name, p)| r.optional(&format!("{name}.momentum_buffer"), p))
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        self.bufs = bufs;
        self.step = step;
        Ok(())
    }
}
