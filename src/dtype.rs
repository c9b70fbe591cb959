//! Element types. `DType` is the runtime tag; `Element` connects it to a Rust type so creation and read-back
//! are generic, and `Real` is what the CPU kernels compute in (f32 or f64; bf16/f16 are widened to f32).

use crate::backend::cpu::CpuStorage;
use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    /// Indices and class labels.
    I64,
    /// Boolean masks from comparisons (0 or 1).
    U8,
}

impl DType {
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::BF16 | DType::F16)
    }
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }
    /// The short lower-case name (`f32`, `bf16`, ...): what `Display` prints and what CUDA kernel names end in.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }
    /// The name used in safetensors headers.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::I64 => "I64",
            DType::U8 => "U8",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that can be stored in a tensor.
pub trait Element: Copy + Send + Sync + Default + std::fmt::Debug + 'static {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! element {
    ($t:ty, $variant:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            #[inline]
            fn to_f64(self) -> f64 {
                #[allow(clippy::redundant_closure_call)]
                ($to)(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                #[allow(clippy::redundant_closure_call)]
                ($from)(v)
            }
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
element!(f64, F64, |x: f64| x, |v: f64| v);
element!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);
element!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
element!(i64, I64, |x: i64| x as f64, |v: f64| v as i64);
element!(u8, U8, |x: u8| x as f64, |v: f64| v as u8);

/// The float types the CPU kernels compute in.
pub trait Real:
    Element
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    const NAN: Self;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn powf(self, p: Self) -> Self;
    fn erf(self) -> Self;
    /// e^x through a vectorisable kernel where one exists (f32), else the C library's.
    fn exp_fast(self) -> Self;
    /// tanh through a vectorisable kernel where one exists (f32), else the C library's.
    fn tanh_fast(self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    fn is_nan(self) -> bool;
    /// The GEMM entry for this type (gemm crate, strided operands).
    ///
    /// # Safety
    /// The pointers and strides must describe valid m×k, k×n and m×n matrices, and `dst` must not alias
    /// the operands.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut Self,
        dst_cs: isize,
        dst_rs: isize,
        lhs: *const Self,
        lhs_cs: isize,
        lhs_rs: isize,
        rhs: *const Self,
        rhs_cs: isize,
        rhs_rs: isize,
        par: gemm::Parallelism,
    );
}

macro_rules! real {
    ($t:ty, $erf:path, $exp_fast:path, $tanh_fast:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const NAN: Self = <$t>::NAN;
            #[inline]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn powf(self, p: Self) -> Self {
                <$t>::powf(self, p)
            }
            #[inline]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $exp_fast(self)
            }
            #[inline(always)]
            fn tanh_fast(self) -> Self {
                $tanh_fast(self)
            }
            #[inline]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline]
            fn min(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            unsafe fn gemm(
                m: usize,
                n: usize,
                k: usize,
                dst: *mut Self,
                dst_cs: isize,
                dst_rs: isize,
                lhs: *const Self,
                lhs_cs: isize,
                lhs_rs: isize,
                rhs: *const Self,
                rhs_cs: isize,
                rhs_rs: isize,
                par: gemm::Parallelism,
            ) {
                // SAFETY: the caller guarantees the pointers and strides describe valid m×k, k×n and m×n
                // matrices and that dst does not alias the operands.
                unsafe {
                    gemm::gemm(
                        m, n, k, dst, dst_cs, dst_rs, false, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 0.0, 1.0, false,
                        false, false, par,
                    )
                }
            }
        }
    };
}
real!(f32, libm::erff, crate::backend::cpu::fastmath::exp_f32, crate::backend::cpu::fastmath::tanh_f32);
real!(f64, libm::erf, f64::exp, f64::tanh);
