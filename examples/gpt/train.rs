//! The training run: the model, its optimizer groups, the data and every random stream, and the loop that
//! steps them. Everything a step depends on is in `Trainer` and saved by `checkpoint`, so a run stopped
//! after step k and resumed computes exactly what an uninterrupted run computes.
//!
//! Random streams, kept apart so none perturbs another: model init then batch sampling (one generator,
//! `data_gen`, saved with the checkpoint), dropout (munja's default generator, saved too), and evaluation
//! (a fresh generator per evaluation derived from the seed and the step, so evaluating more or less
//! often changes no training number).
//!
//! In bf16 (`cfg.dtype`) the model that computes is a bf16 copy of an f32 model, the masters: the init
//! draws the f32 weights (the same numbers as an f32 run), `MixedPrecision` runs AdamW on the masters and
//! rounds them into the bf16 weights after each step, and checkpoints store the masters, so resuming is
//! exact and a saved model is full precision.

use super::config::TrainConfig;
use super::corpus::Tok;
use super::groups::DecayGroups;
use super::metrics::{self, Record};
use super::parallel::{self, Parallel};
use indicatif::{ProgressBar, ProgressStyle};
use munja::data::{Split, TextDataset};
use munja::dist::ProcessGroup;
use munja::models::Gpt;
use munja::nn::Module;
use munja::optim::{clip_grad_norm_deferred, LrSchedule, MixedPrecision, Optimizer};
use munja::{DType, Device, Error, Generator, Result, Tensor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The fraction of the token stream held out for validation (nanoGPT's 90/10 split).
pub const VAL_FRACTION: f64 = 0.1;
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const PLOT_FILE: &str = "loss.png";

/// SplitMix64's finaliser: decorrelated seeds for streams derived from one user seed.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The dropout stream's seed (munja's default generator).
pub fn dropout_seed(seed: u64) -> u64 {
    mix(seed ^ 0xD509)
}

pub struct Trainer {
    pub cfg: TrainConfig,
    /// The model that computes, in `cfg.dtype`.
    pub model: Gpt,
    /// The f32 master weights when `model` is bf16 (in f32 the model is its own master).
    pub master: Option<Gpt>,
    /// AdamW over the master weights; in f32 the wrapper only passes through.
    pub opt: MixedPrecision<DecayGroups>,
    pub data: TextDataset,
    /// Draws the training batches; continues the stream that initialised the model.
    pub data_gen: Generator,
    pub tok: Tok,
    /// Optimizer steps completed.
    pub step: usize,
    /// Wall time of the sessions before this one, so `elapsed_s` in the metrics runs on across resumes.
    pub elapsed_before_s: f64,
    /// `corpus::fingerprint` of the token stream the run trains on.
    pub fingerprint: String,
    /// Where the tokens came from, saved so `--resume` finds the data without being told.
    pub data_path: PathBuf,
    /// Data parallelism, once `make_parallel` has run.
    pub par: Option<Parallel>,
}

/// How a call to `train` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Reached `cfg.steps`.
    Finished,
    /// The stop flag was raised; a checkpoint of the last completed step was saved.
    Stopped,
}

/// What the loop reports as it goes (the tests record the losses through this).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// After each optimizer step: its (1-based) number, mean micro-batch loss and learning rate.
    Step {
        step: usize,
        loss: f64,
        lr: f64,
    },
    Eval(Record),
    Checkpoint {
        step: usize,
    },
}

pub struct Session<'a> {
    /// The run directory: checkpoint, metrics, plot.
    pub out: &'a Path,
    /// Raised by SIGINT/SIGTERM (or a test): save and return at the end of the current step.
    pub stop: &'a AtomicBool,
    /// A progress bar and one line per evaluation.
    pub verbose: bool,
}

pub struct Summary {
    pub outcome: Outcome,
    pub last_eval: Option<Record>,
    /// The evaluation with the lowest validation loss this session: small corpora overfit, so the last
    /// evaluation is not always the best one (nanoGPT reports the best for shakespeare-char).
    pub best_eval: Option<Record>,
    /// Tokens trained on in this session, and the time the steps took (evaluation and checkpoints left
    /// out), for the throughput.
    pub tokens: usize,
    pub train_s: f64,
    /// The session's wall time.
    pub wall_s: f64,
}

impl Summary {
    fn record_eval(&mut self, r: Record) {
        if self.best_eval.as_ref().is_none_or(|b| r.val_loss < b.val_loss) {
            self.best_eval = Some(r);
        }
        self.last_eval = Some(r);
    }
}

