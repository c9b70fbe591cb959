//! Ready-made models built from munja's layers. Each model names its parameters the way its reference
//! implementation does, so checkpoints and weights move between munja and PyTorch by name.

pub mod gpt;
mod gpt_hf;

pub use gpt::{Gpt, GptConfig};
