//! CPU benchmarks: five workloads that decide how fast training runs on a CPU.
//!
//!     cargo bench --bench cpu                      criterion statistics for every workload
//!     cargo bench --bench cpu -- softmax           only the workloads whose name contains "softmax"
//!     cargo bench --bench cpu -- --table [--only NAME]
//!                                                  median ms per iteration, one `name<TAB>ms` line each
//!
//! The table mode exists for benches/compare/run.sh, which sets it beside the same workloads written in
//! PyTorch (benches/compare/torch_cpu.py). Both use the warm-up and repeat counts in `WORKLOADS` and report
//! the median of single iterations, so the two columns are measured the same way. Keep shapes, models and
//! counts identical in both files.

use criterion::{Criterion, SamplingMode, Throughput};
use munja::nn::{self, Module};
use munja::optim::{self, Optimizer};
use munja::{DType, Device, Generator, Result, Tensor};
use std::hint::black_box;
use std::time::{Duration, Instant};

const DEV: Device = Device::Cpu;
const F32: DType = DType::F32;

/// One timed iteration of a workload. It owns its tensors, model and optimizer.
type Step = Box<dyn FnMut() -> Result<()>>;

struct Workload {
    name: &'static str,
    /// Untimed iterations before measuring (table mode): caches, allocator, optimizer state.
    warmup: usize,
    /// Timed iterations whose median is reported (table mode).
    repeats: usize,
    /// What one iteration processes, for criterion's throughput line.
    throughput: Throughput,
    /// Criterion's measurement window: long enough for its 10 samples of at least one iteration each.
    measure_secs: u64,
    setup: fn() -> Result<Step>,
}

/// The workloads; benches/compare/torch_cpu.py has the same list.
const WORKLOADS: &[Workload] = &[
    Workload {
        name: "sgemm_1024",
        warmup: 5,
        repeats: 30,
        // Counted as floating-point operations, so criterion's "elem/s" reads as FLOP/s.
        throughput: Throughput::Elements(2 * 1024 * 1024 * 1024),
        measure_secs: 3,
        setup: sgemm,
    },
    Workload {
        name: "softmax_fwd_bwd_8192x768",
        warmup: 5,
        repeats: 30,
        throughput: Throughput::Elements(8192 * 768),
        measure_secs: 3,
        setup: softmax_fwd_bwd,
    },
    Workload {
        name: "layer_norm_fwd_bwd_8192x768",
        warmup: 5,
        repeats: 30,
        throughput: Throughput::Elements(8192 * 768),
        measure_secs: 3,
        setup: layer_norm_fwd_bwd,
    },
    Workload {
        name: "mlp_train_step_b128",
        warmup: 10,
        repeats: 50,
        // Samples per step.
        throughput: Throughput::Elements(128),
        measure_secs: 3,
        setup: mlp_train_step,
    },
    Workload {
        name: "char_gpt_train_step",
        warmup: 3,
        repeats: 15,
        // Tokens per step.
        throughput: Throughput::Elements((gpt::B * gpt::T) as u64),
        measure_secs: 8,
        setup: char_gpt_train_step,
    },
];

/// C = A·B with A, B of 1024×1024 f32, no autograd.
fn sgemm() -> Result<Step> {
    let mut g = Generator::new(0);
    let a = Tensor::randn_with(&mut g, &[1024, 1024], F32, DEV)?;
    let b = Tensor::randn_with(&mut g, &[1024, 1024], F32, DEV)?;
    Ok(Box::new(move || {
        black_box(a.matmul(&b)?);
        Ok(())
    }))
}

/// softmax over rows of 8192×768, then backward with a fixed upstream gradient.
fn softmax_fwd_bwd() -> Result<Step> {
    let mut g = Generator::new(0);
    let x = Tensor::randn_with(&mut g, &[8192, 768], F32, DEV)?.set_requires_grad(true);
    let up = Tensor::randn_with(&mut g, &[8192, 768], F32, DEV)?;
    Ok(Box::new(move || {
        x.zero_grad();
        x.softmax(-1)?.backward_with(&up)?;
        black_box(x.grad());
        Ok(())
    }))
}

/// layer_norm (with weight and bias) over rows of 8192×768, then backward to x, weight and bias.
fn layer_norm_fwd_bwd() -> Result<Step> {
    let mut g = Generator::new(0);
    let x = Tensor::randn_with(&mut g, &[8192, 768], F32, DEV)?.set_requires_grad(true);
    let up = Tensor::randn_with(&mut g, &[8192, 768], F32, DEV)?;
    let ln = nn::LayerNorm::new(768, 1e-5, F32, DEV)?;
    Ok(Box::new(move || {
        x.zero_grad();
        ln.zero_grad();
        ln.forward(&x)?.backward_with(&up)?;
        black_box(x.grad());
        Ok(())
    }))
}

