//! The TCP rendezvous that starts a job: rank 0 listens on MASTER_ADDR:MASTER_PORT, every other rank
//! connects (retrying until the timeout) and says which rank it is and where it listens; rank 0 answers
//! with everyone's address and an opaque payload (the NCCL unique id). The ranks then connect to one
//! another, so the TCP backend has a direct link to every peer. The links to rank 0 stay open: they
//! carry shutdown and failure notices (see `monitor`).

use super::config::DistConfig;
use super::wire::{read_blob, read_u64, tune, write_blob, write_u64};
use crate::{Error, Result};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::thread::sleep;
use std::time::{Duration, Instant};

const MAGIC: u64 = 0x006d_756e_6a61_0001; // "munja", protocol 1
const MAX_TABLE_BYTES: usize = 1 << 20;

/// What the rendezvous leaves each rank with.
pub(crate) struct Links {
    /// A connected stream to every other rank, indexed by rank (None at this rank's own index).
    pub mesh: Vec<Option<TcpStream>>,
    /// Rank 0: the rendezvous stream of each other rank. Others: one stream, to rank 0.
    pub control: Vec<(usize, TcpStream)>,
    /// Rank 0's payload, the same on every rank.
    pub payload: Vec<u8>,
}

fn fail(c: &DistConfig, detail: String) -> Error {
    Error::invalid("dist rendezvous", format!("rank {}: {detail}", c.rank))
}

/// Runs the rendezvous for `c` (world size ≥ 2). `payload` is what rank 0 hands to everyone.
pub(crate) fn connect_all(c: &DistConfig, payload: &[u8]) -> Result<Links> {
    let deadline = Instant::now() + c.timeout;
    let data = TcpListener::bind(("0.0.0.0", 0)).map_err(|e| fail(c, format!("cannot open a listening port: {e}")))?;
    let data_port = data.local_addr().map_err(|e| fail(c, e.to_string()))?.port();
    let (table, control, payload) =
        if c.rank == 0 { serve(c, data_port, payload, deadline)? } else { join(c, data_port, deadline)? };
    let mesh = build_mesh(c, &table, &data, deadline)?;
    Ok(Links { mesh, control, payload })
}

/// Rank 0: accepts every other rank, then sends each the address table and the payload.
#[allow(clippy::type_complexity)]
fn serve(
    c: &DistConfig,
    data_port: u16,
    payload: &[u8],
    deadline: Instant,
) -> Result<(Vec<(String, u16)>, Vec<(usize, TcpStream)>, Vec<u8>)> {
    let listener = TcpListener::bind(("0.0.0.0", c.master_port))
        .map_err(|e| fail(c, format!("cannot listen on port {} for the rendezvous: {e}", c.master_port)))?;
    let mut table: Vec<Option<(String, u16)>> = vec![None; c.world_size];
    table[0] = Some((String::new(), data_port));
    let mut control: Vec<(usize, TcpStream)> = Vec::new();
    while control.len() + 1 < c.world_size {
        let Some(mut s) = accept_until(&listener, deadline).map_err(|e| fail(c, e.to_string()))? else {
            let missing: Vec<usize> = (1..c.world_size).filter(|r| table[*r].is_none()).collect();
            return Err(fail(
                c,
                format!(
                    "timed out after {:.0} s waiting on port {} for ranks {missing:?} to join",
                    c.timeout.as_secs_f64(),
                    c.master_port
                ),
            ));
        };
        let ip = s.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let hello = (|| -> std::io::Result<(u64, u64, u64, u64)> {
            tune(&s, c.timeout)?;
            Ok((read_u64(&mut s)?, read_u64(&mut s)?, read_u64(&mut s)?, read_u64(&mut s)?))
        })();
        let Ok((magic, rank, world, port)) = hello else { continue }; // a stray connection: ignore it
        if magic != MAGIC {
            continue;
        }
        let rank = rank as usize;
        if world as usize != c.world_size {
            return Err(fail(c, format!("rank {rank} at {ip} says the world size is {world}, not {}", c.world_size)));
        }
        if rank == 0 || rank >= c.world_size || table[rank].is_some() {
            return Err(fail(c, format!("a second process at {ip} claims rank {rank}")));
        }
        table[rank] = Some((ip, port as u16));
        control.push((rank, s));
    }
    let table: Vec<(String, u16)> = table.into_iter().map(|t| t.expect("every rank joined")).collect();
    let text: String = table.iter().map(|(h, p)| format!("{h} {p}\n")).collect();
    for (rank, s) in control.iter_mut() {
        (|| -> std::io::Result<()> {
            write_blob(s, text.as_bytes())?;
            write_blob(s, payload)
        })()
        .map_err(|e| fail(c, format!("sending the address table to rank {rank}: {e}")))?;
    }
    control.sort_by_key(|(r, _)| *r);
    Ok((table, control, payload.to_vec()))
}

