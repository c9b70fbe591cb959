//! `ProcessGroup`: this process's place in a data-parallel job and the collectives on tensors. CPU
//! tensors go over the TCP backend (a background thread runs the collectives in the order they were
//! issued, so `*_async` calls overlap the caller's work); CUDA tensors go over NCCL on a side stream.

use super::config::DistConfig;
use super::monitor::Monitor;
use super::nccl::{CudaWork, Nccl};
use super::rendezvous;
use super::tcp::TcpMesh;
use super::wire::WireElem;
use crate::backend::cpu::{narrow_bf16, narrow_f16, widen_bf16, widen_f16, CpuStorage};
use crate::{DType, Device, Error, Result, Tensor};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How a reduction combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size (integer tensors round towards zero).
    Avg,
}

type Job = Box<dyn FnOnce(&mut TcpMesh) + Send>;

struct Inner {
    config: DistConfig,
    device: Device,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    monitor: Option<Arc<Monitor>>,
    nccl: Option<Mutex<Nccl>>,
}

/// A handle on the job's processes; cloning it clones the handle. Dropped last, it says goodbye to the
/// other ranks, so one rank finishing is not mistaken for a crash.
#[derive(Clone)]
pub struct ProcessGroup(Arc<Inner>);

/// A collective in flight; `wait` returns once its result is in place (for CUDA tensors: once the compute
/// stream is ordered after it, without blocking the host).
#[must_use = "a collective's result is only in place after wait()"]
pub struct Work(WorkKind);

enum WorkKind {
    Cpu(Receiver<Result<()>>),
    Cuda(CudaWork),
}

impl Work {
    pub fn wait(self) -> Result<()> {
        match self.0 {
            WorkKind::Cpu(rx) => rx.recv().unwrap_or_else(|_| {
                Err(Error::invalid("dist", "the communication thread stopped (the process group was shut down)"))
            }),
            WorkKind::Cuda(w) => w.wait(),
        }
    }
}

impl ProcessGroup {
    /// Joins the job described by `config`. `device` is where this rank computes: `Device::Cuda(_)` also
    /// sets up NCCL for CUDA tensors. World size 1 needs no network and no NCCL.
    pub fn init(config: &DistConfig, device: Device) -> Result<ProcessGroup> {
        // NCCL for CUDA groups; at world size 1 too when the library is there, so a one-GPU machine runs
        // the same collectives (and a one-GPU bench measures them) that a node of eight does.
        let use_nccl = matches!(device, Device::Cuda(_)) && (config.world_size > 1 || super::nccl::available());
        let progress = Arc::new(AtomicU64::new(0));
        let (mesh, monitor, payload) = if config.world_size == 1 {
            let id = if use_nccl { super::nccl::unique_id()? } else { Vec::new() };
            (TcpMesh::new(0, vec![None], config.timeout, progress)?, None, id)
        } else {
            let id = if use_nccl && config.rank == 0 { super::nccl::unique_id()? } else { Vec::new() };
            let links = rendezvous::connect_all(config, &id)?;
            let mesh = TcpMesh::new(config.rank, links.mesh, config.timeout, progress.clone())?;
            let monitor = Monitor::start(config.rank, config.world_size, links.control, progress);
            monitor.set_data_links(mesh.shutdown_handles());
            (mesh, Some(monitor), links.payload)
        };
        let nccl = match device {
            Device::Cuda(i) if use_nccl => Some(Mutex::new(Nccl::new(
                i,
                config.rank,
                config.world_size,
                &payload,
                config.timeout,
                monitor.clone(),
            )?)),
            _ => None,
        };
        let (tx, rx) = channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("munja-dist-comm".into())
            .spawn(move || {
                let mut mesh = mesh;
                while let Ok(job) = rx.recv() {
                    job(&mut mesh);
                }
                mesh.close();
            })
            .map_err(|e| Error::invalid("dist", format!("cannot start the communication thread: {e}")))?;
        Ok(ProcessGroup(Arc::new(Inner {
            config: config.clone(),
            device,
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            monitor,
            nccl,
        })))
    }

