//! The ops: each file holds one family's forward (dispatching to `Storage`) and its backward rule. Backward
//! rules are written with Tensor ops, so they run on whatever device the forward ran on.

mod display;
mod dropout;
mod elementwise;
mod index;
mod loss;
mod matmul;
mod norm;
mod optim;
mod reduce;
mod shape;
mod softmax;

pub use shape::ShapeArg;

use crate::shape::{broadcast_shapes, Layout};
use crate::{Error, Result, Tensor};

/// Both tensors must be on one device with one dtype.
pub(crate) fn check_same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::Device { op, a: a.device(), b: b.device() });
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DType { op, expected: a.dtype(), got: b.dtype() });
    }
    Ok(())
}

/// The broadcast shape of two tensors and each one's layout viewed at that shape.
pub(crate) fn broadcast_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(Vec<usize>, Layout, Layout)> {
    let shape = broadcast_shapes(op, a.dims(), b.dims())?;
    Ok((shape.clone(), a.layout().broadcast_to(&shape), b.layout().broadcast_to(&shape)))
}
