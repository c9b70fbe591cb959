//! `Storage`: the elements of a tensor on some device, and the kernel entry points the ops call. Each
//! method matches on the device; the CUDA backend adds its variant and arms here, nothing in `ops` changes.

use super::cpu::{self, CpuStorage};
use super::cuda::{self as cu, CudaStorage};
use super::{AdamParams, BinaryOp, Causal, CmpOp, ReduceOp, SgdParams, UnaryOp};
use crate::shape::Layout;
use crate::{DType, Device, Error, Result};
use std::borrow::Cow;

/// The elements of one or more tensor views, on one device.
#[derive(Debug, Clone)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// Results of a normalisation's forward pass: output, per-row mean and 1/std (compute dtype).
pub type NormStats = (Storage, Storage, Storage);

fn i64s<'a>(op: &'static str, s: &'a Storage) -> Result<&'a [i64]> {
    match s {
        Storage::Cpu(CpuStorage::I64(v)) => Ok(v),
        Storage::Cpu(other) => Err(Error::DType { op, expected: DType::I64, got: other.dtype() }),
        Storage::Cuda(c) => Err(Error::Device { op, a: Device::Cpu, b: c.device() }),
    }
}

/// The CUDA storage of an operand, or an Err naming both devices.
fn cu<'a>(op: &'static str, s: &'a Storage, other: Device) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        Storage::Cpu(_) => Err(Error::Device { op, a: other, b: Device::Cpu }),
    }
}
fn cu_mut<'a>(op: &'static str, s: &'a mut Storage, other: Device) -> Result<&'a mut CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        Storage::Cpu(_) => Err(Error::Device { op, a: other, b: Device::Cpu }),
    }
}
fn cpu_of<'a>(op: &'static str, s: &'a Storage) -> Result<&'a CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        Storage::Cuda(c) => Err(Error::Device { op, a: Device::Cpu, b: c.device() }),
    }
}
fn cpu_mut<'a>(op: &'static str, s: &'a mut Storage) -> Result<&'a mut CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        Storage::Cuda(c) => Err(Error::Device { op, a: Device::Cpu, b: c.device() }),
    }
}

/// One run of `Storage::cast_many`: source, its first element, destination, its first element, length.
pub type CastRun<'a> = (&'a Storage, usize, &'a mut Storage, usize, usize);