    /// Joins the job the environment describes (`DistConfig::from_env`), or a one-process group when
    /// the process was not started by a launcher.
    pub fn from_env(device: Device) -> Result<ProcessGroup> {
        let config = DistConfig::from_env()?.unwrap_or_else(DistConfig::single);
        ProcessGroup::init(&config, device)
    }

    /// A one-process group (every collective is the identity, averages included).
    pub fn single(device: Device) -> Result<ProcessGroup> {
        ProcessGroup::init(&DistConfig::single(), device)
    }

    pub fn rank(&self) -> usize {
        self.0.config.rank
    }
    pub fn world_size(&self) -> usize {
        self.0.config.world_size
    }
    pub fn local_rank(&self) -> usize {
        self.0.config.local_rank
    }
    pub fn local_world_size(&self) -> usize {
        self.0.config.local_world_size
    }
    /// Rank 0: the one that prints and writes checkpoints.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }
    pub fn config(&self) -> &DistConfig {
        &self.0.config
    }
    pub fn device(&self) -> Device {
        self.0.device
    }

    /// Tells the other ranks that this one failed (they stop within seconds instead of waiting for a
    /// collective to time out). Use it before exiting on an error that only this rank saw.
    pub fn abort(&self, message: &str) {
        if let Some(m) = &self.0.monitor {
            m.fail(&format!("rank {}: {message}", self.rank()));
        }
    }

    /// A one-process CUDA group without NCCL: every collective leaves its tensor as it is.
    fn cuda_identity(&self) -> bool {
        self.0.nccl.is_none() && self.world_size() == 1
    }

    /// Whether CUDA tensors go through NCCL (always at world size > 1; at 1 when libnccl loads).
    pub fn uses_nccl(&self) -> bool {
        self.0.nccl.is_some()
    }

    fn nccl(&self, op: &'static str) -> Result<std::sync::MutexGuard<'_, Nccl>> {
        match &self.0.nccl {
            Some(n) => Ok(n.lock().unwrap_or_else(|e| e.into_inner())),
            None => Err(Error::invalid(
                op,
                format!(
                    "a CUDA tensor in a process group made for {}; create the group with the CUDA device",
                    self.0.device
                ),
            )),
        }
    }

    /// Queues `job` on the communication thread; its result arrives through the returned Work.
    fn submit(&self, op: &'static str, job: impl FnOnce(&mut TcpMesh) -> Result<()> + Send + 'static) -> Result<Work> {
        let (tx, rx) = channel();
        let monitor = self.0.monitor.clone();
        let wrapped: Job = Box::new(move |mesh| {
            let result = match monitor.as_ref().and_then(|m| m.failure()) {
                Some(f) => Err(Error::invalid(op, format!("the job has failed: {f}"))),
                None => job(mesh).map_err(|e| match monitor.as_ref() {
                    Some(m) => match reported_cause(m) {
                        // Another rank's failure is the cause (a peer that stopped closes its links
                        // before its report reaches this rank): name it.
                        Some(f) => Error::invalid(op, format!("the job has failed: {f}")),
                        None => {
                            m.fail(&e.to_string());
                            e
                        }
                    },
                    None => e,
                }),
            };
            let _ = tx.send(result);
        });
        let jobs = self.0.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let sender = jobs.as_ref().ok_or_else(|| Error::invalid(op, "the process group was shut down"))?;
        sender.send(wrapped).map_err(|_| Error::invalid(op, "the communication thread stopped"))?;
        Ok(Work(WorkKind::Cpu(rx)))
    }

    /// Reduces `t` over all ranks in place.
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        self.all_reduce_async(t, op)?.wait()
    }

