//! Data parallelism over processes: one process per GPU (or per CPU machine), gradients averaged by
//! all-reduce. `ProcessGroup` holds the collectives (NCCL for CUDA tensors, a TCP backend for CPU
//! tensors, so CPU-only jobs run data-parallel and the logic is tested without GPUs); `Ddp` wraps a
//! Module and overlaps the gradient all-reduce with backward; `Zero1` shards optimizer state;
//! `DistributedSampler` splits a dataset. Processes find each other from torchrun's or SLURM's
//! environment variables (`DistConfig::from_env`), or from `munja-run`, munja's own launcher.
//!
//! ```no_run
//! use munja::dist::{Ddp, ProcessGroup};
//! use munja::nn::{Linear, Module};
//! use munja::{DType, Device, Tensor};
//! let pg = ProcessGroup::from_env(Device::Cpu)?; // world size 1 when not launched
//! let mut gen = munja::Generator::new(0);
//! let model = Ddp::new(Linear::new(4, 2, true, DType::F32, Device::Cpu, &mut gen)?, &pg)?;
//! let x = Tensor::randn(&[8, 4], DType::F32, Device::Cpu)?;
//! model.forward(&x)?.sum_all()?.backward()?; // gradients are averaged over the ranks here
//! # Ok::<(), munja::Error>(())
//! ```

mod config;
mod ddp;
mod group;
mod monitor;
mod nccl;
mod rendezvous;
mod sampler;
mod tcp;
mod wire;
mod zero;

pub use config::{first_host, DistConfig, DEFAULT_MASTER_PORT, DEFAULT_TIMEOUT};
pub use ddp::{Ddp, DdpConfig, NoSync, SyncStats, DEFAULT_BUCKET_BYTES};
pub use group::{ProcessGroup, ReduceOp, Work};
pub use sampler::DistributedSampler;
pub use zero::{clip_sharded_grad_norm, ShardedMemory, Zero1};
