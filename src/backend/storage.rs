//! `Storage`: the elements of a tensor on some device, and the kernel entry points the ops call. Each
//! method matches on the device; the CUDA backend adds its variant and arms here, nothing in `ops` changes.

use super::cpu::{self, CpuStorage};
use super::{AdamParams, BinaryOp, CmpOp, ReduceOp, SgdParams, UnaryOp};
use crate::shape::Layout;
use crate::{DType, Device, Error, Result};

/// The elements of one or more tensor views, on one device.
#[derive(Debug, Clone)]
pub enum Storage {
    Cpu(CpuStorage),
}

/// Results of a normalisation's forward pass: output, per-row mean and 1/std (compute dtype).
pub type NormStats = (Storage, Storage, Storage);

fn i64s<'a>(op: &'static str, s: &'a Storage) -> Result<&'a [i64]> {
    match s {
        Storage::Cpu(CpuStorage::I64(v)) => Ok(v),
        other => Err(Error::DType { op, expected: DType::I64, got: other.dtype() }),
    }
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A CPU copy of the elements (a cheap borrow-and-clone on the CPU itself).
    pub fn to_cpu(&self) -> CpuStorage {
        match self {
            Storage::Cpu(s) => s.clone(),
        }
    }
    /// Moves CPU elements to `device`.
    pub fn from_cpu(s: CpuStorage, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(s)),
            d => Err(cuda_missing("to_device", d)),
        }
    }
    pub fn full(device: Device, dtype: DType, n: usize, value: f64) -> Result<Storage> {
        Storage::from_cpu(CpuStorage::full(dtype, n, value), device)
    }
    /// `n` uniform [0,1) numbers of the Philox stream (seed, block), as `dtype`.
    pub fn uniform(device: Device, dtype: DType, n: usize, seed: u64, block: u64) -> Result<Storage> {
        let v = crate::rng::uniform_from(seed, block, n);
        Storage::from_cpu(CpuStorage::from_f32s(dtype, v), device)
    }
    /// `n` standard normal numbers of the Philox stream (seed, block), as `dtype`.
    pub fn normal(device: Device, dtype: DType, n: usize, seed: u64, block: u64) -> Result<Storage> {
        let v = crate::rng::normal_from(seed, block, n);
        Storage::from_cpu(CpuStorage::from_f64s(dtype, &v), device)
    }

    pub fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::unary(s, l, op)?)),
        }
    }
    pub fn binary(&self, l: &Layout, rhs: &Storage, rl: &Layout, op: BinaryOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu::binary(a, l, b, rl, op)?)),
        }
    }
    pub fn compare(&self, l: &Layout, rhs: &Storage, rl: &Layout, op: CmpOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu::compare(a, l, b, rl, op)?)),
        }
    }
    pub fn where_cond(&self, lm: &Layout, a: &Storage, la: &Layout, b: &Storage, lb: &Layout) -> Result<Storage> {
        match (self, a, b) {
            (Storage::Cpu(m), Storage::Cpu(a), Storage::Cpu(b)) => {
                Ok(Storage::Cpu(cpu::where_cond(m, lm, a, la, b, lb)?))
            }
        }
    }
    pub fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::reduce(s, l, dims, op)?)),
        }
    }
    pub fn argmax(&self, l: &Layout, dim: usize) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::argmax(s, l, dim)?)),
        }
    }
    pub fn matmul(&self, l: &Layout, rhs: &Storage, rl: &Layout) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu::matmul(a, l, b, rl)?)),
        }
    }
    pub fn copy_strided(&self, l: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::copy_strided(s, l))),
        }
    }
    pub fn copy_into(&mut self, dl: &Layout, src: &Storage, sl: &Layout) -> Result<()> {
        match (self, src) {
            (Storage::Cpu(d), Storage::Cpu(s)) => cpu::copy_into(d, dl, s, sl),
        }
    }
    pub fn cast(&self, l: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::cast(s, l, dtype))),
        }
    }
    pub fn softmax(&self, l: &Layout, log: bool) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::softmax(s, l, log)?)),
        }
    }
    /// Both operands contiguous with rows of length `n`.
    pub fn softmax_backward(&self, g: &Storage, n: usize, log: bool) -> Result<Storage> {
        match (self, g) {
            (Storage::Cpu(y), Storage::Cpu(g)) => Ok(Storage::Cpu(cpu::softmax_backward(y, g, n, log)?)),
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
        match self {
            Storage::Cpu(x) => {
                let (w, b) = (w.map(|Storage::Cpu(c)| c), b.map(|Storage::Cpu(c)| c));
                let o = cpu::norm_forward(x, w, b, n, eps, rms)?;
                Ok((Storage::Cpu(o.y), Storage::Cpu(o.mean), Storage::Cpu(o.rstd)))
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
        match (self, mean, rstd, g) {
            (Storage::Cpu(x), Storage::Cpu(m), Storage::Cpu(r), Storage::Cpu(g)) => {
                let w = w.map(|Storage::Cpu(c)| c);
                let o = cpu::norm_backward(x, w, has_bias, m, r, g, n, rms)?;
                Ok((Storage::Cpu(o.x), o.weight.map(Storage::Cpu), o.bias.map(Storage::Cpu)))
            }
        }
    }
    /// Per-row cross-entropy of contiguous logits [N, C] against I64 targets [N].
    pub fn cross_entropy_forward(&self, targets: &Storage, c: usize, ignore: i64) -> Result<Storage> {
        let t = i64s("cross_entropy", targets)?;
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::cross_entropy_forward(x, t, c, ignore)?)),
        }
    }
    pub fn cross_entropy_backward(
        &self,
        targets: &Storage,
        grad_rows: &Storage,
        c: usize,
        ignore: i64,
    ) -> Result<Storage> {
        let t = i64s("cross_entropy", targets)?;
        match (self, grad_rows) {
            (Storage::Cpu(x), Storage::Cpu(g)) => Ok(Storage::Cpu(cpu::cross_entropy_backward(x, t, g, c, ignore)?)),
        }
    }
    /// Contiguous `self` of `shape`; indices contiguous I64.
    pub fn index_select(&self, shape: &[usize], dim: usize, idx: &Storage) -> Result<Storage> {
        let i = i64s("index_select", idx)?;
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::index_select(x, shape, dim, i)?)),
        }
    }
    pub fn index_add(&self, shape: &[usize], dim: usize, idx: &Storage, src: &Storage) -> Result<Storage> {
        let i = i64s("index_add", idx)?;
        match (self, src) {
            (Storage::Cpu(x), Storage::Cpu(s)) => Ok(Storage::Cpu(cpu::index_add(x, shape, dim, i, s)?)),
        }
    }
    pub fn gather(&self, shape: &[usize], dim: usize, idx: &Storage, idx_shape: &[usize]) -> Result<Storage> {
        let i = i64s("gather", idx)?;
        match self {
            Storage::Cpu(x) => Ok(Storage::Cpu(cpu::gather(x, shape, dim, i, idx_shape)?)),
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
        let i = i64s("scatter_add", idx)?;
        match (self, src) {
            (Storage::Cpu(x), Storage::Cpu(s)) => Ok(Storage::Cpu(cpu::scatter_add(x, shape, dim, i, idx_shape, s)?)),
        }
    }
    /// Fused Adam/AdamW update of a whole parameter in place.
    pub fn adam_update(&mut self, g: &Storage, m: &mut Storage, v: &mut Storage, h: AdamParams) -> Result<()> {
        match (self, g, m, v) {
            (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => cpu::adam_update(p, g, m, v, h),
        }
    }
    /// Fused SGD update of a whole parameter in place.
    pub fn sgd_update(&mut self, g: &Storage, buf: Option<&mut Storage>, h: SgdParams) -> Result<()> {
        match (self, g) {
            (Storage::Cpu(p), Storage::Cpu(g)) => cpu::sgd_update(p, g, buf.map(|Storage::Cpu(b)| b), h),
        }
    }
}

pub(crate) fn cuda_missing(op: &'static str, device: Device) -> Error {
    Error::DeviceUnavailable {
        op,
        device,
        detail: "this build of munja has no CUDA backend yet (it lands with the CUDA issue)".into(),
    }
}
