//! Trains an MLP 784-512-512-10 (ReLU) on the 5,000 MNIST digits shipped in data/mnist_5k.csv.gz and
//! reports the accuracy on 1,000 held-out digits.
//!
//!     cargo run --release --example mnist
//!     cargo run --release --example mnist -- --epochs 5 --seed 1 --out /tmp/mnist
//!
//! Data-parallel with no change: under `munja-run --nproc-per-node N -- target/release/examples/mnist`
//! (or torchrun/SLURM variables) each process trains on its shard of every epoch (DistributedSampler),
//! `--batch-size` stays the global batch (each rank takes batch/N), gradients are averaged by `Ddp`, and
//! only rank 0 prints and writes the checkpoint.
//!
//! The digits are shuffled with a seeded permutation (the file is sorted by class), the first 4,000 train
//! and the rest are held out. Adam at lr 1e-3 with batches of 128 for 15 epochs reaches about 93–94% held
//! out, as the same model does in PyTorch (93.2–93.9% over three seeds). At the end it prints
//! `held_out_accuracy <value>` and writes a checkpoint (model and optimizer state) to `<out>/checkpoint.safetensors`.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use munja::dist::{Ddp, DistributedSampler, ProcessGroup};
use munja::nn::{self, Module};
use munja::optim::{self, Optimizer};
use munja::{DType, Device, Generator, Tensor};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

const PIXELS: usize = 28 * 28;
const CLASSES: usize = 10;

#[derive(Parser, Debug)]
#[command(about = "Train an MLP on MNIST (5,000 digits) with munja")]
struct Args {
    /// The data: gzipped CSV, one digit per line, 784 pixels (0-255) then the label.
    #[arg(long, default_value_os_t = default_data())]
    data: PathBuf,
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seeds the split, the initial weights and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How many digits to hold out for evaluation; the rest train.
    #[arg(long, default_value_t = 1000)]
    held_out: usize,
    /// Where the checkpoint goes.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
}

/// The shipped copy, found from the crate root so the example runs from any working directory.
fn default_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("mnist_5k.csv.gz")
}

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Digits as pixels scaled to [0, 1] (row-major, `PIXELS` per digit) and labels.
struct Digits {
    pixels: Vec<f32>,
    labels: Vec<i64>,
}

/// Reads the gzipped CSV, checking every line: a bad file is an error naming the line, not a panic or a
/// silently wrong model.
fn load_digits(path: &Path) -> AnyResult<Digits> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open {}: {e} (pass --data PATH to use another copy)", path.display()))?;
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in reader.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.map_err(|e| format!("{}: cannot read (is it a gzipped CSV?): {e}", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split(',').collect();
        if fields.len() != PIXELS + 1 {
            return Err(
                format!("{}: expected {} comma-separated values, found {}", at(), PIXELS + 1, fields.len()).into()
            );
        }
        for f in &fields[..PIXELS] {
            let v: f32 = f.trim().parse().map_err(|_| format!("{}: pixel '{f}' is not a number", at()))?;
            if !(0.0..=255.0).contains(&v) {
                return Err(format!("{}: pixel {v} is outside 0-255", at()).into());
            }
            pixels.push(v / 255.0);
        }
        let label = fields[PIXELS].trim();
        match label.parse::<i64>() {
            Ok(l) if (0..CLASSES as i64).contains(&l) => labels.push(l),
            _ => return Err(format!("{}: label '{label}' is not a digit 0-9", at()).into()),
        }
    }
    if labels.is_empty() {
        return Err(format!("{}: no digits in the file", path.display()).into());
    }
    Ok(Digits { pixels, labels })
}

/// The rows `idx` of the data set as tensors: pixels [n, 784] f32 and labels [n] i64.
fn batch(d: &Digits, idx: &[usize]) -> munja::Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(idx.len() * PIXELS);
    for &i in idx {
        x.extend_from_slice(&d.pixels[i * PIXELS..(i + 1) * PIXELS]);
    }
    let y: Vec<i64> = idx.iter().map(|&i| d.labels[i]).collect();
    Ok((Tensor::from_vec(x, &[idx.len(), PIXELS], Device::Cpu)?, Tensor::from_vec(y, &[idx.len()], Device::Cpu)?))
}

/// The fraction of `x` the model labels as `y`.
fn accuracy(model: &dyn Module, x: &Tensor, y: &Tensor) -> munja::Result<f64> {
    let _no_grad = munja::NoGradGuard::new();
    let predicted = model.forward(x)?.argmax(-1, false)?;
    Ok(predicted.eq(y)?.count_nonzero()?.item()? / y.numel() as f64)
}

