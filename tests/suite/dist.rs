//! Data parallelism on the TCP backend with real processes: each multi-process test starts copies of this
//! test binary running `dist::worker` (ignored when the suite runs normally) as ranks of one job, the way
//! `munja-run` or torchrun would, and checks what they computed or how they failed.

use munja::dist::{first_host, Ddp, DdpConfig, DistConfig, DistributedSampler, ProcessGroup, ReduceOp, Zero1};
use munja::io::{load_safetensors, save_safetensors};
use munja::nn::{Linear, Module};
use munja::optim::{AdamConfig, AdamW, Optimizer, Sgd, SgdConfig};
use munja::{DType, Device, Generator, Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const SCENARIO: &str = "MUNJA_TEST_DIST";
pub(crate) const OUT: &str = "MUNJA_TEST_DIST_OUT";
const CPU: Device = Device::Cpu;
const STEPS: usize = 5;
const GLOBAL_BATCH: usize = 16;

// ---------- the model and the training run every rank (and the reference) performs ----------

struct Mlp {
    l1: Linear,
    l2: Linear,
}

impl Mlp {
    fn new(seed: u64) -> Result<Mlp> {
        let mut g = Generator::new(seed);
        Ok(Mlp {
            l1: Linear::new(6, 16, true, DType::F32, CPU, &mut g)?,
            l2: Linear::new(16, 3, true, DType::F32, CPU, &mut g)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.l2.forward(&self.l1.forward(x)?.tanh()?)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.l1.visit_parameters(&munja::nn::join(prefix, "l1"), f);
        self.l2.visit_parameters(&munja::nn::join(prefix, "l2"), f);
    }
}

/// Tensors with their names: parameters or optimizer state.
type Named = Vec<(String, Tensor)>;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Opt {
    Sgd,
    AdamW,
    Zero1,
}

impl Opt {
    fn parse(s: &str) -> Opt {
        match s {
            "sgd" => Opt::Sgd,
            "adamw" => Opt::AdamW,
            "zero1" => Opt::Zero1,
            _ => panic!("unknown optimizer {s}"),
        }
    }
}

fn batch(step: usize) -> Result<(Tensor, Tensor)> {
    let mut g = Generator::new(1000 + step as u64);
    Ok((
        Tensor::randn_with(&mut g, &[GLOBAL_BATCH, 6], DType::F32, CPU)?,
        Tensor::randn_with(&mut g, &[GLOBAL_BATCH, 3], DType::F32, CPU)?,
    ))
}

fn adamw_config() -> AdamConfig {
    AdamConfig { lr: 1e-2, ..AdamConfig::adamw() }
}

/// Trains for STEPS steps as rank `pg.rank()` on its rows of each global batch, in `accum` micro-batches,
/// and returns the final parameters and optimizer state. Replicas start from different seeds, so the
/// result is only right if Ddp broadcast rank 0's parameters.
fn train(pg: &ProcessGroup, opt: Opt, accum: usize, bucket_bytes: usize) -> Result<(Named, Named)> {
    let (rank, world) = (pg.rank(), pg.world_size());
    let config = DdpConfig { bucket_bytes, sync_gradients: opt != Opt::Zero1 };
    let model = Ddp::with_config(Mlp::new(100 + rank as u64)?, pg, config)?;
    let params = model.named_parameters();
    let mut optimizer: Box<dyn Optimizer> = match opt {
        Opt::Sgd => Box::new(Sgd::new(params, SgdConfig { lr: 0.1, momentum: 0.9, ..SgdConfig::default() })?),
        Opt::AdamW => Box::new(AdamW::new(params, adamw_config())?),
        Opt::Zero1 => Box::new(Zero1::new(pg, params, |p| AdamW::new(p, adamw_config()))?),
    };
    let rows = GLOBAL_BATCH / world;
    let micro = rows / accum;
    for step in 0..STEPS {
        let (x, y) = batch(step)?;
        optimizer.zero_grad();
        for m in 0..accum {
            let start = rank * rows + m * micro;
            let (xm, ym) = (x.narrow(0, start, micro)?, y.narrow(0, start, micro)?);
            let loss = model.forward(&xm)?.mse_loss(&ym)?.mul_scalar(1.0 / accum as f64)?;
            if m + 1 < accum {
                let _quiet = model.no_sync();
                loss.backward()?;
            } else {
                loss.backward()?;
            }
        }
        optimizer.step()?;
    }
    Ok((model.named_parameters(), optimizer.state_tensors()?))
}

// ---------- the worker that each child process runs ----------

fn out_dir() -> PathBuf {
    PathBuf::from(std::env::var(OUT).expect("MUNJA_TEST_DIST_OUT"))
}

#[test]
#[ignore = "a rank of a multi-process test; started by the tests below"]
fn worker() {
    let scenario = std::env::var(SCENARIO).expect("run by the dist tests");
    let pg = ProcessGroup::from_env(CPU).expect("joining the job");
    let rank = pg.rank();
    let mut parts = scenario.split(':');
    match parts.next().unwrap() {
        "train" => {
            let opt = Opt::parse(parts.next().unwrap());
            let accum: usize = parts.next().unwrap().parse().unwrap();
            let bucket: usize = parts.next().unwrap().parse().unwrap();
            let (params, state) = train(&pg, opt, accum, bucket).expect("training");
            save_safetensors(out_dir().join(format!("params{rank}.safetensors")), &params, &BTreeMap::new()).unwrap();
            save_safetensors(out_dir().join(format!("state{rank}.safetensors")), &state, &BTreeMap::new()).unwrap();
        }
        "collectives" => collectives(&pg).expect("collectives"),
        "loop" => {
            // All-reduce until the job fails; rank `stall` stops taking part after a few rounds.
            let stall: usize = parts.next().unwrap().parse().unwrap();
            let die: usize = parts.next().map(|d| d.parse().unwrap()).unwrap_or(usize::MAX);
            let t = Tensor::ones(&[1000], DType::F32, CPU).unwrap();
            for i in 0.. {
                if i == 3 {
                    std::fs::write(out_dir().join(format!("ready{rank}")), b"").unwrap();
                }
                if i >= 3 && rank == die {
                    std::process::exit(7); // no cleanup: like a crash
                }
                if i >= 3 && rank == stall {
                    std::thread::sleep(Duration::from_secs(600));
                }
                pg.all_reduce(&t, ReduceOp::Avg).expect("all_reduce in the loop");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Every collective on every dtype it supports, checked against values each rank can compute alone.
fn collectives(pg: &ProcessGroup) -> Result<()> {
    let (r, p) = (pg.rank() as f64, pg.world_size() as f64);
    let n = 1001; // not a multiple of the world size: chunks of unequal length
    let mine: Vec<f64> = (0..n).map(|i| (i as f64) * 0.5 + r).collect();
    let sum: Vec<f64> = (0..n).map(|i| p * (i as f64) * 0.5 + p * (p - 1.0) / 2.0).collect();
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::I64] {
        let t = Tensor::from_vec(mine.clone(), &[n], CPU)?.to_dtype(dtype)?;
        pg.all_reduce(&t, ReduceOp::Sum)?;
        // bf16 holds about 3 significant digits; the others add these small halves exactly.
        let rel: f64 = if dtype == DType::BF16 { 8e-3 } else { 0.0 };
        let expect: Vec<f64> = if dtype == DType::I64 {
            // i·0.5 truncates per rank before the sum.
            (0..n).map(|i| p * ((i as f64) * 0.5 + 0.0).trunc() + p * (p - 1.0) / 2.0).collect()
        } else {
            sum.clone()
        };
        let got = t.to_vec_f64()?;
        for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
            assert!((g - e).abs() <= rel * (e.abs() + 1.0), "{dtype} sum [{i}]: {g} vs {e}");
        }
    }
    let t = Tensor::from_vec(mine.iter().map(|v| *v as f32).collect::<Vec<_>>(), &[n], CPU)?;
    pg.all_reduce(&t, ReduceOp::Avg)?;
    for (g, s) in t.to_vec::<f32>()?.iter().zip(&sum) {
        assert!((*g as f64 - s / p).abs() <= 1e-3, "avg {g} vs {}", s / p);
    }
    // Broadcast from the last rank, on a 2-D tensor.
    let b = Tensor::full(&[3, 4], r, DType::F32, CPU)?;
    pg.broadcast(&b, pg.world_size() - 1)?;
    assert_eq!(b.to_vec::<f32>()?, vec![(p - 1.0) as f32; 12]);
    // All-gather: [world, 2, 2] with rank k's values in row k.
    let g = pg.all_gather(&Tensor::full(&[2, 2], r * 10.0, DType::I64, CPU)?)?;
    assert_eq!(g.dims(), &[pg.world_size(), 2, 2]);
    let want: Vec<i64> = (0..pg.world_size()).flat_map(|k| [k as i64 * 10; 4]).collect();
    assert_eq!(g.to_vec::<i64>()?, want);
    // Reduce-scatter: rank k receives the sum of everyone's rows for k.
    let rows = 2 * pg.world_size();
    let src: Vec<f32> = (0..rows * 3).map(|i| i as f32 + r as f32).collect();
    let rs = pg.reduce_scatter(&Tensor::from_vec(src, &[rows, 3], CPU)?, ReduceOp::Sum)?;
    assert_eq!(rs.dims(), &[2, 3]);
    let start = pg.rank() * 6;
    let want: Vec<f32> = (start..start + 6).map(|i| (p * i as f64 + p * (p - 1.0) / 2.0) as f32).collect();
    assert_eq!(rs.to_vec::<f32>()?, want);
    // A reduce-scatter whose first dim does not divide is an error on every rank, before any traffic.
    assert!(pg.reduce_scatter(&Tensor::zeros(&[rows + 1], DType::F32, CPU)?, ReduceOp::Sum).is_err());
    pg.barrier()
}

// ---------- launching a job from a test ----------

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("munja-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Rank `rank` of a job of `world`: this test binary running the ignored test `worker` (a full path such
/// as "dist::worker") with the launcher's variables set.
pub(crate) fn rank_command_for(
    worker: &str,
    rank: usize,
    world: usize,
    port: u16,
    scenario: &str,
    out: &Path,
) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([worker, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("MUNJA_DIST_TIMEOUT", "60")
        .env(SCENARIO, scenario)
        .env(OUT, out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn rank_command(rank: usize, world: usize, port: u16, scenario: &str, out: &Path) -> Command {
    rank_command_for("dist::worker", rank, world, port, scenario, out)
}

/// Waits for every child, killing them all if any is still running after `limit`.
pub(crate) fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<(Output, Duration)> {
    let start = Instant::now();
    let mut done: Vec<Option<(Output, Duration)>> = children.iter().map(|_| None).collect();
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    while done.iter().any(|d| d.is_none()) {
        for (i, slot) in children.iter_mut().enumerate() {
            if let Some(c) = slot {
                if c.try_wait().unwrap().is_some() {
                    let c = slot.take().unwrap();
                    done[i] = Some((c.wait_with_output().unwrap(), start.elapsed()));
                }
            }
        }
        if start.elapsed() > limit {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
            }
            panic!("ranks still running after {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done.into_iter().map(|d| d.unwrap()).collect()
}

pub(crate) fn log(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run_job(world: usize, scenario: &str, out: &Path) {
    let port = free_port();
    let children = (0..world).map(|r| rank_command(r, world, port, scenario, out).spawn().unwrap()).collect();
    for (r, (o, _)) in wait_all(children, Duration::from_secs(240)).iter().enumerate() {
        assert!(o.status.success() && log(o).contains("1 passed"), "rank {r} of {scenario} failed:\n{}", log(o));
    }
}

fn load(path: PathBuf) -> HashMap<String, Vec<f32>> {
    let tensors = load_safetensors(path).unwrap().0.into_iter();
    tensors.filter(|(_, t)| t.dtype() == DType::F32).map(|(n, t)| (n, t.to_vec::<f32>().unwrap())).collect()
}

pub(crate) fn max_abs_diff(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<std::collections::BTreeSet<_>>(), b.keys().collect(), "different tensors");
    a.iter().flat_map(|(k, x)| x.iter().zip(&b[k]).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

/// Runs `scenario` on `world` processes and checks every rank ends with the parameters (and optimizer
/// state, under the same names) of one process training on the whole batch.
fn check_equivalence(name: &str, world: usize, opt: Opt, accum: usize, bucket: usize) {
    let tag = format!("{}-{world}", name);
    let out = scratch(&tag);
    let opt_name = match opt {
        Opt::Sgd => "sgd",
        Opt::AdamW => "adamw",
        Opt::Zero1 => "zero1",
    };
    run_job(world, &format!("train:{opt_name}:{accum}:{bucket}"), &out);
    let single = ProcessGroup::single(CPU).unwrap();
    let reference_opt = if opt == Opt::Zero1 { Opt::AdamW } else { opt };
    let (params, state) = train(&single, reference_opt, 1, bucket).unwrap();
    let as_map = |v: Vec<(String, Tensor)>| -> HashMap<String, Vec<f32>> {
        v.into_iter().filter(|(_, t)| t.dtype() == DType::F32).map(|(n, t)| (n, t.to_vec::<f32>().unwrap())).collect()
    };
    let (params, state) = (as_map(params), as_map(state));
    let rank0 = load(out.join("params0.safetensors"));
    for r in 0..world {
        let p = load(out.join(format!("params{r}.safetensors")));
        let d = max_abs_diff(&p, &params);
        assert!(d <= 1e-5, "{tag}: rank {r} parameters differ from one process by {d:e}");
        assert_eq!(p, rank0, "{tag}: rank {r} and rank 0 replicas differ");
        let s: HashMap<String, Vec<f32>> =
            load(out.join(format!("state{r}.safetensors"))).into_iter().filter(|(n, _)| n != "step").collect();
        let d = max_abs_diff(&s, &state);
        assert!(d <= 1e-5, "{tag}: rank {r} optimizer state differs by {d:e}");
    }
    eprintln!("{tag}: {world} processes match one process on the whole batch");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn two_processes_sgd_match_one_process() {
    check_equivalence("sgd", 2, Opt::Sgd, 1, munja::dist::DEFAULT_BUCKET_BYTES);
}

#[test]
fn four_processes_sgd_with_small_buckets_match_one_process() {
    // 64-byte buckets: every parameter its own bucket, launched in order while backward runs.
    check_equivalence("sgd-buckets", 4, Opt::Sgd, 1, 64);
}

#[test]
fn gradient_accumulation_with_no_sync_matches_one_process() {
    check_equivalence("sgd-accum", 2, Opt::Sgd, 2, 64);
    check_equivalence("sgd-accum", 4, Opt::Sgd, 2, munja::dist::DEFAULT_BUCKET_BYTES);
}

#[test]
fn zero1_adamw_matches_plain_adamw() {
    // The reference is one process with plain AdamW, which plain data-parallel AdamW also matches
    // (adamw_data_parallel_matches_one_process); the gathered optimizer state is compared by name too.
    check_equivalence("zero1", 2, Opt::Zero1, 1, 64);
    check_equivalence("zero1", 4, Opt::Zero1, 2, 64);
}

#[test]
fn adamw_data_parallel_matches_one_process() {
    check_equivalence("adamw", 4, Opt::AdamW, 1, 256);
}

#[test]
fn collectives_agree_across_three_processes() {
    let out = scratch("collectives");
    run_job(3, "collectives", &out);
}

// ---------- failures ----------

#[test]
fn a_rank_that_cannot_reach_the_master_fails_naming_the_address() {
    let port = free_port(); // nobody listens here
    let mut c = DistConfig::new(1, 2, "127.0.0.1", port).unwrap();
    c.timeout = Duration::from_millis(800);
    let start = Instant::now();
    let e = ProcessGroup::init(&c, CPU).err().expect("no master").to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("rank 1"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(30));
    // Rank 0 waiting for ranks that never come names them.
    let mut c = DistConfig::new(0, 3, "127.0.0.1", free_port()).unwrap();
    c.timeout = Duration::from_millis(800);
    let e = ProcessGroup::init(&c, CPU).err().expect("nobody joins").to_string();
    assert!(e.contains("[1, 2]"), "{e}");
}

#[test]
fn ranks_that_disagree_on_the_world_size_fail_at_the_rendezvous() {
    // Two "processes" as threads: the failure happens before any monitor could take the process down.
    let port = free_port();
    let join = std::thread::spawn(move || {
        let mut c = DistConfig::new(1, 3, "127.0.0.1", port).unwrap();
        c.timeout = Duration::from_secs(10);
        ProcessGroup::init(&c, CPU).err().map(|e| e.to_string())
    });
    let mut c = DistConfig::new(0, 2, "127.0.0.1", port).unwrap();
    c.timeout = Duration::from_secs(10);
    let e = ProcessGroup::init(&c, CPU).err().expect("mismatched world sizes").to_string();
    assert!(e.contains("rank 1") && e.contains("world size is 3"), "{e}");
    let other = join.join().unwrap().expect("rank 1 must fail too");
    assert!(other.contains("rank 1"), "{other}");
}

/// Starts a 3-rank all-reduce loop, then breaks rank 1 with `breaker`; every other rank must exit
/// non-zero within 60 s with a message naming rank 1.
fn check_fail_fast(name: &str, stall: bool, breaker: impl FnOnce(&mut Child)) {
    let out = scratch(name);
    let port = free_port();
    let scenario = format!("loop:{}", if stall { 1 } else { 99 });
    let mut children: Vec<Child> = (0..3)
        .map(|r| {
            let mut c = rank_command(r, 3, port, &scenario, &out);
            c.env("MUNJA_DIST_TIMEOUT", "4").env("MUNJA_DIST_EXIT_GRACE", "5");
            c.spawn().unwrap()
        })
        .collect();
    let start = Instant::now();
    while !(0..3).all(|r| out.join(format!("ready{r}")).exists()) {
        assert!(start.elapsed() < Duration::from_secs(60), "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    breaker(&mut children[1]);
    // wait_all times each exit from now: the moment rank 1 broke.
    let results = wait_all(children, Duration::from_secs(90));
    for (r, (o, at)) in results.iter().enumerate() {
        if r == 1 && !stall {
            continue; // the killed one
        }
        assert!(!o.status.success(), "{name}: rank {r} exited 0 after rank 1 failed:\n{}", log(o));
        let after = *at;
        assert!(after < Duration::from_secs(60), "{name}: rank {r} took {after:?} to stop");
        assert!(log(o).contains("rank 1"), "{name}: rank {r}'s message does not name rank 1:\n{}", log(o));
        let reason = log(o).lines().find(|l| l.contains("the job failed")).unwrap_or_default().to_string();
        eprintln!("{name}: rank {r} exited with {} after {after:.1?}: {reason}", o.status);
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_killed_rank_makes_the_others_fail_fast() {
    check_fail_fast("killed", false, |c| c.kill().unwrap());
}

#[test]
fn a_stalled_rank_fails_the_job_after_the_timeout() {
    // Rank 1 stays alive but stops taking part: its peers time out (4 s) and the job stops, rank 1 too.
    check_fail_fast("stalled", true, |_| {});
}

#[test]
fn munja_run_launches_a_job_and_stops_it_when_a_rank_fails() {
    let out = scratch("munja-run");
    let launch = |scenario: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_munja-run"));
        c.args(["--nproc-per-node", "3", "--grace", "10", "--master-port", &free_port().to_string(), "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["dist::worker", "--exact", "--ignored", "--test-threads=1"])
            .env(SCENARIO, scenario)
            .env(OUT, &out)
            .env("MUNJA_DIST_EXIT_GRACE", "5");
        let start = Instant::now();
        let o = c.output().unwrap();
        (o, start.elapsed())
    };
    let (o, _) = launch("collectives");
    assert!(o.status.success(), "the job failed:\n{}", log(&o));
    assert_eq!(log(&o).matches("1 passed").count(), 3, "three ranks should each pass:\n{}", log(&o));
    // Rank 1 exits with status 7 mid-job: the others stop, and munja-run passes the status on.
    let (o, took) = launch("loop:99:1");
    assert_eq!(o.status.code(), Some(7), "{}", log(&o));
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(log(&o).contains("rank 1 exited"), "{}", log(&o));
    let _ = std::fs::remove_dir_all(&out);
}

// ---------- in-process pieces ----------

#[test]
fn config_reads_torchrun_and_slurm_variables() {
    let env = |pairs: &[(&str, &str)]| {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistConfig::from_vars(move |k| m.get(k).cloned())
    };
    let c = env(&[
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "n1"),
        ("MASTER_PORT", "1234"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((c.rank, c.world_size, c.local_rank, c.local_world_size, c.master()), (3, 8, 1, 2, "n1:1234".into()));
    let c = env(&[
        ("SLURM_PROCID", "9"),
        ("SLURM_NTASKS", "16"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS_PER_NODE", "8(x2)"),
        ("SLURM_JOB_NODELIST", "gpu[017-018]"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((c.rank, c.world_size, c.local_rank, c.local_world_size), (9, 16, 1, 8));
    assert_eq!(c.master(), format!("gpu017:{}", munja::dist::DEFAULT_MASTER_PORT));
    // torchrun's variables win over SLURM's (munja-run under srun).
    let c = env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap().unwrap();
    assert_eq!((c.rank, c.world_size), (1, 2));
    assert!(env(&[]).unwrap().is_none());
    for bad in [
        vec![("WORLD_SIZE", "2")],
        vec![("WORLD_SIZE", "2"), ("RANK", "2")],
        vec![("WORLD_SIZE", "two"), ("RANK", "0")],
        vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "99999")],
        vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MUNJA_DIST_TIMEOUT", "-1")],
        vec![("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")],
    ] {
        let e = env(&bad).err().unwrap_or_else(|| panic!("{bad:?} accepted")).to_string();
        assert!(e.contains("dist"), "{e}");
    }
    assert_eq!(first_host("a01,b02").unwrap(), "a01");
    assert_eq!(first_host("node[3,5-7],gpu1").unwrap(), "node3");
    assert_eq!(first_host("x").unwrap(), "x");
    assert!(first_host("node[1-2").is_err());
}

#[test]
fn sampler_shards_are_disjoint_equal_and_cover_the_data() {
    for (len, world) in [(10, 3), (12, 4), (5, 8)] {
        let shards: Vec<Vec<usize>> =
            (0..world).map(|r| DistributedSampler::new(len, r, world, 7).unwrap().indices(2)).collect();
        let n = shards[0].len();
        assert!(shards.iter().all(|s| s.len() == n), "unequal shards");
        let mut all: Vec<usize> = shards.concat();
        assert_eq!(all.len(), len.div_ceil(world) * world);
        all.sort();
        all.dedup();
        assert_eq!(all, (0..len).collect::<Vec<_>>(), "not covering");
        if len % world == 0 {
            let total: usize = shards.iter().map(|s| s.len()).sum();
            assert_eq!(total, len, "overlap without padding");
        }
    }
    let s = DistributedSampler::new(100, 0, 2, 7).unwrap();
    assert_ne!(s.indices(0), s.indices(1), "epochs should reshuffle");
    assert_eq!(s.indices(3), DistributedSampler::new(100, 0, 2, 7).unwrap().indices(3));
    assert_eq!(DistributedSampler::new(10, 1, 3, 0).unwrap().drop_last().indices(0).len(), 3);
    assert!(DistributedSampler::new(10, 3, 3, 0).is_err());
}

#[test]
fn one_process_group_is_the_identity_and_ddp_leaves_gradients_alone() -> Result<()> {
    let pg = ProcessGroup::single(CPU)?;
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3], CPU)?;
    pg.all_reduce(&t, ReduceOp::Avg)?;
    assert_eq!(t.to_vec::<f32>()?, vec![1.0, 2.0, 3.0]);
    assert_eq!(pg.all_gather(&t)?.dims(), &[1, 3]);
    // Ddp at world size 1 gives the gradients plain backward gives.
    let plain = Mlp::new(5)?;
    let wrapped = Ddp::with_config(Mlp::new(5)?, &pg, DdpConfig { bucket_bytes: 100, sync_gradients: true })?;
    assert!(wrapped.bucket_bytes().len() > 1);
    let (x, y) = batch(0)?;
    plain.forward(&x)?.mse_loss(&y)?.backward()?;
    wrapped.forward(&x)?.mse_loss(&y)?.backward()?;
    for ((n, a), (_, b)) in plain.named_parameters().iter().zip(wrapped.named_parameters()) {
        assert_eq!(a.grad().unwrap().to_vec::<f32>()?, b.grad().unwrap().to_vec::<f32>()?, "{n}");
    }
    // Every bucket started from a hook, while backward was still running.
    let buckets = wrapped.bucket_bytes().len();
    let stats = wrapped.last_sync_stats();
    assert_eq!((stats.launched_during_backward, stats.launched_at_end), (buckets, 0), "{stats:?}");
    // A pass that leaves l2 without gradients: l2's buckets come first (reverse order of creation) and
    // buckets start in order, so all of them start at the end, with zeros for l2.
    wrapped.zero_grad();
    wrapped.module().l1.forward(&x)?.sum_all()?.backward()?;
    let stats = wrapped.last_sync_stats();
    assert_eq!((stats.launched_during_backward, stats.launched_at_end), (0, buckets), "{stats:?}");
    assert_eq!(wrapped.module().l2.weight.grad().unwrap().to_vec::<f32>()?, vec![0.0; 48]);
    Ok(())
}

#[test]
fn grad_hooks_run_once_per_pass_with_the_final_gradient() -> Result<()> {
    // A leaf used twice: its hook must see the sum of both uses, once.
    let w = Tensor::from_vec(vec![2.0f32], &[1], CPU)?.set_requires_grad(true);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    w.register_post_accumulate_grad_hook(std::sync::Arc::new(move |t: &Tensor| {
        s2.lock().unwrap().push(t.grad().unwrap().to_vec::<f32>()?[0]);
        Ok(())
    }))?;
    w.mul(&w)?.add(&w)?.sum_all()?.backward()?; // d/dw (w² + w) = 2w + 1 = 5
    assert_eq!(*seen.lock().unwrap(), vec![5.0]);
    // A non-leaf refuses hooks.
    assert!(w.mul_scalar(2.0)?.register_post_accumulate_grad_hook(std::sync::Arc::new(|_: &Tensor| Ok(()))).is_err());
    Ok(())
}
