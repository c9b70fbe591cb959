//! Collectives over direct TCP links between CPU processes. All-reduce is the bandwidth-optimal ring
//! (reduce-scatter then all-gather: each rank sends 2(p−1)/p of the buffer); every chunk is summed in
//! one fixed order and then copied, so all ranks end with bit-identical results, which keeps replicated
//! parameters identical. Every message carries a sequence number and length, so ranks that disagree on
//! which collective they are in fail with a clear error instead of mixing data.

use super::wire::{as_bytes, as_bytes_mut, peer_error, read_u64, WireElem};
use crate::{Error, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Peer {
    reader: TcpStream,
    writer: TcpStream,
}

pub(crate) struct TcpMesh {
    rank: usize,
    world: usize,
    peers: Vec<Option<Peer>>,
    timeout: Duration,
    seq: u64,
    /// How many collectives this rank has started, shared with the monitor for stall reports.
    progress: Arc<AtomicU64>,
}

/// The range of chunk `i` when `n` elements are cut into `parts` nearly equal chunks.
pub(crate) fn chunk(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    (i * n / parts)..((i + 1) * n / parts)
}

impl TcpMesh {
    pub(crate) fn new(
        rank: usize,
        streams: Vec<Option<TcpStream>>,
        timeout: Duration,
        progress: Arc<AtomicU64>,
    ) -> Result<TcpMesh> {
        let world = streams.len();
        let mut peers = Vec::with_capacity(world);
        for (p, s) in streams.into_iter().enumerate() {
            peers.push(match s {
                Some(s) => {
                    let writer =
                        s.try_clone().map_err(|e| Error::invalid("dist", format!("rank {rank}: link to {p}: {e}")))?;
                    Some(Peer { reader: s, writer })
                }
                None => None,
            });
        }
        Ok(TcpMesh { rank, world, peers, timeout, seq: 0, progress })
    }

    /// Handles that can shut every link down from another thread (to unblock a stuck collective).
    pub(crate) fn shutdown_handles(&self) -> Vec<TcpStream> {
        self.peers.iter().flatten().filter_map(|p| p.reader.try_clone().ok()).collect()
    }

    pub(crate) fn close(&self) {
        for p in self.peers.iter().flatten() {
            let _ = p.reader.shutdown(Shutdown::Both);
        }
    }

    fn begin(&mut self) {
        self.seq += 1;
        self.progress.store(self.seq, Ordering::Relaxed);
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }
    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn send(&mut self, to: usize, bytes: &[u8], what: &str) -> Result<()> {
        let (me, seq, timeout) = (self.rank, self.seq, self.timeout);
        let w = &mut self.peers[to].as_mut().expect("a link to every peer").writer;
        send_on(w, seq, bytes).map_err(|e| peer_error(me, to, what, &e, timeout))
    }

    fn recv(&mut self, from: usize, out: &mut [u8], what: &str) -> Result<()> {
        let (me, seq, timeout) = (self.rank, self.seq, self.timeout);
        let r = &mut self.peers[from].as_mut().expect("a link to every peer").reader;
        recv_on(r, seq, out).map_err(|e| e.into_error(me, from, what, timeout))
    }

    /// Sends `out` to `to` while receiving `into` from `from`, concurrently: in a ring every rank sends
    /// before it receives, which would deadlock once messages outgrow the socket buffers.
    fn exchange(&mut self, to: usize, out: &[u8], from: usize, into: &mut [u8], what: &str) -> Result<()> {
        let (me, seq, timeout) = (self.rank, self.seq, self.timeout);
        let (w, r) = if to == from {
            let p = self.peers[to].as_mut().expect("a link to every peer");
            (&mut p.writer, &mut p.reader)
        } else {
            let (lo, hi) = self.peers.split_at_mut(to.max(from));
            let (a, b) = (lo[to.min(from)].as_mut().expect("link"), hi[0].as_mut().expect("link"));
            if to < from {
                (&mut a.writer, &mut b.reader)
            } else {
                (&mut b.writer, &mut a.reader)
            }
        };
        std::thread::scope(|s| {
            let sender = s.spawn(move || send_on(w, seq, out));
            let received = recv_on(r, seq, into);
            let sent = sender.join().unwrap_or_else(|_| Err(std::io::Error::other("sender thread panicked")));
            received.map_err(|e| e.into_error(me, from, what, timeout))?;
            sent.map_err(|e| peer_error(me, to, what, &e, timeout))
        })
    }

    /// Sums (then scales by `scale`, e.g. 1/p for an average) `buf` over all ranks, in place.
    pub(crate) fn all_reduce<T: WireElem>(&mut self, buf: &mut [T], scale: Option<f64>) -> Result<()> {
        self.begin();
        if self.world == 1 {
            apply_scale(buf, scale);
            return Ok(());
        }
        let n = buf.len();
        self.ring_reduce_scatter(buf, "all_reduce")?;
        let mine = chunk(n, self.world, self.rank);
        apply_scale(&mut buf[mine], scale);
        let total = std::mem::size_of_val(buf);
        self.ring_all_gather(as_bytes_mut(buf), total, std::mem::size_of::<T>(), "all_reduce")
    }

    /// Sums `buf` over all ranks and returns this rank's chunk (`chunk(len, world, rank)`), scaled.
    pub(crate) fn reduce_scatter<T: WireElem>(&mut self, mut buf: Vec<T>, scale: Option<f64>) -> Result<Vec<T>> {
        self.begin();
        if self.world > 1 {
            self.ring_reduce_scatter(&mut buf, "reduce_scatter")?;
        }
        let mut mine = buf[chunk(buf.len(), self.world, self.rank)].to_vec();
        apply_scale(&mut mine, scale);
        Ok(mine)
    }

    /// Every rank's `mine` (all the same length), concatenated in rank order.
    pub(crate) fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<u8>> {
        self.begin();
        let n = mine.len();
        let mut all = vec![0u8; n * self.world];
        all[self.rank * n..(self.rank + 1) * n].copy_from_slice(mine);
        if self.world > 1 {
            self.ring_all_gather(&mut all, n * self.world, n.max(1), "all_gather")?;
        }
        Ok(all)
    }

    /// Rank `root`'s `buf` into everyone's `buf`.
    pub(crate) fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<()> {
        self.begin();
        if self.rank == root {
            for p in 0..self.world {
                if p != root {
                    self.send(p, buf, "broadcast")?;
                }
            }
            Ok(())
        } else {
            self.recv(root, buf, "broadcast")
        }
    }

    /// Step s: send chunk (r−s−1) to the next rank, receive chunk (r−s−2) from the previous and add it
    /// in; after p−1 steps rank r holds the full sum of chunk r.
    fn ring_reduce_scatter<T: WireElem>(&mut self, buf: &mut [T], what: &str) -> Result<()> {
        let (p, r, n) = (self.world, self.rank, buf.len());
        let (next, prev) = (self.next(), self.prev());
        let mut incoming: Vec<T> = Vec::with_capacity(n / p + 1);
        for s in 0..p - 1 {
            let send_c = chunk(n, p, (r + 2 * p - s - 1) % p);
            let recv_c = chunk(n, p, (r + 2 * p - s - 2) % p);
            incoming.clear();
            incoming.extend_from_slice(&buf[recv_c.clone()]); // sized; overwritten by the receive
            let out = as_bytes(&buf[send_c]).to_vec();
            self.exchange(next, &out, prev, as_bytes_mut(&mut incoming), what)?;
            for (d, x) in buf[recv_c].iter_mut().zip(&incoming) {
                *d = T::add(*x, *d);
            }
        }
        Ok(())
    }

    /// With chunk r final on rank r, step s sends chunk (r−s) on and receives chunk (r−s−1).
    /// `total` bytes cut at multiples of `elem` bytes, so chunks match the element chunks.
    fn ring_all_gather(&mut self, buf: &mut [u8], total: usize, elem: usize, what: &str) -> Result<()> {
        let (p, r) = (self.world, self.rank);
        let (next, prev) = (self.next(), self.prev());
        let n = total / elem;
        let bytes = |c: std::ops::Range<usize>| c.start * elem..c.end * elem;
        for s in 0..p - 1 {
            let send_c = bytes(chunk(n, p, (r + p - s) % p));
            let recv_c = bytes(chunk(n, p, (r + 2 * p - s - 1) % p));
            let out = buf[send_c].to_vec();
            self.exchange(next, &out, prev, &mut buf[recv_c], what)?;
        }
        Ok(())
    }
}

fn apply_scale<T: WireElem>(buf: &mut [T], scale: Option<f64>) {
    if let Some(f) = scale {
        buf.iter_mut().for_each(|x| *x = T::scale(*x, f));
    }
}

enum Mismatch {
    Io(std::io::Error),
    Header(String),
}

impl Mismatch {
    /// The error rank `me` reports for a failed receive from rank `from` during `what`.
    fn into_error(self, me: usize, from: usize, what: &str, timeout: Duration) -> Error {
        match self {
            Mismatch::Io(e) => peer_error(me, from, what, &e, timeout),
            Mismatch::Header(detail) => Error::invalid(
                "dist",
                format!("rank {me}: rank {from} is in a different collective than {what}: {detail}"),
            ),
        }
    }
}

fn send_on(w: &mut TcpStream, seq: u64, bytes: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&seq.to_le_bytes());
    head[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(bytes)
}

fn recv_on(r: &mut TcpStream, seq: u64, into: &mut [u8]) -> std::result::Result<(), Mismatch> {
    let got_seq = read_u64(r).map_err(Mismatch::Io)?;
    let got_len = read_u64(r).map_err(Mismatch::Io)?;
    if got_seq != seq || got_len as usize != into.len() {
        return Err(Mismatch::Header(format!(
            "it sent message {got_seq} of {got_len} bytes, this rank expected message {seq} of {} bytes",
            into.len()
        )));
    }
    r.read_exact(into).map_err(Mismatch::Io)
}
