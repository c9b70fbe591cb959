//! Fail-fast for the whole job. The rendezvous links to rank 0 stay open as a control channel: a rank
//! that shuts down cleanly says goodbye on it; a rank that fails says why; every rank reports twice a
//! second how many collectives it has started. Rank 0 watches every link and relays the first failure
//! to everyone, naming the ranks that are behind when the failure is a timeout (the stalled one), and a
//! link that closes without a goodbye means its process died. A rank that learns of a failure shuts its
//! data links down (so a collective blocked on a live peer returns an error at once), records the
//! message (later collectives return it), and, as a last resort for a process stuck in computation or a
//! GPU collective, exits with status 1 after a grace period.

use super::wire::{read_blob, read_u64, write_blob, write_u64};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BYE: u8 = b'B';
const FAILED: u8 = b'F';
const PROGRESS: u8 = b'P';
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The grace before a rank that learned of a failure exits on its own (MUNJA_DIST_EXIT_GRACE seconds).
fn exit_grace() -> Duration {
    let s = std::env::var("MUNJA_DIST_EXIT_GRACE").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(20.0);
    Duration::from_secs_f64(s.max(0.0))
}

pub(crate) struct Monitor {
    rank: usize,
    /// Control links: rank 0 holds one per other rank, the others one to rank 0.
    links: Vec<(usize, Mutex<TcpStream>)>,
    /// The first failure this rank heard of.
    failure: Mutex<Option<String>>,
    closing: AtomicBool,
    /// Data links to shut down when the job fails.
    data_links: Mutex<Vec<TcpStream>>,
    /// Collectives started here.
    progress: Arc<AtomicU64>,
    /// Rank 0: the last count each rank reported.
    peer_progress: Mutex<Vec<u64>>,
}

impl Monitor {
    /// Starts watching `control` (the rendezvous links) in background threads.
    pub(crate) fn start(
        rank: usize,
        world: usize,
        control: Vec<(usize, TcpStream)>,
        progress: Arc<AtomicU64>,
    ) -> Arc<Monitor> {
        let mut readers = Vec::new();
        let mut links = Vec::new();
        for (peer, s) in control {
            // Control links block on reads for the whole job: no timeout.
            let _ = s.set_read_timeout(None);
            if let Ok(r) = s.try_clone() {
                readers.push((peer, r));
            }
            links.push((peer, Mutex::new(s)));
        }
        let m = Arc::new(Monitor {
            rank,
            links,
            failure: Mutex::new(None),
            closing: AtomicBool::new(false),
            data_links: Mutex::new(Vec::new()),
            progress,
            peer_progress: Mutex::new(vec![0; world]),
        });
        for (peer, r) in readers {
            let m2 = m.clone();
            std::thread::Builder::new()
                .name(format!("munja-dist-watch-{peer}"))
                .spawn(move || m2.watch(peer, r))
                .expect("spawning a monitor thread");
        }
        if rank != 0 {
            let weak = Arc::downgrade(&m);
            std::thread::Builder::new()
                .name("munja-dist-progress".into())
                .spawn(move || report_progress(weak))
                .expect("spawning a monitor thread");
        }
        m
    }

    pub(crate) fn set_data_links(&self, links: Vec<TcpStream>) {
        *self.data_links.lock().unwrap_or_else(|e| e.into_inner()) = links;
    }

    /// The failure this rank heard of, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reports a failure seen on this rank to the job (rank 0 relays it) and acts on it here.
    pub(crate) fn fail(&self, message: &str) {
        let message = self.explain(message);
        if !self.record(&message) {
            return;
        }
        self.send_all(FAILED, message.as_bytes(), None);
    }

    /// Says goodbye on every control link: this rank is done and its links closing is not a failure.
    pub(crate) fn goodbye(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if self.failure().is_some() {
            return;
        }
        self.send_all(BYE, b"", None);
    }