fn run(args: &Args) -> AnyResult<()> {
    if args.batch_size == 0 || args.epochs == 0 {
        return Err("--batch-size and --epochs must be positive".into());
    }
    let digits = load_digits(&args.data)?;
    let n = digits.labels.len();
    if args.held_out == 0 || args.held_out >= n {
        return Err(
            format!("--held-out {} must be between 1 and {} (the file has {n} digits)", args.held_out, n - 1).into()
        );
    }
    let pg = ProcessGroup::from_env(Device::Cpu)?;
    let (rank, world, main) = (pg.rank(), pg.world_size(), pg.is_main());
    if args.batch_size < world {
        return Err(format!("--batch-size {} is smaller than the {world} processes", args.batch_size).into());
    }
    let mut gen = Generator::new(args.seed);
    // The file is sorted by class, so split only after a seeded shuffle.
    let order = gen.permutation(n);
    let (train_idx, test_idx) = order.split_at(n - args.held_out);
    let (test_x, test_y) = batch(&digits, test_idx)?;
    if main {
        println!("{} digits: {} train, {} held out ({})", n, train_idx.len(), test_idx.len(), args.data.display());
    }

    let (f32, cpu) = (DType::F32, Device::Cpu);
    let mlp = nn::Sequential::new()
        .push(nn::Linear::new(PIXELS, 512, true, f32, cpu, &mut gen)?)
        .push(nn::Relu)
        .push(nn::Linear::new(512, 512, true, f32, cpu, &mut gen)?)
        .push(nn::Relu)
        .push(nn::Linear::new(512, CLASSES, true, f32, cpu, &mut gen)?);
    // With one process Ddp's all-reduce is the identity; with several it averages the gradients.
    let model = Ddp::new(mlp, &pg)?;
    let mut opt = optim::Adam::new(model.named_parameters(), optim::AdamConfig { lr: args.lr, ..Default::default() })?;
    if main {
        println!("MLP {PIXELS}-512-512-{CLASSES}: {} parameters, Adam lr {}", model.num_parameters(), args.lr);
        if world > 1 {
            println!("data-parallel over {world} processes: {} digits per process per step", args.batch_size / world);
        }
    }

    let sampler = DistributedSampler::new(train_idx.len(), rank, world, args.seed)?;
    let local_batch = args.batch_size / world;
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")?.progress_chars("=> ");
    let start = Instant::now();
    let mut acc = 0.0;
    for epoch in 1..=args.epochs {
        let epoch_start = Instant::now();
        let bar = if main { ProgressBar::new(train_idx.len() as u64) } else { ProgressBar::hidden() };
        let bar = bar.with_style(style.clone());
        bar.set_prefix(format!("{epoch}/{}", args.epochs));
        let shard = sampler.indices(epoch as u64);
        let (mut loss_sum, mut seen) = (0.0, 0usize);
        model.train();
        for chunk in shard.chunks(local_batch) {
            let idx: Vec<usize> = chunk.iter().map(|&i| train_idx[i]).collect();
            let (x, y) = batch(&digits, &idx)?;
            opt.zero_grad();
            let loss = model.forward(&x)?.cross_entropy(&y, -100)?;
            loss.backward()?;
            opt.step()?;
            let l = loss.item()?;
            if !l.is_finite() {
                return Err(format!("epoch {epoch}: the loss became {l}; try a smaller --lr").into());
            }
            loss_sum += l * idx.len() as f64;
            seen += idx.len();
            let rate = (seen * world) as f64 / epoch_start.elapsed().as_secs_f64();
            bar.set_message(format!("loss {l:.4}  {rate:.0} samples/s"));
            bar.inc((idx.len() * world) as u64);
        }
        bar.finish_and_clear();
        model.eval();
        acc = accuracy(&model, &test_x, &test_y)?;
        let secs = epoch_start.elapsed().as_secs_f64();
        if main {
            println!(
                "epoch {epoch:>2}/{}  train_loss {:.4}  held_out_acc {:.4}  {:.2} s  {:.0} samples/s",
                args.epochs,
                loss_sum / seen as f64,
                acc,
                secs,
                (seen * world) as f64 / secs
            );
        }
    }
    if !main {
        return Ok(());
    }
    println!("trained {} epochs in {:.1} s", args.epochs, start.elapsed().as_secs_f64());

    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let path = args.out.join("checkpoint.safetensors");
    let meta = BTreeMap::from([
        ("epochs".to_string(), args.epochs.to_string()),
        ("seed".to_string(), args.seed.to_string()),
        ("held_out_accuracy".to_string(), format!("{acc:.4}")),
    ]);
    munja::io::save_checkpoint(&path, &model, &opt, &meta)?;
    println!("checkpoint: {}", path.display());
    println!("held_out_accuracy {acc:.4}");
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("mnist: error: {e}");
        std::process::exit(1);
    }
}
