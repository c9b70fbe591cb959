//! Helpers shared by the test files.

#![allow(dead_code)]

use munja::{Result, Tensor};

/// ‖a − b‖ / ‖b‖ over whole tensors (f64), the parity metric the project uses against references.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (x, y) = (a.to_vec_f64()?, b.to_vec_f64()?);
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let num: f64 = x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum::<f64>().sqrt();
    let den: f64 = y.iter().map(|q| q * q).sum::<f64>().sqrt();
    Ok(if den == 0.0 { num } else { num / den })
}
