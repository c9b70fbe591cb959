//! GPT-2: token and learned position embeddings, pre-LayerNorm transformer blocks (causal self-attention
//! with a fused QKV projection, then a GELU MLP), a final LayerNorm and a language-model head tied to the
//! token embedding. Parameter names follow Hugging Face's GPT-2 (`wte.weight`, `h.0.attn.c_attn.weight`,
//! ...) with nn.Linear's [out, in] weight layout, which is also what nanoGPT uses, so fixtures and
//! checkpoints map one to one.
//!
//! Sampling keeps a KV cache: the keys and values of every position already seen are kept per layer, so
//! each new token runs the network on one position and attends over the cache, instead of re-running the
//! whole context.

use crate::autograd::NoGradGuard;
use crate::nn::{init, join, parameter, Embedding, LayerNorm, Linear, Module};
use crate::{DType, Device, Error, Generator, Result, Tensor};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// LayerNorm epsilon of GPT-2 (and nanoGPT).
pub const LAYER_NORM_EPS: f64 = 1e-5;
/// Standard deviation of GPT-2's weight init.
pub const INIT_STD: f64 = 0.02;
/// Targets equal to this are skipped by `Gpt::loss` (nanoGPT's convention).
pub const IGNORE_INDEX: i64 = -1;
/// The number of tokens of GPT-2's BPE vocabulary (r50k_base).
pub const GPT2_VOCAB_SIZE: usize = 50257;

/// `n` rounded up to a multiple of `multiple`. Padding the vocabulary of GPT-2 from 50257 to 50304 makes
/// the head's matrix dims multiples of 64, which matmul kernels tile better; the extra tokens never occur
/// in the data, so training pushes their logits down and they are never predicted.
pub fn pad_vocab(n: usize, multiple: usize) -> usize {
    if multiple == 0 {
        n
    } else {
        n.div_ceil(multiple) * multiple
    }
}

/// The shape of a GPT. `vocab_size` 0 means "not known yet": the character-level presets take it from the
/// corpus, so `Gpt::new` refuses a config whose vocabulary was never set.
#[derive(Debug, Clone, PartialEq)]
pub struct GptConfig {
    pub vocab_size: usize,
    /// The context length: the number of positions with a learned embedding.
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Dropout probability on the embeddings, the attention probabilities and each residual branch.
    pub dropout: f64,
    /// Whether the Linear layers and LayerNorms have biases (GPT-2 does).
    pub bias: bool,
}

const META_PREFIX: &str = "gpt.";

impl GptConfig {
    /// The names `preset` accepts.
    pub const PRESETS: [&'static str; 4] = ["char-tiny", "shakespeare-char", "gpt2", "gpt2-medium"];

    /// A named configuration: `char-tiny` (4 layers, 4 heads, 128 wide, context 64: small enough to train
    /// on a laptop CPU), `shakespeare-char` (nanoGPT's 6/6/384, context 256, dropout 0.2), `gpt2` (124M:
    /// 12/12/768, context 1024) and `gpt2-medium` (350M: 24/16/1024). The character-level presets leave
    /// `vocab_size` at 0 for the caller to set from its tokenizer; the GPT-2 presets use GPT-2's vocabulary
    /// padded to a multiple of 64.
    pub fn preset(name: &str) -> Result<GptConfig> {
        let gpt2_vocab = pad_vocab(GPT2_VOCAB_SIZE, 64);
        let (vocab_size, block_size, n_layer, n_head, n_embd, dropout) = match name {
            "char-tiny" => (0, 64, 4, 4, 128, 0.0),
            "shakespeare-char" => (0, 256, 6, 6, 384, 0.2),
            "gpt2" => (gpt2_vocab, 1024, 12, 12, 768, 0.0),
            "gpt2-medium" => (gpt2_vocab, 1024, 24, 16, 1024, 0.0),
            _ => {
                return Err(Error::invalid(
                    "GptConfig::preset",
                    format!("unknown preset '{name}'; known presets: {}", Self::PRESETS.join(", ")),
                ))
            }
        };
        Ok(GptConfig { vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias: true })
    }

    /// The size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// Checks that a model of this shape can be built: every size positive, the width divisible by the
    /// number of heads, dropout in [0, 1).
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::invalid("GptConfig", detail));
        if self.vocab_size == 0 {
            return bad("vocab_size is 0: set it from the tokenizer before building the model".into());
        }
        for (name, v) in [
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is outside [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// The config as string entries (`gpt.n_layer` = "12", ...) for a checkpoint's metadata, so a
    /// checkpoint alone says which model to build before loading it.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(format!("{META_PREFIX}{k}"), v);
        };
        put("vocab_size", self.vocab_size.to_string());
        put("block_size", self.block_size.to_string());
        put("n_layer", self.n_layer.to_string());
        put("n_head", self.n_head.to_string());
        put("n_embd", self.n_embd.to_string());
        put("dropout", self.dropout.to_string());
        put("bias", self.bias.to_string());
        m
    }