/// Every other rank: reaches rank 0, says who it is, receives the table and the payload.
#[allow(clippy::type_complexity)]
fn join(
    c: &DistConfig,
    data_port: u16,
    deadline: Instant,
) -> Result<(Vec<(String, u16)>, Vec<(usize, TcpStream)>, Vec<u8>)> {
    let master = c.master();
    let mut s = connect_until(&master, deadline).map_err(|e| {
        fail(
            c,
            format!(
                "could not reach rank 0's rendezvous at {master} within {:.0} s ({e}); is rank 0 running, and are \
                 MASTER_ADDR/MASTER_PORT right?",
                c.timeout.as_secs_f64()
            ),
        )
    })?;
    let reply = (|| -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        tune(&s, c.timeout)?;
        for v in [MAGIC, c.rank as u64, c.world_size as u64, data_port as u64] {
            write_u64(&mut s, v)?;
        }
        Ok((read_blob(&mut s, MAX_TABLE_BYTES)?, read_blob(&mut s, MAX_TABLE_BYTES)?))
    })();
    let (text, payload) = reply.map_err(|e| fail(c, format!("rendezvous with rank 0 at {master} failed: {e}")))?;
    let mut table = Vec::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let (host, port) = line.rsplit_once(' ').unwrap_or(("", ""));
        let port = port.parse::<u16>().map_err(|_| fail(c, format!("rank 0 sent a bad address line {line:?}")))?;
        // Rank 0's own entry is empty: reach it where the rendezvous reached it.
        let host = if host.is_empty() { c.master_addr.clone() } else { host.to_string() };
        table.push((host, port));
    }
    if table.len() != c.world_size {
        return Err(fail(c, format!("rank 0 sent {} addresses for a world of {}", table.len(), c.world_size)));
    }
    Ok((table, vec![(0, s)], payload))
}

/// Connects to every lower rank and accepts every higher one, each link opened by a hello naming the rank.
fn build_mesh(
    c: &DistConfig,
    table: &[(String, u16)],
    data: &TcpListener,
    deadline: Instant,
) -> Result<Vec<Option<TcpStream>>> {
    let mut mesh: Vec<Option<TcpStream>> = (0..c.world_size).map(|_| None).collect();
    for (peer, (host, port)) in table.iter().enumerate().take(c.rank) {
        let addr = format!("{host}:{port}");
        let mut s = connect_until(&addr, deadline)
            .map_err(|e| fail(c, format!("could not connect to rank {peer} at {addr}: {e}")))?;
        (|| -> std::io::Result<()> {
            tune(&s, c.timeout)?;
            write_u64(&mut s, MAGIC)?;
            write_u64(&mut s, c.rank as u64)
        })()
        .map_err(|e| fail(c, format!("greeting rank {peer} at {addr}: {e}")))?;
        mesh[peer] = Some(s);
    }
    let mut waiting = c.world_size - 1 - c.rank;
    while waiting > 0 {
        let Some(mut s) = accept_until(data, deadline).map_err(|e| fail(c, e.to_string()))? else {
            let missing: Vec<usize> = (c.rank + 1..c.world_size).filter(|r| mesh[*r].is_none()).collect();
            return Err(fail(c, format!("timed out waiting for ranks {missing:?} to connect")));
        };
        let hello = (|| -> std::io::Result<(u64, u64)> {
            tune(&s, c.timeout)?;
            Ok((read_u64(&mut s)?, read_u64(&mut s)?))
        })();
        let Ok((MAGIC, peer)) = hello else { continue };
        let peer = peer as usize;
        if peer <= c.rank || peer >= c.world_size || mesh[peer].is_some() {
            return Err(fail(c, format!("unexpected connection claiming rank {peer}")));
        }
        mesh[peer] = Some(s);
        waiting -= 1;
    }
    Ok(mesh)
}

/// Accepts one connection, or None once `deadline` passes.
fn accept_until(l: &TcpListener, deadline: Instant) -> std::io::Result<Option<TcpStream>> {
    l.set_nonblocking(true)?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects to `addr` (host:port, names resolved each try), retrying until `deadline`: peers start in
/// any order, so a refused connection usually means "not listening yet".
fn connect_until(addr: &str, deadline: Instant) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(ErrorKind::TimedOut, "timed out");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(last);
        }
        match addr.to_socket_addrs().map(|a| a.collect::<Vec<SocketAddr>>()) {
            Ok(addrs) => {
                for a in addrs {
                    match TcpStream::connect_timeout(&a, remaining.min(Duration::from_secs(5))) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = e,
                    }
                }
            }
            Err(e) => last = e,
        }
        sleep(Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())));
    }
}