    /// Starts reducing `t` in place; `t` must not be read or written until the Work is waited on.
    pub fn all_reduce_async(&self, t: &Tensor, op: ReduceOp) -> Result<Work> {
        if let Device::Cuda(_) = t.device() {
            if self.cuda_identity() {
                return Ok(Work(WorkKind::Cpu(ready())));
            }
            return Ok(Work(WorkKind::Cuda(self.nccl("all_reduce")?.all_reduce(t, op == ReduceOp::Avg)?)));
        }
        let scale = (op == ReduceOp::Avg).then(|| 1.0 / self.world_size() as f64);
        let target = t.clone();
        let data = t.to_cpu_storage()?;
        self.submit("all_reduce", move |mesh| {
            let reduced = reduce_storage(data, |buf| buf.all_reduce(mesh, scale))?;
            target.assign(&Tensor::from_storage(crate::backend::Storage::Cpu(reduced), target.dims()))
        })
    }

    /// Copies rank `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        self.check_rank("broadcast", root)?;
        if let Device::Cuda(_) = t.device() {
            if self.cuda_identity() {
                return Ok(());
            }
            return self.nccl("broadcast")?.broadcast(t, root)?.wait();
        }
        let target = t.clone();
        let (dtype, data) = (t.dtype(), t.to_cpu_storage()?);
        self.submit("broadcast", move |mesh| {
            let mut bytes = data.to_le_bytes();
            mesh.broadcast(&mut bytes, root)?;
            let s = CpuStorage::from_le_bytes(dtype, &bytes);
            target.assign(&Tensor::from_storage(crate::backend::Storage::Cpu(s), target.dims()))
        })?
        .wait()
    }

    /// Every rank's `t` (all of one shape), stacked along a new first dim in rank order.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let mut dims = vec![self.world_size()];
        dims.extend_from_slice(t.dims());
        if let Device::Cuda(_) = t.device() {
            let input = t.contiguous()?;
            if self.cuda_identity() {
                return input.reshape(&dims[..]);
            }
            let out = Tensor::zeros(&dims, t.dtype(), t.device())?;
            self.nccl("all_gather")?.all_gather(&input, &out)?.wait()?;
            return Ok(out);
        }
        let out = Tensor::zeros(&dims, t.dtype(), Device::Cpu)?;
        let target = out.clone();
        let (dtype, data) = (t.dtype(), t.to_cpu_storage()?);
        self.submit("all_gather", move |mesh| {
            let all = mesh.all_gather(&data.to_le_bytes())?;
            let s = CpuStorage::from_le_bytes(dtype, &all);
            target.assign(&Tensor::from_storage(crate::backend::Storage::Cpu(s), target.dims()))
        })?
        .wait()?;
        Ok(out)
    }

    /// Reduces `t` over all ranks and returns this rank's slice of its first dim, which must divide by
    /// the world size: rows [rank·n/p, (rank+1)·n/p).
    pub fn reduce_scatter(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let p = self.world_size();
        let rows = t.dims().first().copied().unwrap_or(1);
        if t.rank() == 0 || rows % p != 0 {
            return Err(Error::shape(
                "reduce_scatter",
                format!("the first dim of {:?} must be a multiple of the world size {p}", t.dims()),
            ));
        }
        let mut dims = t.dims().to_vec();
        dims[0] = rows / p;
        if let Device::Cuda(_) = t.device() {
            let input = t.contiguous()?;
            if self.cuda_identity() {
                return Ok(input.detach());
            }
            let out = Tensor::zeros(&dims, t.dtype(), t.device())?;
            self.nccl("reduce_scatter")?.reduce_scatter(&input, &out, op == ReduceOp::Avg)?.wait()?;
            return Ok(out);
        }
        let scale = (op == ReduceOp::Avg).then(|| 1.0 / p as f64);
        let out = Tensor::zeros(&dims, t.dtype(), Device::Cpu)?;
        let target = out.clone();
        let data = t.to_cpu_storage()?;
        self.submit("reduce_scatter", move |mesh| {
            let mine = reduce_storage(data, |buf| buf.reduce_scatter(mesh, scale))?;
            target.assign(&Tensor::from_storage(crate::backend::Storage::Cpu(mine), target.dims()))
        })?
        .wait()?;
        Ok(out)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let t = Tensor::zeros(&[1], DType::F32, Device::Cpu)?;
        self.all_reduce(&t, ReduceOp::Sum)
    }

    fn check_rank(&self, op: &'static str, r: usize) -> Result<()> {
        if r >= self.world_size() {
            return Err(Error::invalid(op, format!("rank {r} is not below the world size {}", self.world_size())));
        }
        Ok(())
    }
}

