//! munja: a deep-learning training library with a PyTorch-like eager API.
//!
//! ```
//! use munja::{DType, Device, Tensor};
//! let x = Tensor::randn(&[4, 3], DType::F32, Device::Cpu)?.set_requires_grad(true);
//! let loss = x.mul(&x)?.sum_all()?;
//! loss.backward()?;
//! assert_eq!(x.grad().unwrap().dims(), &[4, 3]);
//! # Ok::<(), munja::Error>(())
//! ```

pub mod autograd;
pub mod backend;
pub mod data;
mod device;
pub mod dist;
mod dtype;
mod error;
pub mod io;
pub mod models;
pub mod ndarray_interop;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod shape;
mod tensor;

pub use autograd::{is_grad_enabled, no_grad, NoGradGuard};
pub use backend::cuda;
pub use backend::{AdamParams, BinaryOp, CmpOp, ReduceOp, SgdParams, UnaryOp};
pub use device::Device;
pub use dtype::{DType, Element, Real};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use ops::ShapeArg;
pub use rng::{manual_seed, Generator};
pub use tensor::Tensor;
