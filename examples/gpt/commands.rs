//! What the example does for each mode: train (fresh or resumed), sample, evaluate.

use crate::cli::Args;
use crate::gpt::checkpoint::{self, load_for_inference};
use crate::gpt::corpus::{load_tokens, Tok};
use crate::gpt::device::{parse_device, pick_device, EnergyMeter};
use crate::gpt::metrics;
use crate::gpt::parallel::local_gpu;
use crate::gpt::plot::plot_losses;
use crate::gpt::report::RunReport;
use crate::gpt::train::{Event, Outcome, Session, Trainer, METRICS_FILE, PLOT_FILE};
use munja::dist::{DistConfig, ProcessGroup};
use munja::models::{Gpt, GptConfig};
use munja::nn::Module;
use munja::{cuda, DType, Device, Error, Generator, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// How much text the end of a training run shows.
const END_SAMPLE_TOKENS: usize = 400;

fn invalid(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Invalid { op, detail: detail.into() }
}

fn device(args: &Args) -> Result<Device> {
    let requested = parse_device(&args.device)?;
    if DistConfig::from_env()?.is_some_and(|c| c.world_size > 1) {
        // One process per GPU: "cuda" and "auto" mean this process's own GPU.
        match requested {
            None if cuda::is_available() => return pick_device(Some(local_gpu()?)),
            Some(Device::Cuda(0)) if args.device.trim().eq_ignore_ascii_case("cuda") => {
                return pick_device(Some(local_gpu()?))
            }
            _ => {}
        }
    }
    pick_device(requested)
}

fn data_path(args: &Args) -> PathBuf {
    args.data.clone().unwrap_or_else(crate::cli::default_data)
}

/// Where a run lives: `--resume DIR`, else `--out`. Both given and different is a mistake worth naming.
fn run_dir(args: &Args) -> Result<PathBuf> {
    match (&args.resume, &args.out) {
        (Some(r), Some(o)) if r != o => Err(invalid(
            "--resume",
            format!("--resume {} and --out {} name different runs; pass one", r.display(), o.display()),
        )),
        (Some(dir), _) | (None, Some(dir)) => Ok(dir.clone()),
        (None, None) => Ok(PathBuf::from(crate::cli::DEFAULT_OUT)),
    }
}

fn load_hf(args: &Args, path: &Path, dtype: DType, device: Device) -> Result<Gpt> {
    let model = Gpt::load_hf(path, dtype, device)?;
    let c = model.config();
    println!(
        "loaded {} ({} parameters: {} layers, {} heads, {} wide, context {})",
        path.display(),
        model.num_params(),
        c.n_layer,
        c.n_head,
        c.n_embd,
        c.block_size
    );
    if args.tokenizer == Some(crate::cli::TokenizerArg::Char) {
        return Err(invalid("--tokenizer", "GPT-2 weights come with the gpt2 tokenizer, not char"));
    }
    Ok(model)
}

/// `--eval-only`: the mean next-token loss over the whole --data stream, in consecutive non-overlapping
/// windows of the model's context. Prints `eval_loss <value>` as the last line.
pub fn eval_only(args: &Args) -> Result<()> {
    let device = device(args)?;
    let dtype = args.dtype();
    let (model, tok) = match &args.init_from_hf {
        Some(p) => (load_hf(args, p, dtype, device)?, Tok::new("gpt2", None)?),
        None => {
            let (m, t, step) = load_for_inference(&run_dir(args)?, dtype, device)?;
            println!("checkpoint of step {step}");
            (m, t)
        }
    };
    let data = data_path(args);
    let tokens = load_tokens(&data, &tok)?;
    let c = model.config();
    let batch = args.eval_batch(c.block_size, c.vocab_size);
    let windows = tokens.len().saturating_sub(1) / c.block_size;
    println!(
        "evaluating {} tokens of {} ({} windows of {}, {} per batch) on {device} in {dtype}",
        tokens.len(),
        data.display(),
        windows,
        c.block_size,
        batch
    );
    let start = std::time::Instant::now();
    let loss = model.eval_stream(&tokens, batch)?;
    println!("took {}", crate::gpt::report::duration(start.elapsed().as_secs_f64()));
    println!("eval_loss {loss:.6}");
    Ok(())
}

/// `--sample`: continue --prompt from a trained checkpoint or from GPT-2 weights.
pub fn sample(args: &Args) -> Result<()> {
    let device = device(args)?;
    let dtype = args.dtype();
    let (model, tok) = match &args.init_from_hf {
        Some(p) => (load_hf(args, p, dtype, device)?, Tok::new("gpt2", None)?),
        None => {
            let dir = run_dir(args)?;
            let (m, t, step) = load_for_inference(&dir, dtype, device)?;
            println!("sampling from {} (step {step})", checkpoint::checkpoint_file(&dir).display());
            (m, t)
        }
    };
    let text = generate(&model, &tok, args, &args.prompt, args.max_new_tokens)?;
    println!("{text}");
    Ok(())
}

/// The prompt and its continuation, decoded.
fn generate(model: &Gpt, tok: &Tok, args: &Args, prompt: &str, n: usize) -> Result<String> {
    let ids = tok.get().encode(prompt).map_err(|e| invalid("--prompt", e.to_string()))?;
    if ids.is_empty() {
        return Err(invalid("--prompt", "the prompt is empty: give at least one character"));
    }
    let top_k = (args.top_k > 0).then_some(args.top_k);
    let mut gen = Generator::new(args.seed.unwrap_or(crate::cli::DEFAULT_SEED));
    let out = model.generate(&ids, n, args.temperature, top_k, &mut gen)?;
    Ok(tok.get().decode(&out))
}

/// The flag the first SIGINT/SIGTERM raises; a second one quits at once (the checkpoint being written
/// then is safe: writes are atomic).
fn install_stop_handler() -> Result<&'static AtomicBool> {
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| {
        if STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("\nsecond stop signal: exiting without waiting for the checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nstop requested: saving a checkpoint at the end of this step (again to quit at once)");
    })
    .map_err(|e| invalid("signal handler", e.to_string()))?;
    Ok(&STOP)
}

