//! Launchers for the list kernels of kernels/optim.cu (PyTorch's multi_tensor_apply idea): one launch
//! covers up to TENSOR_LIST_MAX tensors of a dtype, its blocks taking TENSOR_LIST_CHUNK elements each.
//! A training step's per-parameter work (clipping, the Adam or SGD update, mixed precision's casts) is then a
//! handful of launches instead of one or more per parameter: a GPT step had spent 76 Adam launches and
//! 160 casts on it, most on small tensors, with more time between launches than in them.

use super::device::launch;
use super::elementwise::full;
use super::optim::{adam_constants, check};
use super::storage::{intern, kname, need_float, same_device, CudaStorage};
use crate::backend::{AdamParams, ReduceOp, SgdParams};
use crate::shape::Layout;
use crate::{DType, Error, Result};

const THREADS: u32 = 256;

/// Tensors per launch and elements per block (TENSOR_LIST_MAX and TENSOR_LIST_CHUNK in kernels/optim.cu).
const TENSOR_LIST_MAX: usize = 32;
const TENSOR_LIST_CHUNK: usize = 65536;

/// The part every list struct of kernels/optim.cu ends with: run lengths, each run's first block (and
/// the launch's block count after the last), the run count.
#[repr(C)]
#[derive(Clone, Copy)]
struct Chunks {
    len: [i64; TENSOR_LIST_MAX],
    first_chunk: [i64; TENSOR_LIST_MAX + 1],
    count: i32,
}

impl Chunks {
    /// The chunks of runs of `lens` elements (at most TENSOR_LIST_MAX), and the launch's blocks.
    fn of(lens: impl Iterator<Item = usize>) -> (Chunks, usize) {
        let mut c = Chunks { len: [0; TENSOR_LIST_MAX], first_chunk: [0; TENSOR_LIST_MAX + 1], count: 0 };
        let mut blocks = 0usize;
        for (i, n) in lens.enumerate() {
            c.len[i] = n as i64;
            c.first_chunk[i] = blocks as i64;
            blocks += n.div_ceil(TENSOR_LIST_CHUNK);
            c.count = i as i32 + 1;
        }
        c.first_chunk[c.count as usize] = blocks as i64;
        (c, blocks)
    }
}

/// `struct TensorList` of kernels/optim.cu: one address per run.
#[repr(C)]
#[derive(Clone, Copy)]
struct TensorList {
    ptr: [u64; TENSOR_LIST_MAX],
    chunks: Chunks,
}

/// `struct CopyList` of kernels/optim.cu: a source and a destination address per run.
#[repr(C)]
#[derive(Clone, Copy)]
struct CopyList {
    src: [u64; TENSOR_LIST_MAX],
    dst: [u64; TENSOR_LIST_MAX],
    chunks: Chunks,
}

/// `struct AdamList` of kernels/optim.cu: parameter, gradient and both moments per run.
#[repr(C)]
#[derive(Clone, Copy)]
struct AdamList {
    p: [u64; TENSOR_LIST_MAX],
    g: [u64; TENSOR_LIST_MAX],
    m: [u64; TENSOR_LIST_MAX],
    v: [u64; TENSOR_LIST_MAX],
    chunks: Chunks,
}

/// `struct SgdList` of kernels/optim.cu: parameter, gradient and momentum buffer (0 without) per run.
#[repr(C)]
#[derive(Clone, Copy)]
struct SgdList {
    p: [u64; TENSOR_LIST_MAX],
    g: [u64; TENSOR_LIST_MAX],
    b: [u64; TENSOR_LIST_MAX],
    chunks: Chunks,
}

/// The launches for (source, destination, elements) runs: lists of up to TENSOR_LIST_MAX non-empty runs,
/// each with its block count.
fn copy_lists(runs: &[(u64, u64, usize)]) -> Vec<(CopyList, usize)> {
    let non_empty: Vec<_> = runs.iter().filter(|r| r.2 > 0).collect();
    non_empty
        .chunks(TENSOR_LIST_MAX)
        .map(|group| {
            let (chunks, blocks) = Chunks::of(group.iter().map(|r| r.2));
            let mut l = CopyList { src: [0; TENSOR_LIST_MAX], dst: [0; TENSOR_LIST_MAX], chunks };
            for (i, &&(src, dst, _)) in group.iter().enumerate() {
                (l.src[i], l.dst[i]) = (src, dst);
            }
            (l, blocks)
        })
        .collect()
}

/// Checks that a run (`at`, `len`) of float storage `s` lies inside it, on the device of `on`.
fn check_run(op: &'static str, on: &CudaStorage, s: &CudaStorage, at: usize, len: usize) -> Result<()> {
    same_device(op, on, s)?;
    if !s.dtype().is_float() {
        return Err(need_float(op, s.dtype()));
    }
    if at + len > s.len() {
        return Err(Error::invalid(op, format!("elements {at}..{} of a storage of {}", at + len, s.len())));
    }
    Ok(())
}

