//! Layer norm and RMS norm over the trailing dims that the weight covers, fused forward and backward.

use crate::autograd::record;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Layer norm over the last `normalized_shape.len()` dims: (x − mean)/sqrt(var + eps)·weight + bias.
    pub fn layer_norm(
        &self,
        normalized_shape: &[usize],
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        self.norm_impl("layer_norm", normalized_shape, weight, bias, eps, false)
    }
    /// RMS norm over the last `normalized_shape.len()` dims: x/sqrt(mean(x²) + eps)·weight.
    pub fn rms_norm(&self, normalized_shape: &[usize], weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        self.norm_impl("rms_norm", normalized_shape, weight, None, eps, true)
    }
    fn norm_impl(
        &self,
        name: &'static str,
        normalized_shape: &[usize],
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
        rms: bool,
    ) -> Result<Tensor> {
        let k = normalized_shape.len();
        if k == 0 || k > self.rank() || &self.dims()[self.rank() - k..] != normalized_shape {
            return Err(Error::shape(
                name,
                format!("normalized shape {normalized_shape:?} is not the trailing shape of {:?}", self.dims()),
            ));
        }
        for p in [weight, bias].into_iter().flatten() {
            super::check_same(name, self, p)?;
            if p.dims() != normalized_shape {
                return Err(Error::shape(
                    name,
                    format!("parameter shape {:?} differs from normalized shape {normalized_shape:?}", p.dims()),
                ));
            }
        }
        let n: usize = normalized_shape.iter().product();
        let x = self.contiguous()?;
        let (w, b) = (weight.map(|w| w.contiguous()).transpose()?, bias.map(|b| b.contiguous()).transpose()?);
        let (y, mean, rstd) = {
            let (ws, bs) = (w.as_ref().map(|w| w.storage()), b.as_ref().map(|b| b.storage()));
            x.storage().norm_forward(ws.as_deref(), bs.as_deref(), n, eps, rms)?
        };
        let out = Tensor::from_storage(y, self.dims());
        let mut inputs: Vec<&Tensor> = vec![&x];
        inputs.extend(w.iter());
        inputs.extend(b.iter());
        let (xs, ws, has_bias) = (x.detach(), w.as_ref().map(|w| w.detach()), b.is_some());
        let wshape = normalized_shape.to_vec();
        Ok(record(out, name, &inputs, move |g| {
            let g = g.contiguous()?;
            let (gx, gw, gb) = {
                let wst = ws.as_ref().map(|w| w.storage());
                xs.storage().norm_backward(wst.as_deref(), has_bias, &mean, &rstd, &g.storage(), n, rms)?
            };
            let mut grads = vec![Some(Tensor::from_storage(gx, xs.dims()))];
            if let Some(gw) = gw {
                grads.push(Some(Tensor::from_storage(gw, &wshape)));
            }
            if let Some(gb) = gb {
                grads.push(Some(Tensor::from_storage(gb, &wshape)));
            }
            Ok(grads)
        }))
    }
}
