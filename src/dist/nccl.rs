//! The NCCL backend for CUDA tensors (cudarc's NCCL bindings, loaded at run time). Collectives run on a
//! side stream of the device: each waits for the work the compute stream has queued so far, and the
//! compute stream waits for the collective only when its `Work` is waited on, so an all-reduce started
//! during backward overlaps the rest of backward. Nothing here synchronises the host. A watchdog thread
//! fails the job when a collective has not finished within the timeout (a stalled or dead peer).

use super::monitor::Monitor;
use crate::backend::cuda::CudaDevice;
use crate::backend::Storage;
use crate::{DType, Device, Error, Result, Tensor};
use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::{result as nccl, sys};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

fn err(op: &'static str, e: impl std::fmt::Debug) -> Error {
    Error::invalid(op, format!("NCCL: {e:?}"))
}

/// Whether libnccl can be loaded on this machine.
pub(crate) fn available() -> bool {
    // SAFETY: only tries to dlopen libnccl.
    unsafe { sys::is_culib_present() }
}

/// A fresh NCCL unique id (made by rank 0, handed to the others through the rendezvous).
pub(crate) fn unique_id() -> Result<Vec<u8>> {
    if !available() {
        return Err(Error::invalid(
            "dist",
            "CUDA tensors need NCCL, and libnccl.so.2 was not found (install NCCL or put it on LD_LIBRARY_PATH)",
        ));
    }
    let id = nccl::get_uniqueid().map_err(|e| err("ncclGetUniqueId", e))?;
    Ok(id.internal.iter().map(|c| *c as u8).collect())
}

/// An in-flight collective, for the watchdog.
struct InFlight {
    done: Arc<CudaEvent>,
    since: Instant,
    what: &'static str,
}

pub(crate) struct Nccl {
    comm: sys::ncclComm_t,
    dev: Arc<CudaDevice>,
    side: Arc<CudaStream>,
    in_flight: Arc<Mutex<VecDeque<InFlight>>>,
}

// SAFETY: the communicator is only used from behind `&self` calls that NCCL allows from any thread for
// one communicator as long as calls are not concurrent; ProcessGroup serialises them with a mutex.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

/// Where a collective's result will be: the compute stream must wait on `done` before using it.
pub(crate) struct CudaWork {
    done: Arc<CudaEvent>,
    dev: Arc<CudaDevice>,
    waited: bool,
    /// Keeps the buffers alive (out of the allocator's free lists) until the compute stream waits.
    _keep: Vec<Tensor>,
}

impl CudaWork {
    /// Orders the compute stream after the collective (no host synchronisation).
    pub(crate) fn wait(mut self) -> Result<()> {
        self.waited = true;
        self.dev.stream().wait(&self.done).map_err(|e| self.dev.err("wait for collective", e))
    }
}

impl Drop for CudaWork {
    /// A collective dropped without `wait` (an error part-way through backward, say) still orders the
    /// compute stream after it before its buffers go back to the allocator, which hands memory out in
    /// compute-stream order: otherwise the next op could reuse a buffer NCCL is still writing.
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.dev.stream().wait(&self.done);
        }
    }
}

fn nccl_dtype(d: DType) -> Result<sys::ncclDataType_t> {
    Ok(match d {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::F64 => sys::ncclDataType_t::ncclFloat64,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
        DType::I64 => sys::ncclDataType_t::ncclInt64,
        DType::U8 => sys::ncclDataType_t::ncclUint8,
    })
}

/// The device address of a contiguous CUDA tensor's first element.
fn address(op: &'static str, t: &Tensor) -> Result<u64> {
    if !t.is_contiguous() {
        return Err(Error::invalid(op, format!("{t:?} is not contiguous; call contiguous() first")));
    }
    match &*t.storage() {
        Storage::Cuda(c) => Ok(c.ptr_at(t.layout().offset())),
        Storage::Cpu(_) => Err(Error::Device { op, a: Device::Cuda(0), b: Device::Cpu }),
    }
}

impl Nccl {
    /// Joins the communicator of `world` ranks named by `id` on CUDA device `ordinal`.
    pub(crate) fn new(
        ordinal: usize,
        rank: usize,
        world: usize,
        id: &[u8],
        timeout: Duration,
        monitor: Option<Arc<Monitor>>,
    ) -> Result<Nccl> {
        let dev = CudaDevice::get(ordinal)?;
        dev.bind()?;
        if id.len() != 128 {
            return Err(Error::invalid("dist", format!("the NCCL id from rank 0 has {} bytes, not 128", id.len())));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(id) {
            *d = *s as std::ffi::c_char;
        }
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: comm is written by ncclCommInitRank on success; the id is the one rank 0 created.
        let comm = unsafe {
            nccl::comm_init_rank(comm.as_mut_ptr(), world as i32, sys::ncclUniqueId { internal }, rank as i32)
                .map_err(|e| err("ncclCommInitRank", e))?;
            comm.assume_init()
        };
        let side = dev.new_side_stream()?;
        let in_flight = Arc::new(Mutex::new(VecDeque::new()));
        start_watchdog(Arc::downgrade(&in_flight), dev.clone(), rank, timeout, monitor);
        Ok(Nccl { comm, dev, side, in_flight })
    }

    /// Runs `enqueue(comm, side stream)` after the compute stream's queued work; returns its completion.
    fn run(
        &self,
        what: &'static str,
        keep: Vec<Tensor>,
        enqueue: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<()>,
    ) -> Result<CudaWork> {
        self.dev.bind()?;
        self.side.join(self.dev.stream()).map_err(|e| self.dev.err(what, e))?;
        enqueue(self.comm, self.side.cu_stream() as sys::cudaStream_t)?;
        let done = Arc::new(self.side.record_event(None).map_err(|e| self.dev.err(what, e))?);
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).push_back(InFlight {
            done: done.clone(),
            since: Instant::now(),
            what,
        });
        Ok(CudaWork { done, dev: self.dev.clone(), waited: false, _keep: keep })
    }