    /// Reads a config written by `to_metadata`; a missing or unparsable entry is an error naming it.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<GptConfig> {
        fn get<T: std::str::FromStr>(m: &BTreeMap<String, String>, k: &str) -> Result<T> {
            let key = format!("{META_PREFIX}{k}");
            let v = m
                .get(&key)
                .ok_or_else(|| Error::invalid("GptConfig::from_metadata", format!("metadata has no '{key}'")))?;
            v.parse().map_err(|_| Error::invalid("GptConfig::from_metadata", format!("'{key}' = '{v}' does not parse")))
        }
        Ok(GptConfig {
            vocab_size: get(metadata, "vocab_size")?,
            block_size: get(metadata, "block_size")?,
            n_layer: get(metadata, "n_layer")?,
            n_head: get(metadata, "n_head")?,
            n_embd: get(metadata, "n_embd")?,
            dropout: get(metadata, "dropout")?,
            bias: get(metadata, "bias")?,
        })
    }
}

/// Whether a forward pass trains (dropout on) and with which probability.
#[derive(Debug, Clone, Copy)]
struct Pass {
    train: bool,
    p: f64,
}

impl Pass {
    fn drop(&self, x: &Tensor) -> Result<Tensor> {
        x.dropout(self.p, self.train)
    }
}

/// One layer's keys and values for positions 0..len of a single sequence, preallocated at
/// [1, n_head, block_size, head_dim] so a step writes one position in place instead of re-concatenating
/// the whole cache.
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// Multi-head causal self-attention with one fused QKV projection.
#[derive(Debug)]
pub struct CausalSelfAttention {
    /// [3C, C]: the query, key and value projections stacked, computed with one matmul.
    pub c_attn: Linear,
    /// [C, C]: the output projection.
    pub c_proj: Linear,
    n_head: usize,
}

impl CausalSelfAttention {
    /// x [B, T, C] at positions pos0..pos0+T → [B, T, C]. With a cache, the new keys and values are stored
    /// at pos0.. and the queries attend over every cached position 0..pos0+T.
    fn forward(&self, x: &Tensor, pos0: usize, cache: Option<&LayerCache>, pass: Pass) -> Result<Tensor> {
        let (b, t, c) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let (nh, hd) = (self.n_head, c / self.n_head);
        // [B, T, 3, H, hd] is a view of the projection's output; picking q, k, v along dim 2 and moving
        // heads in front of time are views too, so the only copies are the matmul results.
        let qkv = self.c_attn.forward(x)?.reshape([b, t, 3, nh, hd])?;
        let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2);
        // Scaling q (T·hd numbers) is the same product as scaling the scores (T·T numbers), for less work.
        let q = part(0)?.mul_scalar(1.0 / (hd as f64).sqrt())?;
        let (mut k, mut v) = (part(1)?, part(2)?);
        if let Some(cache) = cache {
            cache.k.narrow(2, pos0, t)?.assign(&k)?;
            cache.v.narrow(2, pos0, t)?.assign(&v)?;
            k = cache.k.narrow(2, 0, pos0 + t)?;
            v = cache.v.narrow(2, 0, pos0 + t)?;
        }
        // Query i (position pos0 + i) sees keys 0..=pos0 + i: the causal softmax masks the rest as it
        // normalises, with no mask tensor and no separate masking pass over the [B, H, T, S] scores.
        let att = q.matmul(&k.transpose(-2, -1)?)?;
        let att = pass.drop(&att.causal_softmax(pos0)?)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape([b, t, c])?;
        pass.drop(&self.c_proj.forward(&y)?)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.c_attn.visit_parameters(&join(prefix, "c_attn"), f);
        self.c_proj.visit_parameters(&join(prefix, "c_proj"), f);
    }
}