/// Builds a fresh run from the flags.
fn fresh(args: &Args, device: Device) -> Result<Trainer> {
    let data = data_path(args);
    let (tok, tokens, init, model_cfg) = match &args.init_from_hf {
        Some(p) => {
            if args.preset.is_some() || args.dropout.is_some() {
                return Err(invalid("--init-from-hf", "the weights fix the model: drop --preset and --dropout"));
            }
            let model = load_hf(args, p, DType::F32, device)?;
            let tok = Tok::new("gpt2", None)?;
            let tokens = load_tokens(&data, &tok)?;
            let cfg = model.config().clone();
            (tok, tokens, Some(model), cfg)
        }
        None => {
            let text = if data.extension().is_some_and(|e| e == "bin") {
                None
            } else {
                Some(crate::gpt::corpus::read_text(&data)?)
            };
            let tok = Tok::new(args.tokenizer_name(), text.as_deref())?;
            let tokens = match &text {
                Some(t) => tok.get().encode(t)?,
                None => load_tokens(&data, &tok)?,
            };
            let mut cfg = GptConfig::preset(args.preset())?;
            cfg.vocab_size = tok.model_vocab();
            (tok, tokens, None, cfg)
        }
    };
    let mut cfg = args.train_config(model_cfg)?;
    if let Some(p) = &args.init_from_hf {
        cfg.preset = format!("hf:{}", p.display());
    }
    let mut t = Trainer::with_model(cfg, tok, tokens, device, init)?;
    t.data_path = data;
    Ok(t)
}

pub fn train(args: &Args) -> Result<()> {
    let device = device(args)?;
    let pg = ProcessGroup::from_env(device)?;
    let result = train_in(args, device, &pg);
    if let Err(e) = &result {
        // Tell the other ranks now rather than letting them wait for a collective to time out.
        pg.abort(&e.to_string());
    }
    result
}

