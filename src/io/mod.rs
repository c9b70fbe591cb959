//! Files: safetensors read/write (interchangeable with PyTorch's `safetensors.torch`), module weights,
//! and training checkpoints. Every write is atomic.

pub(crate) mod atomic;
mod checkpoint;
mod format;
mod module;

pub use checkpoint::{load_checkpoint, save_checkpoint};
pub use format::{load_safetensors, save_safetensors};
pub use module::{load_module, save_module};
