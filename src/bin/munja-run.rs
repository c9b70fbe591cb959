//! munja-run: starts one process per GPU (or per CPU share) on this node and watches them, like torchrun.
//!
//! ```text
//! munja-run --nproc-per-node 8 [--nnodes 2 --node-rank 0 --master-addr node01 --master-port 29500] \
//!     -- target/release/examples/gpt --preset gpt2 --device cuda --dtype bf16
//! ```
//!
//! Each child gets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
//! MASTER_PORT, GROUP_RANK), which `munja::dist::ProcessGroup::from_env` reads, and, unless it is set,
//! RAYON_NUM_THREADS = cores / N so the local processes share the CPU. If a child fails, the
//! others get SIGTERM (so they can save a checkpoint), then SIGKILL after the grace period, and munja-run
//! exits with the failed child's status. SIGINT/SIGTERM sent to munja-run (SLURM before a preemption) is
//! passed on to every child.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: munja-run --nproc-per-node N [--nnodes M] [--node-rank R] [--master-addr HOST] \
[--master-port PORT] [--grace SECONDS] -- PROGRAM [ARGS...]";

#[derive(Debug)]
struct Launch {
    nproc_per_node: usize,
    nnodes: usize,
    node_rank: usize,
    master_addr: String,
    master_port: u16,
    grace: Duration,
    program: Vec<String>,
}

fn parse(args: &[String]) -> Result<Launch, String> {
    let mut l = Launch {
        nproc_per_node: 0,
        nnodes: 1,
        node_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: 29500,
        grace: Duration::from_secs(30),
        program: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        if flag == "--" {
            l.program = args[i + 1..].to_vec();
            break;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i).cloned().ok_or_else(|| format!("{name} needs a value"))?
            }
        };
        let number = |v: &str| v.parse::<usize>().map_err(|_| format!("{name}: {v:?} is not a whole number"));
        match name {
            "--nproc-per-node" | "--nproc_per_node" => l.nproc_per_node = number(&value)?,
            "--nnodes" => l.nnodes = number(&value)?,
            "--node-rank" | "--node_rank" => l.node_rank = number(&value)?,
            "--master-addr" | "--master_addr" => l.master_addr = value,
            "--master-port" | "--master_port" => {
                l.master_port = value.parse().map_err(|_| format!("{name}: {value:?} is not a TCP port"))?
            }
            "--grace" => {
                let s: f64 = value.parse().map_err(|_| format!("{name}: {value:?} is not a number of seconds"))?;
                l.grace = Duration::from_secs_f64(s.max(0.0));
            }
            _ => return Err(format!("unknown option {name}")),
        }
        i += 1;
    }
    if l.nproc_per_node == 0 {
        return Err("--nproc-per-node must be at least 1".into());
    }
    if l.nnodes == 0 || l.node_rank >= l.nnodes {
        return Err(format!("--node-rank {} must be below --nnodes {}", l.node_rank, l.nnodes));
    }
    if l.program.is_empty() {
        return Err("no program to run: put it after --".into());
    }
    Ok(l)
}

