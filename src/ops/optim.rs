//! Fused optimizer updates on whole parameter tensors, in place (no autograd history). The optimizers in
//! `optim` call these; they are public so custom optimizers and tests can use the fused kernels directly.

use crate::backend::{AdamParams, SgdParams};
use crate::{Error, Result, Tensor};
use std::sync::Arc;

fn whole(op: &'static str, t: &Tensor) -> Result<()> {
    let l = t.layout();
    if !l.is_contiguous() || l.offset() != 0 || t.numel() != t.storage().len() {
        return Err(Error::invalid(op, "optimizer tensors must each own their whole contiguous storage"));
    }
    Ok(())
}

fn distinct(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for (i, a) in ts.iter().enumerate() {
        for b in &ts[i + 1..] {
            if Arc::ptr_eq(a.storage_arc(), b.storage_arc()) {
                return Err(Error::invalid(op, "parameter, gradient and state must be distinct tensors"));
            }
        }
    }
    Ok(())
}

impl Tensor {
    /// One fused Adam/AdamW step on this parameter: `m`, `v` are its moment buffers (same shape, dtype,
    /// device), `grad` its gradient.
    pub fn adam_update_(&self, grad: &Tensor, m: &Tensor, v: &Tensor, h: AdamParams) -> Result<()> {
        const OP: &str = "adam";
        for t in [self, grad, m, v] {
            whole(OP, t)?;
            super::check_same(OP, self, t)?;
        }
        distinct(OP, &[self, grad, m, v])?;
        let g = grad.storage();
        let (mut ms, mut vs) = (m.storage_mut(), v.storage_mut());
        self.storage_mut().adam_update(&g, &mut ms, &mut vs, h)
    }

    /// One fused SGD step on this parameter, with an optional momentum buffer.
    pub fn sgd_update_(&self, grad: &Tensor, buf: Option<&Tensor>, h: SgdParams) -> Result<()> {
        const OP: &str = "sgd";
        let mut all = vec![self, grad];
        all.extend(buf);
        for t in &all {
            whole(OP, t)?;
            super::check_same(OP, self, t)?;
        }
        distinct(OP, &all)?;
        let g = grad.storage();
        let mut b = buf.map(|b| b.storage_mut());
        self.storage_mut().sgd_update(&g, b.as_deref_mut(), h)
    }
}
