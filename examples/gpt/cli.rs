//! The command line: flags, their per-preset defaults, and turning them into a `TrainConfig`.

use crate::gpt::config::TrainConfig;
use clap::{Parser, ValueEnum};
use munja::models::GptConfig;
use munja::{DType, Error, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenizerArg {
    Char,
    Gpt2,
}

impl TokenizerArg {
    pub fn name(self) -> &'static str {
        match self {
            TokenizerArg::Char => "char",
            TokenizerArg::Gpt2 => "gpt2",
        }
    }
}

/// Train a GPT on text (by default a small character-level model on tiny Shakespeare, about five minutes
/// on two CPU cores), sample from a trained one, or evaluate GPT-2 weights.
#[derive(Parser, Debug)]
#[command(name = "gpt")]
pub struct Args {
    /// Model shape: char-tiny, shakespeare-char, gpt2 or gpt2-medium.
    #[arg(long)]
    pub preset: Option<String>,
    /// Text file to train or evaluate on (or an llm.c .bin shard of GPT-2 ids) [default: data/tinyshakespeare.txt]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Optimizer steps [default: per preset; 2000 for char-tiny]
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per micro-batch [default: per preset]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1]
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate, reached after the warmup [default: per preset]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning rate at the end of the cosine decay [default: lr / 10]
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Linear warmup steps [default: 100]
    #[arg(long)]
    pub warmup: Option<usize>,
    /// AdamW weight decay, applied to the weight matrices only [default: 0.1]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to this; 0 turns clipping off [default: 1.0]
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Dropout probability [default: the preset's]
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Steps between train/val loss estimates [default: per preset]
    #[arg(long)]
    pub eval_interval: Option<usize>,
    /// Batches per loss estimate [default: per preset]
    #[arg(long)]
    pub eval_iters: Option<usize>,
    /// Steps between checkpoints; 0 saves only at the end and on SIGINT/SIGTERM [default: 500]
    #[arg(long)]
    pub checkpoint_interval: Option<usize>,
    /// Data-parallel runs (under munja-run, torchrun or srun): shard the AdamW state over the processes
    /// (ZeRO-1) instead of keeping a full copy on each. Ignored by single-process runs' results.
    #[arg(long)]
    pub zero1: bool,
    /// On a GPU: time every kernel of steps 11 to 20 of this session with CUDA events and print the GPU
    /// time per step by kernel after the run summary.
    #[arg(long)]
    pub profile: bool,
    /// auto (the first GPU if there is one, else the CPU), cpu, cuda or cuda:N. In a data-parallel run
    /// auto and cuda mean the GPU of the process's local rank.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute precision [default: f32]. Training in bf16 is mixed precision: the model's weights and
    /// activations are bf16 (matmuls accumulate in f32), AdamW updates f32 master weights, and checkpoints
    /// hold the f32 masters. A resumed run keeps its precision. For --sample and --eval-only: the dtype the
    /// weights are loaded in.
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
    /// Seeds the init, the batch order, dropout and evaluation batches [default: 1337]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run directory: checkpoint.safetensors, metrics.jsonl, loss.png [default: runs/gpt]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in this directory from its last checkpoint, with its saved settings.
    #[arg(long, value_name = "OUT")]
    pub resume: Option<PathBuf>,
    /// char (vocabulary from the data) or gpt2 (BPE) [default: char for the character-level presets, else gpt2]
    #[arg(long, value_enum)]
    pub tokenizer: Option<TokenizerArg>,
    /// Print text sampled from the checkpoint in --out (or --resume), or from --init-from-hf weights.
    #[arg(long)]
    pub sample: bool,
    /// Text the sample continues.
    #[arg(long, default_value = "\n")]
    pub prompt: String,
    /// Tokens to sample.
    #[arg(long, default_value_t = 500)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the K most likely tokens only; 0 means all.
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    /// Hugging Face GPT-2 weights (model.safetensors): evaluate (--eval-only), sample (--sample) or
    /// fine-tune from them, with the GPT-2 tokenizer.
    #[arg(long, value_name = "MODEL.SAFETENSORS")]
    pub init_from_hf: Option<PathBuf>,
    /// Evaluate on the whole --data stream in consecutive windows and print `eval_loss <value>` last.
    #[arg(long)]
    pub eval_only: bool,
}

/// Defaults that depend on the preset: what trains that shape well in reasonable time.
struct PresetDefaults {
    steps: usize,
    batch_size: usize,
    lr: f64,
    eval_interval: usize,
    eval_iters: usize,
}