/// The feed-forward half of a block: C → 4C → GELU (tanh) → C.
#[derive(Debug)]
pub struct Mlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        pass.drop(&self.c_proj.forward(&self.c_fc.forward(x)?.gelu()?)?)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.c_fc.visit_parameters(&join(prefix, "c_fc"), f);
        self.c_proj.visit_parameters(&join(prefix, "c_proj"), f);
    }
}

/// A pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
#[derive(Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    fn forward(&self, x: &Tensor, pos0: usize, cache: Option<&LayerCache>, pass: Pass) -> Result<Tensor> {
        let x = x.add(&self.attn.forward(&self.ln_1.forward(x)?, pos0, cache, pass)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?, pass)?)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.ln_1.visit_parameters(&join(prefix, "ln_1"), f);
        self.attn.visit(&join(prefix, "attn"), f);
        self.ln_2.visit_parameters(&join(prefix, "ln_2"), f);
        self.mlp.visit(&join(prefix, "mlp"), f);
    }
}

/// A GPT-2 language model. Starts in training mode (dropout active), as PyTorch modules do.
#[derive(Debug)]
pub struct Gpt {
    config: GptConfig,
    /// [vocab, C]: the token embedding, also the output head (logits = x·wteᵀ).
    pub wte: Embedding,
    /// [block_size, C]: the learned position embedding.
    pub wpe: Embedding,
    pub h: Vec<Block>,
    pub ln_f: LayerNorm,
    training: AtomicBool,
}

fn linear(inf: usize, outf: usize, bias: bool, dtype: DType, device: Device) -> Result<Linear> {
    let weight = parameter(&[outf, inf], dtype, device)?;
    let bias = if bias { Some(parameter(&[outf], dtype, device)?) } else { None };
    Ok(Linear { weight, bias })
}

fn layer_norm(dim: usize, bias: bool, dtype: DType, device: Device) -> Result<LayerNorm> {
    if bias {
        LayerNorm::new(dim, LAYER_NORM_EPS, dtype, device)
    } else {
        LayerNorm::no_bias(dim, LAYER_NORM_EPS, dtype, device)
    }
}

impl Gpt {
    /// A model with GPT-2's init: every Linear and embedding weight N(0, 0.02²), except the two residual
    /// output projections of each block (attn.c_proj, mlp.c_proj), N(0, (0.02/sqrt(2·n_layer))²) so the
    /// residual stream's variance does not grow with depth; biases 0, LayerNorms 1 and 0. Every number
    /// comes from `gen`, so one seed gives one model.
    pub fn new(config: GptConfig, dtype: DType, device: Device, gen: &mut Generator) -> Result<Gpt> {
        let model = Gpt::zeroed(config, dtype, device)?;
        let resid_std = INIT_STD / (2.0 * model.config.n_layer as f64).sqrt();
        init::normal_(&model.wte.weight, 0.0, INIT_STD, gen)?;
        init::normal_(&model.wpe.weight, 0.0, INIT_STD, gen)?;
        for block in &model.h {
            init::normal_(&block.attn.c_attn.weight, 0.0, INIT_STD, gen)?;
            init::normal_(&block.attn.c_proj.weight, 0.0, resid_std, gen)?;
            init::normal_(&block.mlp.c_fc.weight, 0.0, INIT_STD, gen)?;
            init::normal_(&block.mlp.c_proj.weight, 0.0, resid_std, gen)?;
        }
        Ok(model)
    }

