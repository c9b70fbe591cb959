//! Where a process sits in a data-parallel job (rank, world size, local rank) and how to reach rank 0,
//! read from the variables cluster users already set: torchrun's, SLURM's, or explicit values.

use crate::{Error, Result};
use std::time::Duration;

/// The port rank 0 listens on when neither MASTER_PORT nor an explicit port is given (torchrun's).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// How long a rank waits for the rendezvous or for a peer inside a collective before failing.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistConfig {
    /// This process's rank in 0..world_size.
    pub rank: usize,
    pub world_size: usize,
    /// The rank among the processes on this node: the GPU ordinal it uses.
    pub local_rank: usize,
    pub local_world_size: usize,
    /// Host name or address of rank 0's rendezvous listener.
    pub master_addr: String,
    pub master_port: u16,
    /// Rendezvous and collective timeout (MUNJA_DIST_TIMEOUT, in seconds).
    pub timeout: Duration,
}

impl DistConfig {
    /// A single process: world size 1, no rendezvous needed.
    pub fn single() -> DistConfig {
        DistConfig {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_MASTER_PORT,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Explicit values (local rank = rank, everything on one node); change fields for other layouts.
    pub fn new(rank: usize, world_size: usize, master_addr: &str, master_port: u16) -> Result<DistConfig> {
        let c = DistConfig {
            rank,
            world_size,
            local_rank: rank,
            local_world_size: world_size,
            master_addr: master_addr.to_string(),
            master_port,
            timeout: DEFAULT_TIMEOUT,
        };
        c.validate()?;
        Ok(c)
    }

    /// Reads the process environment: see `from_vars`.
    pub fn from_env() -> Result<Option<DistConfig>> {
        DistConfig::from_vars(|k| std::env::var(k).ok())
    }

    /// torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
    /// when WORLD_SIZE is set; else SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
    /// SLURM_NTASKS_PER_NODE, the first host of SLURM_JOB_NODELIST as master unless MASTER_ADDR is set)
    /// when SLURM_PROCID and SLURM_NTASKS are; else None (not a distributed launch). A variable that is
    /// set but malformed is an error naming it.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistConfig>> {
        let timeout = match get("MUNJA_DIST_TIMEOUT") {
            Some(v) => Duration::from_secs_f64(parse_positive_f64("MUNJA_DIST_TIMEOUT", &v)?),
            None => DEFAULT_TIMEOUT,
        };
        let port = match get("MASTER_PORT") {
            Some(p) => p.trim().parse::<u16>().map_err(|_| bad_var("MASTER_PORT", &p, "a TCP port"))?,
            None => DEFAULT_MASTER_PORT,
        };
        let config = if let Some(ws) = get("WORLD_SIZE") {
            let world_size = parse_usize("WORLD_SIZE", &ws)?;
            let rank = parse_usize("RANK", &get("RANK").ok_or_else(|| missing("RANK", "WORLD_SIZE"))?)?;
            let local_rank = get("LOCAL_RANK").map(|v| parse_usize("LOCAL_RANK", &v)).transpose()?.unwrap_or(rank);
            let local_world_size =
                get("LOCAL_WORLD_SIZE").map(|v| parse_usize("LOCAL_WORLD_SIZE", &v)).transpose()?.unwrap_or(world_size);
            let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
            DistConfig { rank, world_size, local_rank, local_world_size, master_addr, master_port: port, timeout }
        } else if let (Some(id), Some(n)) = (get("SLURM_PROCID"), get("SLURM_NTASKS")) {
            let rank = parse_usize("SLURM_PROCID", &id)?;
            let world_size = parse_usize("SLURM_NTASKS", &n)?;
            let local_rank = get("SLURM_LOCALID").map(|v| parse_usize("SLURM_LOCALID", &v)).transpose()?.unwrap_or(0);
            let local_world_size = match get("SLURM_NTASKS_PER_NODE") {
                // "8" or "8(x2)": the count before any repetition suffix.
                Some(v) => parse_usize("SLURM_NTASKS_PER_NODE", v.split('(').next().unwrap_or(&v))?,
                None => world_size,
            };
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let list = get("SLURM_JOB_NODELIST")
                        .or_else(|| get("SLURM_NODELIST"))
                        .ok_or_else(|| missing("SLURM_JOB_NODELIST", "SLURM_PROCID (and no MASTER_ADDR)"))?;
                    first_host(&list)?
                }
            };
            DistConfig { rank, world_size, local_rank, local_world_size, master_addr, master_port: port, timeout }
        } else {
            return Ok(None);
        };
        config.validate()?;
        Ok(Some(config))
    }

    fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(Error::invalid(
                "dist",
                format!("rank {} is not below world size {}", self.rank, self.world_size),
            ));
        }
        if self.local_world_size == 0 || self.local_rank >= self.local_world_size {
            return Err(Error::invalid(
                "dist",
                format!("local rank {} is not below local world size {}", self.local_rank, self.local_world_size),
            ));
        }
        Ok(())
    }

    /// `host:port` of rank 0's rendezvous listener.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

/// The first host of a SLURM node list: `gpu[001-004,007],cpu01` → `gpu001`; `a,b` → `a`.
pub fn first_host(nodelist: &str) -> Result<String> {
    let s = nodelist.trim();
    let end = s.find(',').unwrap_or(s.len());
    let bracket = s.find('[');
    let host = match bracket {
        Some(b) if b < end => {
            let close =
                s[b..].find(']').map(|c| b + c).ok_or_else(|| bad_var("SLURM_JOB_NODELIST", s, "a node list"))?;
            let first = s[b + 1..close].split([',', '-']).next().unwrap_or("");
            format!("{}{}", &s[..b], first)
        }
        _ => s[..end].to_string(),
    };
    if host.is_empty() || host.contains(['[', ']']) {
        return Err(bad_var("SLURM_JOB_NODELIST", s, "a node list"));
    }
    Ok(host)
}

fn parse_usize(name: &str, v: &str) -> Result<usize> {
    v.trim().parse::<usize>().map_err(|_| bad_var(name, v, "a non-negative integer"))
}

fn parse_positive_f64(name: &str, v: &str) -> Result<f64> {
    match v.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(bad_var(name, v, "a positive number of seconds")),
    }
}

fn bad_var(name: &str, value: &str, what: &str) -> Error {
    Error::invalid("dist", format!("environment variable {name}={value:?} is not {what}"))
}

fn missing(name: &str, because: &str) -> Error {
    Error::invalid("dist", format!("environment variable {name} is not set, but {because} is"))
}
