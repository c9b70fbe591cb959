//! What a backend provides: storage for elements and the kernels the ops call. Ops in `crate::ops` are
//! written once against `Storage`; each backend (CPU now, CUDA beside it) implements these entry points,
//! so adding a device never touches an op's definition or its backward rule.

pub mod cpu;
pub mod cuda;
mod storage;

pub use storage::Storage;
pub(crate) use storage::{AdamStorages, CastRun, SgdStorages};

/// The sizes cross-entropy's backward needs (both backends check them the same way): `rows` rows of `c`
/// logits, one incoming gradient per row, and the forward's (max, sum) pair per row.
pub(crate) fn check_ce_backward(rows: usize, c: usize, logits: usize, grads: usize, stats: usize) -> crate::Result<()> {
    if stats != 2 * rows || grads != rows || logits != rows * c {
        return Err(crate::Error::invalid(
            "cross_entropy_backward",
            format!("{rows} rows of {c} logits need {rows} gradients and 2·{rows} statistics"),
        ));
    }
    Ok(())
}

/// A causal mask over softmax rows: the rows are the `rows` query rows of [.., rows, n] score matrices,
/// and query row i (its index in the flattened rows, modulo `rows`) sees the first i + offset + 1 columns
/// only (key positions 0..=offset + i), as in attention over a cache of `offset` earlier positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Causal {
    pub rows: usize,
    pub offset: usize,
}

impl Causal {
    /// Columns row `r` (of the flattened rows) sees, out of `n`.
    pub fn visible(&self, r: usize, n: usize) -> usize {
        (r % self.rows.max(1) + self.offset + 1).min(n)
    }
}

/// Elementwise functions of one tensor. Scalars ride in the op so one kernel serves every scalar form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Abs,
    Sign,
    Tanh,
    Sigmoid,
    Relu,
    /// GELU with the tanh approximation (GPT-2's).
    GeluTanh,
    /// Exact GELU, x·Φ(x) with erf.
    GeluErf,
    Silu,
    /// d/dx of GeluTanh, for the backward pass.
    GeluTanhGrad,
    /// d/dx of GeluErf.
    GeluErfGrad,
    /// d/dx of Silu.
    SiluGrad,
    /// x^p.
    Powf(f64),
    /// min(max(x, lo), hi).
    Clamp(f64, f64),
    /// 1 where lo <= x <= hi, else 0: the clamp gradient mask.
    InRange(f64, f64),
    /// x·mul + add: every scalar add/sub/mul/div.
    Affine {
        mul: f64,
        add: f64,
    },
}

/// Elementwise functions of two tensors of one dtype, broadcast like NumPy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

/// Comparisons; the result is a U8 mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Reductions over a set of dims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// Hyper-parameters of one fused Adam/AdamW update.
#[derive(Debug, Clone, Copy)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW's decoupled decay (p -= lr·wd·p) rather than Adam's L2 term added to the gradient.
    pub decoupled: bool,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

/// Hyper-parameters of one fused SGD update.
#[derive(Debug, Clone, Copy)]
pub struct SgdParams {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// The first step initialises the momentum buffer with the gradient, as PyTorch does.
    pub first_step: bool,
}
