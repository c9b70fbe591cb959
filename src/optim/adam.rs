//! Adam and AdamW through the fused `Storage::adam_update` kernel (one pass over parameter, gradient and
//! both moments).

use super::state::{
    check_grad, check_hyper, check_params, push_on_device, snapshot, step_tensor, update_in_place, Batch, StateReader,
};
use super::Optimizer;
use crate::backend::{AdamParams, AdamStorages, Storage};
use crate::{Device, Error, Result, Tensor};

/// Adam/AdamW hyper-parameters. `Default` is `torch.optim.Adam`'s (weight decay 0); `AdamConfig::adamw()`
/// is `torch.optim.AdamW`'s (weight decay 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 }
    }
}

impl AdamConfig {
    /// PyTorch's AdamW defaults: Adam's plus weight decay 0.01.
    pub fn adamw() -> Self {
        AdamConfig { weight_decay: 0.01, ..AdamConfig::default() }
    }
}

/// Adam as `torch.optim.Adam`, weight decay added to the gradient (L2). The step count is kept per
/// optimizer: every `step` call advances it, and bias correction uses it for every parameter.
#[derive(Debug)]
pub struct Adam {
    params: Vec<(String, Tensor)>,
    config: AdamConfig,
    /// AdamW's decoupled decay instead of L2.
    decoupled: bool,
    /// (exp_avg, exp_avg_sq) per parameter, zeros created at its first gradient.
    state: Vec<Option<(Tensor, Tensor)>>,
    step: u64,
}

impl Adam {
    /// An optimizer over named parameters (`module.named_parameters()`); names key the saved state.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Result<Adam> {
        Adam::build("Adam", params, config, false)
    }
    fn build(op: &'static str, params: Vec<(String, Tensor)>, config: AdamConfig, decoupled: bool) -> Result<Adam> {
        let c = config;
        check_hyper(op, "lr", c.lr, c.lr >= 0.0)?;
        check_hyper(op, "beta1", c.betas.0, (0.0..1.0).contains(&c.betas.0))?;
        check_hyper(op, "beta2", c.betas.1, (0.0..1.0).contains(&c.betas.1))?;
        check_hyper(op, "eps", c.eps, c.eps >= 0.0)?;
        check_hyper(op, "weight_decay", c.weight_decay, c.weight_decay >= 0.0)?;
        let params = check_params(op, params)?;
        let state = vec![None; params.len()];
        Ok(Adam { params, config, decoupled, state, step: 0 })
    }
    fn op(&self) -> &'static str {
        if self.decoupled {
            "AdamW"
        } else {
            "Adam"
        }
    }
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }
    /// How many times `step` has run (restored by `load_state_tensors`).
    pub fn step_count(&self) -> u64 {
        self.step
    }
    /// Updates the parameters `list` names (index, gradient) in one `Storage::adam_update_many` call.
    fn update_together(&self, list: &[(usize, Tensor)], h: AdamParams) -> Result<()> {
        let mut states = Vec::with_capacity(list.len());
        for &(i, _) in list {
            let (m, v) = self.state[i].as_ref().ok_or_else(|| Error::invalid(self.op(), "state missing"))?;
            states.push((m, v));
        }
        let mut ps: Vec<_> = list.iter().map(|&(i, _)| self.params[i].1.storage_mut()).collect();
        let gs: Vec<_> = list.iter().map(|(_, g)| g.storage()).collect();
        let mut ms: Vec<_> = states.iter().map(|(m, _)| m.storage_mut()).collect();
        let mut vs: Vec<_> = states.iter().map(|(_, v)| v.storage_mut()).collect();
        let mut items: Vec<AdamStorages> = ps
            .iter_mut()
            .zip(&gs)
            .zip(ms.iter_mut())
            .zip(vs.iter_mut())
            .zip(list)
            .map(|((((p, g), m), v), (_, gt))| (&mut **p, (&**g, gt.layout().offset()), &mut **m, &mut **v))
            .collect();
        Storage::adam_update_many(&mut items, h)
    }
}

impl Optimizer for Adam {
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        let h = AdamParams {
            lr: c.lr,
            beta1: c.betas.0,
            beta2: c.betas.1,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decoupled: self.decoupled,
            step: self.step + 1,
        };
        let op = self.op();
        // Parameters are updated together, one list per device (a launch per 32 on a GPU), except those
        // the batch cannot hold, which run one at a time.
        let mut batch = Batch::default();
        let mut by_device: Vec<(Device, Vec<(usize, Tensor)>)> = Vec::new();
        for (i, ((name, p), slot)) in self.params.iter().zip(self.state.iter_mut()).enumerate() {
            let Some(g) = p.grad() else { continue };
            check_grad(op, name, p, &g)?;
            let (m, v) = match slot {
                Some(s) => s.clone(),
                None => (p.detach().zeros_like()?, p.detach().zeros_like()?),
            };
            *slot = Some((m.clone(), v.clone()));
            if batch.admit(&[p, &m, &v], &[&g]) {
                push_on_device(&mut by_device, p.device(), (i, g));
                continue;
            }
            update_in_place(op, name, p, &g, |ps, gs| {
                ps.adam_update(gs, &mut m.storage_mut(), &mut v.storage_mut(), h)
            })?;
        }
        for (_, list) in &by_device {
            self.update_together(list, h)?;
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
    /// `step`, and `<param>.exp_avg` / `<param>.exp_avg_sq` for every parameter (copies; zeros for one
    /// that has had no gradient yet, which is exactly the state it would start from).
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("step".to_string(), step_tensor(self.step)?)];
        for ((name, p), s) in self.params.iter().zip(&self.state) {
            let (m, v) = match s {
                Some((m, v)) => (snapshot(m)?, snapshot(v)?),
                None => (p.detach().zeros_like()?, p.detach().zeros_like()?),
            };
            out.push((format!("{name}.exp_avg"), m));
            out.push((format!("{name}.exp_avg_sq"), v));
        }
        Ok(out)
    }
    /// Restores what `state_tensors` saved; every entry must be present with the parameter's shape and
    /// dtype, and all are checked before any is used.
    fn load_state_tensors(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        let mut r = StateReader::new(self.op(), saved)?;
        let step = r.step()?;
        let state = self
            .params
            .iter()
            .map(|(name, p)| {
                let m = r.required(&format!("{name}.exp_avg"), p)?;
                let v = r.required(&format!("{name}.exp_avg_sq"), p)?;
                Ok(Some((m, v)))
            })
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        self.state = state;
        self.step = step;
        Ok(())
    }
}

/// AdamW as `torch.optim.AdamW`: Adam with decoupled weight decay, p ← p·(1 − lr·wd) before the Adam step.
/// Use `AdamConfig::adamw()` for PyTorch's defaults.
#[derive(Debug)]
pub struct AdamW(Adam);

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Result<AdamW> {
        Ok(AdamW(Adam::build("AdamW", params, config, true)?))
    }
    pub fn config(&self) -> &AdamConfig {
        self.0.config()
    }
    pub fn params(&self) -> &[(String, Tensor)] {
        self.0.params()
    }
    pub fn step_count(&self) -> u64 {
        self.0.step_count()
    }
}

impl Optimizer for AdamW {
    fn step(&mut self) -> Result<()> {
        self.0.step()
    }
    fn zero_grad(&self) {
        self.0.zero_grad()
    }
    fn lr(&self) -> f64 {
        self.0.lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.0.set_lr(lr)
    }
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.0.state_tensors()
    }
    fn load_state_tensors(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        self.0.load_state_tensors(saved)
    }
}
