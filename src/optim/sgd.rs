//! Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay, using the
//! fused `Storage::sgd_update` kernel (one pass over parameter, gradient and buffer).

use super::state::{check_hyper, check_params, snapshot, step_tensor, update_in_place, StateReader};
use super::Optimizer;
use crate::backend::SgdParams;
use crate::{Error, Result, Tensor};

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

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        let mut h = SgdParams {
            lr: c.lr,
            momentum: c.momentum,
            dampening: c.dampening,
            weight_decay: c.weight_decay,
            nesterov: c.nesterov,
            first_step: false,
        };
        for ((name, p), slot) in self.params.iter().zip(self.bufs.iter_mut()) {
            let Some(g) = p.grad() else { continue };
            if c.momentum == 0.0 {
                update_in_place("Sgd", name, p, &g, |ps, gs| ps.sgd_update(gs, None, h))?;
                continue;
            }
            h.first_step = slot.is_none();
            // The buffer is kept only once the update succeeded, so a failed step cannot leave a zero
            // buffer that the next step would mistake for a real one.
            let buf = match slot {
                Some(b) => b.clone(),
                None => p.detach().zeros_like()?,
            };
            update_in_place("Sgd", name, p, &g, |ps, gs| ps.sgd_update(gs, Some(&mut buf.storage_mut()), h))?;
            *slot = Some(buf);
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