fn train_in(args: &Args, device: Device, pg: &ProcessGroup) -> Result<()> {
    let main = pg.is_main();
    let out = run_dir(args)?;
    let mut t = match &args.resume {
        Some(_) => {
            let mut t = checkpoint::resume(&out, args.data.as_deref(), device)?;
            args.apply_resume_overrides(&mut t.cfg, t.step)?;
            if main {
                metrics::truncate_after(&out.join(METRICS_FILE), t.step)?;
                println!("resuming {} at step {}/{}", out.display(), t.step, t.cfg.steps);
            }
            t
        }
        None => {
            let t = fresh(args, device)?;
            let old = checkpoint::checkpoint_file(&out);
            if main && old.is_file() {
                println!(
                    "note: starting a fresh run in {}; its checkpoint will be replaced (--resume {0} continues it)",
                    out.display()
                );
            }
            // A fresh run starts a fresh history.
            if main {
                let _ = std::fs::remove_file(out.join(METRICS_FILE));
            }
            t
        }
    };
    if pg.world_size() > 1 || args.zero1 {
        t.make_parallel(pg, args.zero1)?;
    }
    if !main {
        return train_quietly(&mut t, &out, device);
    }
    let c = &t.cfg;
    let (decay, no_decay) = t.opt.inner().sizes();
    println!(
        "{}: {} parameters ({} layers, {} heads, {} wide, context {}, vocabulary {} from the {} tokenizer), dropout {}",
        c.preset,
        t.model.num_params(),
        c.model.n_layer,
        c.model.n_head,
        c.model.n_embd,
        c.model.block_size,
        c.model.vocab_size,
        t.tok.kind(),
        c.model.dropout
    );
    println!(
        "data: {} ({} train / {} val tokens); device {device}, {}",
        t.data_path.display(),
        t.data.tokens(munja::data::Split::Train).len(),
        t.data.tokens(munja::data::Split::Val).len(),
        match c.dtype {
            DType::F32 => "f32".to_string(),
            d => format!("{d} compute with f32 master weights"),
        }
    );
    println!(
        "AdamW lr {} → {} (warmup {}, cosine to step {}), weight decay {} on {decay} weights ({no_decay} without), \
         clip {}, batch {}×{}×{} tokens",
        c.lr, c.min_lr, c.warmup, c.steps, c.weight_decay, c.grad_clip, c.batch_size, c.grad_accum, c.model.block_size
    );
    if let Some(p) = &t.par {
        println!(
            "data-parallel over {} processes ({} per node){}: {} tokens per step in all",
            p.world(),
            p.pg.local_world_size(),
            if p.zero1 { ", AdamW state sharded (ZeRO-1)" } else { "" },
            t.cfg.tokens_per_step() * p.world()
        );
        if let Some(m) = t.opt.inner().sharded_memory()? {
            println!(
                "ZeRO-1: optimizer state {:.1} MiB per process instead of {:.1} MiB",
                m.per_rank as f64 / 1048576.0,
                m.unsharded as f64 / 1048576.0
            );
        }
    }
    let stop = install_stop_handler()?;
    let energy = EnergyMeter::start(device);
    let session = Session { out: &out, stop, verbose: true };
    let (launches_before, step_before) = (munja::cuda::kernel_launches(), t.step);
    // --profile: steps 11 to 20 of this session (after warm-up), through the step events.
    let (profile_from, profile_steps) = (t.step + 10, 10);
    let mut profile: Option<Result<munja::cuda::Profile>> = None;
    let profiling = args.profile && matches!(device, Device::Cuda(_));
    let summary = t.train(&session, &mut |ev: &Event| {
        if let (true, Event::Step { step, .. }) = (profiling, ev) {
            if *step == profile_from {
                munja::cuda::profile_start();
            } else if *step == profile_from + profile_steps {
                profile = Some(munja::cuda::profile_stop());
            }
        }
    })?;
    let launches_per_step =
        (munja::cuda::kernel_launches() - launches_before) as f64 / (t.step - step_before).max(1) as f64;
    let energy_j = total_energy(&t, energy.and_then(EnergyMeter::finish))?;
    let ckpt = checkpoint::checkpoint_file(&out);
    if summary.outcome == Outcome::Stopped {
        println!("stopped at step {}/{}: checkpoint saved to {}", t.step, t.cfg.steps, ckpt.display());
        println!("continue with: cargo run --release --example gpt -- --resume {}", out.display());
        return Ok(());
    }
    let records = metrics::read(&out.join(METRICS_FILE))?;
    plot_losses(&out.join(PLOT_FILE), &records)?;
    let final_val = summary.last_eval.map(|r| r.val_loss);
    if let Some(v) = final_val {
        println!("final val loss {v:.4} (step {})", t.step);
    }
    t.model.eval();
    let text = generate(&t.model, &t.tok, args, &args.prompt, END_SAMPLE_TOKENS)?;
    println!("--- sample ({END_SAMPLE_TOKENS} tokens, temperature {}) ---\n{text}\n---", args.temperature);
    let report = RunReport {
        device,
        steps_done: t.step,
        final_val_loss: final_val,
        best_val_loss: summary.best_eval.map(|r| (r.val_loss, r.step)),
        wall_s: summary.wall_s,
        train_s: summary.train_s,
        tokens: summary.tokens,
        flops_per_token: t.model.flops_per_token(),
        energy_j,
        world: t.world(),
        launches_per_step,
    };
    for line in report.lines() {
        println!("{line}");
    }
    match profile {
        Some(p) => println!(
            "GPU time per step by kernel (steps {}-{}):\n{}",
            profile_from + 1,
            profile_from + profile_steps,
            p?.table(25, profile_steps)
        ),
        None if profiling => println!("profile: the run ended before step {}", profile_from + profile_steps),
        None => {}
    }
    println!("wrote {}, {} and {}", ckpt.display(), out.join(METRICS_FILE).display(), out.join(PLOT_FILE).display());
    Ok(())
}

/// A data-parallel rank other than 0: trains in step with rank 0 (which prints and saves), then adds its
/// GPU's energy to the total.
fn train_quietly(t: &mut Trainer, out: &Path, device: Device) -> Result<()> {
    let stop = install_stop_handler()?;
    let energy = EnergyMeter::start(device);
    let session = Session { out, stop, verbose: false };
    t.train(&session, &mut |_: &Event| {})?;
    total_energy(t, energy.and_then(EnergyMeter::finish))?;
    Ok(())
}

/// The energy all ranks' GPUs drew, when every one of them could measure it (collective).
fn total_energy(t: &Trainer, mine: Option<f64>) -> Result<Option<f64>> {
    let Some(p) = &t.par else { return Ok(mine) };
    let measured = p.sum(mine.is_some() as u8 as f64)?;
    let joules = p.sum(mine.unwrap_or(0.0))?;
    Ok((measured as usize == p.world()).then_some(joules))
}
