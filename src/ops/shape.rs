//! Shape ops. Most are views that copy nothing (reshape of contiguous data, permute, narrow, squeeze,
//! expand); `contiguous` and `cat` copy. Backward rules map the gradient back to the input's layout.

use crate::autograd::record;
use crate::shape::{resolve_dim, Layout};
use crate::{Error, Result, Tensor};

/// Something that names a shape: `[2, 3]`, `&[b, t, c]`, a Vec; `-1` (signed forms) infers one dim.
pub trait ShapeArg {
    fn to_dims(&self) -> Vec<isize>;
}
macro_rules! shape_arg {
    ($($t:ty),*) => {$(
        impl ShapeArg for [$t] {
            fn to_dims(&self) -> Vec<isize> { self.iter().map(|&d| d as isize).collect() }
        }
        impl<const N: usize> ShapeArg for [$t; N] {
            fn to_dims(&self) -> Vec<isize> { self.iter().map(|&d| d as isize).collect() }
        }
        impl ShapeArg for Vec<$t> {
            fn to_dims(&self) -> Vec<isize> { self.iter().map(|&d| d as isize).collect() }
        }
    )*};
}
shape_arg!(usize, isize, i32, i64);
impl<T: ShapeArg + ?Sized> ShapeArg for &T {
    fn to_dims(&self) -> Vec<isize> {
        (**self).to_dims()
    }
}

fn infer_shape(op: &'static str, dims: &[isize], numel: usize, from: &[usize]) -> Result<Vec<usize>> {
    let infer: Vec<usize> = (0..dims.len()).filter(|&i| dims[i] == -1).collect();
    if infer.len() > 1 || dims.iter().any(|&d| d < -1) {
        return Err(Error::shape(
            op,
            format!("invalid target shape {dims:?}: at most one -1 and no other negative size"),
        ));
    }
    let known: usize = dims.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
    let mut out: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(&i) = infer.first() {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(Error::shape(op, format!("cannot reshape {from:?} ({numel} elements) to {dims:?}")));
        }
        out[i] = numel / known;
    }
    if out.iter().product::<usize>() != numel {
        return Err(Error::shape(op, format!("cannot reshape {from:?} ({numel} elements) to {dims:?}")));
    }
    Ok(out)
}

