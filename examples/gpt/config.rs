//! The training run's settings: everything that decides what a run computes, so a checkpoint carries it
//! and `--resume` continues the same run whatever flags the second invocation was given.

use munja::models::GptConfig;
use munja::optim::{AdamConfig, WarmupCosine};
use munja::{DType, Error, Result};
use std::collections::BTreeMap;

/// Adam's betas as in nanoGPT's Shakespeare config: beta2 0.99 rather than 0.999 because each step sees
/// few tokens, so the second moment should follow the recent gradients more closely.
pub const BETAS: (f64, f64) = (0.9, 0.99);

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub preset: String,
    pub model: GptConfig,
    /// Total optimizer steps of the run (the cosine schedule ends here).
    pub steps: usize,
    pub batch_size: usize,
    /// Micro-batches per optimizer step; each step sees batch_size · grad_accum sequences.
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Global gradient-norm limit; 0 turns clipping off.
    pub grad_clip: f64,
    pub eval_interval: usize,
    pub eval_iters: usize,
    /// Steps between checkpoints; 0 saves only at the end (and on a stop signal).
    pub checkpoint_interval: usize,
    pub seed: u64,
    /// What the model computes in: f32, or bf16 with f32 master weights (`munja::optim::MixedPrecision`).
    pub dtype: DType,
}

/// The precisions training supports, as `--dtype` spells them.
pub const TRAIN_DTYPES: [DType; 2] = [DType::F32, DType::BF16];

fn invalid(detail: String) -> Error {
    Error::Invalid { op: "gpt", detail }
}

impl TrainConfig {
    /// Rejects settings that cannot train, naming the flag.
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--eval-interval", self.eval_interval),
            ("--eval-iters", self.eval_iters),
        ] {
            if v == 0 {
                return Err(invalid(format!("{flag} must be positive")));
            }
        }
        for (flag, v) in [("--lr", self.lr), ("--min-lr", self.min_lr), ("--weight-decay", self.weight_decay)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(invalid(format!("{flag} must be a finite number >= 0, got {v}")));
            }
        }
        if self.min_lr > self.lr {
            return Err(invalid(format!("--min-lr {} is above --lr {}", self.min_lr, self.lr)));
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(invalid(format!("--grad-clip must be >= 0 (0 turns it off), got {}", self.grad_clip)));
        }
        if !TRAIN_DTYPES.contains(&self.dtype) {
            return Err(invalid(format!("--dtype {} cannot train: use f32 or bf16", self.dtype)));
        }
        if self.warmup > self.steps {
            return Err(invalid(format!("--warmup {} is longer than --steps {}", self.warmup, self.steps)));
        }
        self.model.validate()
    }

    pub fn adam(&self) -> AdamConfig {
        AdamConfig { lr: self.lr, betas: BETAS, eps: 1e-8, weight_decay: self.weight_decay }
    }

    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine { max_lr: self.lr, min_lr: self.min_lr, warmup_steps: self.warmup, total_steps: self.steps }
    }

    /// Tokens one optimizer step trains on.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.grad_accum * self.model.block_size
    }

    /// `run.*` entries (and the model's `gpt.*` ones) for a checkpoint's metadata. Floats are written
    /// with Rust's shortest round-trip formatting, so they read back bit for bit.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = self.model.to_metadata();
        let mut put = |k: &str, v: String| {
            m.insert(format!("run.{k}"), v);
        };
        put("preset", self.preset.clone());
        put("steps", self.steps.to_string());
        put("batch_size", self.batch_size.to_string());
        put("grad_accum", self.grad_accum.to_string());
        put("lr", self.lr.to_string());
        put("min_lr", self.min_lr.to_string());
        put("warmup", self.warmup.to_string());
        put("weight_decay", self.weight_decay.to_string());
        put("grad_clip", self.grad_clip.to_string());
        put("eval_interval", self.eval_interval.to_string());
        put("eval_iters", self.eval_iters.to_string());
        put("checkpoint_interval", self.checkpoint_interval.to_string());
        put("seed", self.seed.to_string());
        put("dtype", self.dtype.name().to_string());
        m
    }

    pub fn from_metadata(m: &BTreeMap<String, String>) -> Result<TrainConfig> {
        Ok(TrainConfig {
            preset: meta(m, "run.preset")?,
            model: GptConfig::from_metadata(m)?,
            steps: meta(m, "run.steps")?,
            batch_size: meta(m, "run.batch_size")?,
            grad_accum: meta(m, "run.grad_accum")?,
            lr: meta(m, "run.lr")?,
            min_lr: meta(m, "run.min_lr")?,
            warmup: meta(m, "run.warmup")?,
            weight_decay: meta(m, "run.weight_decay")?,
            grad_clip: meta(m, "run.grad_clip")?,
            eval_interval: meta(m, "run.eval_interval")?,
            eval_iters: meta(m, "run.eval_iters")?,
            checkpoint_interval: meta(m, "run.checkpoint_interval")?,
            seed: meta(m, "run.seed")?,
            dtype: dtype_from_meta(m)?,
        })
    }
}

/// `run.dtype`; checkpoints written before bf16 training existed have none and trained in f32.
fn dtype_from_meta(m: &BTreeMap<String, String>) -> Result<DType> {
    let Some(v) = m.get("run.dtype") else { return Ok(DType::F32) };
    TRAIN_DTYPES
        .into_iter()
        .find(|d| d.name() == v)
        .ok_or_else(|| invalid(format!("the checkpoint's metadata entry 'run.dtype' = '{v}' is not f32 or bf16")))
}

/// Entry `key` of a checkpoint's metadata, parsed; a missing or malformed entry is an error naming it.
pub fn meta<T: std::str::FromStr>(m: &BTreeMap<String, String>, key: &str) -> Result<T> {
    let v = m.get(key).ok_or_else(|| invalid(format!("the checkpoint's metadata has no '{key}'")))?;
    v.parse().map_err(|_| invalid(format!("the checkpoint's metadata entry '{key}' = '{v}' does not parse")))
}
