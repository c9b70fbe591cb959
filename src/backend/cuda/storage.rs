//! `CudaStorage`: a device buffer from the caching allocator, tagged with its dtype, plus host transfers
//! and the `Strided` view struct the broadcasting kernels take.

use super::device::CudaDevice;
use crate::backend::cpu::CpuStorage;
use crate::shape::{coalesce, Layout};
use crate::{DType, Device, Error, Result};
use cudarc::driver::result;
use std::sync::Arc;

/// A block of device memory that returns to its device's cache when dropped.
pub(crate) struct Buf {
    ptr: u64,
    size: usize,
    dev: Arc<CudaDevice>,
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.dev.alloc.release(self.ptr, self.size);
    }
}

/// The elements of a tensor on one CUDA device.
pub struct CudaStorage {
    buf: Buf,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({}, {} x {})", self.device(), self.len, self.dtype)
    }
}

impl Clone for CudaStorage {
    /// A device-side copy (enqueued on the stream). Out of device memory here is a panic, as `Clone`
    /// cannot fail; munja's own code calls `try_clone` instead.
    fn clone(&self) -> Self {
        self.try_clone().expect("cloning a CUDA storage")
    }
}

impl CudaStorage {
    /// Uninitialised storage for `len` elements.
    pub(crate) fn alloc(dev: &Arc<CudaDevice>, dtype: DType, len: usize) -> Result<CudaStorage> {
        dev.bind()?;
        let bytes = len * dtype.size_in_bytes();
        let (ptr, size) = dev.alloc.alloc(dev.device(), bytes, || {
            let _ = dev.sync();
        })?;
        Ok(CudaStorage { buf: Buf { ptr, size, dev: dev.clone() }, dtype, len })
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> Device {
        Device::Cuda(self.buf.dev.ordinal)
    }
    pub(crate) fn ptr(&self) -> u64 {
        self.buf.ptr
    }
    /// Device address of element `i`.
    pub(crate) fn ptr_at(&self, i: usize) -> u64 {
        self.buf.ptr + (i * self.dtype.size_in_bytes()) as u64
    }
    pub(crate) fn dev(&self) -> &Arc<CudaDevice> {
        &self.buf.dev
    }

    /// A device-side copy, enqueued on the stream; out of device memory is an `Err`.
    pub(crate) fn try_clone(&self) -> Result<CudaStorage> {
        let out = CudaStorage::alloc(&self.buf.dev, self.dtype, self.len)?;
        let bytes = self.len * self.dtype.size_in_bytes();
        if bytes > 0 {
            // SAFETY: both buffers hold at least `bytes` bytes on the same device; the copy is stream-ordered.
            unsafe { result::memcpy_dtod_async(out.ptr(), self.ptr(), bytes, self.buf.dev.cu_stream()) }
                .map_err(|e| self.buf.dev.err("copy", e))?;
        }
        Ok(out)
    }

    /// Copies host elements to device `ordinal`.
    pub fn from_cpu(s: &CpuStorage, ordinal: usize) -> Result<CudaStorage> {
        let dev = CudaDevice::get(ordinal)?;
        let out = CudaStorage::alloc(&dev, s.dtype(), s.len())?;
        if s.is_empty() {
            return Ok(out);
        }
        let stream = dev.cu_stream();
        // SAFETY: the destination holds len elements of this dtype; pageable host memory is staged by
        // the driver before the call returns, so the host Vec may be dropped right after.
        let r = unsafe {
            match s {
                CpuStorage::F32(v) => result::memcpy_htod_async(out.ptr(), v, stream),
                CpuStorage::F64(v) => result::memcpy_htod_async(out.ptr(), v, stream),
                CpuStorage::BF16(v) => result::memcpy_htod_async(out.ptr(), v, stream),
                CpuStorage::F16(v) => result::memcpy_htod_async(out.ptr(), v, stream),
                CpuStorage::I64(v) => result::memcpy_htod_async(out.ptr(), v, stream),
                CpuStorage::U8(v) => result::memcpy_htod_async(out.ptr(), v, stream),
            }
        };
        r.map_err(|e| dev.err("to_device", e))?;
        Ok(out)
    }

    /// Copies the elements to the host; waits for the queued work that produces them.
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        let dev = self.dev();
        dev.bind()?;
        let mut out = CpuStorage::full(self.dtype, self.len, 0.0);
        if self.len == 0 {
            return Ok(out);
        }
        let stream = dev.cu_stream();
        // SAFETY: the host Vec holds len elements; we synchronise before reading it.
        let r = unsafe {
            match &mut out {
                CpuStorage::F32(v) => result::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::F64(v) => result::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::BF16(v) => result::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::F16(v) => result::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::I64(v) => result::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::U8(v) => result::memcpy_dtoh_async(v, self.ptr(), stream),
            }
        };
        r.map_err(|e| dev.err("to_cpu", e))?;
        dev.sync()?;
        Ok(out)
    }
}

