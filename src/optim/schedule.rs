//! Learning-rate schedules: a function from the step index to the learning rate, applied by the training
//! loop with `optimizer.set_lr(schedule.lr_at(step))`.

/// A learning rate for each (0-based) optimizer step.
pub trait LrSchedule {
    fn lr_at(&self, step: usize) -> f64;
}

/// The same rate at every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constant(pub f64);

impl LrSchedule for Constant {
    fn lr_at(&self, _step: usize) -> f64 {
        self.0
    }
}

/// Linear warmup then cosine decay, as in nanoGPT: (step+1)/warmup_steps·max_lr during warmup (so the
/// first step is not wasted at lr 0), a half cosine from max_lr down to min_lr ending at `total_steps`,
/// and min_lr from then on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule for WarmupCosine {
    fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        // Here warmup_steps <= step < total_steps, so the span is positive.
        let ratio = (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}
