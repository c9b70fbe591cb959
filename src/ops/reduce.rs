//! Reductions: sum, mean, max, min, argmax, var over one or more dims, with keepdim.

use crate::autograd::record;
use crate::backend::ReduceOp;
use crate::shape::{resolve_dim, resolve_dims};
use crate::{DType, Result, Tensor};

/// The shape after reducing `dims`, with or without the reduced dims kept as size 1.
fn reduced_shape(shape: &[usize], dims: &[usize], keepdim: bool) -> Vec<usize> {
    (0..shape.len())
        .filter_map(|i| match (dims.contains(&i), keepdim) {
            (true, true) => Some(1),
            (true, false) => None,
            (false, _) => Some(shape[i]),
        })
        .collect()
}

impl Tensor {
    fn reduce_raw(
        &self,
        name: &'static str,
        dims: &[isize],
        keepdim: bool,
        op: ReduceOp,
    ) -> Result<(Tensor, Vec<usize>)> {
        let d = resolve_dims(name, dims, self.rank())?;
        let s = self.storage().reduce(self.layout(), &d, op)?;
        Ok((Tensor::from_storage(s, &reduced_shape(self.dims(), &d, keepdim)), d))
    }

    /// Sum over `dims` (all dims when empty).
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let (out, d) = self.reduce_raw("sum", dims, keepdim, ReduceOp::Sum)?;
        let (shape, kept) = (self.dims().to_vec(), reduced_shape(self.dims(), &d, true));
        Ok(record(out, "sum", &[self], move |g| Ok(vec![Some(g.reshape(&kept)?.expand(&shape)?.contiguous()?)])))
    }
    /// Sum of all elements, as a 0-d tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&[], false)
    }
    /// Mean over `dims` (all dims when empty).
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let d = resolve_dims("mean", dims, self.rank())?;
        let n: usize = d.iter().map(|&i| self.dims()[i]).product();
        self.sum(dims, keepdim)?.div_scalar(n.max(1) as f64)
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&[], false)
    }
    /// Maximum over `dims`; the gradient is shared evenly among tied maxima.
    pub fn max(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extreme("max", dims, keepdim, ReduceOp::Max)
    }
    /// Minimum over `dims`; the gradient is shared evenly among tied minima.
    pub fn min(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extreme("min", dims, keepdim, ReduceOp::Min)
    }
    fn extreme(&self, name: &'static str, dims: &[isize], keepdim: bool, op: ReduceOp) -> Result<Tensor> {
        if self.numel() == 0 {
            return Err(crate::Error::invalid(name, "cannot reduce an empty tensor"));
        }
        let (out, d) = self.reduce_raw(name, dims, keepdim, op)?;
        let (x, y, kept) = (self.clone(), out.detach(), reduced_shape(self.dims(), &d, true));
        let dims_i: Vec<isize> = d.iter().map(|&i| i as isize).collect();
        Ok(record(out, name, &[self], move |g| {
            let yk = y.reshape(&kept)?;
            let hit = x.eq(&yk)?.to_dtype(x.dtype())?;
            let count = hit.sum(&dims_i, true)?;
            Ok(vec![Some(hit.mul(&g.reshape(&kept)?.div(&count)?)?)])
        }))
    }
    /// Index of the maximum along `dim` (first on ties), as I64. Not differentiable.
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = resolve_dim("argmax", dim, self.rank())?;
        let s = self.storage().argmax(self.layout(), d)?;
        Ok(Tensor::from_storage(s, &reduced_shape(self.dims(), &[d], keepdim)))
    }
    /// Variance over `dims` with `correction` (1 for the unbiased estimate, as torch.var's default).
    pub fn var(&self, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        let d = resolve_dims("var", dims, self.rank())?;
        let n: usize = d.iter().map(|&i| self.dims()[i]).product();
        let mu = self.mean(dims, true)?;
        let c = self.sub(&mu)?;
        let denom = n.saturating_sub(correction).max(1) as f64;
        c.mul(&c)?.sum(dims, keepdim)?.div_scalar(denom)
    }
    /// Count of non-zero mask entries etc.: sum of a U8/I64 tensor as I64 (no gradient).
    pub fn count_nonzero(&self) -> Result<Tensor> {
        self.ne(&Tensor::scalar(0.0, self.dtype(), self.device())?)?
            .reduce_raw("count_nonzero", &[], false, ReduceOp::Sum)
            .map(|(t, _)| t)
    }
    /// Whether this is an integer or mask tensor (not differentiable).
    pub fn is_integral(&self) -> bool {
        matches!(self.dtype(), DType::I64 | DType::U8)
    }
}
