//! The CPU backend: one Vec per dtype, kernels parallelised with rayon, matmul through the `gemm` crate's
//! SIMD kernels. bf16 and f16 are widened to f32 for arithmetic (and accumulate in f32), then narrowed.

mod elementwise;
pub mod fastmath;
mod index;
mod matmul;
mod norm;
mod optim;
mod reduce;
mod softmax;
mod strided;

pub use elementwise::*;
pub use index::*;
pub use matmul::*;
pub use norm::*;
pub use optim::*;
pub use reduce::*;
pub use softmax::*;
pub use strided::*;

use crate::{DType, Error};
use half::{bf16, f16};
use std::mem::MaybeUninit;

/// Elements of one tensor's storage on the CPU.
#[derive(Debug, Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

/// Below this many elements a kernel runs on the calling thread: rayon's fork-join costs more than it saves.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// A Vec of `n` elements that `fill` initialises, without zero-filling it first: every kernel output used
/// to be memset and then overwritten, which was a tenth of a small GPT training step.
///
/// `fill` must write every element of the slice it is given (only `Copy` element types are used, so an
/// early return from a panic leaks nothing: the Vec is dropped with length 0).
pub(crate) fn fill_vec<T: Copy>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the capacity is at least n and `fill` initialised elements 0..n (its contract above).
    unsafe { v.set_len(n) };
    v
}

/// Runs `f` inside a function compiled for AVX-512 when the CPU has it (the portable build only assumes
/// SSE2), so the loops of `f`, inlined there, use 16-lane vectors; otherwise runs it as it is. Callers
/// mark the closure `#[inline(always)]`: a closure left out of line is compiled for SSE2 only (its `floor`
/// becomes a library call, for one), which made the fast exp several times slower.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the features were detected at run time.
        return unsafe { simd_avx512(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
unsafe fn simd_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::U8(_) => DType::U8,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
            CpuStorage::U8(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A buffer of `n` copies of `value` converted to `dtype`.
    pub fn full(dtype: DType, n: usize, value: f64) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![value as f32; n]),
            DType::F64 => CpuStorage::F64(vec![value; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::from_f64(value); n]),
            DType::F16 => CpuStorage::F16(vec![f16::from_f64(value); n]),
            DType::I64 => CpuStorage::I64(vec![value as i64; n]),
            DType::U8 => CpuStorage::U8(vec![value as u8; n]),
        }
    }
    /// Converts f64 values to `dtype`.
    pub fn from_f64s(dtype: DType, v: &[f64]) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => CpuStorage::F64(v.to_vec()),
            DType::BF16 => CpuStorage::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
            DType::F16 => CpuStorage::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::I64 => CpuStorage::I64(v.iter().map(|&x| x as i64).collect()),
            DType::U8 => CpuStorage::U8(v.iter().map(|&x| x as u8).collect()),
        }
    }
    /// Uniform draws rounded to bf16/f16 can reach 1.0: those take the largest value below 1 instead, so
    /// draws stay in [0, 1) (kernels/random.cu does the same). f32/f64 draws are exact already.
    pub(crate) fn keep_below_one(&mut self) {
        match self {
            CpuStorage::BF16(v) => {
                v.iter_mut().filter(|x| x.to_f32() >= 1.0).for_each(|x| *x = half::bf16::from_bits(0x3F7F))
            }
            CpuStorage::F16(v) => {
                v.iter_mut().filter(|x| x.to_f32() >= 1.0).for_each(|x| *x = half::f16::from_bits(0x3BFF))
            }
            _ => {}
        }
    }

    /// Converts f32 values to `dtype`.
    pub fn from_f32s(dtype: DType, v: Vec<f32>) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(v),
            DType::F64 => CpuStorage::F64(v.iter().map(|&x| x as f64).collect()),
            DType::BF16 => CpuStorage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => CpuStorage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::I64 => CpuStorage::I64(v.iter().map(|&x| x as i64).collect()),
            DType::U8 => CpuStorage::U8(v.iter().map(|&x| x as u8).collect()),
        }
    }
    /// Raw little-endian bytes, for safetensors.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        fn bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            v.iter().flat_map(|&x| f(x)).collect()
        }
        match self {
            CpuStorage::F32(v) => bytes(v, f32::to_le_bytes),
            CpuStorage::F64(v) => bytes(v, f64::to_le_bytes),
            CpuStorage::BF16(v) => bytes(v, bf16::to_le_bytes),
            CpuStorage::F16(v) => bytes(v, f16::to_le_bytes),
            CpuStorage::I64(v) => bytes(v, i64::to_le_bytes),
            CpuStorage::U8(v) => v.clone(),
        }
    }
    /// Elements from little-endian bytes. The caller checks the byte count.
    pub fn from_le_bytes(dtype: DType, b: &[u8]) -> CpuStorage {
        fn parse<T, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N).map(|c| f(c.try_into().unwrap())).collect()
        }
        match dtype {
            DType::F32 => CpuStorage::F32(parse(b, f32::from_le_bytes)),
            DType::F64 => CpuStorage::F64(parse(b, f64::from_le_bytes)),
            DType::BF16 => CpuStorage::BF16(parse(b, bf16::from_le_bytes)),
            DType::F16 => CpuStorage::F16(parse(b, f16::from_le_bytes)),
            DType::I64 => CpuStorage::I64(parse(b, i64::from_le_bytes)),
            DType::U8 => CpuStorage::U8(b.to_vec()),
        }
    }
}