    fn send_all(&self, kind: u8, body: &[u8], except: Option<usize>) {
        for (peer, link) in &self.links {
            if Some(*peer) == except {
                continue;
            }
            let mut s = link.lock().unwrap_or_else(|e| e.into_inner());
            let _ = s.write_all(&[kind]).and_then(|_| write_blob(&mut *s, body));
        }
    }

    /// On rank 0, a timeout message gains the ranks that have started fewer collectives than the rest:
    /// the one that stalled, whichever rank happened to time out first.
    fn explain(&self, message: &str) -> String {
        if self.rank != 0 || !message.contains("timed out") {
            return message.to_string();
        }
        let mut counts = self.peer_progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
        counts[0] = self.progress.load(Ordering::Relaxed);
        let (lo, hi) = (*counts.iter().min().unwrap_or(&0), *counts.iter().max().unwrap_or(&0));
        if lo == hi {
            return message.to_string();
        }
        let behind: Vec<String> =
            counts.iter().enumerate().filter(|(_, c)| **c == lo).map(|(r, _)| format!("rank {r}")).collect();
        format!("{message}; {} stalled: started {lo} collectives while others started up to {hi}", behind.join(", "))
    }

    /// Stores the first failure and takes the job down locally. False if one was already recorded.
    fn record(&self, message: &str) -> bool {
        {
            let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if f.is_some() {
                return false;
            }
            *f = Some(message.to_string());
        }
        for s in self.data_links.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if !self.closing.load(Ordering::SeqCst) {
            let grace = exit_grace();
            eprintln!(
                "munja dist: rank {}: the job failed: {message}; this rank exits with status 1 in {:.0} s if it has \
                 not stopped by then",
                self.rank,
                grace.as_secs_f64()
            );
            let _ = std::thread::Builder::new().name("munja-dist-exit".into()).spawn(move || {
                std::thread::sleep(grace);
                std::process::exit(1);
            });
        }
        true
    }

    /// Reads one control link until it closes.
    fn watch(&self, peer: usize, mut r: TcpStream) {
        let message = loop {
            let mut kind = [0u8; 1];
            let got = r.read_exact(&mut kind);
            match (got, kind[0]) {
                (Ok(()), PROGRESS) => match read_blob(&mut r, 8) {
                    Ok(b) if b.len() == 8 => {
                        let v = read_u64(&mut b.as_slice()).unwrap_or(0);
                        self.peer_progress.lock().unwrap_or_else(|e| e.into_inner())[peer] = v;
                    }
                    _ => break None,
                },
                (Ok(()), BYE) => break None,
                (Ok(()), FAILED) => {
                    break Some(
                        read_blob(&mut r, 1 << 16)
                            .map(|m| String::from_utf8_lossy(&m).into_owned())
                            .unwrap_or_else(|_| format!("rank {peer} reported a failure and closed its connection")),
                    )
                }
                _ if self.closing.load(Ordering::SeqCst) => break None,
                _ => break Some(format!("rank {peer} exited without shutting down (crashed or killed)")),
            }
        };
        let Some(message) = message else { return };
        let message = self.explain(&message);
        if self.record(&message) && self.rank == 0 {
            // Rank 0 is the hub: tell everyone else what happened.
            self.send_all(FAILED, message.as_bytes(), Some(peer));
        }
    }
}

/// Ranks other than 0 tell rank 0 how many collectives they have started, until the job ends.
fn report_progress(monitor: std::sync::Weak<Monitor>) {
    loop {
        std::thread::sleep(PROGRESS_EVERY);
        let Some(m) = monitor.upgrade() else { return };
        if m.closing.load(Ordering::SeqCst) || m.failure().is_some() {
            return;
        }
        let mut body = Vec::with_capacity(8);
        let _ = write_u64(&mut body, m.progress.load(Ordering::Relaxed));
        m.send_all(PROGRESS, &body, None);
    }
}