    /// A model with zero weights (LayerNorms at 1 and 0), for loaders that overwrite every parameter and
    /// should not pay for drawing an init first.
    pub(crate) fn zeroed(config: GptConfig, dtype: DType, device: Device) -> Result<Gpt> {
        config.validate()?;
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType { op: "Gpt::new", dtype, detail: "model weights are floating point" });
        }
        let (c, bias) = (config.n_embd, config.bias);
        let wte = Embedding { weight: parameter(&[config.vocab_size, c], dtype, device)? };
        let wpe = Embedding { weight: parameter(&[config.block_size, c], dtype, device)? };
        let mut h = Vec::with_capacity(config.n_layer);
        for _ in 0..config.n_layer {
            h.push(Block {
                ln_1: layer_norm(c, bias, dtype, device)?,
                attn: CausalSelfAttention {
                    c_attn: linear(c, 3 * c, bias, dtype, device)?,
                    c_proj: linear(c, c, bias, dtype, device)?,
                    n_head: config.n_head,
                },
                ln_2: layer_norm(c, bias, dtype, device)?,
                mlp: Mlp {
                    c_fc: linear(c, 4 * c, bias, dtype, device)?,
                    c_proj: linear(4 * c, c, bias, dtype, device)?,
                },
            });
        }
        let ln_f = layer_norm(c, bias, dtype, device)?;
        Ok(Gpt { config, wte, wpe, h, ln_f, training: AtomicBool::new(true) })
    }

    pub fn config(&self) -> &GptConfig {
        &self.config
    }
    pub fn dtype(&self) -> DType {
        self.wte.weight.dtype()
    }
    pub fn device(&self) -> Device {
        self.wte.weight.device()
    }
    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// The number of scalar parameters (the tied head counted once, with the token embedding).
    pub fn num_params(&self) -> usize {
        self.num_parameters()
    }

    /// Training FLOPs per token (forward and backward), for model FLOPs utilisation: 6N for the weight
    /// matmuls plus 12·L·C·T for attention over a full context, as in the PaLM paper's appendix B. N leaves
    /// out the position embedding, which is a lookup, not a matmul; the token embedding stays in because it
    /// is also the head.
    pub fn flops_per_token(&self) -> f64 {
        let c = &self.config;
        let n = (self.num_params() - self.wpe.weight.numel()) as f64;
        6.0 * n + 12.0 * (c.n_layer * c.n_embd * c.block_size) as f64
    }

    /// Logits [B, T, vocab] for I64 ids [B, T] at positions pos0..pos0+T; with `last_only`, only the last
    /// position's logits [B, 1, vocab] (sampling needs nothing else, and the head is the biggest matmul).
    fn run(
        &self,
        ids: &Tensor,
        pos0: usize,
        cache: Option<&[LayerCache]>,
        pass: Pass,
        last_only: bool,
    ) -> Result<Tensor> {
        const OP: &str = "Gpt::forward";
        if ids.dtype() != DType::I64 {
            return Err(Error::DType { op: OP, expected: DType::I64, got: ids.dtype() });
        }
        if ids.rank() != 2 || ids.numel() == 0 {
            return Err(Error::shape(
                OP,
                format!("token ids must be a non-empty [batch, time] tensor, got {:?}", ids.dims()),
            ));
        }
        let (b, t) = (ids.dims()[0], ids.dims()[1]);
        if pos0 + t > self.config.block_size {
            return Err(Error::shape(
                OP,
                format!(
                    "{t} tokens from position {pos0} exceed the model's context of block_size = {}",
                    self.config.block_size
                ),
            ));
        }
        let pos = Tensor::arange(pos0 as f64, (pos0 + t) as f64, 1.0, DType::I64, ids.device())?;
        let mut x = pass.drop(&self.wte.forward(ids)?.add(&self.wpe.forward(&pos)?)?)?;
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(&x, pos0, cache.map(|c| &c[i]), pass)?;
        }
        let mut x = self.ln_f.forward(&x)?;
        let mut tt = t;
        if last_only {
            x = x.narrow(1, t - 1, 1)?;
            tt = 1;
        }
        // The head is the token embedding seen through a transposed view: no copy, and its gradient adds
        // to the embedding's.
        let c = self.config.n_embd as isize;
        let logits = x.reshape([-1, c])?.matmul(&self.wte.weight.t()?)?;
        logits.reshape([b, tt, self.config.vocab_size])
    }

    fn pass(&self, train: bool) -> Pass {
        Pass { train, p: self.config.dropout }
    }

    /// Mean cross-entropy of the next-token predictions for ids [B, T] against targets [B, T] (I64), with
    /// targets equal to -1 (`IGNORE_INDEX`) skipped. Dropout follows the training mode.
    ///
    /// A bf16/f16 model's loss is f32, as under PyTorch's autocast: the fused cross-entropy already does its
    /// softmax arithmetic in f32, and only the per-token values (B·T numbers, not B·T·vocab) are widened, so
    /// the mean is neither rounded to 8 bits nor divided by a token count that bf16 cannot hold exactly.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(ids)?;
        if !matches!(logits.dtype(), DType::BF16 | DType::F16) {
            return logits.cross_entropy(targets, IGNORE_INDEX);
        }
        let rows = logits.cross_entropy_per_row(targets, IGNORE_INDEX)?.to_dtype(DType::F32)?;
        rows.mean_over_targets(targets, IGNORE_INDEX)
    }

    /// The mean cross-entropy over a token stream, cut into consecutive non-overlapping windows of
    /// block_size inputs, each predicting the next block_size tokens (so a window spans block_size + 1
    /// tokens and the next one starts block_size later); a final partial window is dropped. Every window
    /// has the same length, so this is both the mean over windows (how Hugging Face evaluation scripts
    /// report it) and the mean over tokens. Runs in eval mode without a graph, `batch_size` windows at a
    /// time; sums in f64.
    pub fn eval_stream(&self, tokens: &[u32], batch_size: usize) -> Result<f64> {
        const OP: &str = "Gpt::eval_stream";
        let t = self.config.block_size;
        if batch_size == 0 {
            return Err(Error::invalid(OP, "batch_size must be positive"));
        }
        let windows = tokens.len().saturating_sub(1) / t;
        if windows == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} tokens do not fill one window: evaluation needs at least block_size + 1 = {}",
                    tokens.len(),
                    t + 1
                ),
            ));
        }
        let _ng = NoGradGuard::new();
        let device = self.device();
        let mut total = 0.0;
        for first in (0..windows).step_by(batch_size) {
            let n = batch_size.min(windows - first);
            let (mut x, mut y) = (Vec::with_capacity(n * t), Vec::with_capacity(n * t));
            for w in first..first + n {
                let s = &tokens[w * t..w * t + t + 1];
                x.extend(s[..t].iter().map(|&v| v as i64));
                y.extend(s[1..].iter().map(|&v| v as i64));
            }
            let x = Tensor::from_vec(x, &[n, t], device)?;
            let y = Tensor::from_vec(y, &[n, t], device)?;
            let per_token = self.run(&x, 0, None, self.pass(false), false)?.cross_entropy_per_row(&y, IGNORE_INDEX)?;
            total += per_token.to_vec_f64()?.iter().sum::<f64>() / t as f64;
        }
        Ok(total / windows as f64)
    }

    /// Continues `prompt` by `max_new_tokens` sampled tokens and returns the whole sequence (prompt
    /// first), in eval mode without a graph. `temperature` divides the logits (0 picks the most likely
    /// token, greedily); `top_k` keeps only the k most likely tokens. Draws one uniform number per token
    /// from `gen`.
    ///
    /// Uses a KV cache: the prompt is run once, then each new token costs one position's forward pass and
    /// attention over the cached keys and values. When the sequence outgrows block_size, the cache is
    /// rebuilt from the last block_size tokens (the learned positions of the cached keys would otherwise
    /// be wrong); from then on each token costs a full-context pass, which is what the model can see, and
    /// the output equals `generate_uncached` token for token.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        temperature: f64,
        top_k: Option<usize>,
        gen: &mut Generator,
    ) -> Result<Vec<u32>> {
        check_sampling(prompt, temperature, top_k)?;
        let _ng = NoGradGuard::new();
        let (bs, c) = (self.config.block_size, &self.config);
        let mut seq = prompt.to_vec();
        if max_new_tokens == 0 {
            return Ok(seq);
        }
        let shape = [1, c.n_head, bs, c.head_dim()];
        let cache: Vec<LayerCache> = (0..c.n_layer)
            .map(|_| {
                Ok(LayerCache {
                    k: Tensor::zeros(&shape, self.dtype(), self.device())?,
                    v: Tensor::zeros(&shape, self.dtype(), self.device())?,
                })
            })
            .collect::<Result<_>>()?;
        let prefill = |seq: &[u32]| -> Result<(Tensor, usize)> {
            let ctx = &seq[seq.len().saturating_sub(bs)..];
            Ok((self.run(&ids_tensor(ctx, self.device())?, 0, Some(&cache), self.pass(false), true)?, ctx.len()))
        };
        let (mut logits, mut cached) = prefill(&seq)?;
        for step in 0..max_new_tokens {
            let next = sample(&logits.to_vec_f64()?, temperature, top_k, gen)?;
            seq.push(next);
            if step + 1 == max_new_tokens {
                break;
            }
            if cached == bs {
                (logits, cached) = prefill(&seq)?;
            } else {
                let ids = ids_tensor(&[next], self.device())?;
                logits = self.run(&ids, cached, Some(&cache), self.pass(false), true)?;
                cached += 1;
            }
        }
        Ok(seq)
    }

    /// `generate` without the KV cache: every token re-runs the model on the last block_size tokens. The
    /// reference the cached sampler is tested against; slower by a factor of the context length.
    pub fn generate_uncached(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        temperature: f64,
        top_k: Option<usize>,
        gen: &mut Generator,
    ) -> Result<Vec<u32>> {
        check_sampling(prompt, temperature, top_k)?;
        let _ng = NoGradGuard::new();
        let bs = self.config.block_size;
        let mut seq = prompt.to_vec();
        for _ in 0..max_new_tokens {
            let ctx = &seq[seq.len().saturating_sub(bs)..];
            let logits = self.run(&ids_tensor(ctx, self.device())?, 0, None, self.pass(false), true)?;
            seq.push(sample(&logits.to_vec_f64()?, temperature, top_k, gen)?);
        }
        Ok(seq)
    }
}