impl Tensor {
    /// The same elements laid out row-major with no gaps (a copy only when needed).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() && self.layout().offset() == 0 && self.storage().len() == self.numel() {
            return Ok(self.clone());
        }
        let s = self.storage().copy_strided(self.layout())?;
        let out = Tensor::from_storage(s, self.dims());
        Ok(record(out, "contiguous", &[self], |g| Ok(vec![Some(g.clone())])))
    }

    /// The same elements in a new shape; `-1` infers one dim. A view when the layout allows it.
    pub fn reshape(&self, shape: impl ShapeArg) -> Result<Tensor> {
        let new = infer_shape("reshape", &shape.to_dims(), self.numel(), self.dims())?;
        if new == self.dims() {
            return Ok(self.clone());
        }
        let src = if self.is_contiguous() { self.clone() } else { self.contiguous()? };
        let layout = src.layout().reshape(&new).expect("contiguous layouts reshape");
        let out = src.view_with(layout);
        let old = self.dims().to_vec();
        Ok(record(out, "reshape", &[&src], move |g| Ok(vec![Some(g.reshape(&old)?)])))
    }

    /// Merges dims start..=end into one.
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape([1usize]);
        }
        let (s, e) = (resolve_dim("flatten", start, self.rank())?, resolve_dim("flatten", end, self.rank())?);
        if s > e {
            return Err(Error::invalid("flatten", format!("start dim {start} is after end dim {end}")));
        }
        let mut shape: Vec<usize> = self.dims()[..s].to_vec();
        shape.push(self.dims()[s..=e].iter().product());
        shape.extend_from_slice(&self.dims()[e + 1..]);
        self.reshape(shape)
    }

    /// Reorders dims: output dim i is input dim perm[i].
    pub fn permute(&self, perm: impl ShapeArg) -> Result<Tensor> {
        let perm = perm.to_dims();
        if perm.len() != self.rank() {
            return Err(Error::shape("permute", format!("permutation {perm:?} for a tensor of rank {}", self.rank())));
        }
        let p: Vec<usize> = perm.iter().map(|&d| resolve_dim("permute", d, self.rank())).collect::<Result<_>>()?;
        let mut seen = vec![false; p.len()];
        for &d in &p {
            if std::mem::replace(&mut seen[d], true) {
                return Err(Error::invalid("permute", format!("{perm:?} is not a permutation")));
            }
        }
        let out = self.view_with(self.layout().permute(&p));
        let mut inv = vec![0usize; p.len()];
        for (i, &d) in p.iter().enumerate() {
            inv[d] = i;
        }
        Ok(record(out, "permute", &[self], move |g| Ok(vec![Some(g.permute(&inv)?)])))
    }

    /// Swaps two dims (a view).
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let (a, b) = (resolve_dim("transpose", d0, self.rank())?, resolve_dim("transpose", d1, self.rank())?);
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(perm)
    }

    /// The transpose of a 2-D tensor.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::shape("t", format!("t() needs a 2-D tensor, got shape {:?}", self.dims())));
        }
        self.transpose(0, 1)
    }

    /// `len` elements of `dim` starting at `start` (a view).
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = resolve_dim("narrow", dim, self.rank())?;
        // checked_add: a huge start must be an error, not a wrapped-around offset.
        if start.checked_add(len).is_none_or(|end| end > self.dims()[d]) {
            return Err(Error::shape(
                "narrow",
                format!(
                    "range {start}..{} exceeds size {} of dim {d} in {:?}",
                    start as u128 + len as u128,
                    self.dims()[d],
                    self.dims()
                ),
            ));
        }
        let out = self.view_with(self.layout().narrow(d, start, len));
        let full = self.dims().to_vec();
        Ok(record(out, "narrow", &[self], move |g| {
            let s = g.storage().zeros_with_narrow(g.layout(), &full, d, start)?;
            Ok(vec![Some(Tensor::from_storage(s, &full))])
        }))
    }

    /// Removes a dim of size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = resolve_dim("squeeze", dim, self.rank())?;
        if self.dims()[d] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!("dim {d} of {:?} has size {}, not 1", self.dims(), self.dims()[d]),
            ));
        }
        let out = self.view_with(self.layout().squeeze(d));
        Ok(record(out, "squeeze", &[self], move |g| Ok(vec![Some(g.unsqueeze(d as isize)?)])))
    }

    /// Inserts a dim of size 1 at `dim` (which may equal the rank).
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let d = resolve_dim("unsqueeze", dim, self.rank() + 1)?;
        let out = self.view_with(self.layout().unsqueeze(d));
        Ok(record(out, "unsqueeze", &[self], move |g| Ok(vec![Some(g.squeeze(d as isize)?)])))
    }

    /// A view broadcast to `shape` (size-1 dims repeat without copying); the gradient is summed back.
    pub fn expand(&self, shape: impl ShapeArg) -> Result<Tensor> {
        let dims = shape.to_dims();
        let extra = dims
            .len()
            .checked_sub(self.rank())
            .ok_or_else(|| Error::shape("expand", format!("cannot expand {:?} to fewer dims {dims:?}", self.dims())))?;
        let mut target = Vec::with_capacity(dims.len());
        for (i, &d) in dims.iter().enumerate() {
            let own = if i >= extra { Some(self.dims()[i - extra]) } else { None };
            let t = match (d, own) {
                (-1, Some(o)) => o,
                (d, Some(o)) if d >= 0 && (o == d as usize || o == 1) => d as usize,
                (d, None) if d >= 0 => d as usize,
                _ => return Err(Error::shape("expand", format!("cannot expand {:?} to {dims:?}", self.dims()))),
            };
            target.push(t);
        }
        if target == self.dims() {
            return Ok(self.clone());
        }
        let out = self.view_with(self.layout().broadcast_to(&target));
        let orig = self.dims().to_vec();
        Ok(record(out, "expand", &[self], move |g| Ok(vec![Some(g.sum_to(&orig)?)])))
    }

    /// Sums a broadcast gradient back to `shape` (the inverse of broadcasting).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.dims() == shape {
            return Ok(self.clone());
        }
        if shape.len() > self.rank() {
            return Err(Error::shape("sum_to", format!("cannot sum {:?} to {shape:?}", self.dims())));
        }
        let extra = self.rank() - shape.len();
        let mut dims: Vec<isize> = (0..extra as isize).collect();
        for (i, &s) in shape.iter().enumerate() {
            let d = self.dims()[i + extra];
            if s == 1 && d != 1 {
                dims.push((i + extra) as isize);
            } else if s != d {
                return Err(Error::shape("sum_to", format!("cannot sum {:?} to {shape:?}", self.dims())));
            }
        }
        if dims.is_empty() {
            return self.reshape(shape);
        }
        self.sum(&dims, true)?.reshape(shape)
    }

    /// Concatenates tensors of equal shape except along `dim`.
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        let d = resolve_dim("cat", dim, first.rank())?;
        let mut shape = first.dims().to_vec();
        shape[d] = 0;
        for t in tensors {
            super::check_same("cat", first, t)?;
            let ok = t.rank() == first.rank() && (0..t.rank()).all(|i| i == d || t.dims()[i] == first.dims()[i]);
            if !ok {
                return Err(Error::shape(
                    "cat",
                    format!("shapes {:?} and {:?} differ outside dim {d}", first.dims(), t.dims()),
                ));
            }
            shape[d] += t.dims()[d];
        }
        let out = Tensor::zeros(&shape, first.dtype(), first.device())?;
        let mut sizes = Vec::with_capacity(tensors.len());
        {
            let mut dst = out.storage_mut();
            let base = Layout::contiguous(&shape);
            let mut start = 0;
            for t in tensors {
                let n = t.dims()[d];
                dst.copy_into(&base.narrow(d, start, n), &t.storage(), t.layout())?;
                sizes.push(n);
                start += n;
            }
        }
        let out = out.detach_as_result();
        let inputs: Vec<&Tensor> = tensors.to_vec();
        Ok(record(out, "cat", &inputs, move |g| {
            let mut start = 0;
            let mut grads = Vec::with_capacity(sizes.len());
            for &n in &sizes {
                grads.push(Some(g.narrow(d as isize, start, n)?.contiguous()?));
                start += n;
            }
            Ok(grads)
        }))
    }

    /// Stacks tensors of one shape along a new dim.
    pub fn stack(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("stack", "needs at least one tensor"))?;
        let d = resolve_dim("stack", dim, first.rank() + 1)? as isize;
        let parts: Vec<Tensor> = tensors.iter().map(|t| t.unsqueeze(d)).collect::<Result<_>>()?;
        if let Some(bad) = tensors.iter().find(|t| t.dims() != first.dims()) {
            return Err(Error::shape("stack", format!("shapes {:?} and {:?} differ", first.dims(), bad.dims())));
        }
        Tensor::cat(&parts.iter().collect::<Vec<_>>(), d)
    }

    /// Views of consecutive pieces of `size` along `dim` (the last may be shorter).
    pub fn split(&self, size: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = resolve_dim("split", dim, self.rank())?;
        if size == 0 {
            return Err(Error::invalid("split", "split size must be positive"));
        }
        let n = self.dims()[d];
        (0..n).step_by(size).map(|s| self.narrow(d as isize, s, size.min(n - s))).collect()
    }

    /// `chunks` views of (nearly) equal size along `dim`, as `torch.chunk`.
    pub fn chunk(&self, chunks: usize, dim: isize) -> Result<Vec<Tensor>> {
        if chunks == 0 {
            return Err(Error::invalid("chunk", "number of chunks must be positive"));
        }
        let n = self.dims()[resolve_dim("chunk", dim, self.rank())?];
        self.split(n.div_ceil(chunks).max(1), dim)
    }

    /// A U8 [n, n] mask with 1 on and below the diagonal: position i may attend to j <= i.
    pub fn causal_mask(n: usize, device: crate::Device) -> Result<Tensor> {
        let i = Tensor::arange(0.0, n as f64, 1.0, crate::DType::I64, device)?;
        i.unsqueeze(1)?.ge(&i.unsqueeze(0)?)
    }

    /// Keeps the lower triangle of the last two dims (j <= i + diagonal), zeroing the rest.
    pub fn tril(&self, diagonal: i64) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::shape("tril", format!("needs at least 2 dims, got {:?}", self.dims())));
        }
        let (r, c) = (self.dims()[self.rank() - 2], self.dims()[self.rank() - 1]);
        let i = Tensor::arange(0.0, r as f64, 1.0, crate::DType::I64, self.device())?.add_scalar_i64(diagonal)?;
        let j = Tensor::arange(0.0, c as f64, 1.0, crate::DType::I64, self.device())?;
        let keep = j.unsqueeze(0)?.le(&i.unsqueeze(1)?)?;
        Tensor::where_cond(&keep, self, &self.zeros_like()?)
    }

    fn add_scalar_i64(&self, v: i64) -> Result<Tensor> {
        self.add(&Tensor::full(&[], v as f64, crate::DType::I64, self.device())?)
    }

    /// A fresh op result from a tensor built in place (no history yet).
    fn detach_as_result(&self) -> Tensor {
        Tensor::from_parts(self.storage_arc().clone(), self.layout().clone(), false)
    }
}