/// Σ x² over every element of `parts` (storage, first element, length; contiguous runs on one device), as
/// a one-element f64 storage on that device: squares in f32 (f64 for f64), sums in f64 in a fixed order.
/// One launch per 32 tensors of a dtype plus one sum, instead of several launches per tensor.
pub(crate) fn sum_squares(parts: &[(&CudaStorage, usize, usize)]) -> Result<CudaStorage> {
    const OP: &str = "sum_squares";
    let Some(&(first, _, _)) = parts.first() else {
        return Err(Error::invalid(OP, "no tensors"));
    };
    for &(s, at, len) in parts {
        check_run(OP, first, s, at, len)?;
    }
    let dev = first.dev();
    let chunks: usize = parts.iter().map(|p| p.2.div_ceil(TENSOR_LIST_CHUNK)).sum();
    // One partial per chunk; a zero partial stands in when every tensor is empty.
    let partial =
        if chunks == 0 { full(dev, DType::F64, 1, 0.0)? } else { CudaStorage::alloc(dev, DType::F64, chunks)? };
    let mut base = 0usize;
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let of_type: Vec<_> = parts.iter().filter(|p| p.0.dtype() == dtype && p.2 > 0).collect();
        for group in of_type.chunks(TENSOR_LIST_MAX) {
            let (chunks, blocks) = Chunks::of(group.iter().map(|p| p.2));
            let mut tl = TensorList { ptr: [0; TENSOR_LIST_MAX], chunks };
            for (i, &&(s, at, _)) in group.iter().enumerate() {
                tl.ptr[i] = s.ptr_at(at);
            }
            launch!(dev, kname("sum_squares", dtype), (blocks as u32, 1, 1), (THREADS, 1, 1);
                tl, partial.ptr(), base as i64)?;
            base += blocks;
        }
    }
    super::reduce(&partial, &Layout::contiguous(&[chunks.max(1)]), &[0], ReduceOp::Sum)
}

/// Gradient clipping's scaling: for each (storage, first element, length) run, a new storage holding the
/// run times max_norm / (sqrt(total) + 1e-6) where that factor is below 1, else a copy; `total` is the
/// one-element f64 sum of squares on the device (`sum_squares`). Nothing is read back to the host (the
/// kernel derives the factor), and a launch covers 32 runs of a dtype.
pub(crate) fn clip_scale(
    parts: &[(&CudaStorage, usize, usize)],
    total: &CudaStorage,
    max_norm: f64,
) -> Result<Vec<CudaStorage>> {
    const OP: &str = "clip_grad_norm";
    if total.dtype() != DType::F64 || total.len() != 1 {
        return Err(Error::invalid(OP, "the total must be one f64 element"));
    }
    let mut outs = Vec::with_capacity(parts.len());
    for &(s, at, len) in parts {
        check_run(OP, total, s, at, len)?;
        outs.push(CudaStorage::alloc(total.dev(), s.dtype(), len)?);
    }
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let runs: Vec<_> = parts
            .iter()
            .zip(&outs)
            .filter(|(p, _)| p.0.dtype() == dtype)
            .map(|(&(s, at, len), out)| (s.ptr_at(at), out.ptr(), len))
            .collect();
        for (l, blocks) in copy_lists(&runs) {
            launch!(total.dev(), kname("clip_scale", dtype), (blocks as u32, 1, 1), (THREADS, 1, 1);
                l, total.ptr(), max_norm)?;
        }
    }
    Ok(outs)
}

/// The (source, destination) dtype pairs `cast_many` launches as lists: f32 masters and 16-bit working
/// copies, both ways.
pub(crate) const LIST_CASTS: [(DType, DType); 4] =
    [(DType::F32, DType::BF16), (DType::F32, DType::F16), (DType::BF16, DType::F32), (DType::F16, DType::F32)];

/// One run of `cast_many`: source, its first element, destination, its first element, length.
pub(crate) type CastRun<'a> = (&'a CudaStorage, usize, &'a mut CudaStorage, usize, usize);

/// Each run's values converted into its destination (as `cast` converts them), a launch per 32 runs of
/// one of the LIST_CASTS pairs. All on one device; the destinations must not overlap the sources.
pub(crate) fn cast_many(runs: &mut [CastRun<'_>]) -> Result<()> {
    const OP: &str = "cast_many";
    let Some(first) = runs.first() else { return Ok(()) };
    let dev = first.0.dev().clone();
    for (s, at, d, to, len) in runs.iter() {
        check_run(OP, first.0, s, *at, *len)?;
        check_run(OP, first.0, d, *to, *len)?;
        if !LIST_CASTS.contains(&(s.dtype(), d.dtype())) {
            return Err(Error::UnsupportedDType { op: OP, dtype: d.dtype(), detail: "lists cast f32 <-> bf16/f16" });
        }
    }
    for (from, to) in LIST_CASTS {
        let of_pair: Vec<_> = runs
            .iter()
            .filter(|r| (r.0.dtype(), r.2.dtype()) == (from, to))
            .map(|(s, at, d, at_d, len)| (s.ptr_at(*at), d.ptr_at(*at_d), *len))
            .collect();
        for (l, blocks) in copy_lists(&of_pair) {
            let name = intern(format!("cast_list_{}_{}", from.name(), to.name()));
            launch!(dev, name, (blocks as u32, 1, 1), (THREADS, 1, 1); l)?;
        }
    }
    Ok(())
}

/// One parameter of `adam_update_many`: parameter, gradient and the gradient's first element (a run of
/// the parameter's length), first and second moment.
pub(crate) type AdamItem<'a> =
    (&'a mut CudaStorage, (&'a CudaStorage, usize), &'a mut CudaStorage, &'a mut CudaStorage);