/// A [1, T] I64 tensor of token ids.
fn ids_tensor(ids: &[u32], device: Device) -> Result<Tensor> {
    Tensor::from_vec(ids.iter().map(|&v| v as i64).collect(), &[1, ids.len()], device)
}

fn check_sampling(prompt: &[u32], temperature: f64, top_k: Option<usize>) -> Result<()> {
    const OP: &str = "Gpt::generate";
    if prompt.is_empty() {
        return Err(Error::invalid(OP, "the prompt is empty: sampling needs at least one token to start from"));
    }
    if !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(Error::invalid(OP, format!("temperature {temperature} must be finite and >= 0")));
    }
    if top_k == Some(0) {
        return Err(Error::invalid(OP, "top_k must be at least 1"));
    }
    Ok(())
}

/// Picks the next token from one position's logits.
fn sample(logits: &[f64], temperature: f64, top_k: Option<usize>, gen: &mut Generator) -> Result<u32> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() || logits.iter().any(|v| v.is_nan()) {
        return Err(Error::invalid("Gpt::generate", "the logits are not finite (has the model diverged?)"));
    }
    if temperature == 0.0 {
        // The first maximum, as argmax does.
        return Ok(logits.iter().position(|&v| v == max).unwrap_or(0) as u32);
    }
    let mut threshold = f64::NEG_INFINITY;
    if let Some(k) = top_k.filter(|&k| k < logits.len()) {
        let mut sorted = logits.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        threshold = sorted[k - 1];
    }
    // Tokens tied with the k-th largest logit stay in, as with torch.topk's threshold in nanoGPT.
    let weights: Vec<f64> =
        logits.iter().map(|&v| if v >= threshold { ((v - max) / temperature).exp() } else { 0.0 }).collect();
    let total: f64 = weights.iter().sum();
    let u = gen.uniform(1)[0] as f64 * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += w;
            last = i;
            if u < acc {
                return Ok(i as u32);
            }
        }
    }
    Ok(last as u32)
}

impl Module for Gpt {
    /// Logits [B, T, vocab] for I64 token ids [B, T], T <= block_size.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, 0, None, self.pass(self.is_training()), false)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.wte.visit_parameters(&join(prefix, "wte"), f);
        self.wpe.visit_parameters(&join(prefix, "wpe"), f);
        for (i, block) in self.h.iter().enumerate() {
            block.visit(&join(prefix, &format!("h.{i}")), f);
        }
        self.ln_f.visit_parameters(&join(prefix, "ln_f"), f);
    }
    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}
