//! Conversions between tensors and `ndarray` arrays (always through host memory).

use crate::{Device, Element, Error, Result, Tensor};
use ndarray::{ArrayD, IxDyn};

impl Tensor {
    /// A CPU tensor from an ndarray array (any memory order; the elements are copied row-major).
    pub fn from_ndarray<T: Element>(a: &ArrayD<T>) -> Result<Tensor> {
        let shape = a.shape().to_vec();
        Tensor::from_vec(a.iter().copied().collect(), &shape, Device::Cpu)
    }
    /// The elements as an ndarray array of this tensor's shape. The dtype must match `T`.
    pub fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>> {
        let v = self.to_vec::<T>()?;
        ArrayD::from_shape_vec(IxDyn(self.dims()), v).map_err(|e| Error::invalid("to_ndarray", e.to_string()))
    }
}
