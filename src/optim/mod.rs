//! Optimizers (SGD, Adam, AdamW) over named parameters, gradient clipping, learning-rate schedules and
//! mixed-precision training (f32 master weights behind bf16/f16 models).
//! Updates run as fused in-place kernels; optimizer state is exposed as named tensors so checkpoints
//! store it next to the model.

mod adam;
pub(crate) mod clip;
mod mixed;
pub mod schedule;
mod sgd;
mod state;

pub use adam::{Adam, AdamConfig, AdamW};
pub use clip::{clip_grad_norm, clip_grad_norm_deferred};
pub use mixed::MixedPrecision;
pub use schedule::{Constant, LrSchedule, WarmupCosine};
pub use sgd::{Sgd, SgdConfig};

use crate::{Result, Tensor};

/// What a training loop needs from an optimizer. Object safe, so checkpoints take `&dyn Optimizer`.
pub trait Optimizer {
    /// Updates every parameter that has a gradient; parameters without one are left alone.
    fn step(&mut self) -> Result<()>;
    /// Clears the gradients of this optimizer's parameters.
    fn zero_grad(&self);
    fn lr(&self) -> f64;
    fn set_lr(&mut self, lr: f64);
    /// The optimizer's state as named tensors (copies): `step` and `<param>.<buffer>` entries.
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>>;
    /// Restores state saved by `state_tensors`; a missing, unexpected or mis-shaped entry is an error
    /// naming it, and nothing changes unless every entry checks out.
    fn load_state_tensors(&mut self, t: &[(String, Tensor)]) -> Result<()>;
}