impl Trainer {
    /// A fresh run on `tokens`: the model initialised from `cfg.seed`, optimizer state empty.
    pub fn new(cfg: TrainConfig, tok: Tok, tokens: Vec<u32>, device: Device) -> Result<Trainer> {
        Trainer::with_model(cfg, tok, tokens, device, None)
    }

    /// `new`, but starting from the given f32 weights (`--init-from-hf`) instead of a random init.
    pub fn with_model(
        cfg: TrainConfig,
        tok: Tok,
        tokens: Vec<u32>,
        device: Device,
        model: Option<Gpt>,
    ) -> Result<Trainer> {
        cfg.validate()?;
        if tok.get().vocab_size() > cfg.model.vocab_size {
            return Err(Error::Invalid {
                op: "gpt",
                detail: format!(
                    "the {} tokenizer has {} tokens but the model's vocabulary has {}",
                    tok.kind(),
                    tok.get().vocab_size(),
                    cfg.model.vocab_size
                ),
            });
        }
        let fingerprint = super::corpus::fingerprint(&tokens);
        let data = TextDataset::from_tokens(tokens, VAL_FRACTION)?;
        for split in [Split::Train, Split::Val] {
            let n = data.tokens(split).len();
            if n <= cfg.model.block_size {
                return Err(Error::Invalid {
                    op: "--data",
                    detail: format!(
                        "the {split} split has {n} tokens, fewer than one window of block_size + 1 = {}: \
                         use more text or a preset with a shorter context",
                        cfg.model.block_size + 1
                    ),
                });
            }
        }
        let mut data_gen = Generator::new(cfg.seed);
        let init = match model {
            Some(m) => m,
            None => Gpt::new(cfg.model.clone(), DType::F32, device, &mut data_gen)?,
        };
        let adam = cfg.adam();
        let groups = |params: Vec<(String, Tensor)>| DecayGroups::new(params, adam);
        let (model, master, opt) = if cfg.dtype == DType::F32 {
            let opt = MixedPrecision::new(init.named_parameters(), groups)?;
            (init, None, opt)
        } else {
            // The working copy's own init is overwritten by the masters; a generator of its own keeps it
            // from consuming the batch stream.
            let working = Gpt::new(cfg.model.clone(), cfg.dtype, device, &mut Generator::new(0))?;
            let opt = MixedPrecision::with_master(working.named_parameters(), init.named_parameters(), groups)?;
            (working, Some(init), opt)
        };
        model.train();
        munja::manual_seed(dropout_seed(cfg.seed));
        Ok(Trainer {
            cfg,
            model,
            master,
            opt,
            data,
            data_gen,
            tok,
            step: 0,
            elapsed_before_s: 0.0,
            fingerprint,
            data_path: PathBuf::new(),
            par: None,
        })
    }

    /// Joins the data-parallel job of `pg` (call after building or resuming, before training): each rank
    /// draws its own batches and dropout, `Ddp` averages the gradients, and with `zero1` the AdamW state
    /// is sharded (the optimizer state is carried over, so this works on a resumed run too).
    pub fn make_parallel(&mut self, pg: &ProcessGroup, zero1: bool) -> Result<()> {
        let rank = pg.rank();
        self.data_gen = parallel::rank_stream(self.data_gen, rank);
        munja::rng::set_default_state(parallel::rank_stream(munja::rng::default_state(), rank));
        let master = self.master.as_ref().map(|m| m.named_parameters());
        let par = parallel::attach(pg, self.model.named_parameters(), master.as_deref(), zero1)?;
        if zero1 {
            let state = self.opt.state_tensors()?;
            let (adam, clip) = (self.cfg.adam(), self.cfg.grad_clip);
            let groups = |params: Vec<(String, Tensor)>| DecayGroups::sharded(params, adam, pg, clip);
            self.opt = match &self.master {
                None => MixedPrecision::new(self.model.named_parameters(), groups)?,
                Some(m) => MixedPrecision::with_master(self.model.named_parameters(), m.named_parameters(), groups)?,
            };
            self.opt.load_state_tensors(&state)?;
        }
        self.par = Some(par);
        Ok(())
    }

    /// Rank 0, or the only process: the one that prints and writes files.
    pub fn is_main(&self) -> bool {
        self.par.as_ref().is_none_or(|p| p.pg.is_main())
    }