/// The largest rank a kernel view takes after coalescing (MAX_DIMS in kernels/common.cuh).
pub(crate) const MAX_DIMS: usize = 8;
/// Side of the square tiles of kernels/elementwise.cu's transpose_copy (TRANSPOSE_TILE there).
const TRANSPOSE_TILE: usize = 64;

/// One operand's view as the kernels see it (`struct Strided` in kernels/common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    rank: i32,
    shape: [i64; MAX_DIMS],
    strides: [i64; MAX_DIMS],
    offset: i64,
}

impl Strided {
    fn new(shape: &[usize], strides: &[usize], offset: usize) -> Strided {
        let mut s =
            Strided { rank: shape.len() as i32, shape: [1; MAX_DIMS], strides: [0; MAX_DIMS], offset: offset as i64 };
        for (d, (&n, &st)) in shape.iter().zip(strides).enumerate() {
            s.shape[d] = n as i64;
            s.strides[d] = st as i64;
        }
        s
    }
    /// A contiguous view of `shape` (only the shape and row-major strides matter).
    pub(crate) fn contiguous(shape: &[usize]) -> Result<Strided> {
        let l = Layout::contiguous(shape);
        Self::check(shape.len())?;
        Ok(Strided::new(shape, l.strides(), 0))
    }
    /// Length of the last dim.
    pub(crate) fn inner(&self) -> usize {
        self.shape[self.rank.max(1) as usize - 1] as usize
    }
    /// The grid of kernels/elementwise.cu's tiled transpose_copy when this view is a transposing one:
    /// unit stride in the second-to-last dim but not in the last (after merging dims), so that a
    /// per-element copy would read with a stride.
    pub(crate) fn transpose_grid(&self) -> Option<(u32, u32, u32)> {
        let r = self.rank as usize;
        if r < 2 || self.strides[r - 2] != 1 || self.strides[r - 1] == 1 {
            return None;
        }
        let (rows, cols) = (self.shape[r - 2] as usize, self.shape[r - 1] as usize);
        let batches: usize = self.shape[..r - 2].iter().map(|&d| d as usize).product();
        let tiles_y = rows.div_ceil(TRANSPOSE_TILE);
        (tiles_y <= 65_535 && rows * cols > 0)
            .then(|| (cols.div_ceil(TRANSPOSE_TILE) as u32, tiles_y as u32, batches.min(65_535) as u32))
    }
    /// This view in units of `k` elements (16-byte packs), when its innermost dim is contiguous and every
    /// row starts on a pack: the views kernels/elementwise.cu's copy_packs kernels take.
    pub(crate) fn in_packs(&self, k: usize) -> Option<Strided> {
        let (r, k) = (self.rank as usize, k as i64);
        if r == 0 || self.strides[r - 1] != 1 || self.shape[r - 1] % k != 0 || self.offset % k != 0 {
            return None;
        }
        if self.strides[..r - 1].iter().any(|s| s % k != 0) {
            return None;
        }
        let mut p = *self;
        p.shape[r - 1] /= k;
        p.strides[..r - 1].iter_mut().for_each(|s| *s /= k);
        p.offset /= k;
        Some(p)
    }
    fn check(rank: usize) -> Result<()> {
        if rank > MAX_DIMS {
            return Err(Error::invalid("cuda", format!("views of rank {rank} after merging dims exceed {MAX_DIMS}")));
        }
        Ok(())
    }
}

/// Views of `N` operands over one logical shape, dims merged where every operand allows; `contig` is
/// true when every operand is one dense run.
pub(crate) fn views<const N: usize>(layouts: [&Layout; N]) -> Result<([Strided; N], bool)> {
    let strides: Vec<&[usize]> = layouts.iter().map(|l| l.strides()).collect();
    let (shape, cs) = coalesce(layouts[0].shape(), &strides);
    Strided::check(shape.len())?;
    let contig = shape.len() == 1 && cs.iter().all(|s| s[0] == 1 || shape[0] == 1);
    Ok((std::array::from_fn(|i| Strided::new(&shape, &cs[i], layouts[i].offset())), contig))
}

/// The entry point `family_dtype` as a static name (names are interned once).
pub(crate) fn kname(family: &str, d: DType) -> &'static str {
    intern(format!("{family}_{}", d.name()))
}

pub(crate) fn intern(s: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = NAMES.get_or_init(|| Mutex::new(HashSet::new())).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&n) = set.get(s.as_str()) {
        return n;
    }
    let n: &'static str = Box::leak(s.into_boxed_str());
    set.insert(n);
    n
}

pub(crate) fn need_float(op: &'static str, d: DType) -> Error {
    Error::UnsupportedDType { op, dtype: d, detail: "this op needs a floating-point tensor" }
}

pub(crate) fn same_device(op: &'static str, a: &CudaStorage, b: &CudaStorage) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::Device { op, a: a.device(), b: b.device() });
    }
    Ok(())
}

pub(crate) fn same_dtype(op: &'static str, a: &CudaStorage, b: &CudaStorage) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType { op, expected: a.dtype(), got: b.dtype() });
    }
    Ok(())
}
