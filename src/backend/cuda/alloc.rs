//! A caching device allocator: size-bucketed free lists per device. Freed buffers go back to their
//! bucket and are reused by later allocations of the same bucket; since every op runs on the device's one
//! stream, reuse is ordered after the previous user's kernels without any synchronisation. A training loop
//! that allocates the same shapes every step therefore stops calling the driver after its first step
//! (`driver_allocations` counts driver calls so tests can assert it). When the driver is out of memory,
//! the cache is released and the allocation retried once; a second failure is `Error::OutOfMemory`.

use crate::{Device, Error, Result};
use cudarc::driver::result;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

static DRIVER_ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// How many times munja has asked the CUDA driver for memory, over all devices, since the process began.
pub fn driver_allocations() -> usize {
    DRIVER_ALLOCS.load(Ordering::Relaxed)
}

/// Rounds a request up to its bucket: 512 B minimum, then four buckets per power of two (≤ 25% waste).
pub(crate) fn bucket(bytes: usize) -> usize {
    let b = bytes.max(512);
    let p = b.next_power_of_two();
    if p == b {
        return b;
    }
    let step = p / 8; // quarters of the lower power of two
    b.div_ceil(step) * step
}

#[derive(Default)]
pub(crate) struct Allocator {
    free: Mutex<HashMap<usize, Vec<u64>>>,
}

impl Allocator {
    /// A device pointer to at least `bytes` bytes, and its bucket size. The caller has bound the context.
    pub(crate) fn alloc(&self, device: Device, bytes: usize, sync: impl Fn()) -> Result<(u64, usize)> {
        let size = bucket(bytes);
        if let Some(p) = self.free.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&size).and_then(|v| v.pop()) {
            return Ok((p, size));
        }
        // SAFETY: plain device allocation in the bound context.
        match unsafe { result::malloc_sync(size) } {
            Ok(p) => {
                DRIVER_ALLOCS.fetch_add(1, Ordering::Relaxed);
                Ok((p, size))
            }
            Err(_) => {
                // Out of memory (or fragmented): return every cached block to the driver and retry once.
                sync();
                self.release_all();
                // SAFETY: as above.
                match unsafe { result::malloc_sync(size) } {
                    Ok(p) => {
                        DRIVER_ALLOCS.fetch_add(1, Ordering::Relaxed);
                        Ok((p, size))
                    }
                    Err(_) => {
                        let free = result::mem_get_info().map(|(f, _)| f).unwrap_or(0);
                        Err(Error::OutOfMemory { op: "cuda alloc", device, requested: bytes, free })
                    }
                }
            }
        }
    }

    pub(crate) fn release(&self, ptr: u64, size: usize) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).entry(size).or_default().push(ptr);
    }

    /// Frees every cached block (the stream must be idle: the caller synchronises first).
    pub(crate) fn release_all(&self) {
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        for (_, v) in f.drain() {
            for p in v {
                // SAFETY: p came from malloc_sync and is not in use (it is in the free list).
                unsafe {
                    let _ = result::free_sync(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_round_up_with_bounded_waste() {
        assert_eq!(super::bucket(1), 512);
        assert_eq!(super::bucket(1024), 1024);
        assert_eq!(super::bucket(1025), 1280);
        assert_eq!(super::bucket(3000), 3072);
        for n in [513usize, 4097, 100_000, 12_345_678] {
            let b = super::bucket(n);
            assert!(b >= n && (b as f64) <= n as f64 * 1.25 + 1.0, "{n} -> {b}");
        }
    }
}
