//! An opt-in kernel profiler: GPU time per kernel, from CUDA events recorded around each launch.
//!
//! `profile_start()` turns it on for the calling thread, on every device: each munja kernel and each
//! cuBLASLt matmul that thread enqueues until its `profile_stop()` is bracketed by two events on its
//! stream. Per thread, so that other threads' work (a test harness's, say) never mixes in; a training
//! loop's forward, backward and optimizer all run on its own thread. `profile_stop()` waits for the
//! events and sums the time between each pair by kernel name. Off (the default), a launch pays one
//! thread-local read. On, it also pays two event records, so host-bound loops look slower than they are;
//! the GPU time of each kernel is what the events measure and does not change.
//!
//! Hardware profilers (Nsight Compute) replay each kernel and took ~0.2 s per kernel on the GPU machine,
//! too slow for the ~1000 kernels of one GPT step; events cost microseconds.

use super::device::CudaDevice;
use crate::Result;
use cudarc::driver::{sys::CUevent_flags::CU_EVENT_DEFAULT, CudaEvent};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static RECORDS: RefCell<Vec<(&'static str, CudaEvent, CudaEvent)>> = const { RefCell::new(Vec::new()) };
}

/// GPU time of one kernel name over a profiled stretch.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// The kernel's entry point (`layer_norm`'s are `norm_*`), or `cublasLt matmul <dtype>`.
    pub name: &'static str,
    pub calls: usize,
    /// Sum of the event-measured times of its calls.
    pub total_ms: f64,
}

/// What `profile_stop` measured: kernels by total time, largest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub kernels: Vec<KernelTime>,
}

impl Profile {
    /// GPU time of every profiled kernel together.
    pub fn total_ms(&self) -> f64 {
        self.kernels.iter().map(|k| k.total_ms).sum()
    }

    /// Calls of every profiled kernel together.
    pub fn calls(&self) -> usize {
        self.kernels.iter().map(|k| k.calls).sum()
    }

    /// A text table of the `top` kernels by total time, each divided by `per` (steps, say), with the rest
    /// summed in one line.
    pub fn table(&self, top: usize, per: usize) -> String {
        let per = per.max(1) as f64;
        let total = self.total_ms().max(1e-12);
        let mut out = String::new();
        let _ = writeln!(out, "{:>10} {:>6} {:>8} {:>9}  kernel", "ms", "%", "calls", "us/call");
        for k in self.kernels.iter().take(top) {
            let _ = writeln!(
                out,
                "{:>10.3} {:>6.1} {:>8.1} {:>9.1}  {}",
                k.total_ms / per,
                100.0 * k.total_ms / total,
                k.calls as f64 / per,
                1e3 * k.total_ms / k.calls.max(1) as f64,
                k.name
            );
        }
        let rest: Vec<_> = self.kernels.iter().skip(top).collect();
        if !rest.is_empty() {
            let ms: f64 = rest.iter().map(|k| k.total_ms).sum();
            let calls: usize = rest.iter().map(|k| k.calls).sum();
            let _ = writeln!(
                out,
                "{:>10.3} {:>6.1} {:>8.1} {:>9}  ({} other kernels)",
                ms / per,
                100.0 * ms / total,
                calls as f64 / per,
                "",
                rest.len()
            );
        }
        let _ = write!(
            out,
            "{:>10.3} {:>6.1} {:>8.1} {:>9}  total GPU time",
            total / per,
            100.0,
            self.calls() as f64 / per,
            ""
        );
        out
    }
}

/// Starts profiling this thread's launches (clearing what an earlier unfinished profile recorded).
pub fn profile_start() {
    RECORDS.with(|r| r.borrow_mut().clear());
    ON.with(|on| on.set(true));
}

/// Stops profiling, waits for the profiled work and returns its GPU time per kernel.
pub fn profile_stop() -> Result<Profile> {
    ON.with(|on| on.set(false));
    let records = RECORDS.with(|r| std::mem::take(&mut *r.borrow_mut()));
    let mut by_name: HashMap<&'static str, (usize, f64)> = HashMap::new();
    for (name, start, end) in records {
        end.synchronize().map_err(|e| crate::Error::invalid("profile_stop", format!("{e:?}")))?;
        let ms = super::device::event_elapsed_ms(&start, &end)
            .map_err(|e| crate::Error::invalid("profile_stop", format!("{e:?}")))?;
        let entry = by_name.entry(name).or_default();
        entry.0 += 1;
        entry.1 += ms as f64;
    }
    let mut kernels: Vec<KernelTime> =
        by_name.into_iter().map(|(name, (calls, total_ms))| KernelTime { name, calls, total_ms }).collect();
    kernels.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then(a.name.cmp(b.name)));
    Ok(Profile { kernels })
}

/// Runs `enqueue` (which puts one kernel named `name` on `dev`'s stream), bracketed by events when
/// profiling is on.
pub(crate) fn timed<R>(dev: &CudaDevice, name: &'static str, enqueue: impl FnOnce() -> Result<R>) -> Result<R> {
    if !ON.with(|on| on.get()) {
        return enqueue();
    }
    let flags = Some(CU_EVENT_DEFAULT);
    let start = dev.stream().record_event(flags).map_err(|e| dev.err("profile", e))?;
    let r = enqueue()?;
    let end = dev.stream().record_event(flags).map_err(|e| dev.err("profile", e))?;
    RECORDS.with(|r| r.borrow_mut().push((name, start, end)));
    Ok(r)
}