/// The last signal munja-run received (0 for none), set by the handler and forwarded by the main loop.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn status_code(s: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => c.clamp(1, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(1, 255) as u8,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let l = match parse(&args) {
        Ok(l) => l,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("munja-run: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let world = l.nproc_per_node * l.nnodes;
    // One thread per child blocks in wait(), so exits arrive in the order they happened and the first
    // failure (the cause, not the ranks it took down) is the one reported.
    let (tx, exits) = std::sync::mpsc::channel::<(usize, std::io::Result<std::process::ExitStatus>)>();
    let mut pids: Vec<(usize, libc::pid_t)> = Vec::new();
    // Share the cores among the local processes unless the user chose (torchrun does the same with
    // OMP_NUM_THREADS): N processes each running a full-width rayon pool would oversubscribe the CPU.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var_os("RAYON_NUM_THREADS").is_none().then(|| (cores / l.nproc_per_node).max(1));
    for local in 0..l.nproc_per_node {
        let rank = l.node_rank * l.nproc_per_node + local;
        let spawned = Command::new(&l.program[0])
            .args(&l.program[1..])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", l.nproc_per_node.to_string())
            .env("GROUP_RANK", l.node_rank.to_string())
            .env("MASTER_ADDR", &l.master_addr)
            .env("MASTER_PORT", l.master_port.to_string())
            .envs(threads.map(|t| ("RAYON_NUM_THREADS", t.to_string())))
            .spawn();
        match spawned {
            Ok(mut c) => {
                pids.push((rank, c.id() as libc::pid_t));
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send((rank, c.wait()));
                });
            }
            Err(e) => {
                eprintln!("munja-run: cannot start {:?} as rank {rank}: {e}", l.program[0]);
                signal_all(&pids, libc::SIGKILL);
                return ExitCode::from(1);
            }
        }
    }
    drop(tx);
    let mut failed: Option<(usize, u8)> = None;
    let mut stop_deadline: Option<Instant> = None;
    let mut forwarded = 0;
    while !pids.is_empty() {
        let sig = SIGNAL.swap(0, Ordering::SeqCst);
        if sig != 0 {
            forwarded = sig;
            eprintln!("munja-run: got signal {sig}; passing it to every rank");
            signal_all(&pids, sig);
            stop_deadline.get_or_insert(Instant::now() + l.grace);
        }
        match exits.recv_timeout(Duration::from_millis(100)) {
            Ok((rank, status)) => {
                pids.retain(|(r, _)| *r != rank);
                let code = match status {
                    Ok(s) if s.success() => None,
                    Ok(s) => {
                        eprintln!("munja-run: rank {rank} exited with {s}");
                        Some(status_code(s))
                    }
                    Err(e) => {
                        eprintln!("munja-run: cannot watch rank {rank}: {e}");
                        Some(1)
                    }
                };
                if let (Some(code), None) = (code, failed) {
                    failed = Some((rank, code));
                    if !pids.is_empty() {
                        eprintln!("munja-run: stopping the other ranks (SIGTERM, SIGKILL after {:?})", l.grace);
                        signal_all(&pids, libc::SIGTERM);
                        stop_deadline.get_or_insert(Instant::now() + l.grace);
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if stop_deadline.is_some_and(|d| Instant::now() > d) {
            eprintln!("munja-run: {} rank(s) still running after {:?}; killing them", pids.len(), l.grace);
            signal_all(&pids, libc::SIGKILL);
            stop_deadline = Some(Instant::now() + Duration::from_secs(3600));
        }
    }
    match failed {
        Some((_, code)) => ExitCode::from(code),
        None if forwarded != 0 => ExitCode::from((128 + forwarded).clamp(1, 255) as u8),
        None => ExitCode::SUCCESS,
    }
}

/// Sends `sig` to every child still running (they are only reaped by their waiting threads, after
/// which they leave `pids`).
fn signal_all(pids: &[(usize, libc::pid_t)], sig: libc::c_int) {
    for (_, pid) in pids {
        // SAFETY: kill(2) on a child that has not been reported as exited.
        unsafe {
            libc::kill(*pid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_torchrun_style_flags() {
        let l = parse(&args("--nproc-per-node 4 --nnodes=2 --node-rank 1 --master-addr n0 --master-port 7 -- a b"))
            .unwrap();
        assert_eq!(
            (l.nproc_per_node, l.nnodes, l.node_rank, l.master_addr.as_str(), l.master_port),
            (4, 2, 1, "n0", 7)
        );
        assert_eq!(l.program, ["a", "b"]);
    }

    #[test]
    fn rejects_bad_launches() {
        for bad in [
            "--nproc-per-node 2",
            "--nproc-per-node 0 -- a",
            "--nproc-per-node 2 --node-rank 1 -- a",
            "--nproc-per-node x -- a",
            "--bogus 1 -- a",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
