//! `Ddp`: data parallelism around any Module, the way PyTorch's DistributedDataParallel does it. At start
//! rank 0's parameters are broadcast so every replica begins equal. During backward each parameter's hook
//! marks its gradient final; gradients are grouped into buckets (about `bucket_bytes` each) in reverse
//! order of creation, which is roughly the order backward finishes them, and a bucket's all-reduce starts
//! as soon as all of its gradients are final, on the communication thread (CPU) or NCCL's side stream
//! (CUDA), while backward goes on. When backward ends every bucket is awaited and the averaged gradients
//! are written back, so after `loss.backward()` each replica holds the same averaged gradient.
//!
//! Buckets start in index order on every rank (a bucket that completes early waits for the ones before
//! it), because collectives must be issued in the same order everywhere. Parameters that received no
//! gradient in a pass count as zero, so a model with unused branches still synchronises.

use super::group::{ProcessGroup, ReduceOp, Work};
use crate::autograd::{current_backward_pass, queue_backward_callback};
use crate::nn::Module;
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// PyTorch's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// How `Ddp` synchronises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdpConfig {
    /// Gradient bytes per bucket (the last bucket may be smaller, one large tensor larger).
    pub bucket_bytes: usize,
    /// All-reduce gradients during backward. Off for ZeRO-1, whose optimizer reduce-scatters them instead.
    pub sync_gradients: bool,
}

impl Default for DdpConfig {
    fn default() -> Self {
        DdpConfig { bucket_bytes: DEFAULT_BUCKET_BYTES, sync_gradients: true }
    }
}

/// Where the last synchronised backward pass started its buckets' all-reduces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Started by a gradient hook while backward was still running: overlapped with the rest of it.
    pub launched_during_backward: usize,
    /// Started when backward had ended (buckets holding parameters that got no gradient in the pass).
    pub launched_at_end: usize,
}

struct Bucket {
    params: Vec<Tensor>,
    dtype: DType,
    device: Device,
}

/// What one backward pass has done so far.
#[derive(Default)]
struct Pass {
    id: u64,
    ready: Vec<usize>,
    seen: HashSet<usize>,
    launched: usize,
    in_flight: Vec<(usize, Work, Tensor)>,
    finish_queued: bool,
    stats: SyncStats,
}

struct Shared {
    pg: ProcessGroup,
    buckets: Vec<Bucket>,
    /// Tensor id → bucket index.
    bucket_of: HashMap<usize, usize>,
    sync_enabled: AtomicBool,
    config: DdpConfig,
    pass: Mutex<Pass>,
    last_stats: Mutex<SyncStats>,
}

/// A Module replicated over the ranks of a ProcessGroup, with gradients averaged during backward.
pub struct Ddp<M: Module> {
    module: M,
    shared: Arc<Shared>,
}

/// While alive, backward accumulates gradients locally without synchronising (gradient accumulation).
pub struct NoSync<'a> {
    shared: &'a Shared,
    prev: bool,
}

impl Drop for NoSync<'_> {
    fn drop(&mut self) {
        self.shared.sync_enabled.store(self.prev, Ordering::SeqCst);
    }
}

impl<M: Module> Ddp<M> {
    /// Wraps `module` with the default configuration (25 MiB buckets).
    pub fn new(module: M, pg: &ProcessGroup) -> Result<Ddp<M>> {
        Ddp::with_config(module, pg, DdpConfig::default())
    }

    pub fn with_config(module: M, pg: &ProcessGroup, config: DdpConfig) -> Result<Ddp<M>> {
        if config.bucket_bytes == 0 {
            return Err(Error::invalid("Ddp", "bucket_bytes must be positive"));
        }
        // Each tensor once (tied weights appear under two names), in reverse order of creation.
        let mut seen = HashSet::new();
        let params: Vec<Tensor> =
            module.parameters().into_iter().filter(|p| p.requires_grad() && seen.insert(p.id())).collect();
        for p in &params {
            pg.broadcast(p, 0)?;
        }
        let buckets = make_buckets(params.iter().rev(), config.bucket_bytes);
        let bucket_of =
            buckets.iter().enumerate().flat_map(|(b, k)| k.params.iter().map(move |p| (p.id(), b))).collect();
        let shared = Arc::new(Shared {
            pg: pg.clone(),
            buckets,
            bucket_of,
            sync_enabled: AtomicBool::new(config.sync_gradients),
            config,
            pass: Mutex::new(Pass::default()),
            last_stats: Mutex::new(SyncStats::default()),
        });
        if config.sync_gradients {
            for p in &params {
                let weak = Arc::downgrade(&shared);
                p.register_post_accumulate_grad_hook(Arc::new(move |t: &Tensor| match weak.upgrade() {
                    Some(s) => on_gradient_ready(&s, t),
                    None => Ok(()), // the Ddp was dropped; the parameter lives on without it
                }))?;
            }
        }
        Ok(Ddp { module, shared })
    }