pub(crate) fn widen_bf16(v: &[bf16]) -> Vec<f32> {
    use rayon::prelude::*;
    if v.len() >= PAR_THRESHOLD {
        v.par_iter().map(|x| x.to_f32()).collect()
    } else {
        v.iter().map(|x| x.to_f32()).collect()
    }
}
pub(crate) fn widen_f16(v: &[f16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}
pub(crate) fn narrow_bf16(v: Vec<f32>) -> Vec<bf16> {
    use rayon::prelude::*;
    if v.len() >= PAR_THRESHOLD {
        v.par_iter().map(|&x| bf16::from_f32(x)).collect()
    } else {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }
}
pub(crate) fn narrow_f16(v: Vec<f32>) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

pub(crate) fn need_float(op: &'static str, dtype: DType) -> Error {
    Error::UnsupportedDType { op, dtype, detail: "this op needs a floating-point tensor" }
}

/// Runs `$body` with `$v` bound to the elements as f32 or f64 (bf16/f16 widened to f32) and wraps the Vec
/// it returns back into the input's dtype.
macro_rules! float_map {
    ($op:expr, $s:expr, |$v:ident| $body:expr) => {{
        use $crate::backend::cpu::{narrow_bf16, narrow_f16, widen_bf16, widen_f16, CpuStorage};
        match $s {
            CpuStorage::F32($v) => CpuStorage::F32($body),
            CpuStorage::F64($v) => CpuStorage::F64($body),
            CpuStorage::BF16(x) => {
                let w = widen_bf16(x);
                let $v = &w;
                CpuStorage::BF16(narrow_bf16($body))
            }
            CpuStorage::F16(x) => {
                let w = widen_f16(x);
                let $v = &w;
                CpuStorage::F16(narrow_f16($body))
            }
            other => return Err($crate::backend::cpu::need_float($op, other.dtype())),
        }
    }};
}
pub(crate) use float_map;

/// Like `float_map` for two storages of the same dtype (checked by the caller).
macro_rules! float_map2 {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {{
        use $crate::backend::cpu::{narrow_bf16, narrow_f16, widen_bf16, widen_f16, CpuStorage};
        match ($a, $b) {
            (CpuStorage::F32($x), CpuStorage::F32($y)) => CpuStorage::F32($body),
            (CpuStorage::F64($x), CpuStorage::F64($y)) => CpuStorage::F64($body),
            (CpuStorage::BF16(p), CpuStorage::BF16(q)) => {
                let (wp, wq) = (widen_bf16(p), widen_bf16(q));
                let ($x, $y) = (&wp, &wq);
                CpuStorage::BF16(narrow_bf16($body))
            }
            (CpuStorage::F16(p), CpuStorage::F16(q)) => {
                let (wp, wq) = (widen_f16(p), widen_f16(q));
                let ($x, $y) = (&wp, &wq);
                CpuStorage::F16(narrow_f16($body))
            }
            (a, b) if a.dtype() != b.dtype() => {
                return Err($crate::Error::DType { op: $op, expected: a.dtype(), got: b.dtype() })
            }
            (other, _) => return Err($crate::backend::cpu::need_float($op, other.dtype())),
        }
    }};
}
pub(crate) use float_map2;

/// Runs `$body` with `$v` bound to the elements of any dtype; the body returns a `CpuStorage`-wrappable
/// Vec of the same element type.
macro_rules! any_map {
    ($s:expr, |$v:ident| $body:expr) => {{
        use $crate::backend::cpu::CpuStorage;
        match $s {
            CpuStorage::F32($v) => CpuStorage::F32($body),
            CpuStorage::F64($v) => CpuStorage::F64($body),
            CpuStorage::BF16($v) => CpuStorage::BF16($body),
            CpuStorage::F16($v) => CpuStorage::F16($body),
            CpuStorage::I64($v) => CpuStorage::I64($body),
            CpuStorage::U8($v) => CpuStorage::U8($body),
        }
    }};
}
pub(crate) use any_map;

/// Runs `$body` (which yields any value) with `$v` bound to the elements of any dtype.
macro_rules! any_with {
    ($s:expr, |$v:ident| $body:expr) => {{
        use $crate::backend::cpu::CpuStorage;
        match $s {
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::I64($v) => $body,
            CpuStorage::U8($v) => $body,
        }
    }};
}
pub(crate) use any_with;

/// Runs `$body` with `$x`, `$y` bound to two storages' elements of one dtype (any dtype); the body returns
/// a Vec of that element type. Different dtypes are an error naming `$op`.
macro_rules! any_map2 {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {{
        use $crate::backend::cpu::CpuStorage;
        match ($a, $b) {
            (CpuStorage::F32($x), CpuStorage::F32($y)) => CpuStorage::F32($body),
            (CpuStorage::F64($x), CpuStorage::F64($y)) => CpuStorage::F64($body),
            (CpuStorage::BF16($x), CpuStorage::BF16($y)) => CpuStorage::BF16($body),
            (CpuStorage::F16($x), CpuStorage::F16($y)) => CpuStorage::F16($body),
            (CpuStorage::I64($x), CpuStorage::I64($y)) => CpuStorage::I64($body),
            (CpuStorage::U8($x), CpuStorage::U8($y)) => CpuStorage::U8($body),
            (a, b) => return Err($crate::Error::DType { op: $op, expected: a.dtype(), got: b.dtype() }),
        }
    }};
}
pub(crate) use any_map2;

/// Keeps freed tensor buffers in the process heap instead of returning them to the kernel.
///
/// glibc serves large allocations with fresh mmap pages and trims freed heap memory eagerly, so every op
/// that produced a tensor of a few hundred KiB paid for page faults and zeroing by the kernel: over a fifth
/// of a small GPT training step. Raising the mmap and trim thresholds (what MALLOC_MMAP_THRESHOLD_ and
/// MALLOC_TRIM_THRESHOLD_ do) makes steady-state steps reuse memory, like the caching allocators of other
/// frameworks. Set MUNJA_KEEP_MALLOC=1 to leave the C library's settings alone.
pub(crate) fn tune_allocator_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if std::env::var_os("MUNJA_KEEP_MALLOC").is_none() {
            // SAFETY: mallopt only changes allocator tuning parameters; the values are within glibc's limits
            // (the mmap threshold maximum is 32 MiB on 64-bit).
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    });
}
