//! The GPT example's training run data-parallel over two processes (TCP backend): a stop signal on one
//! rank stops both after the same step, a run stopped and resumed ends bit for bit where an uninterrupted
//! one does, ZeRO-1 ends where plain data parallelism does, and bf16 works under both. The ranks are
//! copies of this test binary running `gpt_parallel::worker`, as in tests/suite/dist.rs.

use super::dist::{free_port, log, max_abs_diff, rank_command_for, scratch, wait_all, OUT, SCENARIO};
use super::gpt_example::example::checkpoint;
use super::gpt_example::example::config::TrainConfig;
use super::gpt_example::example::train::{Event, Outcome, Session, Trainer};
use super::gpt_example::{corpus, fresh, tiny_config};
use munja::dist::ProcessGroup;
use munja::io::{load_safetensors, save_safetensors};
use munja::nn::Module;
use munja::{DType, Device};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One rank's final weights (by name) and its step losses (as bit patterns).
type RankResult = (HashMap<String, Vec<f32>>, Vec<u64>);

const STEPS: usize = 6;
const STOP_AT: usize = 3;

fn out_dir() -> PathBuf {
    PathBuf::from(std::env::var(OUT).unwrap())
}

/// Trains to the end, raising this rank's stop flag after step `stop_at` if given; returns the outcome and
/// the step losses.
fn train(t: &mut Trainer, dir: &Path, stop_at: Option<usize>) -> (Outcome, Vec<f64>) {
    let stop = AtomicBool::new(false);
    let mut losses = Vec::new();
    let session = Session { out: dir, stop: &stop, verbose: false };
    let summary = t
        .train(&session, &mut |e: &Event| {
            if let Event::Step { step, loss, .. } = *e {
                losses.push(loss);
                if Some(step) == stop_at {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    (summary.outcome, losses)
}

#[test]
#[ignore = "a rank of a multi-process test; started by the tests below"]
fn worker() {
    let scenario = std::env::var(SCENARIO).unwrap();
    let parts: Vec<&str> = scenario.split(':').collect();
    let (tag, split, zero1, dtype) =
        (parts[0], parts[1] == "split", parts[2] == "zero1", if parts[3] == "bf16" { DType::BF16 } else { DType::F32 });
    let pg = ProcessGroup::from_env(Device::Cpu).unwrap();
    let rank = pg.rank();
    let (out, data) = (out_dir(), out_dir().join("data.txt"));
    let dir = out.join(format!("run-{tag}"));
    let cfg = TrainConfig { dtype, ..tiny_config(STEPS, 0.1) };
    let mut t = fresh(&data, cfg).unwrap();
    t.make_parallel(&pg, zero1).unwrap();
    let mut losses = Vec::new();
    if split {
        // Only rank 1 sees the signal; both must stop after the same step.
        let (outcome, l) = train(&mut t, &dir, (rank == 1).then_some(STOP_AT));
        assert_eq!((outcome, t.step), (Outcome::Stopped, STOP_AT), "rank {rank} did not stop with the others");
        losses.extend(l);
        drop(t);
        pg.barrier().unwrap(); // rank 0 has written the checkpoint
        munja::manual_seed(12345); // whatever the stream was, resuming must restore it
        t = checkpoint::resume(&dir, None, Device::Cpu).unwrap();
        t.make_parallel(&pg, zero1).unwrap();
    }
    let (outcome, l) = train(&mut t, &dir, None);
    assert_eq!((outcome, t.step), (Outcome::Finished, STEPS));
    losses.extend(l);
    let params: Vec<(String, munja::Tensor)> = t.weights().named_parameters();
    save_safetensors(out.join(format!("{tag}-params{rank}.safetensors")), &params, &BTreeMap::new()).unwrap();
    let text: String = losses.iter().map(|l| format!("{}\n", l.to_bits())).collect();
    std::fs::write(out.join(format!("{tag}-losses{rank}.txt")), text).unwrap();
}

/// Runs scenario `tag:mode:opt:dtype` on two processes; returns each rank's parameters and losses.
fn job(out: &Path, scenario: &str) -> Vec<RankResult> {
    let port = free_port();
    let children =
        (0..2).map(|r| rank_command_for("gpt_parallel::worker", r, 2, port, scenario, out).spawn().unwrap()).collect();
    for (r, (o, _)) in wait_all(children, Duration::from_secs(300)).iter().enumerate() {
        assert!(o.status.success() && log(o).contains("1 passed"), "rank {r} of {scenario} failed:\n{}", log(o));
    }
    let tag = scenario.split(':').next().unwrap();
    (0..2)
        .map(|r| {
            let (tensors, _) = load_safetensors(out.join(format!("{tag}-params{r}.safetensors"))).unwrap();
            let params = tensors.into_iter().map(|(n, t)| (n, t.to_vec::<f32>().unwrap())).collect();
            let losses = std::fs::read_to_string(out.join(format!("{tag}-losses{r}.txt"))).unwrap();
            (params, losses.lines().map(|l| l.parse().unwrap()).collect())
        })
        .collect()
}

fn setup(name: &str) -> PathBuf {
    let out = scratch(name);
    let data = corpus(&out);
    assert_eq!(data, out.join("data.txt"));
    out
}

/// Both ranks end with identical weights; they trained on different batches (their losses differ).
fn check_replicas(what: &str, ranks: &[RankResult]) {
    assert_eq!(ranks[0].0, ranks[1].0, "{what}: the replicas' weights differ");
    assert_eq!(ranks[0].1.len(), STEPS, "{what}: steps");
    assert_ne!(ranks[0].1, ranks[1].1, "{what}: both ranks saw the same batches");
}

#[test]
fn data_parallel_gpt_stops_together_and_resumes_bit_for_bit() {
    let out = setup("gpt-dp-resume");
    let straight = job(&out, "straight:straight:plain:f32");
    check_replicas("straight", &straight);
    let split = job(&out, "split:split:plain:f32");
    check_replicas("split", &split);
    for r in 0..2 {
        assert_eq!(straight[r].1, split[r].1, "rank {r}: the resumed run's losses differ");
        assert_eq!(straight[r].0, split[r].0, "rank {r}: the resumed run's weights differ");
    }
    // ZeRO-1 ends where plain data parallelism does (same batches, sharded AdamW), and resumes exactly.
    let zero = job(&out, "zero:straight:zero1:f32");
    check_replicas("zero1", &zero);
    let d = max_abs_diff(&zero[0].0, &straight[0].0);
    assert!(d <= 1e-5, "ZeRO-1 weights differ from plain data-parallel ones by {d:e}");
    let zero_split = job(&out, "zsplit:split:zero1:f32");
    assert_eq!(zero[0], zero_split[0], "ZeRO-1 resume is not exact");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn data_parallel_gpt_trains_in_bf16_with_and_without_zero1() {
    let out = setup("gpt-dp-bf16");
    let plain = job(&out, "plain:straight:plain:bf16");
    check_replicas("bf16", &plain);
    let zero = job(&out, "zero:split:zero1:bf16");
    check_replicas("bf16 zero1", &zero);
    // Plain bf16 averages each micro-batch's bf16 gradients; ZeRO-1 reduces the f32 masters' sums. The
    // roundings differ, and Adam's normalised steps turn tiny gradient differences into weight differences
    // of up to a few learning rates, so the runs are compared by their losses, which must track closely.
    let f = |b: &u64| f64::from_bits(*b);
    for r in 0..2 {
        for (i, (a, b)) in plain[r].1.iter().map(f).zip(zero[r].1.iter().map(f)).enumerate() {
            assert!((a - b).abs() <= 5e-3, "rank {r} step {}: bf16 loss {a} plain vs {b} with ZeRO-1", i + 1);
        }
    }
    eprintln!("bf16 rank 0 losses: plain {:?}", plain[0].1.iter().map(f).collect::<Vec<_>>());
    eprintln!("bf16 rank 0 losses: zero1 {:?}", zero[0].1.iter().map(f).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&out);
}