    /// How many processes train together.
    pub fn world(&self) -> usize {
        self.par.as_ref().map_or(1, |p| p.world())
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The full-precision weights: the masters of a bf16 run, else the model. What checkpoints store.
    pub fn weights(&self) -> &Gpt {
        self.master.as_ref().unwrap_or(&self.model)
    }

    /// The mean loss of `eval_iters` batches of `split`, in eval mode without a graph. The batches come
    /// from a generator of their own (derived from the seed, the step and the split), so evaluating
    /// neither consumes the training stream nor depends on when the previous evaluation ran.
    pub fn estimate_loss(&self, split: Split, iters: usize) -> Result<f64> {
        let tag = match split {
            Split::Train => 1,
            Split::Val => 2,
        };
        let mut gen = Generator::new(mix(self.cfg.seed ^ mix(self.step as u64) ^ (tag << 60)));
        let _no_grad = munja::NoGradGuard::new();
        self.model.eval();
        let mut total = 0.0;
        let result = (|| {
            for _ in 0..iters {
                let (x, y) = self.batch(split, &mut gen)?;
                total += self.model.loss(&x, &y)?.item()?;
            }
            Ok(total / iters as f64)
        })();
        self.model.train();
        result
    }

    fn batch(&self, split: Split, gen: &mut Generator) -> Result<(Tensor, Tensor)> {
        self.data.batch(split, self.cfg.batch_size, self.cfg.model.block_size, gen, self.device())
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, the update. Returns the mean loss and
    /// the learning rate used.
    ///
    /// The loss is read back once, after the whole step is queued: the micro-batches' losses add up on the
    /// device, so the host never waits for the GPU between micro-batches or before the update. A loss that
    /// is not finite is still an error, raised after the update rather than before it: the weights in
    /// memory are then spoilt, but the run stops there and its last checkpoint on disk is untouched.
    pub fn train_step(&mut self) -> Result<(f64, f64)> {
        let lr = self.cfg.schedule().lr_at(self.step);
        self.opt.set_lr(lr);
        self.opt.zero_grad();
        let (accum, device) = (self.cfg.grad_accum, self.device());
        let mut loss_sum: Option<Tensor> = None;
        for micro in 0..accum {
            let (x, y) = self.data.batch(
                Split::Train,
                self.cfg.batch_size,
                self.cfg.model.block_size,
                &mut self.data_gen,
                device,
            )?;
            let loss = self.model.loss(&x, &y)?;
            // Gradients add up over the micro-batches, so each contributes its share of the mean.
            let scaled = if accum > 1 { loss.mul_scalar(1.0 / accum as f64)? } else { loss.clone() };
            // Data-parallel: in f32 the micro-batches' gradients add up on the weights and only the last
            // backward averages them over the ranks; in bf16 each micro-batch's gradients move to the f32
            // masters right after its backward, so each must be averaged first.
            let local_only = micro + 1 < accum && self.cfg.dtype == DType::F32;
            let quiet = self.par.as_ref().filter(|_| local_only).map(|p| p.ddp.no_sync());
            scaled.backward()?;
            drop(quiet);
            // In bf16, the micro-batches' gradients add up in f32 on the masters (a no-op in f32).
            self.opt.gather_grads()?;
            let loss = loss.detach().to_dtype(DType::F32)?;
            loss_sum = Some(match loss_sum {
                None => loss,
                Some(sum) => sum.add(&loss)?,
            });
        }
        // Under ZeRO-1 the groups clip after reducing the gradients, inside the step.
        if self.cfg.grad_clip > 0.0 && !self.opt.inner().is_sharded() {
            // The masters' gradients: f32 whatever the model computes in.
            // The norm is not logged: left on the device, nothing waits for it.
            clip_grad_norm_deferred(&self.opt.inner().parameters(), self.cfg.grad_clip)?;
        }
        self.opt.step()?;
        self.step += 1;
        let loss = match loss_sum {
            Some(sum) => sum.item()? / accum as f64,
            None => return Err(Error::Invalid { op: "train", detail: "grad_accum must be at least 1".into() }),
        };
        if !loss.is_finite() {
            return Err(Error::Invalid {
                op: "train",
                detail: format!(
                    "the loss is {loss} at step {}: training diverged (try a lower --lr or --grad-clip 1)",
                    self.step
                ),
            });
        }
        Ok((loss, lr))
    }

    /// Trains from `self.step` to `cfg.steps`, evaluating every `eval_interval` steps and at the end,
    /// saving a checkpoint every `checkpoint_interval` steps and at the end, and stopping early (after
    /// saving) when `session.stop` is raised.
    pub fn train(&mut self, session: &Session, on_event: &mut dyn FnMut(&Event)) -> Result<Summary> {
        let start = Instant::now();
        let main = self.is_main();
        if main {
            std::fs::create_dir_all(session.out)
                .map_err(|e| Error::Io { path: session.out.display().to_string(), source: e })?;
        }
        let ckpt_path = session.out.join(CHECKPOINT_FILE);
        let cfg = self.cfg.clone();
        let tokens_per_step = cfg.tokens_per_step() * self.world();
        let verbose = session.verbose && main;
        let mut out = Output {
            bar: progress_bar(verbose, cfg.steps, self.step),
            verbose,
            write: main,
            metrics: session.out.join(METRICS_FILE),
            steps: cfg.steps,
            on_event,
        };
        let mut summary = Summary {
            outcome: Outcome::Finished,
            last_eval: None,
            best_eval: None,
            tokens: 0,
            train_s: 0.0,
            wall_s: 0.0,
        };
        // Throughput over the steps since the last evaluation.
        let (mut window_tokens, mut window_s) = (0usize, 0.0f64);

        if self.step == 0 {
            let r = self.evaluate(cfg.schedule().lr_at(0), 0.0, start)?;
            summary.record_eval(out.eval(r)?);
        }
        while self.step < cfg.steps {
            let t0 = Instant::now();
            let (loss, lr) = self.train_step()?;
            let dt = t0.elapsed().as_secs_f64();
            summary.tokens += tokens_per_step;
            summary.train_s += dt;
            window_tokens += tokens_per_step;
            window_s += dt;
            let tok_s = window_tokens as f64 / window_s.max(1e-9);
            out.bar.set_position(self.step as u64);
            out.bar.set_message(format!("loss {loss:.4} | {} tok/s | lr {lr:.2e}", si(tok_s)));
            (out.on_event)(&Event::Step { step: self.step, loss, lr });

            if self.step.is_multiple_of(cfg.eval_interval) || self.step == cfg.steps {
                let r = self.evaluate(lr, tok_s, start)?;
                summary.record_eval(out.eval(r)?);
                (window_tokens, window_s) = (0, 0.0);
            }
            // Read once, so a signal arriving now is acted on consistently: saved and stopped, both.
            let stop = session.stop.load(Ordering::SeqCst);
            let stop = match &self.par {
                Some(p) => p.any(stop)?,
                None => stop,
            };
            let due = cfg.checkpoint_interval > 0 && self.step.is_multiple_of(cfg.checkpoint_interval);
            if stop || due || self.step == cfg.steps {
                if main {
                    super::checkpoint::save(self, &ckpt_path, self.elapsed_before_s + start.elapsed().as_secs_f64())?;
                } else if self.opt.inner().is_sharded() {
                    // Gathering sharded optimizer state is collective: every rank takes part.
                    self.opt.state_tensors()?;
                }
                (out.on_event)(&Event::Checkpoint { step: self.step });
            }
            if stop && self.step < cfg.steps {
                summary.outcome = Outcome::Stopped;
                break;
            }
        }
        out.bar.finish_and_clear();
        summary.wall_s = start.elapsed().as_secs_f64();
        Ok(summary)
    }

    fn evaluate(&self, lr: f64, tokens_per_s: f64, start: Instant) -> Result<Record> {
        let train_loss = self.estimate_loss(Split::Train, self.cfg.eval_iters)?;
        let val_loss = self.estimate_loss(Split::Val, self.cfg.eval_iters)?;
        Ok(Record {
            step: self.step,
            train_loss,
            val_loss,
            lr,
            tokens_per_s,
            elapsed_s: self.elapsed_before_s + start.elapsed().as_secs_f64(),
        })
    }
}

/// Where the loop's reports go: the progress bar, stdout, the metrics file and the caller's callback.
struct Output<'a> {
    bar: ProgressBar,
    verbose: bool,
    /// Rank 0 writes the metrics; other ranks only report to the callback.
    write: bool,
    metrics: PathBuf,
    steps: usize,
    on_event: &'a mut dyn FnMut(&Event),
}

impl Output<'_> {
    /// Records an evaluation everywhere and hands it back.
    fn eval(&mut self, r: Record) -> Result<Record> {
        if self.write {
            metrics::append(&self.metrics, &r)?;
        }
        if self.verbose {
            let line = format!(
                "step {:>5}/{}: train loss {:.4}, val loss {:.4}{}",
                r.step,
                self.steps,
                r.train_loss,
                r.val_loss,
                // Throughput of the steps since the previous evaluation (none before the first step).
                if r.tokens_per_s > 0.0 { format!(", {} tok/s", si(r.tokens_per_s)) } else { String::new() }
            );
            // A hidden bar (output not a terminal: a log file, a batch job) swallows println.
            if self.bar.is_hidden() {
                println!("{line}");
            } else {
                self.bar.println(line);
            }
        }
        (self.on_event)(&Event::Eval(r));
        Ok(r)
    }
}

/// 12345.6 → "12.3k".
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn progress_bar(verbose: bool, steps: usize, pos: usize) -> ProgressBar {
    if !verbose {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64).with_position(pos as u64);
    // The template is a constant, so it only fails if it is edited wrongly; fall back to the default.
    if let Ok(style) = ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta}]")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