    pub(crate) fn all_reduce(&self, t: &Tensor, avg: bool) -> Result<CudaWork> {
        const OP: &str = "all_reduce";
        let (p, dt) = (address(OP, t)?, nccl_dtype(t.dtype())?);
        let op = if avg { sys::ncclRedOp_t::ncclAvg } else { sys::ncclRedOp_t::ncclSum };
        let n = t.numel();
        self.run(OP, vec![t.clone()], |comm, s| {
            // SAFETY: p addresses n elements of dtype dt on this device, kept alive by the work.
            unsafe { nccl::all_reduce(p as *const _, p as *mut _, n, dt, op, comm, s) }
                .map(|_| ())
                .map_err(|e| err(OP, e))
        })
    }

    pub(crate) fn broadcast(&self, t: &Tensor, root: usize) -> Result<CudaWork> {
        const OP: &str = "broadcast";
        let (p, dt) = (address(OP, t)?, nccl_dtype(t.dtype())?);
        let n = t.numel();
        self.run(OP, vec![t.clone()], |comm, s| {
            // SAFETY: as in all_reduce.
            unsafe { nccl::broadcast(p as *const _, p as *mut _, n, dt, root as i32, comm, s) }
                .map(|_| ())
                .map_err(|e| err(OP, e))
        })
    }

    /// `out` holds world × `input.numel()` elements.
    pub(crate) fn all_gather(&self, input: &Tensor, out: &Tensor) -> Result<CudaWork> {
        const OP: &str = "all_gather";
        let (src, dst, dt) = (address(OP, input)?, address(OP, out)?, nccl_dtype(input.dtype())?);
        let n = input.numel();
        self.run(OP, vec![input.clone(), out.clone()], |comm, s| {
            // SAFETY: src holds n and dst world·n elements of dtype dt, kept alive by the work.
            unsafe { nccl::all_gather(src as *const _, dst as *mut _, n, dt, comm, s) }
                .map(|_| ())
                .map_err(|e| err(OP, e))
        })
    }

    /// `out` holds `input.numel() / world` elements.
    pub(crate) fn reduce_scatter(&self, input: &Tensor, out: &Tensor, avg: bool) -> Result<CudaWork> {
        const OP: &str = "reduce_scatter";
        let (src, dst, dt) = (address(OP, input)?, address(OP, out)?, nccl_dtype(input.dtype())?);
        let op = if avg { sys::ncclRedOp_t::ncclAvg } else { sys::ncclRedOp_t::ncclSum };
        let n = out.numel();
        self.run(OP, vec![input.clone(), out.clone()], |comm, s| {
            // SAFETY: src holds world·n and dst n elements of dtype dt, kept alive by the work.
            unsafe { nccl::reduce_scatter(src as *const _, dst as *mut _, n, dt, op, comm, s) }
                .map(|_| ())
                .map_err(|e| err(OP, e))
        })
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        let _ = self.side.synchronize();
        // SAFETY: the communicator is not used after this; its queued work has finished.
        unsafe {
            let _ = nccl::comm_destroy(self.comm);
        }
    }
}

/// Polls the oldest in-flight collective once a second; one older than `timeout` fails the job.
fn start_watchdog(
    queue: Weak<Mutex<VecDeque<InFlight>>>,
    dev: Arc<CudaDevice>,
    rank: usize,
    timeout: Duration,
    monitor: Option<Arc<Monitor>>,
) {
    let _ = std::thread::Builder::new().name("munja-nccl-watchdog".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(q) = queue.upgrade() else { return };
        let _ = dev.bind();
        let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
        while q.front().is_some_and(|f| f.done.is_complete()) {
            q.pop_front();
        }
        if let Some(f) = q.front() {
            if f.since.elapsed() > timeout {
                let msg = format!(
                    "rank {rank}: NCCL {} has not finished after {:.0} s (a peer stalled or died)",
                    f.what,
                    timeout.as_secs_f64()
                );
                match &monitor {
                    Some(m) => m.fail(&msg),
                    None => {
                        eprintln!("munja dist: {msg}; exiting");
                        std::process::exit(1);
                    }
                }
                q.clear();
            }
        }
    });
}
