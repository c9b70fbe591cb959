//! The CUDA backend: hand-written kernels from `kernels/*.cu`, compiled by build.rs into one fatbin that is
//! embedded in the crate, launched through the CUDA driver API (cudarc, loaded at run time so a CPU-only
//! machine needs no CUDA libraries), plus cuBLASLt for matmul.
//!
//! One context and one stream per device, created on first use. Ops only enqueue work on that stream:
//! nothing synchronises the host except reading data back (`to_cpu`). Device memory comes from a caching
//! allocator (see `alloc.rs`), so a steady training loop makes no driver allocations.
//!
//! Deviation from "CudaSlice<T> per dtype": storage is a raw device buffer tagged with its dtype, because
//! the caching allocator must own blocks across dtypes and a `CudaSlice` frees itself to the driver.

mod alloc;
mod blas;
mod device;
mod elementwise;
mod images;
mod index;
mod lists;
mod module;
mod norm;
mod optim;
mod profile;
mod random;
mod reduce;
mod ring;
mod softmax;
mod storage;

pub use alloc::driver_allocations;
pub use blas::{set_tf32, tf32_enabled};
pub use device::{device_count, event_elapsed_ms, is_available, kernel_image, kernel_launches, synchronize, time_ms};
pub use images::{
    driver_version, kernel_image_for, CUDA12_CUBINS, CUDA12_PTXAS_REPORT, CUDA12_TOOLKIT, FATBIN_TOOLKIT,
};
pub use module::{kernel_names, FATBIN, PTXAS_REPORT};
pub use profile::{profile_start, profile_stop, KernelTime, Profile};
pub use storage::CudaStorage;

pub(crate) use device::CudaDevice;

pub(crate) use blas::matmul;
pub(crate) use elementwise::{binary, cast, cast_into, compare, copy_into, unary, where_cond};
pub(crate) use index::{gather, index_add, index_add_to_zeros, index_select, scatter_add};
pub(crate) use lists::{adam_update_many, cast_many, clip_scale, sgd_update_many, sum_squares, LIST_CASTS};
pub(crate) use norm::{cross_entropy_backward, cross_entropy_forward, norm_backward, norm_forward};
pub(crate) use optim::{adam_update, sgd_update};
pub(crate) use random::dropout_apply;
pub(crate) use reduce::{argmax, reduce};
pub(crate) use softmax::{softmax, softmax_backward};

use crate::{DType, Result};

pub(crate) fn full(ordinal: usize, dtype: DType, n: usize, value: f64) -> Result<CudaStorage> {
    elementwise::full(&CudaDevice::get(ordinal)?, dtype, n, value)
}
pub(crate) fn uniform(ordinal: usize, dtype: DType, n: usize, seed: u64, block: u64) -> Result<CudaStorage> {
    random::uniform(&CudaDevice::get(ordinal)?, dtype, n, seed, block)
}
pub(crate) fn dropout_mask(
    ordinal: usize,
    dtype: DType,
    n: usize,
    seed: u64,
    block: u64,
    p: f64,
    scale: f64,
) -> Result<CudaStorage> {
    random::dropout_mask(&CudaDevice::get(ordinal)?, dtype, n, seed, block, p, scale)
}
pub(crate) fn normal(ordinal: usize, dtype: DType, n: usize, seed: u64, block: u64) -> Result<CudaStorage> {
    random::normal(&CudaDevice::get(ordinal)?, dtype, n, seed, block)
}
