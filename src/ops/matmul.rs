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
            return self.unsqueeze(0)?.matmul(rhs)?.squeeze(-2);
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
            let gb = if b.requires_grad() { Some(a.transpose(-1, -2)?.matmul(g)?.sum_to(b.dims())?) } else { None };
            Ok(vec![ga, gb])
        }))
    }
}
