//! Readable printing in PyTorch's style; large tensors show their first and last three entries per dim.

use crate::{DType, Tensor};
use std::fmt;

const EDGE: usize = 3;
const SUMMARISE_ABOVE: usize = 1000;

fn fmt_value(v: f64, dtype: DType) -> String {
    match dtype {
        DType::I64 | DType::U8 => format!("{}", v as i64),
        _ if v.is_nan() || v.is_infinite() => format!("{v}"),
        _ if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-4) => format!("{v:.4e}"),
        _ => format!("{v:.4}"),
    }
}

fn write_dim(
    f: &mut fmt::Formatter<'_>,
    vals: &[f64],
    shape: &[usize],
    dtype: DType,
    summarise: bool,
    indent: usize,
) -> fmt::Result {
    if shape.is_empty() {
        return write!(f, "{}", fmt_value(vals[0], dtype));
    }
    let n = shape[0];
    let inner: usize = shape[1..].iter().product();
    let show: Vec<Option<usize>> = if summarise && n > 2 * EDGE {
        (0..EDGE).map(Some).chain(std::iter::once(None)).chain((n - EDGE..n).map(Some)).collect()
    } else {
        (0..n).map(Some).collect()
    };
    write!(f, "[")?;
    for (k, i) in show.iter().enumerate() {
        if k > 0 {
            if shape.len() > 1 {
                write!(f, ",\n{}", " ".repeat(indent + 1))?;
            } else {
                write!(f, ", ")?;
            }
        }
        match i {
            Some(i) => write_dim(f, &vals[i * inner..(i + 1) * inner], &shape[1..], dtype, summarise, indent + 1)?,
            None => write!(f, "...")?,
        }
    }
    write!(f, "]")
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_vec_f64() {
            Ok(vals) => {
                write!(f, "tensor(")?;
                write_dim(f, &vals, self.dims(), self.dtype(), self.numel() > SUMMARISE_ABOVE, 7)?;
                write!(f, ", shape={:?}, dtype={}, device={})", self.dims(), self.dtype(), self.device())
            }
            Err(e) => write!(f, "tensor(<unreadable: {e}>)"),
        }
    }
}
