//! Data-parallel overhead bench: the same GPT training step (forward, backward, AdamW) timed plainly and
//! wrapped in `Ddp`, alternating in rounds on one machine, printed as a table with the overhead in
//! percent. At world size 1 (run directly) it measures what Ddp's bucketing costs on top of the plain step;
//! under `munja-run --nproc-per-node N` it measures the step with real all-reduces (rank 0 prints).
//!
//!     cargo run --release --example ddp_bench                      # the best device, world size 1
//!     cargo run --release --example ddp_bench -- --device cpu --preset char-tiny --batch-size 32
//!
//! Defaults: `shakespeare-char` at batch 64 on a GPU, `char-tiny` at batch 32 on the CPU.

use munja::dist::{Ddp, DistConfig, ProcessGroup};
use munja::models::gpt::{Gpt, GptConfig};
use munja::nn::Module;
use munja::optim::{AdamConfig, AdamW, Optimizer};
use munja::{cuda, DType, Device, Generator, Result, Tensor};
use std::time::Instant;

struct Args {
    device: Option<Device>,
    preset: Option<String>,
    batch_size: Option<usize>,
    steps: usize,
    rounds: usize,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args { device: None, preset: None, batch_size: None, steps: 10, rounds: 5 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        let count = |v: String| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a count"));
        match flag.as_str() {
            "--device" => {
                a.device = Some(match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    s => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                        Some(i) => Device::Cuda(i),
                        None => return Err(format!("--device {s}: expected cpu, cuda or cuda:N")),
                    },
                })
            }
            "--preset" => a.preset = Some(value()?),
            "--batch-size" => a.batch_size = Some(count(value()?)?),
            "--steps" => a.steps = count(value()?)?.max(1),
            "--rounds" => a.rounds = count(value()?)?.max(1),
            _ => return Err(format!("unknown flag {flag} (flags: --device --preset --batch-size --steps --rounds)")),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (ms per step, ms per step the host spent enqueueing work, munja kernel launches per step), each step
/// run alone on a drained device: with many steps in a row the launch queue fills and the host waits for
/// the GPU, so its time would no longer be its own. Enqueueing time close to the step time means the step
/// is bound by the host (launch overhead), not by the GPU.
fn profile_steps(device: Device, steps: usize, mut step: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
    let (mut total, mut host) = (Vec::new(), Vec::new());
    let launches = cuda::kernel_launches();
    for _ in 0..steps {
        cuda::synchronize(device)?;
        let t = Instant::now();
        step()?;
        host.push(t.elapsed().as_secs_f64() * 1e3);
        cuda::synchronize(device)?;
        total.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(total), median(host), (cuda::kernel_launches() - launches) as f64 / steps as f64))
}

/// Milliseconds per step over `steps` steps back to back, with the device drained before and after.
fn time_steps(device: Device, steps: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    cuda::synchronize(device)?;
    let t = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    cuda::synchronize(device)?;
    Ok(t.elapsed().as_secs_f64() * 1e3 / steps as f64)
}

