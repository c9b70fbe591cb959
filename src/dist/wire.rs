//! Byte-level plumbing for the TCP connections between ranks: sending and receiving framed messages with
//! deadlines, and errors that name the peer, so a failure in a 64-process job says which process failed.

use crate::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What went wrong talking to one peer.
pub(crate) fn peer_error(me: usize, peer: usize, what: &str, e: &std::io::Error, timeout: Duration) -> Error {
    let detail = match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("rank {me}: timed out after {:.0} s waiting for rank {peer} in {what}", timeout.as_secs_f64())
        }
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::BrokenPipe
        | ErrorKind::ConnectionAborted => {
            format!("rank {me}: rank {peer} closed its connection during {what} (it exited, crashed or was killed)")
        }
        _ => format!("rank {me}: talking to rank {peer} during {what} failed: {e}"),
    };
    Error::invalid("dist", detail)
}

pub(crate) fn write_u64(w: &mut impl Write, v: u64) -> std::io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

pub(crate) fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A length-prefixed byte string.
pub(crate) fn write_blob(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    write_u64(w, b.len() as u64)?;
    w.write_all(b)
}

/// A length-prefixed byte string of at most `max` bytes (a guard against reading garbage as a length).
pub(crate) fn read_blob(r: &mut impl Read, max: usize) -> std::io::Result<Vec<u8>> {
    let n = read_u64(r)? as usize;
    if n > max {
        return Err(std::io::Error::new(ErrorKind::InvalidData, format!("message of {n} bytes, expected ≤ {max}")));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Sets both directions' timeouts and turns off Nagle's algorithm: collectives send many small headers
/// and wait for replies, where Nagle's delay would cost tens of milliseconds per step.
pub(crate) fn tune(s: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))
}

/// Elements that the TCP backend sends as raw little-endian bytes and can add.
pub(crate) trait WireElem: Copy + Send + Sync + 'static {
    fn add(a: Self, b: Self) -> Self;
    fn scale(a: Self, by: f64) -> Self;
}

impl WireElem for f32 {
    fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    fn scale(a: f32, by: f64) -> f32 {
        a * by as f32
    }
}

impl WireElem for f64 {
    fn add(a: f64, b: f64) -> f64 {
        a + b
    }
    fn scale(a: f64, by: f64) -> f64 {
        a * by
    }
}

impl WireElem for i64 {
    fn add(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    /// Integer averages round towards zero, as `torch.distributed` does for integer tensors.
    fn scale(a: i64, by: f64) -> i64 {
        (a as f64 * by) as i64
    }
}

/// The bytes of a slice of plain numbers.
pub(crate) fn as_bytes<T: WireElem>(v: &[T]) -> &[u8] {
    // SAFETY: f32/f64/i64 have no padding and any byte is a valid u8; the length is exact.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// The bytes of a mutable slice of plain numbers, to receive into.
pub(crate) fn as_bytes_mut<T: WireElem>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above; every bit pattern is a valid f32/f64/i64, so any received bytes are valid values.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}