/// Adam/AdamW on several parameters with one set of hyper-parameters (one optimizer step), each element
/// exactly as `adam_update` computes it: a launch per 32 parameters of a dtype instead of one each. All
/// items must be on one device.
pub(crate) fn adam_update_many(items: &mut [AdamItem<'_>], h: AdamParams) -> Result<()> {
    let Some(first) = items.first() else { return Ok(()) };
    let dev = first.0.dev().clone();
    for (p, (g, at), m, v) in items.iter() {
        same_device("adam", first.0, p)?;
        check("adam", p, &[m, v])?;
        check_run("adam", p, g, *at, p.len())?;
        if g.dtype() != p.dtype() {
            return Err(Error::DType { op: "adam", expected: p.dtype(), got: g.dtype() });
        }
    }
    let (step_size, bc2_sqrt, decay) = adam_constants(h);
    for dtype in [DType::F32, DType::F64] {
        let of_type: Vec<&AdamItem> = items.iter().filter(|it| it.0.dtype() == dtype && !it.0.is_empty()).collect();
        for group in of_type.chunks(TENSOR_LIST_MAX) {
            let (chunks, blocks) = Chunks::of(group.iter().map(|it| it.0.len()));
            let z = [0; TENSOR_LIST_MAX];
            let mut l = AdamList { p: z, g: z, m: z, v: z, chunks };
            for (i, (p, (g, at), m, v)) in group.iter().map(|it| &**it).enumerate() {
                (l.p[i], l.g[i], l.m[i], l.v[i]) = (p.ptr(), g.ptr_at(*at), m.ptr(), v.ptr());
            }
            launch!(dev, kname("adam_update_list", dtype), (blocks as u32, 1, 1), (THREADS, 1, 1);
                l, h.beta1, h.beta2, h.eps, h.weight_decay, step_size, bc2_sqrt, decay, h.decoupled as i32)?;
        }
    }
    Ok(())
}

/// One parameter of `sgd_update_many`: parameter, gradient and the gradient's first element (a run of
/// the parameter's length), and with momentum the buffer and whether this is its first step (the
/// buffer then takes the gradient rather than blending with it).
pub(crate) type SgdItem<'a> = (&'a mut CudaStorage, (&'a CudaStorage, usize), Option<(&'a mut CudaStorage, bool)>);

/// SGD on several parameters with one set of hyper-parameters (`h.first_step` is ignored: each item
/// says), each element exactly as `sgd_update` computes it: a launch per 32 parameters of a dtype
/// instead of one each. All items must be on one device.
pub(crate) fn sgd_update_many(items: &mut [SgdItem<'_>], h: SgdParams) -> Result<()> {
    let Some(first) = items.first() else { return Ok(()) };
    let dev = first.0.dev().clone();
    for (p, (g, at), buf) in items.iter() {
        same_device("sgd", first.0, p)?;
        match buf {
            Some((b, _)) => check("sgd", p, &[b])?,
            None => check("sgd", p, &[])?,
        }
        check_run("sgd", p, g, *at, p.len())?;
        if g.dtype() != p.dtype() {
            return Err(Error::DType { op: "sgd", expected: p.dtype(), got: g.dtype() });
        }
    }
    for dtype in [DType::F32, DType::F64] {
        let of_type: Vec<&SgdItem> = items.iter().filter(|it| it.0.dtype() == dtype && !it.0.is_empty()).collect();
        for group in of_type.chunks(TENSOR_LIST_MAX) {
            let (chunks, blocks) = Chunks::of(group.iter().map(|it| it.0.len()));
            let z = [0; TENSOR_LIST_MAX];
            let mut l = SgdList { p: z, g: z, b: z, chunks };
            let mut first_steps = 0u32;
            for (i, (p, (g, at), buf)) in group.iter().map(|it| &**it).enumerate() {
                (l.p[i], l.g[i]) = (p.ptr(), g.ptr_at(*at));
                if let Some((b, first)) = buf {
                    l.b[i] = b.ptr();
                    first_steps |= (*first as u32) << i;
                }
            }
            launch!(dev, kname("sgd_update_list", dtype), (blocks as u32, 1, 1), (THREADS, 1, 1);
                l, h.lr, h.momentum, 1.0 - h.dampening, h.weight_decay, h.nesterov as i32, first_steps)?;
        }
    }
    Ok(())
}
