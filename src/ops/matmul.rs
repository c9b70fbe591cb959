//! Matrix multiply, 2-D or batched with NumPy broadcasting of the batch dims; 1-D operands are treated as
//! a row (left) or a column (right) vector and the added dim is dropped, as in torch.matmul.

use super::check_same;
use crate::autograd::record;
use crate::shape::broadcast_shapes;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Matrix product. Transposed views (`w.t()`) multiply without a copy.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        check_same(OP, self, rhs)?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::shape(
                OP,
                format!("needs at least 1-D operands, got {:?} and {:?}", self.dims(), rhs.dims()),
            ));
        }
        if self.rank() == 1 {
            // The inner call has already dropped the column dim when rhs is a vector too (a dot product).
            return self.unsqueeze(0)?.matmul(rhs)?.squeeze(if rhs.rank() == 1 { -1 } else { -2 });
        }
        if rhs.rank() == 1 {
            return self.matmul(&rhs.unsqueeze(1)?)?.squeeze(-1);
        }
        let (ra, rb) = (self.rank(), rhs.rank());
        let (m, k) = (self.dims()[ra - 2], self.dims()[ra - 1]);
        let (k2, n) = (rhs.dims()[rb - 2], rhs.dims()[rb - 1]);
        if k != k2 {
            return Err(Error::shape(OP, format!("inner dims differ: {:?} @ {:?}", self.dims(), rhs.dims())));
        }
        let batch = broadcast_shapes(OP, &self.dims()[..ra - 2], &rhs.dims()[..rb - 2])?;
        let full = |mut b: Vec<usize>, r: usize, c: usize| {
            b.push(r);
            b.push(c);
            b
        };
        let (sa, sb) = (full(batch.clone(), m, k), full(batch.clone(), k, n));
        let (la, lb) = (self.layout().broadcast_to(&sa), rhs.layout().broadcast_to(&sb));
        let s = self.storage().matmul(&la, &rhs.storage(), &lb)?;
        let out = Tensor::from_storage(s, &full(batch, m, n));
        let (a, b) = (self.clone(), rhs.clone());
        Ok(record(out, OP, &[self, rhs], move |g| {
            let ga = if a.requires_grad() { Some(g.matmul(&b.transpose(-1, -2)?)?.sum_to(a.dims())?) } else { None };
            let gb = if b.requires_grad() { Some(rhs_grad(&a, &b, g)?) } else { None };
            Ok(vec![ga, gb])
        }))
    }
}

/// Gradient of the right operand, aᵀ·g summed over broadcast batch dims, computed so that it needs no
/// strided copy afterwards: a 2-D weight used by a batched input gets one GEMM over the flattened batch,
/// and a weight used through a transposed view (`x.matmul(&w.t())`, as Linear does) gets its gradient
/// computed as (gᵀ·a)ᵀ, which is contiguous in the weight's own layout.
fn rhs_grad(a: &Tensor, b: &Tensor, g: &Tensor) -> Result<Tensor> {
    if b.rank() != 2 {
        return a.transpose(-1, -2)?.matmul(g)?.sum_to(b.dims());
    }
    let (k, n) = (b.dims()[0], b.dims()[1]);
    let (a2, g2) = if a.rank() > 2 {
        (a.reshape([-1, k as isize])?, g.reshape([-1, n as isize])?)
    } else {
        (a.clone(), g.clone())
    };
    let transposed = b.strides()[0] == 1 && b.strides()[1] != 1;
    if transposed {
        g2.t()?.matmul(&a2)?.t()
    } else {
        a2.t()?.matmul(&g2)
    }
}