/// The failure another rank reported, waiting a moment for it: when a peer fails it shuts its data links
/// at once, and its report travels over the control link through rank 0, so it can arrive just after
/// the broken link is noticed here.
fn reported_cause(m: &Monitor) -> Option<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if let Some(f) = m.failure() {
            return Some(f);
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn ready() -> Receiver<Result<()>> {
    let (tx, rx) = channel();
    let _ = tx.send(Ok(()));
    rx
}

/// A reduction buffer in a type the wire can add: half types travel as f32 so sums do not round at
/// every hop.
enum ReduceBuf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl ReduceBuf {
    fn all_reduce(&mut self, mesh: &mut TcpMesh, scale: Option<f64>) -> Result<()> {
        match self {
            ReduceBuf::F32(v) => mesh.all_reduce(v, scale),
            ReduceBuf::F64(v) => mesh.all_reduce(v, scale),
            ReduceBuf::I64(v) => mesh.all_reduce(v, scale),
        }
    }
    fn reduce_scatter(&mut self, mesh: &mut TcpMesh, scale: Option<f64>) -> Result<()> {
        fn rs<T: WireElem>(v: &mut Vec<T>, mesh: &mut TcpMesh, scale: Option<f64>) -> Result<()> {
            *v = mesh.reduce_scatter(std::mem::take(v), scale)?;
            Ok(())
        }
        match self {
            ReduceBuf::F32(v) => rs(v, mesh, scale),
            ReduceBuf::F64(v) => rs(v, mesh, scale),
            ReduceBuf::I64(v) => rs(v, mesh, scale),
        }
    }
}

/// Runs `f` on `data` as a reduction buffer and converts the result back to `data`'s dtype.
fn reduce_storage(data: CpuStorage, f: impl FnOnce(&mut ReduceBuf) -> Result<()>) -> Result<CpuStorage> {
    let dtype = data.dtype();
    let mut buf = match data {
        CpuStorage::F32(v) => ReduceBuf::F32(v),
        CpuStorage::F64(v) => ReduceBuf::F64(v),
        CpuStorage::I64(v) => ReduceBuf::I64(v),
        CpuStorage::BF16(v) => ReduceBuf::F32(widen_bf16(&v)),
        CpuStorage::F16(v) => ReduceBuf::F32(widen_f16(&v)),
        CpuStorage::U8(_) => {
            return Err(Error::UnsupportedDType { op: "reduce", dtype, detail: "reduce u8 masks as i64 or f32" })
        }
    };
    f(&mut buf)?;
    Ok(match (buf, dtype) {
        (ReduceBuf::F32(v), DType::BF16) => CpuStorage::BF16(narrow_bf16(v)),
        (ReduceBuf::F32(v), DType::F16) => CpuStorage::F16(narrow_f16(v)),
        (ReduceBuf::F32(v), _) => CpuStorage::F32(v),
        (ReduceBuf::F64(v), _) => CpuStorage::F64(v),
        (ReduceBuf::I64(v), _) => CpuStorage::I64(v),
    })
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stop the communication thread after the jobs already queued, then say goodbye.
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        if let Some(m) = &self.monitor {
            if std::thread::panicking() {
                m.fail(&format!("rank {} panicked", self.config.rank));
            } else {
                m.goodbye();
            }
        }
    }
}
