//! Indexing ops: index_select / embedding, gather, scatter_add, index_add. Indices are I64 tensors.

use crate::autograd::record;
use crate::shape::resolve_dim;
use crate::{DType, Error, Result, Tensor};

fn check_index(op: &'static str, x: &Tensor, idx: &Tensor) -> Result<()> {
    if idx.dtype() != DType::I64 {
        return Err(Error::DType { op, expected: DType::I64, got: idx.dtype() });
    }
    if idx.device() != x.device() {
        return Err(Error::Device { op, a: x.device(), b: idx.device() });
    }
    Ok(())
}

impl Tensor {
    /// Rows (slices along `dim`) picked by a 1-D index tensor.
    pub fn index_select(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        check_index(OP, self, index)?;
        if index.rank() != 1 {
            return Err(Error::shape(OP, format!("index must be 1-D, got {:?}", index.dims())));
        }
        let d = resolve_dim(OP, dim, self.rank())?;
        let (x, idx) = (self.contiguous()?, index.contiguous()?);
        let s = x.storage().index_select(x.dims(), d, &idx.storage())?;
        let mut shape = self.dims().to_vec();
        shape[d] = index.numel();
        let out = Tensor::from_storage(s, &shape);
        let full = self.dims().to_vec();
        Ok(record(out, OP, &[&x], move |g| {
            // Zeros with g's rows added at idx; straight into fresh zeros, not zeros copied by index_add.
            let g = g.contiguous()?;
            let st = g.storage().index_add_to_zeros(&full, d, &idx.storage())?;
            Ok(vec![Some(Tensor::from_storage(st, &full))])
        }))
    }

    /// Looks up rows of `self` (a [vocab, dim] table) for indices of any shape: output [..idx, dim].
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::shape("embedding", format!("table must be 2-D, got {:?}", self.dims())));
        }
        check_index("embedding", self, ids)?;
        let mut shape = ids.dims().to_vec();
        shape.push(self.dims()[1]);
        // A bad token id is reported against the op the caller used, not the lookup underneath.
        let rows = self.index_select(0, &ids.flatten(0, -1)?).map_err(|e| match e {
            Error::Index { index, size, .. } => Error::Index { op: "embedding", index, size },
            e => e,
        })?;
        rows.reshape(shape)
    }

    /// self + src added at rows `index` along `dim` (deterministic, in index order).
    pub fn index_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_add";
        check_index(OP, self, index)?;
        super::check_same(OP, self, src)?;
        let d = resolve_dim(OP, dim, self.rank())?;
        let mut want = self.dims().to_vec();
        want[d] = index.numel();
        if index.rank() != 1 || src.dims() != want {
            return Err(Error::shape(
                OP,
                format!(
                    "source {:?} with index {:?} does not fit {:?} along dim {d}",
                    src.dims(),
                    index.dims(),
                    self.dims()
                ),
            ));
        }
        let (x, idx, s) = (self.contiguous()?, index.contiguous()?, src.contiguous()?);
        let st = x.storage().index_add(x.dims(), d, &idx.storage(), &s.storage())?;
        let out = Tensor::from_storage(st, self.dims());
        Ok(record(out, OP, &[&x, &s], move |g| Ok(vec![Some(g.clone()), Some(g.index_select(d as isize, &idx)?)])))
    }

    /// out[p] = self[p with p[dim] = index[p]]; `index` has this tensor's rank.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        check_index(OP, self, index)?;
        let d = resolve_dim(OP, dim, self.rank())?;
        Self::check_scatter_shape(OP, self, d, index)?;
        let (x, idx) = (self.contiguous()?, index.contiguous()?);
        let s = x.storage().gather(x.dims(), d, &idx.storage(), idx.dims())?;
        let out = Tensor::from_storage(s, index.dims());
        let full = self.dims().to_vec();
        Ok(record(out, OP, &[&x], move |g| {
            let z = Tensor::zeros(&full, g.dtype(), g.device())?;
            Ok(vec![Some(z.scatter_add(d as isize, &idx, g)?)])
        }))
    }

    /// self with src[p] added at p with p[dim] = index[p]; `index` and `src` have one shape.
    pub fn scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        check_index(OP, self, index)?;
        super::check_same(OP, self, src)?;
        let d = resolve_dim(OP, dim, self.rank())?;
        Self::check_scatter_shape(OP, self, d, index)?;
        if src.dims() != index.dims() {
            return Err(Error::shape(OP, format!("source {:?} and index {:?} differ", src.dims(), index.dims())));
        }
        let (x, idx, s) = (self.contiguous()?, index.contiguous()?, src.contiguous()?);
        let st = x.storage().scatter_add(x.dims(), d, &idx.storage(), idx.dims(), &s.storage())?;
        let out = Tensor::from_storage(st, self.dims());
        Ok(record(out, OP, &[&x, &s], move |g| Ok(vec![Some(g.clone()), Some(g.gather(d as isize, &idx)?)])))
    }

    fn check_scatter_shape(op: &'static str, x: &Tensor, d: usize, index: &Tensor) -> Result<()> {
        let ok = index.rank() == x.rank() && (0..x.rank()).all(|i| i == d || index.dims()[i] <= x.dims()[i]);
        if !ok {
            return Err(Error::shape(
                op,
                format!("index {:?} does not fit {:?} outside dim {d}", index.dims(), x.dims()),
            ));
        }
        Ok(())
    }
}
