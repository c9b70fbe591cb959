//! Indexing kernels on contiguous tensors: index_select (embedding lookup), index_add (its deterministic
//! backward), gather and scatter_add. Every index is checked; a bad one is an error, not a wild read.

use super::{any_map, any_map2, CpuStorage};
use crate::dtype::Element;
use crate::{Error, Result};

/// outer × size × inner decomposition of a contiguous shape around `dim`.
fn split(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
}

fn check(op: &'static str, idx: &[i64], size: usize) -> Result<()> {
    if let Some(&bad) = idx.iter().find(|&&i| i < 0 || i as usize >= size) {
        return Err(Error::Index { op, index: bad, size });
    }
    Ok(())
}

/// out[o, i, :] = x[o, idx[i], :] for contiguous x of `shape`.
pub fn index_select(x: &CpuStorage, shape: &[usize], dim: usize, idx: &[i64]) -> Result<CpuStorage> {
    let (outer, size, inner) = split(shape, dim);
    check("index_select", idx, size)?;
    fn go<T: Copy + Default>(v: &[T], outer: usize, size: usize, inner: usize, idx: &[i64]) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in idx {
                let s = (o * size + i as usize) * inner;
                out.extend_from_slice(&v[s..s + inner]);
            }
        }
        out
    }
    Ok(any_map!(x, |v| go(v, outer, size, inner, idx)))
}

/// out = x; out[o, idx[i], :] += src[o, i, :], in index order (deterministic).
pub fn index_add(x: &CpuStorage, shape: &[usize], dim: usize, idx: &[i64], src: &CpuStorage) -> Result<CpuStorage> {
    let (outer, size, inner) = split(shape, dim);
    check("index_add", idx, size)?;
    fn go<T: Element>(v: &[T], s: &[T], outer: usize, size: usize, inner: usize, idx: &[i64]) -> Vec<T> {
        // Accumulate in f64 so bf16/f16 gradients summed over many tokens keep their precision.
        let mut acc: Vec<f64> = v.iter().map(|x| x.to_f64()).collect();
        for o in 0..outer {
            for (k, &i) in idx.iter().enumerate() {
                let d = (o * size + i as usize) * inner;
                let s0 = (o * idx.len() + k) * inner;
                for j in 0..inner {
                    acc[d + j] += s[s0 + j].to_f64();
                }
            }
        }
        acc.into_iter().map(T::from_f64).collect()
    }
    Ok(any_map2!("index_add", x, src, |v, s| go(v, s, outer, size, inner, idx)))
}

/// out[p] = x[p with p[dim] replaced by idx[p]] for contiguous x and idx of the same rank.
pub fn gather(x: &CpuStorage, shape: &[usize], dim: usize, idx: &[i64], idx_shape: &[usize]) -> Result<CpuStorage> {
    check("gather", idx, shape[dim])?;
    let offs = gather_offsets(shape, dim, idx, idx_shape);
    Ok(any_map!(x, |v| offs.iter().map(|&o| v[o]).collect()))
}

/// out = x; out[p with p[dim] = idx[p]] += src[p] for every position p of idx.
pub fn scatter_add(
    x: &CpuStorage,
    shape: &[usize],
    dim: usize,
    idx: &[i64],
    idx_shape: &[usize],
    src: &CpuStorage,
) -> Result<CpuStorage> {
    check("scatter_add", idx, shape[dim])?;
    let offs = gather_offsets(shape, dim, idx, idx_shape);
    fn go<T: Element>(v: &[T], s: &[T], offs: &[usize]) -> Vec<T> {
        let mut acc: Vec<f64> = v.iter().map(|x| x.to_f64()).collect();
        for (k, &o) in offs.iter().enumerate() {
            acc[o] += s[k].to_f64();
        }
        acc.into_iter().map(T::from_f64).collect()
    }
    Ok(any_map2!("scatter_add", x, src, |v, s| go(v, s, &offs)))
}

/// Offsets into contiguous x of `shape` for every position of a contiguous index tensor.
fn gather_offsets(shape: &[usize], dim: usize, idx: &[i64], idx_shape: &[usize]) -> Vec<usize> {
    let xs = crate::shape::contiguous_strides(shape);
    let mut coord = vec![0usize; idx_shape.len()];
    let mut out = Vec::with_capacity(idx.len());
    for &i in idx {
        let mut off = 0;
        for d in 0..coord.len() {
            off += if d == dim { i as usize } else { coord[d] } * xs[d];
        }
        out.push(off);
        for d in (0..coord.len()).rev() {
            coord[d] += 1;
            if coord[d] < idx_shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    out
}