/// One parameter of `Storage::adam_update_many`: parameter, gradient and the gradient's first element (a
/// run of the parameter's length), first and second moment.
pub type AdamStorages<'a> = (&'a mut Storage, (&'a Storage, usize), &'a mut Storage, &'a mut Storage);

/// One parameter of `Storage::sgd_update_many`: parameter, gradient and the gradient's first element (a
/// run of the parameter's length), and with momentum the buffer and whether this is its first step.
pub type SgdStorages<'a> = (&'a mut Storage, (&'a Storage, usize), Option<(&'a mut Storage, bool)>);

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(c) => c.device(),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(c) => c.dtype(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(c) => c.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A CPU copy of the elements (a clone on the CPU; a device-to-host copy that waits for the device).
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(s) => Ok(s.clone()),
            Storage::Cuda(c) => c.to_cpu(),
        }
    }
    /// Moves CPU elements to `device`.
    pub fn from_cpu(s: CpuStorage, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(s)),
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::from_cpu(&s, i)?)),
        }
    }
    pub fn full(device: Device, dtype: DType, n: usize, value: f64) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::full(dtype, n, value))),
            Device::Cuda(i) => Ok(Storage::Cuda(cu::full(i, dtype, n, value)?)),
        }
    }
    /// `n` uniform [0,1) numbers of the Philox stream (seed, block), as `dtype`.
    pub fn uniform(device: Device, dtype: DType, n: usize, seed: u64, block: u64) -> Result<Storage> {
        match device {
            Device::Cpu => {
                let mut s = CpuStorage::from_f32s(dtype, crate::rng::uniform_from(seed, block, n));
                s.keep_below_one();
                Ok(Storage::Cpu(s))
            }
            Device::Cuda(i) => Ok(Storage::Cuda(cu::uniform(i, dtype, n, seed, block)?)),
        }
    }
    /// Dropout's scaled keep mask of `n` elements: `scale` where the uniform draw of the Philox stream
    /// (seed, block) is ≥ `p` (both in `dtype`), else 0, i.e. `uniform(..).ge_scalar(p)` cast to `dtype`
    /// and multiplied by `scale`. The CPU runs exactly those ops; CUDA fuses them into one kernel with
    /// the same roundings (four kernels took a fifth of a GPT step's dropout time each).
    pub fn dropout_mask(
        device: Device,
        dtype: DType,
        n: usize,
        seed: u64,
        block: u64,
        p: f64,
        scale: f64,
    ) -> Result<Storage> {
        match device {
            Device::Cpu => {
                let dense = Layout::contiguous(&[n]);
                let u = Storage::uniform(device, dtype, n, seed, block)?;
                let p = Storage::full(device, dtype, 1, p)?;
                let keep = u.compare(&dense, &p, &Layout::new(vec![n], vec![0], 0), CmpOp::Ge)?;
                keep.cast(&dense, dtype)?.unary(&dense, UnaryOp::Affine { mul: scale, add: 0.0 })
            }
            Device::Cuda(i) => Ok(Storage::Cuda(cu::dropout_mask(i, dtype, n, seed, block, p, scale)?)),
        }
    }
    /// Dropout applied to the view `l` of this storage: each element times the mask `dropout_mask` draws
    /// for (seed, block, p, scale), as `mul` forms the product, in a new contiguous storage. The CPU runs
    /// exactly those two ops; CUDA fuses them into one kernel (no mask in memory), bit for bit the same.
    pub fn dropout_apply(&self, l: &Layout, seed: u64, block: u64, p: f64, scale: f64) -> Result<Storage> {
        let n = l.numel();
        match self {
            Storage::Cpu(_) => {
                let mask = Storage::dropout_mask(Device::Cpu, self.dtype(), n, seed, block, p, scale)?;
                self.binary(l, &mask, &Layout::contiguous(l.shape()), BinaryOp::Mul)
            }
            Storage::Cuda(x) if l.is_contiguous() => {
                Ok(Storage::Cuda(cu::dropout_apply(x, l.offset(), n, seed, block, p, scale)?))
            }
            Storage::Cuda(_) => {
                self.copy_strided(l)?.dropout_apply(&Layout::contiguous(l.shape()), seed, block, p, scale)
            }
        }
    }
    /// `n` standard normal numbers of the Philox stream (seed, block), as `dtype`.
    pub fn normal(device: Device, dtype: DType, n: usize, seed: u64, block: u64) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::from_f64s(dtype, &crate::rng::normal_from(seed, block, n)))),
            Device::Cuda(i) => Ok(Storage::Cuda(cu::normal(i, dtype, n, seed, block)?)),
        }
    }

    pub fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::unary(s, l, op)?)),
            Storage::Cuda(c) => Ok(Storage::Cuda(cu::unary(c, l, op)?)),
        }
    }
    /// `g · op(x)` for a derivative kernel `op`: fused into one pass on the CPU; on CUDA the derivative and
    /// the product are two kernels. `g`'s layout has `l`'s shape; the result is contiguous.
    pub fn unary_grad_mul(&self, l: &Layout, g: &Storage, gl: &Layout, op: UnaryOp) -> Result<Storage> {
        const OP: &str = "unary_grad_mul";
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::unary_grad_mul(x, l, cpu_of(OP, g)?, gl, op)?)),
            Storage::Cuda(x) => {
                let d = cu::unary(x, l, op)?;
                let gc = cu(OP, g, x.device())?;
                Ok(Storage::Cuda(cu::binary(gc, gl, &d, &Layout::contiguous(l.shape()), BinaryOp::Mul)?))
            }
        }
    }
    pub fn binary(&self, l: &Layout, rhs: &Storage, rl: &Layout, op: BinaryOp) -> Result<Storage> {
        const OP: &str = "binary";
        match self {
            Storage::Cpu(a) => Ok(Storage::Cpu(cpu::binary(a, l, cpu_of(OP, rhs)?, rl, op)?)),
            Storage::Cuda(a) => Ok(Storage::Cuda(cu::binary(a, l, cu(OP, rhs, a.device())?, rl, op)?)),
        }
    }
    pub fn compare(&self, l: &Layout, rhs: &Storage, rl: &Layout, op: CmpOp) -> Result<Storage> {
        const OP: &str = "compare";
        match self {
            Storage::Cpu(a) => Ok(Storage::Cpu(cpu::compare(a, l, cpu_of(OP, rhs)?, rl, op)?)),
            Storage::Cuda(a) => Ok(Storage::Cuda(cu::compare(a, l, cu(OP, rhs, a.device())?, rl, op)?)),
        }
    }
    pub fn where_cond(&self, lm: &Layout, a: &Storage, la: &Layout, b: &Storage, lb: &Layout) -> Result<Storage> {
        const OP: &str = "where";
        match self {
            Storage::Cpu(m) => Ok(Storage::Cpu(cpu::where_cond(m, lm, cpu_of(OP, a)?, la, cpu_of(OP, b)?, lb)?)),
            Storage::Cuda(m) => {
                let d = m.device();
                Ok(Storage::Cuda(cu::where_cond(m, lm, cu(OP, a, d)?, la, cu(OP, b, d)?, lb)?))
            }
        }
    }
    pub fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::reduce(s, l, dims, op)?)),
            Storage::Cuda(c) => Ok(Storage::Cuda(cu::reduce(c, l, dims, op)?)),
        }
    }
    pub fn argmax(&self, l: &Layout, dim: usize) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::argmax(s, l, dim)?)),
            Storage::Cuda(c) => Ok(Storage::Cuda(cu::argmax(c, l, dim)?)),
        }
    }
    pub fn matmul(&self, l: &Layout, rhs: &Storage, rl: &Layout) -> Result<Storage> {
        const OP: &str = "matmul";
        match self {
            Storage::Cpu(a) => Ok(Storage::Cpu(cpu::matmul(a, l, cpu_of(OP, rhs)?, rl)?)),
            Storage::Cuda(a) => Ok(Storage::Cuda(cu::matmul(a, l, cu(OP, rhs, a.device())?, rl)?)),
        }
    }
    pub fn copy_strided(&self, l: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::copy_strided(s, l))),
            Storage::Cuda(c) => Ok(Storage::Cuda(cu::cast(c, l, c.dtype())?)),
        }
    }
    pub fn copy_into(&mut self, dl: &Layout, src: &Storage, sl: &Layout) -> Result<()> {
        const OP: &str = "copy_into";
        match self {
            Storage::Cpu(d) => cpu::copy_into(d, dl, cpu_of(OP, src)?, sl),
            Storage::Cuda(d) => {
                let dev = d.device();
                cu::copy_into(d, dl, cu(OP, src, dev)?, sl)
            }
        }
    }
    /// Writes the view (src, sl) into this storage's view `dl` converted to this storage's dtype (same
    /// element count): on the GPU one cast kernel when `dl` is contiguous, else a cast then a copy.
    pub fn cast_into(&mut self, dl: &Layout, src: &Storage, sl: &Layout) -> Result<()> {
        const OP: &str = "cast_into";
        if let (Storage::Cuda(d), true) = (&mut *self, dl.is_contiguous()) {
            let dev = d.device();
            return cu::cast_into(d, dl.offset(), cu(OP, src, dev)?, sl);
        }
        let wide = src.cast(sl, self.dtype())?;
        self.copy_into(dl, &wide, &Layout::contiguous(sl.shape()))
    }
    /// A contiguous buffer of `shape`, zero except the slice `start..start + len` of dim `d`, which holds
    /// this storage viewed through `l` (the slice's shape): the gradient of `narrow`. The CPU writes it in
    /// one pass instead of zero-filling the whole buffer and then copying the slice over.
    pub fn zeros_with_narrow(&self, l: &Layout, shape: &[usize], d: usize, start: usize) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::zeros_with_narrow(s, l, shape, d, start))),
            Storage::Cuda(_) => {
                let n = shape.iter().product();
                let mut z = Storage::full(self.device(), self.dtype(), n, 0.0)?;
                let region = Layout::contiguous(shape).narrow(d, start, l.shape()[d]);
                z.copy_into(&region, self, l)?;
                Ok(z)
            }
        }
    }
    pub fn cast(&self, l: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::cast(s, l, dtype))),
            Storage::Cuda(c) => Ok(Storage::Cuda(cu::cast(c, l, dtype)?)),
        }
    }
    /// Softmax (or log-softmax) over the last dim of the view, with masked columns when `causal` is given.
    pub fn softmax(&self, l: &Layout, log: bool, causal: Option<Causal>) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::softmax(s, l, log, causal)?)),
            Storage::Cuda(c) => Ok(Storage::Cuda(cu::softmax(c, l, log, causal)?)),
        }
    }
    /// Σ x² over every element of `parts` (storage, first element, length: contiguous runs, all on one
    /// device) as a one-element f64 storage there: squares in f32 (f64 for f64), sums in f64, in a fixed
    /// order. Gradient clipping's global norm in a few launches instead of several per tensor.
    pub fn sum_squares(parts: &[(&Storage, usize, usize)]) -> Result<Storage> {
        const OP: &str = "sum_squares";
        match parts.first() {
            None => Ok(Storage::Cpu(CpuStorage::F64(vec![0.0]))),
            Some((Storage::Cpu(_), ..)) => {
                let cpu = parts.iter().map(|&(s, at, n)| Ok((cpu_of(OP, s)?, at, n))).collect::<Result<Vec<_>>>()?;
                Ok(Storage::Cpu(cpu::sum_squares(&cpu)?))
            }
            Some((Storage::Cuda(first), ..)) => {
                let dev = first.device();
                let gpu = parts.iter().map(|&(s, at, n)| Ok((cu(OP, s, dev)?, at, n))).collect::<Result<Vec<_>>>()?;
                Ok(Storage::Cuda(cu::sum_squares(&gpu)?))
            }
        }
    }
    /// Both operands contiguous with rows of length `n`.
    pub fn softmax_backward(&self, g: &Storage, n: usize, log: bool) -> Result<Storage> {
        const OP: &str = "softmax_backward";
        match self {
            Storage::Cpu(y) => Ok(Storage::Cpu(cpu::softmax_backward(y, cpu_of(OP, g)?, n, log)?)),
            Storage::Cuda(y) => Ok(Storage::Cuda(cu::softmax_backward(y, cu(OP, g, y.device())?, n, log)?)),
        }
    }
    /// Layer norm (or RMS norm) over contiguous rows of length `n`; weight and bias contiguous.
    pub fn norm_forward(
        &self,
        w: Option<&Storage>,
        b: Option<&Storage>,
        n: usize,
        eps: f64,
        rms: bool,
    ) -> Result<NormStats> {
        const OP: &str = "layer_norm";
        match self {
            Storage::Cpu(x) => {
                let w = w.map(|s| cpu_of(OP, s)).transpose()?;
                let b = b.map(|s| cpu_of(OP, s)).transpose()?;
                let o = cpu::norm_forward(x, w, b, n, eps, rms)?;
                Ok((Storage::Cpu(o.y), Storage::Cpu(o.mean), Storage::Cpu(o.rstd)))
            }
            Storage::Cuda(x) => {
                let w = w.map(|s| cu(OP, s, x.device())).transpose()?;
                let b = b.map(|s| cu(OP, s, x.device())).transpose()?;
                let (y, m, r) = cu::norm_forward(x, w, b, n, eps, rms)?;
                Ok((Storage::Cuda(y), Storage::Cuda(m), Storage::Cuda(r)))
            }
        }
    }
    /// Gradients (x, weight, bias) of `norm_forward`.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_backward(
        &self,
        w: Option<&Storage>,
        has_bias: bool,
        mean: &Storage,
        rstd: &Storage,
        g: &Storage,
        n: usize,
        rms: bool,
    ) -> Result<(Storage, Option<Storage>, Option<Storage>)> {
        const OP: &str = "layer_norm_backward";
        match self {
            Storage::Cpu(x) => {
                let w = w.map(|s| cpu_of(OP, s)).transpose()?;
                let o =
                    cpu::norm_backward(x, w, has_bias, cpu_of(OP, mean)?, cpu_of(OP, rstd)?, cpu_of(OP, g)?, n, rms)?;
                Ok((Storage::Cpu(o.x), o.weight.map(Storage::Cpu), o.bias.map(Storage::Cpu)))
            }
            Storage::Cuda(x) => {
                let d = x.device();
                let w = w.map(|s| cu(OP, s, d)).transpose()?;
                let (gx, gw, gb) =
                    cu::norm_backward(x, w, has_bias, cu(OP, mean, d)?, cu(OP, rstd, d)?, cu(OP, g, d)?, n, rms)?;
                Ok((Storage::Cuda(gx), gw.map(Storage::Cuda), gb.map(Storage::Cuda)))
            }
        }
    }
    /// Per-row cross-entropy of contiguous logits [N, C] against I64 targets [N], and the statistics
    /// [N, 2] (row max, sum of exp(x − max)) that `cross_entropy_backward` takes.
    pub fn cross_entropy_forward(&self, targets: &Storage, c: usize, ignore: i64) -> Result<(Storage, Storage)> {
        const OP: &str = "cross_entropy";
        match self {
            Storage::Cpu(x) => {
                let (loss, stats) = cpu::cross_entropy_forward(x, i64s(OP, targets)?, c, ignore)?;
                Ok((Storage::Cpu(loss), Storage::Cpu(stats)))
            }
            Storage::Cuda(x) => {
                let (loss, stats) = cu::cross_entropy_forward(x, cu(OP, targets, x.device())?, c, ignore)?;
                Ok((Storage::Cuda(loss), Storage::Cuda(stats)))
            }
        }
    }
    pub fn cross_entropy_backward(
        &self,
        targets: &Storage,
        stats: &Storage,
        grad_rows: &Storage,
        c: usize,
        ignore: i64,
    ) -> Result<Storage> {
        const OP: &str = "cross_entropy_backward";
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::cross_entropy_backward(
                x,
                i64s(OP, targets)?,
                cpu_of(OP, stats)?,
                cpu_of(OP, grad_rows)?,
                c,
                ignore,
            )?)),
            Storage::Cuda(x) => {
                let d = x.device();
                let (t, st, g) = (cu(OP, targets, d)?, cu(OP, stats, d)?, cu(OP, grad_rows, d)?);
                Ok(Storage::Cuda(cu::cross_entropy_backward(x, t, st, g, c, ignore)?))
            }
        }
    }
    /// Contiguous `self` of `shape`; indices contiguous I64.
    pub fn index_select(&self, shape: &[usize], dim: usize, idx: &Storage) -> Result<Storage> {
        const OP: &str = "index_select";
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::index_select(x, shape, dim, i64s(OP, idx)?)?)),
            Storage::Cuda(x) => Ok(Storage::Cuda(cu::index_select(x, shape, dim, cu(OP, idx, x.device())?)?)),
        }
    }
    pub fn index_add(&self, shape: &[usize], dim: usize, idx: &Storage, src: &Storage) -> Result<Storage> {
        const OP: &str = "index_add";
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::index_add(x, shape, dim, i64s(OP, idx)?, cpu_of(OP, src)?)?)),
            Storage::Cuda(x) => {
                let d = x.device();
                Ok(Storage::Cuda(cu::index_add(x, shape, dim, cu(OP, idx, d)?, cu(OP, src, d)?)?))
            }
        }
    }
    /// index_add into zeros of `shape`, with `self` the source rows: what zeros then `index_add` give,
    /// without filling a table only to copy it (index_select's backward).
    pub fn index_add_to_zeros(&self, shape: &[usize], dim: usize, idx: &Storage) -> Result<Storage> {
        const OP: &str = "index_add";
        let numel = shape.iter().product();
        match self {
            Storage::Cpu(src) => {
                let zeros = CpuStorage::full(src.dtype(), numel, 0.0);
                Ok(Storage::Cpu(cpu::index_add(&zeros, shape, dim, i64s(OP, idx)?, src)?))
            }
            Storage::Cuda(src) => {
                Ok(Storage::Cuda(cu::index_add_to_zeros(shape, dim, cu(OP, idx, src.device())?, src)?))
            }
        }
    }
    pub fn gather(&self, shape: &[usize], dim: usize, idx: &Storage, idx_shape: &[usize]) -> Result<Storage> {
        const OP: &str = "gather";
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::gather(x, shape, dim, i64s(OP, idx)?, idx_shape)?)),
            Storage::Cuda(x) => Ok(Storage::Cuda(cu::gather(x, shape, dim, cu(OP, idx, x.device())?, idx_shape)?)),
        }
    }
    pub fn scatter_add(
        &self,
        shape: &[usize],
        dim: usize,
        idx: &Storage,
        idx_shape: &[usize],
        src: &Storage,
    ) -> Result<Storage> {
        const OP: &str = "scatter_add";
        match self {
            Storage::Cpu(x) => {
                Ok(Storage::Cpu(cpu::scatter_add(x, shape, dim, i64s(OP, idx)?, idx_shape, cpu_of(OP, src)?)?))
            }
            Storage::Cuda(x) => {
                let d = x.device();
                Ok(Storage::Cuda(cu::scatter_add(x, shape, dim, cu(OP, idx, d)?, idx_shape, cu(OP, src, d)?)?))
            }
        }
    }
    /// The `len` elements from `at`: this storage itself when that is all of it, else a copy of the run.
    fn run(&self, at: usize, len: usize) -> Result<Cow<'_, Storage>> {
        if at == 0 && len == self.len() {
            return Ok(Cow::Borrowed(self));
        }
        Ok(Cow::Owned(self.copy_strided(&Layout::new(vec![len], vec![1], at))?))
    }
    /// Fused Adam/AdamW update of a whole parameter in place.
    pub fn adam_update(&mut self, g: &Storage, m: &mut Storage, v: &mut Storage, h: AdamParams) -> Result<()> {
        const OP: &str = "adam";
        match self {
            Storage::Cpu(p) => cpu::adam_update(p, cpu_of(OP, g)?, cpu_mut(OP, m)?, cpu_mut(OP, v)?, h),
            Storage::Cuda(p) => {
                let d = p.device();
                cu::adam_update(p, cu(OP, g, d)?, cu_mut(OP, m, d)?, cu_mut(OP, v, d)?, h)
            }
        }
    }
    /// Fused Adam/AdamW updates of several whole parameters in place with one set of hyper-parameters,
    /// each exactly as `adam_update`: on a GPU a launch per 32 parameters of a dtype (all on one device),
    /// on the CPU one parameter after another.
    pub fn adam_update_many(items: &mut [AdamStorages<'_>], h: AdamParams) -> Result<()> {
        const OP: &str = "adam";
        let Some(first) = items.first() else { return Ok(()) };
        match first.0.device() {
            Device::Cpu => items.iter_mut().try_for_each(|(p, (g, at), m, v)| {
                let g = g.run(*at, p.len())?;
                p.adam_update(&g, m, v, h)
            }),
            d => {
                let mut on_gpu = items
                    .iter_mut()
                    .map(|(p, (g, at), m, v)| {
                        Ok((cu_mut(OP, p, d)?, (cu(OP, g, d)?, *at), cu_mut(OP, m, d)?, cu_mut(OP, v, d)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                cu::adam_update_many(&mut on_gpu, h)
            }
        }
    }
    /// Gradient clipping's scaling without reading anything back on a GPU: for each (storage, first
    /// element, length) run, a new storage holding the run times max_norm / (sqrt(total) + 1e-6) where that
    /// factor is below 1, else a copy. `total` is the one-element f64 sum of squares (`sum_squares`) on
    /// the runs' device. On a GPU the kernel derives the factor (a launch per 32 runs of a dtype); on the
    /// CPU the host does and scales as `mul_scalar`.
    pub fn clip_scale(parts: &[(&Storage, usize, usize)], total: &Storage, max_norm: f64) -> Result<Vec<Storage>> {
        const OP: &str = "clip_grad_norm";
        match total {
            Storage::Cpu(t) => {
                let CpuStorage::F64(t) = t else {
                    return Err(Error::DType { op: OP, expected: DType::F64, got: t.dtype() });
                };
                let coef = max_norm / (t.first().copied().unwrap_or(0.0).sqrt() + 1e-6);
                parts
                    .iter()
                    .map(|&(s, at, len)| {
                        let run = Layout::new(vec![len], vec![1], at);
                        if coef < 1.0 {
                            s.unary(&run, UnaryOp::Affine { mul: coef, add: 0.0 })
                        } else {
                            s.copy_strided(&run)
                        }
                    })
                    .collect()
            }
            Storage::Cuda(t) => {
                let d = t.device();
                let gpu = parts.iter().map(|&(s, at, n)| Ok((cu(OP, s, d)?, at, n))).collect::<Result<Vec<_>>>()?;
                Ok(cu::clip_scale(&gpu, t, max_norm)?.into_iter().map(Storage::Cuda).collect())
            }
        }
    }
    /// Each run (source, its first element, destination, its first element, length) converted into its
    /// destination in place, as `cast_into` converts: mixed precision's casts between f32 masters and
    /// 16-bit working copies. On a GPU the f32 <-> bf16/f16 runs go a launch per 32 of a dtype pair (the
    /// rest one launch each); on the CPU one run after another. Destinations must not overlap sources.
    pub fn cast_many(runs: &mut [CastRun<'_>]) -> Result<()> {
        const OP: &str = "cast_many";
        let listed = |s: &Storage, d: &Storage| cu::LIST_CASTS.contains(&(s.dtype(), d.dtype()));
        let Some(first) = runs.first() else { return Ok(()) };
        let dev = first.0.device();
        if dev == Device::Cpu || runs.iter().any(|r| !listed(r.0, r.2)) {
            for (s, at, d, to, len) in runs.iter_mut() {
                let (from, into) = (Layout::new(vec![*len], vec![1], *at), Layout::new(vec![*len], vec![1], *to));
                d.cast_into(&into, s, &from)?;
            }
            return Ok(());
        }
        let mut on_gpu = runs
            .iter_mut()
            .map(|(s, at, d, to, len)| Ok((cu(OP, s, dev)?, *at, cu_mut(OP, d, dev)?, *to, *len)))
            .collect::<Result<Vec<_>>>()?;
        cu::cast_many(&mut on_gpu)
    }
    /// Each (storage, first element, length) run converted to `dtype` in a new storage, as `cast`
    /// converts: the working gradients widened onto the masters. On a GPU, f32 <-> bf16/f16 runs go a
    /// launch per 32 (`cast_many`); otherwise one cast each.
    pub fn cast_each(parts: &[(&Storage, usize, usize)], dtype: DType) -> Result<Vec<Storage>> {
        const OP: &str = "cast_each";
        let run = |at: usize, len: usize| Layout::new(vec![len], vec![1], at);
        let Some(&(first, ..)) = parts.first() else { return Ok(vec![]) };
        let dev = first.device();
        if dev == Device::Cpu || parts.iter().any(|p| !cu::LIST_CASTS.contains(&(p.0.dtype(), dtype))) {
            return parts.iter().map(|&(s, at, len)| s.cast(&run(at, len), dtype)).collect();
        }
        let srcs = parts.iter().map(|&(s, at, len)| Ok((cu(OP, s, dev)?, at, len))).collect::<Result<Vec<_>>>()?;
        let mut outs =
            srcs.iter().map(|(s, _, len)| CudaStorage::alloc(s.dev(), dtype, *len)).collect::<Result<Vec<_>>>()?;
        let mut runs: Vec<_> = srcs.iter().zip(outs.iter_mut()).map(|(&(s, at, len), d)| (s, at, d, 0, len)).collect();
        cu::cast_many(&mut runs)?;
        Ok(outs.into_iter().map(Storage::Cuda).collect())
    }
    /// Fused SGD updates of several whole parameters in place with one set of hyper-parameters (each item
    /// says whether its buffer takes its first step; `h.first_step` is ignored), each exactly as
    /// `sgd_update`: on a GPU a launch per 32 parameters of a dtype (all on one device), on the CPU one
    /// parameter after another.
    pub fn sgd_update_many(items: &mut [SgdStorages<'_>], h: SgdParams) -> Result<()> {
        const OP: &str = "sgd";
        let Some(first) = items.first() else { return Ok(()) };
        match first.0.device() {
            Device::Cpu => items.iter_mut().try_for_each(|(p, (g, at), buf)| {
                let h = SgdParams { first_step: buf.as_ref().is_some_and(|b| b.1), ..h };
                let g = g.run(*at, p.len())?;
                p.sgd_update(&g, buf.as_mut().map(|b| &mut *b.0), h)
            }),
            d => {
                let mut on_gpu = items
                    .iter_mut()
                    .map(|(p, (g, at), buf)| {
                        let buf =
                            buf.as_mut().map(|(b, first)| Ok::<_, Error>((cu_mut(OP, b, d)?, *first))).transpose()?;
                        Ok((cu_mut(OP, p, d)?, (cu(OP, g, d)?, *at), buf))
                    })
                    .collect::<Result<Vec<_>>>()?;
                cu::sgd_update_many(&mut on_gpu, h)
            }
        }
    }
    /// Fused SGD update of a whole parameter in place.
    pub fn sgd_update(&mut self, g: &Storage, buf: Option<&mut Storage>, h: SgdParams) -> Result<()> {
        const OP: &str = "sgd";
        match self {
            Storage::Cpu(p) => cpu::sgd_update(p, cpu_of(OP, g)?, buf.map(|b| cpu_mut(OP, b)).transpose()?, h),
            Storage::Cuda(p) => {
                let d = p.device();
                cu::sgd_update(p, cu(OP, g, d)?, buf.map(|b| cu_mut(OP, b, d)).transpose()?, h)
            }
        }
    }
}