/// One Adam training step of an MLP 784-512-512-10 (ReLU) on a batch of 128.
fn mlp_train_step() -> Result<Step> {
    let mut g = Generator::new(0);
    let model = nn::Sequential::new()
        .push(nn::Linear::new(784, 512, true, F32, DEV, &mut g)?)
        .push(nn::Relu)
        .push(nn::Linear::new(512, 512, true, F32, DEV, &mut g)?)
        .push(nn::Relu)
        .push(nn::Linear::new(512, 10, true, F32, DEV, &mut g)?);
    let config = optim::AdamConfig { lr: 1e-3, ..Default::default() };
    let mut opt = optim::Adam::new(model.named_parameters(), config)?;
    let x = Tensor::rand_with(&mut g, &[128, 784], F32, DEV)?;
    let labels: Vec<i64> = (0..128).map(|_| g.below(10) as i64).collect();
    let y = Tensor::from_vec(labels, &[128], DEV)?;
    Ok(Box::new(move || {
        opt.zero_grad();
        let loss = model.forward(&x)?.cross_entropy(&y, -100)?;
        loss.backward()?;
        opt.step()?;
        black_box(loss);
        Ok(())
    }))
}

/// One AdamW training step of a small character-level GPT (see `gpt`).
fn char_gpt_train_step() -> Result<Step> {
    let mut g = Generator::new(0);
    let model = gpt::CharGpt::new(&mut g)?;
    let config = optim::AdamConfig { lr: 3e-4, betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1 };
    let mut opt = optim::AdamW::new(model.named_parameters(), config)?;
    let ids = |g: &mut Generator| -> Result<Tensor> {
        let v: Vec<i64> = (0..gpt::B * gpt::T).map(|_| g.below(gpt::VOCAB as u64) as i64).collect();
        Tensor::from_vec(v, &[gpt::B, gpt::T], DEV)
    };
    let (x, y) = (ids(&mut g)?, ids(&mut g)?);
    let targets = y.reshape([-1isize])?;
    Ok(Box::new(move || {
        opt.zero_grad();
        let logits = model.forward(&x)?;
        let loss = logits.reshape([-1, gpt::VOCAB as isize])?.cross_entropy(&targets, -100)?;
        loss.backward()?;
        opt.step()?;
        black_box(loss);
        Ok(())
    }))
}

/// The bench's GPT, written the nanoGPT way so it matches `CharGpt` in torch_cpu.py layer for layer:
/// token + learned position embeddings, pre-LN blocks (fused QKV projection, causal attention spelled out
/// as matmul → masked_fill(−inf) → softmax → matmul, GELU-tanh MLP 4× wide), a final LayerNorm and a head
/// tied to the token table. No dropout. It lives here rather than in src/ so the bench measures exactly
/// this composition of ops whatever the library's own models become.
mod gpt {
    use super::{DEV, F32};
    use munja::nn::{self, join, Module};
    use munja::{Generator, Result, Tensor};

    pub const LAYERS: usize = 4;
    pub const WIDTH: usize = 128;
    pub const HEADS: usize = 4;
    pub const T: usize = 64;
    pub const B: usize = 32;
    pub const VOCAB: usize = 65;

    struct Block {
        ln_1: nn::LayerNorm,
        c_attn: nn::Linear,
        attn_proj: nn::Linear,
        ln_2: nn::LayerNorm,
        c_fc: nn::Linear,
        mlp_proj: nn::Linear,
        /// U8 [T, T], 1 above the diagonal: the positions a query may not see.
        masked: Tensor,
    }

    impl Block {
        fn new(masked: Tensor, g: &mut Generator) -> Result<Block> {
            let c = WIDTH;
            Ok(Block {
                ln_1: nn::LayerNorm::new(c, 1e-5, F32, DEV)?,
                c_attn: nn::Linear::new(c, 3 * c, true, F32, DEV, g)?,
                attn_proj: nn::Linear::new(c, c, true, F32, DEV, g)?,
                ln_2: nn::LayerNorm::new(c, 1e-5, F32, DEV)?,
                c_fc: nn::Linear::new(c, 4 * c, true, F32, DEV, g)?,
                mlp_proj: nn::Linear::new(4 * c, c, true, F32, DEV, g)?,
                masked,
            })
        }
    }