fn preset_defaults(preset: &str) -> PresetDefaults {
    match preset {
        // Measured to reach a validation loss near 1.9 in about five minutes on two CPU cores.
        "char-tiny" => PresetDefaults { steps: 2000, batch_size: 12, lr: 1e-3, eval_interval: 250, eval_iters: 20 },
        // nanoGPT's train_shakespeare_char.py.
        "shakespeare-char" => {
            PresetDefaults { steps: 5000, batch_size: 64, lr: 1e-3, eval_interval: 250, eval_iters: 200 }
        }
        _ => PresetDefaults { steps: 2000, batch_size: 8, lr: 6e-4, eval_interval: 250, eval_iters: 20 },
    }
}

pub const DEFAULT_PRESET: &str = "char-tiny";
pub const DEFAULT_SEED: u64 = 1337;
pub const DEFAULT_OUT: &str = "runs/gpt";

/// The shipped corpus, found from the crate root so the example runs from any working directory.
pub fn default_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("tinyshakespeare.txt")
}

fn invalid(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Invalid { op, detail: detail.into() }
}

impl Args {
    /// `--dtype`, f32 when not given.
    pub fn dtype(&self) -> DType {
        self.dtype.unwrap_or(Precision::F32).dtype()
    }

    pub fn preset(&self) -> &str {
        self.preset.as_deref().unwrap_or(DEFAULT_PRESET)
    }

    /// The tokenizer the flags ask for: given, else the preset's kind.
    pub fn tokenizer_name(&self) -> &'static str {
        match self.tokenizer {
            Some(t) => t.name(),
            None if self.preset().starts_with("char") || self.preset().starts_with("shakespeare") => "char",
            None => "gpt2",
        }
    }

    /// A fresh run's settings: the flags over the preset's defaults. The vocabulary is left to the caller
    /// (it comes from the tokenizer).
    pub fn train_config(&self, model: GptConfig) -> Result<TrainConfig> {
        let d = preset_defaults(self.preset());
        let lr = self.lr.unwrap_or(d.lr);
        let mut model = model;
        if let Some(p) = self.dropout {
            model.dropout = p;
        }
        let steps = self.steps.unwrap_or(d.steps);
        Ok(TrainConfig {
            preset: self.preset().to_string(),
            model,
            steps,
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            grad_accum: self.grad_accum.unwrap_or(1),
            lr,
            min_lr: self.min_lr.unwrap_or(lr / 10.0),
            // The default warmup shortens to fit a short run; an explicit one that does not fit is an error.
            warmup: self.warmup.unwrap_or(100.min(steps)),
            weight_decay: self.weight_decay.unwrap_or(0.1),
            grad_clip: self.grad_clip.unwrap_or(1.0),
            eval_interval: self.eval_interval.unwrap_or(d.eval_interval),
            eval_iters: self.eval_iters.unwrap_or(d.eval_iters),
            checkpoint_interval: self.checkpoint_interval.unwrap_or(500),
            seed: self.seed.unwrap_or(DEFAULT_SEED),
            dtype: self.dtype(),
        })
    }

    /// A resumed run keeps what decides its numbers; only the length and the bookkeeping may change.
    pub fn apply_resume_overrides(&self, cfg: &mut TrainConfig, step: usize) -> Result<()> {
        let fixed = [
            ("--preset", self.preset.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--grad-accum", self.grad_accum.is_some()),
            ("--lr", self.lr.is_some()),
            ("--min-lr", self.min_lr.is_some()),
            ("--warmup", self.warmup.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--grad-clip", self.grad_clip.is_some()),
            ("--dropout", self.dropout.is_some()),
            ("--seed", self.seed.is_some()),
            ("--tokenizer", self.tokenizer.is_some()),
            ("--init-from-hf", self.init_from_hf.is_some()),
        ];
        if let Some((flag, _)) = fixed.iter().find(|(_, given)| *given) {
            return Err(invalid(
                "--resume",
                format!("{flag} cannot change when resuming: the run continues with the settings in its checkpoint"),
            ));
        }
        if let Some(d) = self.dtype.map(Precision::dtype).filter(|d| *d != cfg.dtype) {
            return Err(invalid(
                "--resume",
                format!("--dtype {d} cannot change when resuming: this run trains in {}", cfg.dtype),
            ));
        }
        if let Some(steps) = self.steps {
            if steps < step {
                return Err(invalid("--steps", format!("{steps} is before the checkpoint's step {step}")));
            }
            // The cosine decay is stretched to the new length from here on.
            cfg.steps = steps;
        }
        if let Some(v) = self.eval_interval {
            cfg.eval_interval = v;
        }
        if let Some(v) = self.eval_iters {
            cfg.eval_iters = v;
        }
        if let Some(v) = self.checkpoint_interval {
            cfg.checkpoint_interval = v;
        }
        cfg.validate()
    }

    /// Sequences per forward pass of `--eval-only`: the flag, else as many as keep the logits near 256 MB.
    pub fn eval_batch(&self, block_size: usize, vocab: usize) -> usize {
        self.batch_size.unwrap_or_else(|| (64_000_000 / (block_size * vocab).max(1)).clamp(1, 64))
    }
}
