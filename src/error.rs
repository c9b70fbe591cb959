//! One error type for every user mistake munja can detect. Messages name the op and what it was given,
//! so a failing training script points at the line that is wrong, not at a panic deep inside a kernel.

use crate::{DType, Device};

/// Everything that can go wrong in munja, as a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: dtype mismatch: expected {expected:?}, got {got:?}")]
    DType { op: &'static str, expected: DType, got: DType },

    #[error("{op}: dtype {dtype:?} is not supported ({detail})")]
    UnsupportedDType { op: &'static str, dtype: DType, detail: &'static str },

    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank}")]
    Dim { op: &'static str, dim: isize, rank: usize },

    #[error("{op}: tensors are on different devices: {a:?} and {b:?}")]
    Device { op: &'static str, a: Device, b: Device },

    #[error("{op}: device {device:?} is not available: {detail}")]
    DeviceUnavailable { op: &'static str, device: Device, detail: String },

    #[error("{op}: out of memory on {device}: asked for {requested} bytes, {free} bytes free")]
    OutOfMemory { op: &'static str, device: Device, requested: usize, free: usize },

    #[error("{op}: index {index} is out of range for size {size}")]
    Index { op: &'static str, index: i64, size: usize },

    #[error("{op}: {detail}")]
    Invalid { op: &'static str, detail: String },

    #[error("{path}: {detail}")]
    File { path: String, detail: String },

    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
    pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid { op, detail: detail.into() }
    }
    #[allow(dead_code)] // for io (checkpoints), which lands separately
    pub(crate) fn file(path: impl AsRef<std::path::Path>, detail: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().display().to_string(), detail: detail.into() }
    }
    #[allow(dead_code)]
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}