    impl Module for Block {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            let (b, t, c) = (x.dims()[0], x.dims()[1], x.dims()[2]);
            let hd = c / HEADS;
            let qkv = self.c_attn.forward(&self.ln_1.forward(x)?)?;
            // [B, T, C] → [B, heads, T, head_dim]
            let split_heads = |z: &Tensor| z.reshape([b, t, HEADS, hd])?.transpose(1, 2);
            let parts = qkv.split(c, 2)?;
            let (q, k, v) = (split_heads(&parts[0])?, split_heads(&parts[1])?, split_heads(&parts[2])?);
            let att = q.matmul(&k.transpose(-2, -1)?)?.mul_scalar(1.0 / (hd as f64).sqrt())?;
            let att = att.masked_fill(&self.masked, f64::NEG_INFINITY)?.softmax(-1)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape([b, t, c])?;
            let x = x.add(&self.attn_proj.forward(&y)?)?;
            let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?.gelu()?;
            x.add(&self.mlp_proj.forward(&h)?)
        }
        fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
            self.ln_1.visit_parameters(&join(prefix, "ln_1"), f);
            self.c_attn.visit_parameters(&join(prefix, "c_attn"), f);
            self.attn_proj.visit_parameters(&join(prefix, "attn_proj"), f);
            self.ln_2.visit_parameters(&join(prefix, "ln_2"), f);
            self.c_fc.visit_parameters(&join(prefix, "c_fc"), f);
            self.mlp_proj.visit_parameters(&join(prefix, "mlp_proj"), f);
        }
    }

    pub struct CharGpt {
        wte: nn::Embedding,
        wpe: nn::Embedding,
        blocks: Vec<Block>,
        ln_f: nn::LayerNorm,
        /// Positions 0..T as I64, made once like PyTorch's `torch.arange(t)` (cheap either way).
        pos: Tensor,
    }

    impl CharGpt {
        pub fn new(g: &mut Generator) -> Result<CharGpt> {
            let masked = Tensor::causal_mask(T, DEV)?.eq_scalar(0.0)?;
            Ok(CharGpt {
                wte: nn::Embedding::new(VOCAB, WIDTH, F32, DEV, g)?,
                wpe: nn::Embedding::new(T, WIDTH, F32, DEV, g)?,
                blocks: (0..LAYERS).map(|_| Block::new(masked.clone(), g)).collect::<Result<_>>()?,
                ln_f: nn::LayerNorm::new(WIDTH, 1e-5, F32, DEV)?,
                pos: Tensor::arange(0.0, T as f64, 1.0, munja::DType::I64, DEV)?,
            })
        }
    }

    impl Module for CharGpt {
        /// I64 ids [B, T] → logits [B, T, VOCAB].
        fn forward(&self, ids: &Tensor) -> Result<Tensor> {
            let mut x = self.wte.forward(ids)?.add(&self.wpe.forward(&self.pos)?)?;
            for blk in &self.blocks {
                x = blk.forward(&x)?;
            }
            // The head shares the token table: logits = x · wteᵀ.
            self.ln_f.forward(&x)?.matmul(&self.wte.weight.t()?)
        }
        fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
            self.wte.visit_parameters(&join(prefix, "wte"), f);
            self.wpe.visit_parameters(&join(prefix, "wpe"), f);
            for (i, blk) in self.blocks.iter().enumerate() {
                blk.visit_parameters(&join(prefix, &format!("h.{i}")), f);
            }
            self.ln_f.visit_parameters(&join(prefix, "ln_f"), f);
        }
    }
}

/// `--table`: the median of `repeats` single iterations after `warmup`, in ms, per workload.
fn table_mode(only: Option<&str>) -> Result<()> {
    for w in WORKLOADS.iter().filter(|w| only.is_none_or(|o| o == w.name)) {
        let mut step = (w.setup)()?;
        for _ in 0..w.warmup {
            step()?;
        }
        let mut times = Vec::with_capacity(w.repeats);
        for _ in 0..w.repeats {
            let t0 = Instant::now();
            step()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median = if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 };
        println!("{}\t{:.3}", w.name, median * 1e3);
    }
    Ok(())
}

fn criterion_mode() -> Result<()> {
    // Short windows (see `measure_secs`) so the five workloads finish in under a minute on 2 cores; flat
    // sampling so the slow steps (the GPT's hundreds of ms) are not asked for 55 iterations per sample set.
    let mut c = Criterion::default().warm_up_time(Duration::from_secs(1)).sample_size(10).configure_from_args();
    for w in WORKLOADS {
        let mut step = (w.setup)()?;
        let mut group = c.benchmark_group(w.name);
        group
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs(w.measure_secs))
            .throughput(w.throughput.clone());
        let mut failure = None;
        group.bench_function("step", |b| {
            b.iter(|| {
                if let Err(e) = step() {
                    failure.get_or_insert(e);
                }
            })
        });
        group.finish();
        if let Some(e) = failure {
            return Err(e);
        }
    }
    c.final_summary();
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = if args.iter().any(|a| a == "--table") {
        let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(String::as_str);
        table_mode(only)
    } else {
        criterion_mode()
    };
    if let Err(e) = result {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}