fn run() -> Result<()> {
    let args = parse_args().map_err(|e| munja::Error::Invalid { op: "ddp_bench", detail: e })?;
    let local_rank = DistConfig::from_env()?.map_or(0, |c| c.local_rank);
    let device = args.device.unwrap_or(if cuda::is_available() { Device::Cuda(local_rank) } else { Device::Cpu });
    let gpu = matches!(device, Device::Cuda(_));
    let pg = ProcessGroup::from_env(device)?;
    let preset = args.preset.clone().unwrap_or_else(|| (if gpu { "shakespeare-char" } else { "char-tiny" }).into());
    let batch = args.batch_size.unwrap_or(if gpu { 64 } else { 32 });
    let mut cfg = GptConfig::preset(&preset)?;
    if cfg.vocab_size == 0 {
        cfg.vocab_size = 65; // tiny Shakespeare's characters
    }
    cfg.dropout = 0.0;
    let t = cfg.block_size;
    let mut g = Generator::new(0);
    let plain = Gpt::new(cfg.clone(), DType::F32, device, &mut Generator::new(1))?;
    let wrapped = Ddp::new(Gpt::new(cfg.clone(), DType::F32, device, &mut Generator::new(1))?, &pg)?;
    let ids = Tensor::rand_with(&mut g, &[batch, t], DType::F32, Device::Cpu)?
        .mul_scalar((cfg.vocab_size - 1) as f64)?
        .to_dtype(DType::I64)?
        .to_device(device)?;
    let targets = Tensor::rand_with(&mut g, &[batch, t], DType::F32, Device::Cpu)?
        .mul_scalar((cfg.vocab_size - 1) as f64)?
        .to_dtype(DType::I64)?
        .to_device(device)?;
    let config = AdamConfig { lr: 1e-4, ..AdamConfig::adamw() };
    let mut opt_plain = AdamW::new(plain.named_parameters(), config)?;
    let mut opt_ddp = AdamW::new(wrapped.named_parameters(), config)?;
    let mut step_plain = || -> Result<()> {
        opt_plain.zero_grad();
        plain.loss(&ids, &targets)?.backward()?;
        opt_plain.step()
    };
    let mut step_ddp = || -> Result<()> {
        opt_ddp.zero_grad();
        wrapped.module().loss(&ids, &targets)?.backward()?;
        opt_ddp.step()
    };
    // Warm-up: caches, the allocator's free lists, cuBLASLt's heuristics.
    time_steps(device, 3, &mut step_plain)?;
    time_steps(device, 3, &mut step_ddp)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Alternate which goes first so drift in clocks or load hits both alike.
        if round % 2 == 0 {
            a.push(time_steps(device, args.steps, &mut step_plain)?);
            b.push(time_steps(device, args.steps, &mut step_ddp)?);
        } else {
            b.push(time_steps(device, args.steps, &mut step_ddp)?);
            a.push(time_steps(device, args.steps, &mut step_plain)?);
        }
    }
    let (ma, mb) = (median(a.clone()), median(b.clone()));
    if pg.is_main() {
        let tokens = (batch * t) as f64;
        println!(
            "ddp_bench: {preset} ({:.1}M parameters, buckets {:?} bytes) on {device}, batch {batch}×{t}, f32, \
             world size {}",
            plain.num_params() as f64 / 1e6,
            wrapped.bucket_bytes(),
            pg.world_size()
        );
        println!(
            "| step | ms/step (median of {} rounds × {} steps) | min | max | tokens/s per rank |",
            args.rounds, args.steps
        );
        println!("|---|---|---|---|---|");
        for (name, v, m) in [("plain", &a, ma), ("Ddp", &b, mb)] {
            let (lo, hi) = (v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max));
            println!("| {name} | {m:.2} | {lo:.2} | {hi:.2} | {:.0} |", tokens / (m / 1e3));
        }
        let stats = wrapped.last_sync_stats();
        println!(
            "buckets started during backward: {} of {} (the rest at its end)",
            stats.launched_during_backward,
            stats.launched_during_backward + stats.launched_at_end
        );
        println!("ddp_overhead_percent {:.2}", 100.0 * (mb / ma - 1.0));
    }
    if gpu {
        // Where a GPU step's time goes: host queueing vs the GPU (one more pass of each, after the table).
        let (pa, pb) =
            (profile_steps(device, args.steps, &mut step_plain)?, profile_steps(device, args.steps, &mut step_ddp)?);
        if pg.is_main() {
            for (name, (ms, host, launches)) in [("plain", pa), ("Ddp", pb)] {
                println!(
                    "{name}: {ms:.2} ms for one step on a drained GPU, of which the host spent {host:.2} ms \
                     enqueueing; {launches:.0} munja kernel launches per step"
                );
            }
        }
        // GPU time per kernel of the plain step (CUDA events around every launch).
        cuda::profile_start();
        time_steps(device, args.steps, &mut step_plain)?;
        let profile = cuda::profile_stop()?;
        if pg.is_main() {
            println!("GPU time per plain step by kernel (mean of {} steps):", args.steps);
            println!("{}", profile.table(20, args.steps));
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ddp_bench: error: {e}");
        std::process::exit(1);
    }
}