    /// The wrapped module.
    pub fn module(&self) -> &M {
        &self.module
    }
    pub fn into_inner(self) -> M {
        self.module
    }
    pub fn process_group(&self) -> &ProcessGroup {
        &self.shared.pg
    }
    pub fn config(&self) -> DdpConfig {
        self.shared.config
    }
    /// The number of buckets and their sizes in bytes, in the order they are reduced.
    pub fn bucket_bytes(&self) -> Vec<usize> {
        self.shared
            .buckets
            .iter()
            .map(|b| b.params.iter().map(|p| p.numel()).sum::<usize>() * b.dtype.size_in_bytes())
            .collect()
    }

    /// How the last synchronised backward pass overlapped its all-reduces with backward.
    pub fn last_sync_stats(&self) -> SyncStats {
        *self.shared.last_stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Skips gradient synchronisation while the guard lives: backward passes accumulate local gradients,
    /// and the first backward after it averages the accumulated sum (PyTorch's `no_sync`).
    pub fn no_sync(&self) -> NoSync<'_> {
        let prev = self.shared.sync_enabled.swap(false, Ordering::SeqCst);
        NoSync { shared: &self.shared, prev }
    }
}

impl<M: Module> Module for Ddp<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.module.forward(x)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.module.visit_parameters(prefix, f)
    }
    fn set_training(&self, training: bool) {
        self.module.set_training(training)
    }
}

/// Groups parameters of one dtype and device into buckets of about `cap` bytes, in the given order.
fn make_buckets<'a>(params: impl Iterator<Item = &'a Tensor>, cap: usize) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    let mut bytes = 0usize;
    for p in params {
        let fits = out.last().is_some_and(|b| b.dtype == p.dtype() && b.device == p.device() && bytes < cap);
        if !fits {
            out.push(Bucket { params: Vec::new(), dtype: p.dtype(), device: p.device() });
            bytes = 0;
        }
        bytes += p.numel() * p.dtype().size_in_bytes();
        out.last_mut().expect("a bucket").params.push(p.clone());
    }
    out
}

fn lock(m: &Mutex<Pass>) -> std::sync::MutexGuard<'_, Pass> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hook: one parameter's gradient is final for this backward pass.
fn on_gradient_ready(s: &Arc<Shared>, t: &Tensor) -> Result<()> {
    if !s.sync_enabled.load(Ordering::SeqCst) {
        return Ok(());
    }
    let Some(&b) = s.bucket_of.get(&t.id()) else { return Ok(()) };
    let mut pass = lock(&s.pass);
    let id = current_backward_pass();
    if pass.id != id {
        // A new pass: forget whatever a failed earlier one left behind.
        *pass = Pass { id, ready: vec![0; s.buckets.len()], ..Pass::default() };
    }
    if !pass.finish_queued {
        pass.finish_queued = true;
        let weak: Weak<Shared> = Arc::downgrade(s);
        queue_backward_callback(Box::new(move || match weak.upgrade() {
            Some(s) => finish_pass(&s, id),
            None => Ok(()),
        }));
    }
    if pass.seen.insert(t.id()) {
        pass.ready[b] += 1;
    }
    while pass.launched < s.buckets.len() && pass.ready[pass.launched] == s.buckets[pass.launched].params.len() {
        let next = pass.launched;
        launch(s, &mut pass, next)?;
        pass.stats.launched_during_backward += 1;
    }
    Ok(())
}

/// Flattens bucket `b`'s gradients (zeros for any without one) and starts averaging them.
fn launch(s: &Shared, pass: &mut Pass, b: usize) -> Result<()> {
    let bucket = &s.buckets[b];
    let mut flat_parts = Vec::with_capacity(bucket.params.len());
    for p in &bucket.params {
        let g = match p.grad() {
            Some(g) => g,
            None => p.detach().zeros_like()?,
        };
        flat_parts.push(g.reshape(&[p.numel()][..])?);
    }
    let refs: Vec<&Tensor> = flat_parts.iter().collect();
    let flat = Tensor::cat(&refs, 0)?.detach();
    let work = s.pg.all_reduce_async(&flat, ReduceOp::Avg)?;
    pass.in_flight.push((b, work, flat));
    pass.launched = b + 1;
    Ok(())
}

/// End of backward: start any bucket still waiting (unused parameters), wait for all of them, and write
/// the averaged gradients back.
fn finish_pass(s: &Shared, id: u64) -> Result<()> {
    let mut pass = lock(&s.pass);
    if pass.id != id {
        return Ok(());
    }
    while pass.launched < s.buckets.len() {
        let next = pass.launched;
        launch(s, &mut pass, next)?;
        pass.stats.launched_at_end += 1;
    }
    *s.last_stats.lock().unwrap_or_else(|e| e.into_inner()) = pass.stats;
    let in_flight = std::mem::take(&mut pass.in_flight);
    *pass = Pass::default();
    drop(pass);
    for (b, work, flat) in in_flight {
        work.wait()?;
        let mut offset = 0;
        for p in &s.buckets[b].params {
            let n = p.numel();
            let g = flat.narrow(0, offset, n)?.reshape(p.dims())?;
            p.set_grad(Some(g.detach()))?;
            offset += n;
        }
    }
    Ok(())
}
